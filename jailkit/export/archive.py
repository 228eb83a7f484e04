"""`--format tar` and `jailkit import`: a whole jail in one archive, and back.

The archive holds, in this order: jailkit-archive.json (format, profile, generation),
manifest.json, launch.json, profile.toml (the profile as `jailkit show` printed it at export,
with the jail's --set values: for people, never read back), sets.json (those values, 0600: a
password may be among them; absent from an older jailkit's archive), then root/ (the tree,
owners and modes as in the manifest).

Import treats the archive as hostile, as root: it writes only a fresh DIR/gen-N, creates every
entry through directory descriptors with O_NOFOLLOW/O_EXCL (nothing in the archive can name a
path outside it or make the import follow a symlink), accepts only directories, files and
symlinks, checks every one against the archive's manifest (type, mode, owner, size, sha256) and
the manifest against the archive (nothing missing, nothing extra), and refuses what only a local
build may produce: setuid/setgid/sticky bits, world-writable modes, file capabilities, symlinks
climbing out of the tree. Any refusal removes the new generation, and DIR/current is switched to
it only once everything checked out.
"""

import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile

from jailkit.build import manifest
from jailkit.build.jaildir import JailDir, open_dir
from jailkit.build.manifest import Manifest
from jailkit.errors import JailkitError
from jailkit.export.layer import write_tree
from jailkit.export.oci import epoch

FORMAT = 1
HEADER = "jailkit-archive.json"
META = (HEADER, "manifest.json", "launch.json", "profile.toml")
SETS = manifest.SETS  # optional, after META
TREE = "root"
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20
MAX_META = 64 << 20  # the manifest of a large jail is a few MB


class ArchiveRefused(JailkitError):
    """An archive that is refused."""


def write_archive(jail, out: str, profile_toml: str) -> None:
    mtime = epoch()
    header = json.dumps({"format": FORMAT, "profile": jail.name,
                         "generation": jail.generation}).encode()
    documents = (header, jail.manifest_bytes, json.dumps(jail.launch, indent=2).encode() + b"\n",
                 profile_toml.encode())
    head = [(name, data, 0o644) for name, data in zip(META, documents, strict=True)]
    sets = json.dumps({"profile": jail.name, "sets": jail.sets}).encode() + b"\n"
    head.append((SETS, sets, 0o600))
    with open(out, "wb") as f:
        write_tree(jail, f, mtime, prefix=f"{TREE}/", include_root=True, head=tuple(head))


def notes(jail) -> list[str]:
    """What the archive leaves on the host, and the secrets it holds (one line each)."""
    from jailkit.export.notes import secret_notes

    lines = [f"state directory {w.path}: its files stay in "
             f"{os.path.join(jail.dir, 'state', w.source)}, not in the archive: `jailkit "
             "import` makes it empty, as a first build does"
             for w in jail.state_dirs()]
    # sets.json holds the --set values as given: a password among them is in the clear
    return lines + secret_notes(jail, frozenset(), "the archive", "keep it private, as its "
                                "sets.json (the --set values) too", None)


def _refuse(archive: str, what: str) -> ArchiveRefused:
    return ArchiveRefused(f"{archive}: {what}; nothing was imported")


def _meta(tar, member, archive: str) -> bytes:
    if not member.isreg() or member.size > MAX_META:
        raise _refuse(archive, f"{member.name} is not a small regular file")
    return tar.extractfile(member).read()


def _tree_path(name: str, archive: str) -> str:
    """The jail path of an archive member of the tree, refusing anything that is not plainly
    below root/: absolute names, '..', '.', empty components."""
    if name == TREE:
        return "/"
    parts = name.split("/")
    if (parts[0] != TREE or len(parts) < 2 or "\0" in name
            or any(p in ("", ".", "..") for p in parts[1:])):
        raise _refuse(archive, f"member {name!r} is not a plain path below {TREE}/")
    return "/" + "/".join(parts[1:])


def _leaves_tree(path: str, target: str) -> bool:
    """Whether a relative symlink target climbs above the jail's root. (An absolute one is the
    jail's own path: the jail resolves it inside its root.)"""
    if target.startswith("/"):
        return False
    depth = len(posixpath.dirname(path).strip("/").split("/")) if path.count("/") > 1 else 0
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _check_policy(record, archive: str) -> None:
    if record.path == "/" and record.type != "dir":
        # the tree's root is applied as a directory whatever its record says
        raise _refuse(archive, f"/: the tree's root is a {record.type} in the manifest, "
                               "not a directory")
    if record.type == "symlink":
        if _leaves_tree(record.path, record.target or ""):
            raise _refuse(archive, f"{record.path}: symlink to {record.target!r} leaves the tree")
        return
    if record.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        raise _refuse(archive, f"{record.path}: mode {record.mode:04o} has setuid/setgid/sticky "
                               "bits, which only a local build may set")
    if record.mode & stat.S_IWOTH:
        raise _refuse(archive, f"{record.path}: mode {record.mode:04o} is world-writable")
    if record.file_caps:
        raise _refuse(archive, f"{record.path}: file capabilities, which only a local build "
                               "may keep")


