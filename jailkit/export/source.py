"""The built jail an export starts from: DIR/current's manifest, launch.json and tree.

Every entry is read through directory descriptors without following a symlink and checked
against the manifest as it is read (type, size, sha256), so a jail modified after its build is
refused rather than shipped: what leaves the host is exactly what the manifest describes, with
the manifest's owners and modes, not whatever the disk holds now.
"""

import hashlib
import json
import os
import stat

from jailkit.build import manifest
from jailkit.build.jaildir import JailDir, open_dir
from jailkit.build.manifest import Manifest, Record
from jailkit.errors import JailkitError
from jailkit.vocabulary import default_name

CHUNK = 1 << 20
CAPS_XATTR = "security.capability"
SHADOW_FILES = ("/etc/shadow", "/etc/gshadow")  # password hashes, crackable once handed out
MAX_SHADOW = 1 << 20
KINDS = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "symlink": stat.S_ISLNK}


class ExportError(JailkitError):
    """A jail that cannot be exported as it stands."""


class BuiltJail:
    """An open, current generation of a built jail. Use as a context manager."""

    def __init__(self, directory: str, profile: str):
        self.dir = os.path.abspath(directory)
        self._jail = JailDir(self.dir)
        try:
            number = self._jail.current()
            if number is None:
                raise ExportError(f"no jail is built in {self.dir}: build it first with "
                                  f"`jailkit build {profile} --root {directory}`")
            self.generation = number
            self.gen_fd = self._jail.open_generation(number)
        except BaseException:
            self._jail.__exit__()
            raise
        try:
            self.manifest_bytes = self._read("manifest.json")
            self.manifest: Manifest = manifest.Manifest.loads(
                self.manifest_bytes.decode(errors="replace"), f"{self.dir}/gen-{number}")
            self.launch: dict = json.loads(self._read("launch.json"))
            if not isinstance(self.launch, dict):
                raise ValueError("not a JSON object")
            self.root_fd = open_dir("root", self.gen_fd)
        except (OSError, ValueError) as e:
            self.close()
            raise ExportError(f"{self.dir}/gen-{number} cannot be read ({e}); rebuild the "
                              "jail") from None
        self.name = self.manifest.profile
        # as `run` names it by default and `ps` shows it: two jails of one profile differ here
        self.run_name = default_name(self.dir)
        # the --set values it was built with ({}: none, or a jailkit that did not keep them)
        self.sets = manifest.remembered(manifest.read_json(self.gen_fd, manifest.SETS),
                                        self.name) or {}
        self.manifest_digest = "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    def secrets(self) -> dict[str, str]:
        """The tree's files no one else should have, by path, with what they are: the private
        keys made for this jail (jailkit.build.generate, kept in DIR/generated, as the tree
        holds them) and the account files of password hashes."""
        from jailkit.build.generate import kept_private

        records = self.manifest.records
        found = {path: "a private key made for this jail"
                 for path, digest in kept_private(self._jail.fd).items()
                 if path in records and records[path].sha256 == digest}
        found.update((path, "password hashes") for path in SHADOW_FILES
                     if path in records and records[path].type == "file"
                     and self._holds_hashes(path))
        return dict(sorted(found.items()))

    def _holds_hashes(self, path: str) -> bool:
        """Whether a shadow file of the tree has a password hash (not only locked accounts:
        `!`, `*` or empty)."""
        directory, name = path.lstrip("/").rsplit("/", 1)
        dir_fd = open_dir(directory, self.root_fd)  # etc: one component, no symlink followed
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as f:
            fields = [line.split(b":")[1:2] for line in f.read(MAX_SHADOW).splitlines()]
        return any(field and field[0] and field[0][:1] not in b"!*" for field in fields)

    def state_dirs(self) -> list:
        """The writable directories kept across generations in DIR/state (launch.json's
        `bind` kind; a profile's `kind = "state"`): their content is the host's, never the
        tree's."""
        from jailkit.launch.spec import LaunchSpec

        return [w for w in LaunchSpec.from_dict(self.launch).writable if w.kind == "bind"]

    def _read(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.gen_fd)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def close(self) -> None:
        for attr in ("root_fd", "gen_fd"):
            fd = getattr(self, attr, None)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)
        self._jail.__exit__()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def entries(self, leave_out: frozenset[str] = frozenset()):
        """(record, reader) for every manifest entry in order (directories before what they
        hold), but the files in `leave_out`; reader is a CheckedFile for files, else None. A
        reader must be read to its end and `verify()`d before the next entry is taken."""
        opener = _Opener(self.root_fd)
        try:
            for record in self.manifest.records.values():
                if record.path in leave_out and record.type == "file":
                    continue
                if record.path == "/":
                    _expect(record, os.fstat(self.root_fd))
                    yield record, None
                    continue
                parent_fd, name = opener.parent(record.path)
                if record.type == "file":
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                                 dir_fd=parent_fd)
                    with os.fdopen(fd, "rb") as f:
                        _expect(record, os.fstat(fd))
                        caps = None
                        if record.file_caps:
                            try:
                                caps = os.getxattr(fd, CAPS_XATTR)
                            except OSError:
                                pass  # recorded, but the host file had none to copy
                        yield record, CheckedFile(f, record, caps)
                else:
                    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                    _expect(record, st)
                    if record.type == "symlink" and os.readlink(name, dir_fd=parent_fd) \
                            != record.target:
                        raise _changed(record, "its link target changed")
                    yield record, None
        except OSError as e:
            raise ExportError(f"{self.dir}: {e}; run `jailkit check` and rebuild") from None
        finally:
            opener.close()


