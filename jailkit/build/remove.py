"""`jailkit rm`: remove a jail directory, and give back the ids and subnet root gave it.

Nothing under DIR is reached by a path string: each directory is opened with O_NOFOLLOW from
its parent's descriptor and checked to be the entry just looked at, and each entry is unlinked
relative to its parent's descriptor. A symlink the jail planted in its state is unlinked as a
link, never followed; a directory of another filesystem (a mount) is refused, never entered.

DIR's build lock is held throughout (a build waiting for it then finds the jail gone), and
every generation is locked as a build locks one it removes (docs/contracts.md): a running jail
holds its generation's lock, so it is refused, and a run starting meanwhile cannot lock one.

An ordinary user's jail holds what its service wrote as the jail's other users, owned by the
user's subordinate ids: as itself the user can remove neither those directories nor what they
hold. So the removal runs in a child in a user namespace that maps every id the user can map
(its own as 0, its whole subordinate range from 1, written by newuidmap/newgidmap as for its
jails): there it may remove what those ids own, and still nothing of anyone else's.
"""

import errno
import fcntl
import json
import os
import stat

from jailkit.build.jaildir import DIR_FLAGS, GEN_RE, JailDir, NotAJail, mount_points
from jailkit.errors import JailkitError
from jailkit.launch import allocate, userns
from jailkit.launch import syscalls as sc
from jailkit.launch.trust import MissingJailDir, check_jail_dir

KEPT = ("state", "generated")  # with keep_state: what the next build of DIR uses again


class Removal:
    """What `remove` removed (in a dry run: would remove): `entries` (files, directories,
    links) taking `bytes` on disk, of `generations`; `kept`: DIR's entries left; `freed`: root's
    allocation for the jail, given back (None if it had none)."""

    __slots__ = ("path", "generations", "entries", "bytes", "kept", "freed")

    def __init__(self, path: str, generations: int, kept: list[str]):
        self.path, self.generations, self.kept = path, generations, kept
        self.entries = self.bytes = 0
        self.freed: allocate.Allocation | None = None


def remove(path: str, keep_state: bool = False, dry_run: bool = False) -> Removal:
    """Remove the jail directory `path` (with keep_state, all but its state and generated
    files, and itself), refusing a running jail and what is not a jail. Root's allocation for
    it is given back once nothing owned by its ids is left."""
    jail = _open(path)
    with jail, jail.locked():
        real = os.readlink(f"/proc/self/fd/{jail.fd}")  # as its allocation is keyed
        held = _hold_generations(jail)
        try:
            _refuse_mounts(jail, real)
            names = sorted(os.listdir(jail.fd))
            kept = [n for n in names if keep_state and n in KEPT]
            removal = Removal(jail.path, len(held), kept)
            if not dry_run:  # first, as a build does: should the rest fail, none runs it
                for fd in held.values():
                    _unlink_counted("launch.json", fd, removal)
            doomed = [n for n in names if n != "lock" and n not in kept]
            entries, size = _as_owner(lambda: remove_entries(jail.fd, doomed, jail.path, dry_run))
            removal.entries += entries
            removal.bytes += size
        finally:
            for fd in held.values():
                os.close(fd)
        if not keep_state and not dry_run:
            os.unlink("lock", dir_fd=jail.fd)  # still held: a build waiting for it sees it gone
            _remove_itself(jail, real)
        if os.geteuid() == 0 and not keep_state:  # under the lock: no build of DIR between
            removal.freed = allocate.release(real, dry_run)
    return removal


def _open(path: str) -> JailDir:
    """The jail directory, checked as build and run check it (the caller's own, no one else's
    to swap), holding only what jailkit makes there."""
    try:
        check_jail_dir(os.path.abspath(path), must_exist=True)
        jail = JailDir(path)
    except MissingJailDir:
        raise JailkitError(f"no jail at {path}: nothing to remove") from None
    except NotAJail as e:
        raise JailkitError(f"{path} is not a jailkit jail (it holds "
                           f"{', '.join(e.strays)[:200]}): nothing removed") from None
    if not os.listdir(jail.fd):
        os.close(jail.fd)
        raise JailkitError(f"{path} is empty, not a jailkit jail: nothing removed")
    return jail


