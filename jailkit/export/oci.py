"""`--format oci`: an OCI image layout (a directory, or an `oci-archive` tar when OUT ends in
.tar) holding one image: one gzip layer with the jail tree, and a config carrying the service's
command, environment, user, working directory, ports, stop signal and labels.

Reproducible: the layer is layer.py's stream, gzip'd with no name and no timestamp, and every
JSON document is serialised with sorted keys; `created` is SOURCE_DATE_EPOCH (0 when unset). The
same jail and the same SOURCE_DATE_EPOCH give the same manifest digest.

An image config has no field for cgroup limits or host directories: `notes` names the jail's,
with the `podman run` options that give them back. The state directories' files stay on the host
(DIR/state): the config declares each directory a volume, and a note says so. The secrets made
for the jail (source.BuiltJail.secrets) are in the layer unless left out, and a note names them
either way: an image is made to be pushed.
"""

import gzip
import hashlib
import json
import os
import re
import shlex
import tarfile
import time

from jailkit.export import limits
from jailkit.export.layer import write_tree
from jailkit.export.source import BuiltJail
from jailkit.vocabulary import SIGNAL_NAMES

LAYOUT = {"imageLayoutVersion": "1.0.0"}
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 6  # gzip(1)'s default: the layer of the python3 jail is ~4x faster than at 9


def epoch() -> int:
    """SOURCE_DATE_EPOCH (reproducible-builds.org), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not value.isdigit():
        from jailkit.errors import JailkitError

        raise JailkitError(f"SOURCE_DATE_EPOCH={value!r}: must be a number of seconds")
    return int(value)


def image_name(jail: BuiltJail) -> str:
    """The reference the image is given (index.json's ref.name), as podman names a loaded image."""
    return f"localhost/jailkit/{_path_component(jail.run_name)}:gen-{jail.generation}"


def _path_component(name: str) -> str:
    """A jail name as a path component of an image reference: lowercase letters and digits,
    joined by one '.', one or two '_' or any number of '-' (a jail name may have capitals, '..'
    or a trailing '.', which a registry and podman refuse)."""
    joined = re.sub(r"[._-]+", lambda m: m.group() if re.fullmatch(r"\.|__?|-+", m.group())
                    else "-", name.lower())
    return joined.strip("._-") or "jail"


def _json(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class _Hashing:
    """A binary stream wrapper that counts and hashes what passes through it."""

    def __init__(self, out):
        self.out, self.size, self.digest = out, 0, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self):
        pass


class _Blobs:
    """blobs/sha256/ of a layout directory."""

    def __init__(self, layout: str):
        self.dir = os.path.join(layout, "blobs", "sha256")
        os.makedirs(self.dir, mode=0o755)

    def add(self, data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.dir, digest), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def add_layer(self, jail: BuiltJail, mtime: int,
                  leave_out: frozenset[str]) -> tuple[dict, str]:
        """(descriptor of the gzip'd tree but `leave_out`, diff_id of the uncompressed tar)."""
        temp = os.path.join(self.dir, ".layer")
        with open(temp, "wb") as f:
            compressed = _Hashing(f)
            with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                               compresslevel=GZIP_LEVEL) as gz:
                plain = _Hashing(gz)
                write_tree(jail, plain, mtime, leave_out=leave_out)
        digest = compressed.digest.hexdigest()
        os.rename(temp, os.path.join(self.dir, digest))
        return ({"mediaType": LAYER_TYPE, "digest": f"sha256:{digest}", "size": compressed.size},
                f"sha256:{plain.digest.hexdigest()}")


def image_config(jail: BuiltJail, diff_id: str, ports: list[int], created: str,
                 leave_out: frozenset[str] = frozenset()) -> dict:
    launch = jail.launch
    user = launch.get("user") or {}
    signal = launch.get("stop_signal", "SIGTERM")
    config = {
        "Cmd": list(launch["command"]),
        "Env": [f"{k}={v}" for k, v in (launch.get("env") or {}).items()],
        "User": f"{user.get('uid', 0)}:{user.get('gid', 0)}",
        "WorkingDir": launch.get("workdir", "/"),
        "StopSignal": SIGNAL_NAMES.get(signal, signal) if isinstance(signal, int) else signal,
        "Labels": labels(jail),
    }
    if ports:
        config["ExposedPorts"] = {f"{port}/tcp": {} for port in ports}
    state = jail.state_dirs()
    if state:
        # their files are the host's (DIR/state): a container gets a volume there, not the
        # image's empty mount point under a read-only root
        config["Volumes"] = {w.path: {} for w in state}
    if leave_out:
        config["Labels"]["org.jailkit.left-out"] = ",".join(sorted(leave_out))
    return {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"jailkit export {jail.name}"}],
    }