def _same(record, member, path: str, archive: str) -> None:
    kind = {"dir": member.isdir(), "file": member.isreg(), "symlink": member.issym()}
    if not kind.get(record.type):
        raise _refuse(archive, f"{path}: the archive holds a {_kind(member)}, the manifest a "
                               f"{record.type}")
    if record.type == "symlink":
        if member.linkname != record.target:
            raise _refuse(archive, f"{path}: link target differs from the manifest")
        return
    if stat.S_IMODE(member.mode) != record.mode:
        raise _refuse(archive, f"{path}: mode {stat.S_IMODE(member.mode):04o}, manifest says "
                               f"{record.mode:04o}")
    if (member.uid, member.gid) != (record.uid, record.gid):
        raise _refuse(archive, f"{path}: owner {member.uid}:{member.gid}, manifest says "
                               f"{record.uid}:{record.gid}")
    if record.type == "file" and member.size != record.size:
        raise _refuse(archive, f"{path}: size {member.size}, manifest says {record.size}")


def _kind(member) -> str:
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return {tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symlink"}.get(member.type, "file")


class _Tree:
    """Writes the tree under a new root descriptor, depth first: the open chain of directories is
    a stack, and a member whose parent is not on it (not made by this import) is refused."""

    def __init__(self, root_fd: int, owners: bool):
        self.stack = [("/", root_fd, None)]
        self.owners = owners
        self.done: dict[str, os.stat_result] = {}

    def parent(self, path: str, archive: str) -> tuple[int, str]:
        parent, name = path.rsplit("/", 1)
        parent = parent or "/"
        while self.stack[-1][0] != parent:
            if len(self.stack) == 1:
                raise _refuse(archive, f"{path}: its directory does not come before it")
            self._pop()
        return self.stack[-1][1], name

    def _pop(self) -> None:
        _, fd, record = self.stack.pop()
        try:
            self._own(fd, record)  # the mode last: a 0555 directory was still filled
        finally:
            os.close(fd)

    def _own(self, fd: int, record) -> None:
        if self.owners:
            os.fchown(fd, record.uid, record.gid)
        os.fchmod(fd, record.mode)
        self.done[record.path] = os.fstat(fd)

    def root(self, record) -> None:
        self.stack[0] = ("/", self.stack[0][1], record)

    def add(self, record, member, data, archive: str) -> None:
        parent_fd, name = self.parent(record.path, archive)
        if record.type == "dir":
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            self.stack.append((record.path, open_dir(name, parent_fd), record))
        elif record.type == "symlink":
            os.symlink(record.target, name, dir_fd=parent_fd)
            self.done[record.path] = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        else:
            fd = os.open(name, FILE_FLAGS, 0o600, dir_fd=parent_fd)
            try:
                digest = hashlib.sha256()
                while chunk := data.read(CHUNK):
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                if digest.hexdigest() != record.sha256:
                    raise _refuse(archive, f"{record.path}: content differs from the manifest "
                                           "(sha256)")
                self._own(fd, record)
            finally:
                os.close(fd)

    def finish(self) -> None:
        while len(self.stack) > 1:
            self._pop()
        _, fd, record = self.stack[0]
        if record is not None:
            self._own(fd, record)

    def close(self) -> None:
        for _, fd, _ in self.stack[1:]:
            os.close(fd)
        self.stack = self.stack[:1]


def _read_head(tar, archive: str) -> tuple[dict, Manifest, bytes, object]:
    """The four documents that open the archive (sets.json, which may follow, is read by
    `_read_sets`)."""
    documents = {}
    for expected in META:
        member = tar.next()
        if member is None or member.name != expected:
            raise _refuse(archive, f"expected {expected} next, found "
                                   f"{member.name if member else 'the end'}: not a jailkit "
                                   "archive (make one with `jailkit export --format tar`)")
        documents[expected] = _meta(tar, member, archive)
    try:
        header = json.loads(documents[HEADER])
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT}")
        launch = json.loads(documents["launch.json"])
    except (ValueError, AttributeError) as e:
        raise _refuse(archive, f"not a jailkit archive ({e})") from None
    try:
        loaded = Manifest.loads(documents["manifest.json"].decode(errors="replace"),
                                f"{archive}:manifest.json")
    except JailkitError as e:
        raise _refuse(archive, str(e)) from None
    from jailkit.launch.spec import LaunchSpec

    try:
        spec = LaunchSpec.from_dict(launch)
    except JailkitError as e:
        raise _refuse(archive, f"launch.json: {e}") from None
    name = loaded.profile
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise _refuse(archive, f"profile name {name!r} is not a plain name")
    return header, loaded, documents["launch.json"], spec


