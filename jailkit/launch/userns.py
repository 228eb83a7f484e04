"""User namespace id maps: which host ids the jail's ids 0..N-1 are.

Launched by root, the jail's ids 0..N-1 are a range of unprivileged host ids of its own: a slice
of the `jailkit` line of /etc/subuid and /etc/subgid, else of a default space (allocate.py). Its
uid 0 is then nobody on the host, and services that switch between several ids (nginx, vsftpd,
sshd) work.

Launched by an ordinary user with subordinate ids of their own (/etc/subuid and /etc/subgid, and
newuidmap/newgidmap from the uidmap package to write them): the jail's 0 is that user, 1..N-1
their subordinate range. Without them, only the user's own uid and gid can be mapped (to 0),
with setgroups denied: enough for services that never change ids. A jail that needs an id its
launcher cannot map (its user's, a writable directory's owner, or any of its users and groups
when the service may switch ids) is refused before it starts, naming the ids and the fix.
"""

import errno
import os

from jailkit.errors import JailkitError
from jailkit.launch import syscalls as sc

SUBID_OWNER = "jailkit"
NEWUIDMAP = "/usr/bin/newuidmap"
NEWGIDMAP = "/usr/bin/newgidmap"


class IdMaps:
    """The maps one jail gets, as (inside, outside, count) ranges; `host_uid(n)` is the host id
    of jail id n. `helpers`: written by newuidmap/newgidmap (an ordinary user's ranges)."""

    __slots__ = ("uids", "gids", "allow_setgroups", "helpers")

    def __init__(self, uids: list[tuple[int, int, int]], gids: list[tuple[int, int, int]],
                 allow_setgroups: bool, helpers: bool = False):
        self.uids, self.gids = uids, gids
        self.allow_setgroups, self.helpers = allow_setgroups, helpers

    @staticmethod
    def _host(ranges: list[tuple[int, int, int]], n: int) -> int | None:
        for inside, outside, count in ranges:
            if inside <= n < inside + count:
                return outside + n - inside
        return None

    def host_uid(self, uid: int) -> int | None:
        return self._host(self.uids, uid)

    def host_gid(self, gid: int) -> int | None:
        return self._host(self.gids, gid)

    def describe(self) -> str:
        def ranges(kind, items):
            return ", ".join(f"{kind} {i}-{i + c - 1} -> {o}-{o + c - 1}" for i, o, c in items)

        how = " (newuidmap)" if self.helpers else ""
        return f"{ranges('uid', self.uids)}; {ranges('gid', self.gids)}{how}"


def read_subid(path: str, owners: tuple[str, ...]) -> tuple[int, int] | None:
    """The first `owner:start:count` range of one of `owners` in a subuid/subgid file, or None."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JailkitError(f"cannot read {path}: {e.strerror}") from None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in owners and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def _user_names(uid: int) -> tuple[str, ...]:
    """How /etc/subuid may name this user: by name or by number (as newuidmap accepts)."""
    import pwd  # only for an ordinary user's launch, on the host, before any jail exists

    try:
        return (pwd.getpwuid(uid).pw_name, str(uid))
    except KeyError:
        return (str(uid),)


SWITCHING = ("CAP_SETUID", "CAP_SETGID")  # a service holding one may become any of its users


def parse_accounts(passwd: str, group: str) -> tuple[dict[int, str], dict[int, str]]:
    """uid -> name and gid -> name from the text of a jail's /etc/passwd and /etc/group."""
    def ids(text: str) -> dict[int, str]:
        found = {}
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[2].isdigit():
                found.setdefault(int(fields[2]), fields[0])
        return found

    return ids(passwd), ids(group)


class Needed:
    """The jail's uids and gids that must be mapped (id -> its name, None if unknown), and those
    of them that are the service's own user and groups."""

    __slots__ = ("uids", "gids", "service_uids", "service_gids")

    def __init__(self, spec, accounts: tuple[dict[int, str], dict[int, str]] | None):
        """From a LaunchSpec: its user and groups, the owners of its writable directories and,
        when the service may switch ids (SWITCHING), every user and group of `accounts` (the
        jail's /etc/passwd and /etc/group as parse_accounts reads them; None when not read)."""
        users, groups = accounts or ({}, {})
        self.service_uids, self.service_gids = {spec.uid}, {spec.gid, *spec.groups}
        uids = {*self.service_uids, *(w.uid for w in spec.writable)}
        gids = {*self.service_gids, *(w.gid for w in spec.writable)}
        if any(cap in SWITCHING for cap in spec.capabilities):
            uids.update(users)
            gids.update(groups)
        self.uids = {uid: users.get(uid) for uid in sorted(uids)}
        self.gids = {gid: groups.get(gid) for gid in sorted(gids)}


