"""Whether a jail directory is the caller's alone: sshd's StrictModes rule, for build and run.

Root reads DIR/current, DIR/gen-N/launch.json and DIR/state and acts on them. If another user
owns DIR, or can rename or replace any directory on its path, that user can swap what root reads
(a launch.json that starts a shell with every capability, a state directory that is a symlink).
So DIR must be owned by the caller, and every directory from / down to it owned by root or the
caller and writable by nobody else; a sticky directory (/tmp) is the exception when the next
component is owned by root or the caller, because others cannot rename that.

Imported by `jailkit run` (jailkit.launch.jail): only os (and stat, which os imports anyway).
"""

import os
import stat

from jailkit.errors import JailkitError

GROUP_OR_OTHER_WRITE = 0o022
STICKY = 0o1000


class MissingJailDir(JailkitError):
    """A jail directory (or one of its parents) that does not exist."""


def _resolve(path: str, me: int) -> str:
    """realpath(path), walking the path as given: a symlink on the way that someone other than
    root or the caller owns could be pointed elsewhere by them at any time (sshd's StrictModes
    checks the same), so it is refused."""
    todo = [p for p in path.split("/") if p]
    todo.reverse()
    real, hops = "/", 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            real = os.path.dirname(real)
            continue
        current = os.path.join(real, part)
        try:
            st = os.lstat(current)
        except OSError:  # missing: the caller reports it
            return os.path.normpath(os.path.join(current, *reversed(todo)))
        if not stat.S_ISLNK(st.st_mode):
            real = current
            continue
        if st.st_uid not in (0, me):
            raise JailkitError(
                f"refusing jail directory {path}: {current} is a symlink owned by uid "
                f"{st.st_uid}, who could point it elsewhere; give --root without it")
        hops += 1
        if hops > 40:
            raise JailkitError(f"refusing jail directory {path}: too many symlinks")
        target = os.readlink(current)
        todo.extend(reversed([p for p in target.split("/") if p]))
        if target.startswith("/"):
            real = "/"
    return real


def check_jail_dir(path: str, must_exist: bool = False) -> str:
    """The real path of jail directory `path`, or JailkitError (one line naming the fix) when
    another user could swap it. A missing DIR (or missing parents) passes unless `must_exist`
    (then MissingJailDir): the existing part of its path is checked, and whoever creates the
    rest is the caller; open the returned path with open_jail_dir."""
    me = os.geteuid()
    real = _resolve(os.path.abspath(path), me)
    parts = [p for p in real.split("/") if p]
    for i in range(len(parts) + 1):
        current = "/" + "/".join(parts[:i])
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if must_exist:  # checked now, or someone else could put it there before the open
                raise MissingJailDir(f"{path}: no such directory") from None
            return real  # the caller creates it, or reports the missing jail its own way
        except OSError as e:
            raise JailkitError(f"cannot check jail directory {path}: {current}: "
                               f"{e.strerror}") from None
        is_jail_dir = i == len(parts)
        if is_jail_dir and st.st_uid != me:
            # root may remove what another user put in its way; a user cannot, nor should
            fix = ("remove it or choose another --root" if me == 0 else
                   f"run this as {'root' if st.st_uid == 0 else 'its owner'}, or choose a "
                   "--root of your own")
            raise JailkitError(
                f"refusing jail directory {path}: it is owned by uid {st.st_uid}, not by you "
                f"(uid {me}), and its owner could swap what it holds; {fix}")
        if st.st_uid not in (0, me):
            raise JailkitError(
                f"refusing jail directory {path}: {current} is owned by uid {st.st_uid}, who "
                "could swap it; choose a --root under directories only root or you own")
        # others may create in a sticky directory (/tmp) but not rename what root or we own
        sticky = st.st_mode & STICKY and not is_jail_dir
        if st.st_mode & GROUP_OR_OTHER_WRITE and not sticky:
            raise JailkitError(
                f"refusing jail directory {path}: {current} is writable by group or others "
                f"(mode {st.st_mode & 0o7777:04o}), who could swap it; `chmod go-w {current}` "
                "or choose another --root")
    return real


def open_jail_dir(real: str, shown: str) -> int:
    """A descriptor of the jail directory at `real` (from check_jail_dir), never through a
    symlink, and refused unless what was opened is the caller's and writable by no one else:
    the path may have been swapped since it was checked."""
    fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & GROUP_OR_OTHER_WRITE:
        os.close(fd)
        raise JailkitError(f"refusing jail directory {shown}: it changed owner or mode while "
                           "being opened; choose another --root")
    return fd
