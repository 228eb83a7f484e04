"""`jailkit check`: compare a built jail with its manifest, reading every file in full.

A sampled hash (the old jk_check reads 1 KiB per file) misses a same-size tamper; this one hashes
every byte. Files are opened through directory descriptors with O_NOFOLLOW, so a symlink planted
in the jail is reported, never followed.
"""

import hashlib
import os
import stat
from typing import NamedTuple

from jailkit.build import manifest
from jailkit.build.identity import HostStat
from jailkit.build.jaildir import JailDir, open_dir, walk_tree
from jailkit.errors import JailkitError

CHUNK = 1 << 20


class Finding(NamedTuple):
    kind: str  # missing, replaced, modified, mode, owner, unexpected, setuid, world-writable, stale
    path: str
    detail: str


class TreeOpener:
    """Descriptors of the jail's directories, opened component by component without following."""

    def __init__(self, root_fd: int):
        self.fds = {"": root_fd}

    def parent(self, path: str) -> tuple[int, str]:
        directory, name = path.rsplit("/", 1)
        if directory not in self.fds:
            parent_fd, base = self.parent(directory)
            self.fds[directory] = open_dir(base, parent_fd)
        return self.fds[directory], name

    def close(self):
        for key, fd in self.fds.items():
            if key:
                os.close(fd)


def sha256_of(opener: TreeOpener, path: str) -> str:
    parent_fd, name = opener.parent(path)
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _host_changed(record: manifest.Record, update: str) -> str | None:
    try:
        now = HostStat.of(os.lstat(record.source))
    except OSError as e:
        return f"host source {record.source} is gone ({e.strerror}): `{update}`"
    if record.host.ctime_ns is None:  # recorded by an older build
        now = now._replace(ctime_ns=None)
    if now != record.host:
        return f"host source {record.source} changed since the build: `{update}`"
    return None


def _check_record(record, seen, opener, owners, update: str) -> list[Finding]:
    path = record.path
    if seen is None:
        return [Finding("missing", path, f"{record.type} in the manifest, not in the jail")]
    kind = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "symlink": stat.S_ISLNK}[record.type]
    if not kind(seen.st_mode):
        return [Finding("replaced", path, f"manifest says {record.type}, the jail holds "
                                          f"{stat.filemode(seen.st_mode)}")]
    out = []
    if record.type != "symlink" and stat.S_IMODE(seen.st_mode) != record.mode:
        out.append(Finding("mode", path, f"{stat.S_IMODE(seen.st_mode):04o}, manifest says "
                                         f"{record.mode:04o}"))
    if owners and record.type != "symlink" and (seen.st_uid, seen.st_gid) != (record.uid,
                                                                               record.gid):
        out.append(Finding("owner", path, f"{seen.st_uid}:{seen.st_gid}, manifest says "
                                          f"{record.uid}:{record.gid}"))
    try:
        if record.type == "symlink":
            parent_fd, name = opener.parent(path)
            target = os.readlink(name, dir_fd=parent_fd)
            if target != record.target:
                out.append(Finding("modified", path, f"points to {target}, manifest says "
                                                     f"{record.target}"))
        elif record.type == "file":
            if seen.st_size != record.size:
                out.append(Finding("modified", path, f"{seen.st_size} bytes, manifest says "
                                                     f"{record.size}"))
            elif sha256_of(opener, path) != record.sha256:
                out.append(Finding("modified", path, "content differs from the manifest's sha256"))
    except OSError as e:
        out.append(Finding("replaced", path, f"cannot be read without following a link: "
                                             f"{e.strerror}"))
    # no host identity: an imported jail's (its archive's was not believed), whose next build
    # copies every file afresh; its content was checked above all the same
    if record.type == "file" and record.source is not None and record.host is not None:
        stale = _host_changed(record, update)
        if stale:
            out.append(Finding("stale", path, stale))
    return out


def check_jail(jail: JailDir, profile: str, root: str) -> list[Finding]:
    """Every finding for the generation DIR/current points to (empty: the jail is as built).
    `profile` and `root` as typed: a jail of another profile is refused (checked against the
    wrong profile, it would pass as that one's), and they make the fix of a stale finding."""
    from jailkit.vocabulary import jail_name

    update = f"jailkit update {profile} --root {root}"
    number = jail.current()
    if number is None:
        raise JailkitError(f"no jail is built in {jail.path}: run `jailkit build` first")
    try:
        gen_fd = jail.open_generation(number)
        try:
            built = manifest.read(gen_fd, f"{jail.path}/gen-{number}")
            if built.profile != jail_name(profile):
                raise JailkitError(f"{root} holds the jail of profile {built.profile!r}, not "
                                   f"{jail_name(profile)!r}: check --root, or check it with "
                                   f"`jailkit check {built.profile} --root {root}`")
            root_fd = open_dir("root", gen_fd)
        finally:
            os.close(gen_fd)
    except OSError as e:
        raise JailkitError(f"{jail.path}/gen-{number}: {e.strerror} (replaced by a build while "
                           "checking? run again)") from None
    owners = os.geteuid() == 0
    opener = TreeOpener(root_fd)
    try:
        seen = walk_tree(root_fd)
        findings = []
        for path, record in built.records.items():
            findings += _check_record(record, seen.get(path), opener, owners, update)
        for path, st in seen.items():
            record = built.records.get(path)
            if record is None:
                findings.append(Finding("unexpected", path, f"{stat.filemode(st.st_mode)} not in "
                                                            "the manifest"))
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                allowed = record is not None and record.mode & (stat.S_ISUID | stat.S_ISGID)
                if not allowed:
                    findings.append(Finding("setuid", path, f"{stat.filemode(st.st_mode)}: "
                                                            "setuid/setgid not asked for"))
            if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH:
                findings.append(Finding("world-writable", path,
                                        f"{stat.filemode(st.st_mode)} directory"))
        return findings
    finally:
        opener.close()
        os.close(root_fd)