def plan(needed: Needed, uid_count: int, root_range: tuple[int, int] | None = None) -> IdMaps:
    """The id maps for a jail of uid_count ids whose `needed` ids must be mapped; `root_range`:
    as root, the host uid and gid of the jail's 0 (its allocate.Allocation). An id an ordinary
    user cannot map is refused, naming it and the fix."""
    if root_range is not None:
        return IdMaps([(0, root_range[0], uid_count)], [(0, root_range[1], uid_count)], True)
    maps = own_maps(uid_count - 1)
    bad_uids = [uid for uid in needed.uids if maps.host_uid(uid) is None]
    bad_gids = [gid for gid in needed.gids if maps.host_gid(gid) is None]
    if not bad_uids and not bad_gids:
        return maps
    user = _user_names(os.geteuid())[0]
    helpers = os.path.exists(NEWUIDMAP) and os.path.exists(NEWGIDMAP)
    if maps.helpers:
        have = (f"the range of subordinate ids /etc/subuid and /etc/subgid give {user} maps "
                f"the jail's ids 1-{maps.uids[1][2]} only")
        fix = f"widen that range (to {uid_count - 1} ids), or run jailkit as root"
    else:
        have = ("an ordinary user can only map one id (its own, as the jail's 0) without a "
                "range of subordinate ids")
        first = _free_subid_start()
        fix = (f"add one for {user} to /etc/subuid and /etc/subgid (as root: usermod "
               f"--add-subuids {first}-{first + 65535} --add-subgids {first}-{first + 65535} "
               f"{user}{'' if helpers else '; and install uidmap, for newuidmap'}), or run "
               "jailkit as root")
        if set(bad_uids) <= needed.service_uids and set(bad_gids) <= needed.service_gids:
            fix += (", or run the service as the jail's 0 (--set user.uid=0 --set user.gid=0 "
                    "--set user.groups=[])")
    unmapped = ", ".join([*(_named("uid", uid, needed.uids[uid]) for uid in bad_uids),
                          *(_named("gid", gid, needed.gids[gid]) for gid in bad_gids)])
    raise JailkitError(f"the jail needs {unmapped} mapped, but {have}: {fix}")


def own_maps(count: int | None = None) -> IdMaps:
    """What an ordinary user can map: its own uid and gid as 0 and, with newuidmap/newgidmap and
    a range of subordinate ids in /etc/subuid and /etc/subgid, `count` ids of that range as
    1..count (with count None, all of it: every id any of the user's jails was given)."""
    own_uid, own_gid = os.geteuid(), os.getegid()
    maps = IdMaps([(0, own_uid, 1)], [(0, own_gid, 1)], False)
    names = _user_names(own_uid)
    sub_uid = read_subid("/etc/subuid", names)
    sub_gid = read_subid("/etc/subgid", names)
    if (count is None or count > 0) and os.path.exists(NEWUIDMAP) and \
            os.path.exists(NEWGIDMAP) and sub_uid and sub_gid:
        count = min(sub_uid[1], sub_gid[1], sub_uid[1] if count is None else count)
        maps = IdMaps([(0, own_uid, 1), (1, sub_uid[0], count)],
                      [(0, own_gid, 1), (1, sub_gid[0], count)], True, helpers=True)
    return maps


def _named(kind: str, number: int, name: str | None) -> str:
    return f"{kind} {number}" + (f" ({name})" if name else "")


def _free_subid_start() -> int:
    """Where a new range of subordinate ids may begin: after every range given already."""
    end = 100000  # where Debian's useradd starts them
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(path) as f:
                for line in f:
                    fields = line.strip().split(":")
                    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                        end = max(end, int(fields[1]) + int(fields[2]))
        except OSError:
            pass
    return end