def notes(jail: BuiltJail, leave_out: frozenset[str] = frozenset()) -> list[str]:
    """What the image cannot carry (one line each): the cgroup limits, the live host binds, the
    state directories' files; and the secrets it holds, or that were left out."""
    from jailkit.export.bundle import bind_flags
    from jailkit.export.notes import owner_hint, secret_notes
    from jailkit.launch.spec import LaunchSpec

    spec = LaunchSpec.from_dict(jail.launch)
    lines = limits.image_notes(spec.limits)
    if spec.binds:
        binds = sorted(spec.binds, key=lambda b: b.path)
        named = ", ".join(f"{b.path} (from {b.source}, {'read-write' if b.rw else 'read-only'})"
                          for b in binds)
        # quoted: an imported archive's paths are anyone's, and this is meant to be pasted
        volumes = " ".join(f"-v {shlex.quote(f'{b.source}:{b.path}:' + ','.join(bind_flags(b)))}"
                           for b in binds)
        lines.append(f"an OCI image cannot carry host directories; not carried: {named}: mount "
                     f"them at run time (podman run {volumes}), or export --format bundle or kube")
    for w in jail.state_dirs():
        lines.append(f"state directory {w.path}: its files stay in "
                     f"{os.path.join(jail.dir, 'state', w.source)}, not in the image, which "
                     "declares it a volume (empty in a new container): give it one "
                     f"(podman run -v {shlex.quote(f'NAME:{w.path}')}) and copy them in to keep "
                     f"them{owner_hint(w)}")
    lines += secret_notes(
        jail, leave_out, "the image", "anyone who can pull it has them: push it only to a "
        "private registry, or export --without-secrets",
        lambda paths: "mount each at run time (podman run "
                      + " ".join(f"-v {shlex.quote(f'FILE:{p}:ro')}" for p in paths) + ")")
    return lines


def labels(jail: BuiltJail) -> dict:
    return {"org.jailkit.profile": jail.name, "org.jailkit.generation": str(jail.generation),
            "org.jailkit.manifest-digest": jail.manifest_digest}


def write_layout(jail: BuiltJail, layout: str, ports: list[int],
                 leave_out: frozenset[str] = frozenset()) -> str:
    """Fill the (new, empty) directory `layout`, with the tree but the files `leave_out`;
    returns the image manifest's digest."""
    seconds = epoch()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    with open(os.path.join(layout, "oci-layout"), "wb") as f:
        f.write(_json(LAYOUT))
    blobs = _Blobs(layout)
    layer, diff_id = blobs.add_layer(jail, seconds, leave_out)
    config = blobs.add(_json(image_config(jail, diff_id, ports, created, leave_out)),
                       CONFIG_TYPE)
    manifest = blobs.add(_json({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                                "config": config, "layers": [layer],
                                "annotations": {"org.opencontainers.image.created": created}}),
                         MANIFEST_TYPE)
    manifest["annotations"] = {"org.opencontainers.image.ref.name": image_name(jail)}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest]}
    with open(os.path.join(layout, "index.json"), "wb") as f:
        f.write(_json(index))
    return manifest["digest"]


def write_archive(layout: str, out: str, mtime: int) -> None:
    """The layout directory as an `oci-archive` tar (its files at the top, sorted, normalised)."""
    names = []
    for top, dirs, files in os.walk(layout):
        dirs.sort()
        relative = os.path.relpath(top, layout)
        if relative != ".":
            names.append(relative)
        names += [os.path.normpath(os.path.join(relative, f)) for f in sorted(files)]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(os.path.join(layout, name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = mtime
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with open(os.path.join(layout, name), "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