def _hold_generations(jail: JailDir) -> dict[str, int]:
    """Every generation (by name), locked as a build locks one it removes; a running jail
    holds its own's lock, and is refused, by its name where this user's registry has it."""
    held = {}
    try:
        for name in os.listdir(jail.fd):
            if not GEN_RE.fullmatch(name):
                continue
            try:
                held[name] = os.open(name, DIR_FLAGS, dir_fd=jail.fd)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP):
                    continue  # a file or a link: no launcher's, removed as it is
                raise JailkitError(f"{jail.path}/{name}: {e.strerror}") from None
            try:
                fcntl.flock(held[name], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JailkitError(_running(jail, name)) from None
    except BaseException:
        for fd in held.values():
            os.close(fd)
        raise
    return held


def _running(jail: JailDir, generation: str) -> str:
    from jailkit.launch.running import running

    here = os.fstat(jail.fd)
    for entry in running():
        if entry.get("dir_id") == [here.st_dev, here.st_ino]:
            name = entry.get("name")
            return (f"{jail.path} is running as {name} (pid {entry.get('pid')}): stop it "
                    f"first: jailkit stop {name}")
    return (f"{jail.path} is running (its {generation} is in use): stop it first: `jailkit "
            "ps` names it, then jailkit stop NAME")


def _refuse_mounts(jail: JailDir, real: str) -> None:
    inside = real.rstrip("/") + "/"
    mounted = sorted(p for p in mount_points() if p.startswith(inside))
    if mounted:
        raise JailkitError(f"{mounted[0]} is a mount point in {jail.path}: unmount it first "
                           "(nothing removed)")


def _unlink_counted(name: str, dir_fd: int, removal: Removal) -> None:
    """Unlink `name` if it is there, counted in `removal`."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    removal.entries += 1
    removal.bytes += st.st_blocks * 512


def _remove_itself(jail: JailDir, real: str) -> None:
    """rmdir DIR from its parent, opened with no symlink on its path, once that parent's entry
    is still the directory removed from."""
    parent_path, name = os.path.split(real)
    try:
        parent = sc.openat2(-100, parent_path, DIR_FLAGS, sc.RESOLVE_NO_SYMLINKS)  # AT_FDCWD
        try:
            here, there = os.fstat(jail.fd), os.stat(name, dir_fd=parent, follow_symlinks=False)
            if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
                raise JailkitError(f"{jail.path} was replaced while being removed: its "
                                   "contents are gone, the new one is left")
            os.rmdir(name, dir_fd=parent)
        finally:
            os.close(parent)
    except OSError as e:
        raise JailkitError(f"cannot remove {jail.path} itself (emptied): {e.strerror}") from None


def remove_entries(dir_fd: int, names: list[str], shown: str,
                   dry_run: bool = False) -> tuple[int, int]:
    """Remove `names` under `dir_fd` and all they hold, never following a symlink nor leaving
    dir_fd's filesystem; (entries, bytes on disk) removed. `shown`: dir_fd's path, for messages.
    With dry_run, only counted.

    Only the directory being emptied is open: the jail may have nested directories deeper
    than this process may hold descriptors. Its parent is opened again by "..", and refused
    unless it is the very directory it was entered from."""
    top = os.fstat(dir_fd)
    # the directories being emptied, outermost first: ((dev, ino), name, path, names left)
    levels = [((top.st_dev, top.st_ino), None, shown, list(reversed(names)))]
    here = dir_fd  # the innermost's descriptor (dir_fd itself is the caller's to close)
    entries = size = 0
    at = shown
    try:
        while True:
            _, name, path, left = levels[-1]
            if left:
                child = left.pop()
                at = f"{path}/{child}"
                st = os.stat(child, dir_fd=here, follow_symlinks=False)
                entries += 1
                size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    fd = _open_dir(here, child, at, st, top.st_dev)
                    if here != dir_fd:
                        os.close(here)
                    here = fd
                    levels.append(((st.st_dev, st.st_ino), child, at, os.listdir(here)))
                elif not dry_run:
                    os.unlink(child, dir_fd=here)
                continue
            if len(levels) == 1:
                break
            levels.pop()
            at = path
            parent = dir_fd if len(levels) == 1 else _open_parent(here, levels[-1][0], path)
            os.close(here)
            here = parent
            if not dry_run:
                os.rmdir(name, dir_fd=here)
    except OSError as e:
        raise JailkitError(f"cannot remove {at}: {e.strerror}") from None
    finally:
        if here != dir_fd:
            os.close(here)
    return entries, size


def _open_dir(parent: int, name: str, shown: str, st: os.stat_result, device: int) -> int:
    """Directory `name` under `parent`, which lstat said is `st`: never a link, never another
    filesystem, never what was put in its place since."""
    if st.st_dev != device:
        raise JailkitError(f"{shown} is on another filesystem (mounted there?): unmount it "
                           "first")
    return _open_same(name, parent, (st.st_dev, st.st_ino),
                      f"{shown} was replaced while being removed: run again")


def _open_parent(fd: int, expected: tuple[int, int], shown: str) -> int:
    """The parent of directory `fd`, by "..", once it is `expected` (dev, ino): the directory
    it was entered from, not one it was moved to."""
    return _open_same("..", fd, expected, f"{shown} was moved while being removed: run again")


def _open_same(name: str, dir_fd: int, expected: tuple[int, int], refusal: str) -> int:
    """Directory `name` under `dir_fd` (no symlink), refused with `refusal` unless it is the
    directory `expected` (dev, ino)."""
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != expected:
        os.close(fd)
        raise JailkitError(refusal)
    return fd


def _as_owner(work):
    """work() as root itself; for an ordinary user, in a child in a user namespace that maps
    every id the user can map, as its jails' are (its result is plain data: it comes back as
    JSON; its JailkitError is raised here)."""
    if os.geteuid() == 0:
        return work()
    maps = userns.own_maps()
    go_r, go_w = os.pipe()  # "maps written"; EOF: they could not be
    answer_r, answer_w = os.pipe()
    try:
        pid = sc.clone(sc.CLONE_NEWUSER)
    except OSError as e:
        for fd in (go_r, go_w, answer_r, answer_w):
            os.close(fd)
        raise JailkitError(f"cannot create a user namespace to remove what the jail's users "
                           f"own ({e.strerror}): user namespaces may be disabled for ordinary "
                           "users (sysctl kernel.unprivileged_userns_clone=1, "
                           "user.max_user_namespaces > 0), or remove it as root") from None
    if pid == 0:
        os.close(go_w)
        os.close(answer_r)
        _child(work, go_r, answer_w)
    os.close(go_r)
    os.close(answer_w)
    try:
        userns.write(pid, maps)
        os.write(go_w, b"1")
    finally:
        os.close(go_w)
        with open(answer_r, "rb") as f:
            answer = f.read()
        os.waitpid(pid, 0)
    kind, value = json.loads(answer)
    if kind == "error":
        raise JailkitError(value)
    return value


def _child(work, go_r: int, answer_w: int) -> None:
    """The user namespace's side: once its maps are written, work(), its answer sent back."""
    answer = ["error", "the user namespace's id maps could not be written"]
    try:
        if os.read(go_r, 1) == b"1":
            answer = ["done", work()]
    except JailkitError as e:
        answer = ["error", e.message]
    except BaseException as e:  # a bug: said here, in one line, as no traceback can be
        answer = ["error", f"{type(e).__name__}: {e}"]
    finally:
        with open(answer_w, "wb") as f:
            f.write(json.dumps(answer).encode())
        os._exit(0)
