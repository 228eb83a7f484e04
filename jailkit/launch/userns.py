"""User namespace id maps: which host ids the jail's ids 0..N-1 are.

Launched by root, the jail gets a range of unprivileged host ids: the `jailkit` line of
/etc/subuid and /etc/subgid, else DEFAULT_RANGE. Its uid 0 is then nobody on the host, and
services that switch between several ids (nginx, vsftpd, sshd) work. Launched by an ordinary
user, only that user's own uid and gid can be mapped (to 0): enough for services that never
change ids.
"""

import os

from jailkit.errors import JailkitError

SUBID_OWNER = "jailkit"
DEFAULT_RANGE = (1_000_000_000, 65536)  # far above the 100000+ ranges useradd hands out


class IdMaps:
    """The maps one jail gets; `host_uid(n)` is the host id of jail id n."""

    __slots__ = ("uid_base", "gid_base", "count", "allow_setgroups")

    def __init__(self, uid_base: int, gid_base: int, count: int, allow_setgroups: bool):
        self.uid_base, self.gid_base, self.count = uid_base, gid_base, count
        self.allow_setgroups = allow_setgroups

    def host_uid(self, uid: int) -> int:
        return self.uid_base + uid

    def host_gid(self, gid: int) -> int:
        return self.gid_base + gid

    def describe(self) -> str:
        last = self.count - 1
        return f"uid 0-{last} -> {self.uid_base}+, gid 0-{last} -> {self.gid_base}+"


def read_subid(path: str, owner: str = SUBID_OWNER) -> tuple[int, int] | None:
    """The first `owner:start:count` range in a subuid/subgid file, or None."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == owner and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def plan(uid: int, gid: int, groups: list[int], uid_count: int) -> IdMaps:
    """The id maps for a jail whose user is uid/gid/groups and which needs uid_count ids."""
    if os.geteuid() == 0:
        ranges = []
        for path in ("/etc/subuid", "/etc/subgid"):
            found = read_subid(path) or DEFAULT_RANGE
            if found[1] < uid_count:
                raise JailkitError(
                    f"{path}: the {SUBID_OWNER} range has {found[1]} ids but the jail needs "
                    f"{uid_count}: give '{SUBID_OWNER}:{found[0]}:{uid_count}' or more"
                )
            ranges.append(found[0])
        return IdMaps(ranges[0], ranges[1], uid_count, True)
    if uid != 0 or gid != 0 or groups:
        raise JailkitError(
            f"the jail runs as uid {uid} gid {gid}, but an ordinary user can only map one id "
            f"(to 0): run jailkit as root, or run the service as user 0 (--set user.uid=0 "
            f"--set user.gid=0 --set user.groups=[])"
        )
    return IdMaps(os.geteuid(), os.getegid(), 1, False)


def write(pid: int, maps: IdMaps) -> None:
    """Write the maps of child `pid` (a process cannot write a range map for itself)."""
    count = maps.count
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {maps.uid_base} {count}\n")
    with open(f"/proc/{pid}/setgroups", "w") as f:
        # an unprivileged gid map is only accepted with setgroups denied
        f.write("allow" if maps.allow_setgroups else "deny")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {maps.gid_base} {count}\n")


def forbid_nested() -> None:
    """No user namespaces inside the jail: a nested one would hand its creator a full set of
    capabilities (over its own namespaces) again. The limit is per user namespace and covers
    clone, clone3 and unshare alike; the jail cannot raise it (its /proc/sys is read-only)."""
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
