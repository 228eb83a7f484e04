"""Whether a jail directory is the caller's alone: sshd's StrictModes rule, for build and run.

Root reads DIR/current, DIR/gen-N/launch.json and DIR/state and acts on them. If another user
owns DIR, or can rename or replace any directory on its path, that user can swap what root reads
(a launch.json that starts a shell with every capability, a state directory that is a symlink).
So DIR must be owned by the caller, and every directory from / down to it owned by root or the
caller and writable by nobody else; a sticky directory (/tmp) is the exception when the next
component is owned by root or the caller, because others cannot rename that.

Imported by `jailkit run` (jailkit.launch.jail): only os.
"""

import os

from jailkit.errors import JailkitError

GROUP_OR_OTHER_WRITE = 0o022
STICKY = 0o1000


def check_jail_dir(path: str) -> str:
    """The real path of jail directory `path`, or JailkitError (one line naming the fix) when
    another user could swap it. A missing DIR (or missing parents) passes: the existing part of
    its path is checked, and whoever creates the rest is the caller; open the returned path."""
    me = os.geteuid()
    real = os.path.realpath(path)
    parts = [p for p in real.split("/") if p]
    for i in range(len(parts) + 1):
        current = "/" + "/".join(parts[:i])
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return real  # the caller creates it, or reports the missing jail its own way
        except OSError as e:
            raise JailkitError(f"cannot check jail directory {path}: {current}: "
                               f"{e.strerror}") from None
        is_jail_dir = i == len(parts)
        if is_jail_dir and st.st_uid != me:
            raise JailkitError(
                f"refusing jail directory {path}: it is owned by uid {st.st_uid}, not by you "
                f"(uid {me}), and its owner could swap what it holds; remove it or choose "
                "another --root")
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