def _run_helper(helper: str, pid: int, ranges: list[tuple[int, int, int]]) -> None:
    args = [str(n) for r in ranges for n in r]
    child = os.posix_spawn(helper, [helper, str(pid), *args], {})
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise JailkitError(f"{helper} {pid} {' '.join(args)} failed: check /etc/subuid and "
                           "/etc/subgid for this user")


def write(pid: int, maps: IdMaps) -> None:
    """Write the maps of child `pid` (a process cannot write a range map for itself)."""
    if maps.helpers:
        _run_helper(NEWUIDMAP, pid, maps.uids)
        _run_helper(NEWGIDMAP, pid, maps.gids)
        return
    _write_proc(f"/proc/{pid}/uid_map", "".join(f"{i} {o} {c}\n" for i, o, c in maps.uids))
    # an unprivileged gid map is only accepted with setgroups denied
    _write_proc(f"/proc/{pid}/setgroups", "allow" if maps.allow_setgroups else "deny")
    _write_proc(f"/proc/{pid}/gid_map", "".join(f"{i} {o} {c}\n" for i, o, c in maps.gids))


def write_nested(proc_fd: int, pid: int, maps: IdMaps) -> None:
    """From the jail's pid 1, write the maps of its child `pid`, in a user namespace nested in
    the jail's: the same ids, each range of ours onto itself (a range of the child's map must
    lie within one of ours). `proc_fd`: a proc of the jail's pid namespace. setgroups is left
    as the child inherits it from ours. Needs CAP_SETUID, CAP_SETGID and CAP_SETFCAP in ours
    (mapping our uid 0)."""
    for name, ranges in (("uid_map", maps.uids), ("gid_map", maps.gids)):
        text = "".join(f"{inside} {inside} {count}\n" for inside, _, count in ranges)
        _write_proc(f"{pid}/{name}", text, proc_fd)


def _write_proc(path: str, text: str, dir_fd: int | None = None) -> None:
    """One write(2), as these files require."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def forbid_nested(proc_fd: int) -> None:
    """No more user namespaces inside the jail: a nested one would hand its creator a full set
    of capabilities (over its own namespaces) again. The limit is per user namespace and covers
    clone, clone3 and unshare alike, in this namespace and all below it (the service's): the jail
    cannot raise it (its /proc/sys is read-only, and a namespace below cannot change ours).
    `proc_fd`: a proc of the jail's pid namespace."""
    _write_proc("sys/user/max_user_namespaces", "0", proc_fd)


def clone_owned_by(uid: int, gid: int, flags: int) -> int:
    """clone(flags) (with CLONE_NEWUSER) as host uid/gid, the jail's own 0, so that its user
    namespace belongs to them and not to root; returns as sc.clone does.

    The kernel charges every per-user count made in a user namespace (inotify instances and
    watches, namespaces, ...) also to the namespace's owner in the parent namespace: owned by
    root, a jail with no capability could exhaust host root's inotify instances. Owned by the
    jail's own uid, it can only exhaust its own. Only the effective ids change, and the
    capabilities are kept meanwhile (SECBIT_NO_SETUID_FIXUP), so the clone is as privileged as
    before; the child inherits no securebit.
    """
    ids = os.getresuid(), os.getresgid()
    bits = sc.prctl(sc.PR_GET_SECUREBITS)
    sc.prctl(sc.PR_SET_SECUREBITS, bits | sc.SECBIT_NO_SETUID_FIXUP)
    try:
        try:
            os.setresgid(-1, gid, -1)
            os.setresuid(-1, uid, -1)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # not mapped here (jailkit inside another user namespace): no id map naming them
            # can be written either, so the launch fails there, before the jail runs
        sc.prctl(sc.PR_SET_SECUREBITS, bits)
        pid = sc.clone(flags)
    except BaseException:
        _restore_ids(*ids, bits)
        raise
    if pid != 0:
        _restore_ids(*ids, bits)
    return pid


def _restore_ids(uids: tuple[int, int, int], gids: tuple[int, int, int], bits: int) -> None:
    os.setresuid(*uids)  # back to euid 0: the effective capabilities come back with it
    os.setresgid(*gids)
    sc.prctl(sc.PR_SET_SECUREBITS, bits)
