"""Files made once per jail at build time (private keys, certificates) and kept across rebuilds.

A host key or certificate that changed on every `jailkit build` or `update` would break every
client that trusted it, so each is made once by a built-in generator (openssl, ssh-keygen: fixed
arguments, never a command from a profile) into DIR/generated/DEST/, next to a record of what was
asked for, and read back by every later build. Asking for something else (another subject, another
kind) makes a new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from typing import NamedTuple

from jailkit.build.jaildir import DIR_FLAGS
from jailkit.errors import JailkitError
from jailkit.profile.model import Generated

PARAMS = "params.json"
SUBJECT_RE = re.compile(r"[A-Za-z0-9*][A-Za-z0-9.*-]{0,252}")


class GenerateError(JailkitError):
    """A generator that could not make its file."""


def _command(kind: str, subject: str, out: str) -> list[str]:
    if kind == "tls-cert":
        names = f"DNS:{subject},DNS:localhost,IP:127.0.0.1,IP:::1"
        return ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650", "-subj",
                f"/CN={subject}", "-addext", f"subjectAltName={names}", "-keyout", f"{out}.key",
                "-out", f"{out}.crt"]
    key_type = kind.removeprefix("ssh-host-key-")
    return ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "", "-f", out]


def _outputs(kind: str, dest: str, out: str) -> dict[str, bytes]:
    """Jail path -> content of what the generator made."""
    if kind == "tls-cert":
        # key and certificate in one PEM file: nginx, lighttpd and others read both from it
        with open(f"{out}.key", "rb") as key, open(f"{out}.crt", "rb") as cert:
            return {dest: key.read() + cert.read()}
    with open(out, "rb") as private, open(f"{out}.pub", "rb") as public:
        return {dest: private.read(), f"{dest}.pub": public.read()}


class KeptFiles(NamedTuple):
    """What DIR/generated/DEST holds: the record of what it was made for, and the files."""

    params: bytes
    files: dict[str, bytes]  # jail path -> content


def params_of(item: Generated, subject: str) -> bytes:
    """The record a generated file is kept with: a change of kind or subject makes a new one."""
    if not SUBJECT_RE.fullmatch(subject):
        raise GenerateError(f"{item.dest}: subject {subject!r} is not a host name")
    return json.dumps({"kind": item.kind, "subject": subject}, sort_keys=True).encode()


def paths_of(item: Generated) -> list[str]:
    """The jail paths a generator makes: an ssh host key has its .pub beside it."""
    return [item.dest] if item.kind == "tls-cert" else [item.dest, f"{item.dest}.pub"]


def _open_dirs(jail_fd: int, relative: str, create: bool) -> int | None:
    """Descriptor of DIR/generated/RELATIVE, walked without following symlinks; None if absent."""
    fd = os.dup(jail_fd)
    for part in ["generated", *relative.split("/")]:
        try:
            if create:
                os.mkdir(part, 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            os.close(fd)
            return None
        except OSError as e:
            os.close(fd)
            raise GenerateError(f"generated/{relative} in the jail directory: {part} is not a "
                                f"directory (a symlink?): {e.strerror}") from None
        os.close(fd)
        fd = child
    return fd


def _read(fd: int, names: list[str]) -> dict[str, bytes] | None:
    out = {}
    for name in names:
        try:
            with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd),
                      "rb") as f:
                out[name] = f.read()
        except FileNotFoundError:
            return None
    return out


def read_kept(jail_fd: int, item: Generated) -> KeptFiles | None:
    """What was made for `item` in the jail directory `jail_fd`, or None (nothing yet)."""
    fd = _open_dirs(jail_fd, item.dest.strip("/"), create=False)
    if fd is None:
        return None
    paths = paths_of(item)
    names = [path.rsplit("/", 1)[1] for path in paths]
    try:
        kept = _read(fd, [PARAMS, *names])
    finally:
        os.close(fd)
    if kept is None:
        return None
    return KeptFiles(kept[PARAMS], {path: kept[name] for path, name in zip(paths, names,
                                                                            strict=True)})


def make_and_keep(jail_fd: int, item: Generated, subject: str) -> dict[str, bytes]:
    """Make `item` for `subject` with its generator and keep it in the jail directory `jail_fd`
    (replacing what was made for another kind or subject); jail path -> content."""
    params = params_of(item, subject)
    made = _make(item, subject)
    names = [path.rsplit("/", 1)[1] for path in paths_of(item)]
    fd = _open_dirs(jail_fd, item.dest.strip("/"), create=True)
    try:
        for name in (PARAMS, *names):
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
        # the record last: a build killed halfway makes the files again next time
        for name, content in (*zip(names, made.values(), strict=True), (PARAMS, params)):
            with open(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                              os.O_CLOEXEC, 0o600, dir_fd=fd), "wb") as f:
                f.write(content)
                os.fsync(f.fileno())
    finally:
        os.close(fd)
    return made


def _make(item: Generated, subject: str) -> dict[str, bytes]:
    work = tempfile.mkdtemp(prefix="jailkit-gen-")  # private (0700) until read back
    try:
        out = os.path.join(work, "out")
        command = _command(item.kind, subject, out)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                    stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise GenerateError(f"{item.dest}: {command[0]} is not installed (needed to make "
                                f"a {item.kind}); install it and build again") from None
        except subprocess.TimeoutExpired:
            raise GenerateError(f"{item.dest}: {command[0]} did not finish making a "
                                f"{item.kind} in 120 s") from None
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise GenerateError(f"{item.dest}: {command[0]} failed making a {item.kind}: "
                                f"{reason}")
        return _outputs(item.kind, item.dest, out)
    finally:
        shutil.rmtree(work)


def kept_private(jail_fd: int) -> dict[str, str]:
    """Jail path -> sha256 of every private file DIR/generated keeps (a private key, with its
    certificate for a tls-cert; never an ssh host key's .pub), walked without following
    symlinks: what a jail hands out with its tree."""
    import hashlib

    found: dict[str, str] = {}

    def walk(fd: int, dest: str) -> None:
        names = os.listdir(fd)
        if PARAMS in names and dest:  # DIR/generated/DEST/: DEST's own file is named as DEST ends
            kept = _read(fd, [dest.rsplit("/", 1)[1]])
            if kept:
                found[dest] = hashlib.sha256(*kept.values()).hexdigest()
            return
        for name in sorted(names):
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # a file, or a symlink someone planted: nothing kept there
            try:
                walk(child, f"{dest}/{name}")
            finally:
                os.close(child)

    try:
        top = os.open("generated", DIR_FLAGS, dir_fd=jail_fd)
    except OSError:
        return found  # none made for this jail
    try:
        walk(top, "")
    finally:
        os.close(top)
    return found