def _changed(record: Record, why: str) -> ExportError:
    return ExportError(f"{record.path}: {why} since the build (the manifest no longer describes "
                       "the jail): run `jailkit check`, then `jailkit update`")


def _expect(record: Record, st: os.stat_result) -> None:
    if not KINDS[record.type](st.st_mode):
        raise _changed(record, f"is no longer a {record.type}")
    if record.type == "file" and st.st_size != record.size:
        raise _changed(record, f"size {st.st_size}, manifest says {record.size}")


class CheckedFile:
    """A file of the tree read through once, hashed on the way; `caps` its file capabilities
    (the security.capability xattr) when the profile kept them."""

    def __init__(self, f, record: Record, caps: bytes | None = None):
        self.f, self.record, self.caps = f, record, caps
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.digest.update(data)
        return data

    def verify(self) -> None:
        if self.f.read(1):
            raise _changed(self.record, "it grew")
        if self.digest.hexdigest() != self.record.sha256:
            raise _changed(self.record, "its content changed")


class _Opener:
    """Descriptors of the tree's directories, opened one component at a time, never following a
    symlink; only the current chain is kept open (entries come depth first)."""

    def __init__(self, root_fd: int):
        self.chain = [("", root_fd)]

    def parent(self, path: str) -> tuple[int, str]:
        directory, name = path.rsplit("/", 1)
        while not (directory == self.chain[-1][0] or directory.startswith(self.chain[-1][0] + "/")):
            os.close(self.chain.pop()[1])
        while self.chain[-1][0] != directory:
            below = directory[len(self.chain[-1][0]) + 1:].split("/", 1)[0]
            path_so_far = f"{self.chain[-1][0]}/{below}"
            self.chain.append((path_so_far, open_dir(below, self.chain[-1][1])))
        return self.chain[-1][1], name

    def close(self) -> None:
        for _, fd in self.chain[1:]:
            os.close(fd)
        self.chain = self.chain[:1]


def default_dir(profile: str) -> str:
    """DIR when --root is not given: the build's rule (jailkit.vocabulary)."""
    from jailkit.vocabulary import default_jail_dir, jail_name

    return default_jail_dir(jail_name(profile))


def bind_ports(launch: dict) -> list[int]:
    """TCP ports the service listens on, from launch.json's `ports.bind` when the spec has it
    (ports and [low, high] ranges). Read defensively: an older spec has no such key."""
    ports = launch.get("ports")
    found = set()
    if isinstance(ports, dict) and isinstance(ports.get("bind"), list):
        for item in ports["bind"]:
            low, high = item if isinstance(item, list) and len(item) == 2 else (item, item)
            if all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                   for p in (low, high)) and high - low < 4096:
                found.update(range(low, high + 1))
    return sorted(found)