def _read_sets(tar, archive: str, profile: str):
    """(the --set values the archive carries, or None when it has none; the first member of
    the tree)."""
    member = tar.next()
    if member is None or member.name != SETS:
        return None, member
    sets = None
    try:
        sets = manifest.remembered(json.loads(_meta(tar, member, archive)), profile)
    except ValueError:
        pass
    if sets is None:
        raise _refuse(archive, f"{SETS} is not {{\"profile\": {profile!r}, \"sets\": "
                               "{VARIABLE: VALUE}} with string values")
    return sets, tar.next()


def asks(spec) -> list[str]:
    """What an imported jail's launch.json asks for beyond the defaults that open the jail
    further, one line each: whoever imports should see it before `jailkit run`."""
    from jailkit.launch.dangerous import warnings

    lines = [f"capability {line}" for line in warnings(spec.capabilities)]
    lines += [f"seccomp_allow: {name} (the filter lets it through)"
              for name in spec.seccomp_allow]
    if spec.mount_sys:
        lines.append("mount_sys: /sys is mounted in the jail")
    if spec.network == "host":
        lines.append("network = host: the jail shares the host's network")
    lines += [f"a bind: the host's {describe_bind(b)}" for b in spec.binds]
    if os.geteuid() == 0:  # the limits a jail root builds has unless its profile says otherwise
        from jailkit.profile.schema import DEFAULT_MEMORY_MAX, DEFAULT_PIDS_MAX

        if spec.memory_max is None:
            lines.append(f"no memory_max (a jail root builds has {DEFAULT_MEMORY_MAX >> 20}m): "
                         "it may use all the host's memory; run it with --memory SIZE")
        if spec.pids_max is None:
            lines.append(f"no pids_max (a jail root builds has {DEFAULT_PIDS_MAX}): it may start "
                         "processes without end; run it with --pids N")
    return lines


def describe_bind(bind) -> str:
    modes = ["read-write" if bind.rw else "read-only", *(["exec"] if bind.exec else [])]
    return f"{bind.source} at {bind.path} ({', '.join(modes)})"


def _consented(spec, accept_binds: bool, archive: str) -> None:
    """Binds name host paths: an archive's (made elsewhere, by anyone) are refused unless the
    importer accepts them, one by one as listed."""
    if spec.binds and not accept_binds:
        listed = "; ".join(describe_bind(b) for b in spec.binds)
        raise JailkitError(f"{archive}: its jail mounts host directories into itself: {listed}; "
                           "import it with --accept-binds if the host should give it these, "
                           "else ask for an archive without them")


def import_archive(archive: str, root: str | None,
                   accept_binds: bool = False) -> tuple[str, str, int, list[str]]:
    """Restore ARCHIVE as a new generation; returns (profile, jail directory, generation, what
    its launch.json asks for beyond the defaults: `asks`)."""
    try:
        tar = tarfile.open(archive, mode="r|*")
    except FileNotFoundError:
        raise JailkitError(f"{archive}: no such file") from None
    except (tarfile.TarError, OSError) as e:
        raise JailkitError(f"{archive}: not a jailkit archive ({e}); make one with "
                           "`jailkit export --format tar`") from None
    with tar:
        try:
            _, loaded, launch_bytes, spec = _read_head(tar, archive)
            _consented(spec, accept_binds, archive)
            sets, first = _read_sets(tar, archive, loaded.profile)
            for record in loaded.records.values():
                _check_policy(record, archive)
            if "/" not in loaded.records:
                raise _refuse(archive, "/: the manifest has no record of the tree's root")
            if root is None:
                from jailkit.vocabulary import default_jail_dir

                root = default_jail_dir(loaded.profile)
            _check_space(loaded, root, archive)
            return (*_restore(tar, first, archive, loaded, launch_bytes, sets, spec, root),
                    asks(spec))
        except tarfile.TarError as e:
            raise _refuse(archive, f"damaged archive ({e})") from None


SPACE_MARGIN = 16 << 20  # left free for everything else on the file system


def _check_space(loaded: Manifest, root: str, archive: str) -> None:
    """A tiny compressed archive can declare gigabytes of zeros: what its manifest declares
    must fit the target's free space before anything is written (each member is then held to
    its record's size)."""
    total = sum(r.size + 4096 for r in loaded.records.values())  # a block for each entry
    existing = root
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    vfs = os.statvfs(existing)
    free = vfs.f_bavail * vfs.f_frsize
    if total + SPACE_MARGIN > free:
        raise _refuse(archive, f"its files take {total >> 20} MiB, more than the free space of "
                               f"{existing} ({free >> 20} MiB, keeping {SPACE_MARGIN >> 20} MiB "
                               "free): free some space or import elsewhere")


def _restore(tar, first, archive, loaded: Manifest, launch_bytes: bytes, sets, spec, root: str):
    new_dir = not os.path.lexists(root)
    try:
        with JailDir(root, create=True) as jail, jail.locked():
            previous = manifest.read_current(jail)
            if previous is not None:
                if previous.profile != loaded.profile:
                    raise _refuse(archive, f"{root} holds a jail of profile "
                                           f"{previous.profile!r}, not {loaded.profile!r}")
            if sets is None:
                # an archive without them does not wipe the values the jail remembers
                from jailkit.build.kept import remembered_sets

                sets = remembered_sets(jail, loaded.profile)
            number, gen_fd = jail.new_generation()
            try:
                _fill(tar, first, archive, loaded, launch_bytes, number, gen_fd)
                manifest.write_new(gen_fd, SETS, json.dumps(
                    {"profile": loaded.profile, "sets": sets}) + "\n")
            except BaseException:
                os.close(gen_fd)
                _remove_generation(jail, number)
                raise
            os.close(gen_fd)
            # the persistent writable directories the launcher binds (as a build makes them)
            for writable in spec.writable:
                if writable.kind == "bind":
                    jail.state_dir(writable.source, writable.mode)
            jail.swap(number)
            jail.remove_stale(keep={number})
            return loaded.profile, jail.path, number
    except BaseException:
        if new_dir:
            _remove_new_dir(root)
        raise


def _fill(tar, first, archive, loaded: Manifest, launch_bytes: bytes, number: int,
          gen_fd: int) -> None:
    owners = os.geteuid() == 0
    os.mkdir(TREE, 0o700, dir_fd=gen_fd)
    tree = _Tree(open_dir(TREE, gen_fd), owners)
    try:
        seen = set()
        member = first
        while member is not None:
            path = _tree_path(member.name, archive)
            record = loaded.records.get(path)
            if record is None:
                raise _refuse(archive, f"{path}: in the archive but not in its manifest")
            if path in seen:
                raise _refuse(archive, f"{path}: twice in the archive")
            seen.add(path)
            _same(record, member, path, archive)
            if path == "/":
                tree.root(record)
            else:
                tree.add(record, member, tar.extractfile(member) if member.isreg() else None,
                         archive)
            member = tar.next()
        missing = [p for p in loaded.records if p not in seen]
        if missing:
            raise _refuse(archive, f"{missing[0]}: in the manifest but not in the archive"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        tree.finish()
    except OSError as e:
        raise _refuse(archive, f"writing the tree failed ({e})") from None
    finally:
        tree.close()
        os.close(tree.stack[0][1])
    # the manifest describes this tree now: this generation's number, inodes and times. What the
    # archive says about the host is not believed: no host identity, ctime or package (so the
    # next build copies every file afresh from the host instead of keeping the archive's), and
    # no closure cache (it names host files the next build would copy in as root).
    records = {path: record._replace(mtime=tree.done[path].st_mtime_ns,
                                     ino=tree.done[path].st_ino, host=None, ctime=None,
                                     package=None)
               for path, record in loaded.records.items()}
    restored = Manifest(loaded.profile, number, records, None)
    manifest.write_new(gen_fd, manifest.NAME, restored.dumps())
    manifest.write_new(gen_fd, "launch.json", launch_bytes.decode())


def _remove_generation(jail: JailDir, number: int) -> None:
    """Delete a half-imported generation (never following a symlink in it)."""
    if os.geteuid() != 0:
        _writable_dirs(jail.fd, f"gen-{number}")  # an ordinary user cannot empty a 0555 dir
    shutil.rmtree(f"gen-{number}", dir_fd=jail.fd)


def _writable_dirs(parent_fd: int, name: str) -> None:
    try:
        fd = open_dir(name, parent_fd)
    except OSError:
        return
    try:
        os.fchmod(fd, 0o700)
        with os.scandir(fd) as it:
            subdirs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            _writable_dirs(fd, sub)
    finally:
        os.close(fd)


def _remove_new_dir(root: str) -> None:
    """The jail directory this import created, when it failed: only its lock file is left."""
    try:
        os.unlink(os.path.join(root, "lock"))
        os.rmdir(root)
    except OSError:
        pass
