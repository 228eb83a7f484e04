"""`jailkit exec NAME -- CMD`: a command in a running jail, as confined as its service.

The command joins the service's namespaces (its own user and mount namespaces, nested in pid
1's, and the jail's pid, ipc, uts, net and cgroup namespaces) with one setns(2) on a pidfd of
the service, after joining the jail's cgroups (so `jailkit stop` ends it too, and its memory is
the jail's). Then, in the order the service followed (contain.py): a new session and keyring,
the profile's rlimits, no_new_privs, a Landlock domain with the service's rules (a new domain:
a process cannot join another's, so signals and abstract sockets of the service are out of its
reach, which only narrows it), the profile's capabilities in every set and the service's user
(or --user), its workdir and environment, and seccomp last.

The caller's terminal never enters the jail: as for `jailkit run`, a pty stands in for it
(stdio.py), relayed by the reaper's `wait` mode, which this process execs; on a terminal the
pty is the command's controlling terminal, with the caller's window size, and the caller's
terminal is raw while it runs. That waiter stays in the jail's namespaces but outside its pid
namespace (no process of the jail can name it), holding CAP_KILL alone (to signal a command
that switched user).

Nothing may be imported from the jail's tree once its mount namespace is joined: every module
the command's setup needs is imported before the setns.
"""

import os

from jailkit.errors import JailkitError
from jailkit.launch import caps, landlock, rlimits, running, seccomp
from jailkit.launch import syscalls as sc
from jailkit.launch.contain import _close_fds, exec_command, report_and_exit
from jailkit.launch.jail import BENEATH, DIR_FLAGS
from jailkit.launch.plan import reaper_path
from jailkit.launch.stdio import Stdio

NAMESPACES = (("user", sc.CLONE_NEWUSER), ("mnt", sc.CLONE_NEWNS), ("pid", sc.CLONE_NEWPID),
              ("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS), ("net", sc.CLONE_NEWNET),
              ("cgroup", sc.CLONE_NEWCGROUP))
CAP_KILL = 5
FAILED = 125  # the command never ran: jailkit failed (as podman exec; 126, 127: its exec did)


def launch_spec(entry: dict):
    """The spec the jail runs under: its generation's launch.json with the `run` options it
    was started with (the registry keeps them for `restart`)."""
    from jailkit.cli.run import apply_sets, limit_sets, parse
    from jailkit.launch.jsonload import loads
    from jailkit.launch.spec import LaunchSpec

    shown = f"{entry['dir']}/{entry['generation']}/launch.json"
    try:
        dir_fd = os.open(entry["dir"], DIR_FLAGS)
        try:
            fd = sc.openat2(dir_fd, f"{entry['generation']}/launch.json", os.O_RDONLY, BENEATH)
        finally:
            os.close(dir_fd)
        with open(fd, "rb") as f:
            raw = loads(f.read().decode())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise JailkitError(f"{shown}: cannot read it ({e}): the jail's directory changed since "
                           f"it started; restart it: jailkit restart {entry['name']}") from None
    opts = parse([entry.get("profile") or "jail", *entry.get("restart", [])])
    raw = apply_sets(raw, [*opts.sets, *limit_sets(opts.limits)])
    return LaunchSpec.from_dict(raw)


def _differs(kind: str, pid: int) -> bool:
    return os.stat(f"/proc/self/ns/{kind}").st_ino != os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def _user_ids(user: str | None, spec) -> tuple[int, int, list[int]]:
    """--user NAME or UID, from the jail's own /etc/passwd (read once inside it)."""
    if user is None:
        return spec.uid, spec.gid, spec.groups
    try:
        with open("/etc/passwd") as f:
            rows = [line.split(":") for line in f if line.count(":") >= 6]
    except OSError:
        rows = []
    for row in rows:
        if user in (row[0], row[2]):
            return int(row[2]), int(row[3]), []
    if user.isdigit():
        return int(user), int(user), []
    raise JailkitError(f"--user {user}: no such user in the jail's /etc/passwd: give a "
                       "number, or one of its users")


def attach(name: str, command: list[str], user: str | None, interactive: bool) -> None:
    """Start `command` in the jail NAME and exec the waiter; returns only by raising."""
    entry = running.find(name)
    spec = launch_spec(entry)
    cap_mask = caps.mask(spec.capabilities)
    ruleset = landlock.Ruleset(spec.network, spec.ports["bind"], spec.ports["connect"],
                               sc.landlock_abi())
    service, pidfd = running.service_pidfd(name)
    with open(f"/proc/{service}/setgroups") as f:
        allow_setgroups = f.read().strip() == "allow"
    flags = 0
    for kind, flag in NAMESPACES:
        if _differs(kind, service):  # a host network is the host's own: nothing to join
            flags |= flag
    reaper_fd = os.open(reaper_path(), os.O_RDONLY | os.O_CLOEXEC)
    stdio = Stdio(interactive)
    stdio.open()
    sc.block_signals()  # pending until the waiter takes (and forwards) them
    for group in entry.get("cgroups", []):
        with open(f"{group}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
    try:
        sc.setns(pidfd, flags)
    except OSError as e:
        raise JailkitError(f"cannot enter the jail {name}: {e}") from None
    os.close(pidfd)
    # from here, the filesystem is the jail's
    child = os.fork()  # the first process that is in the jail's pid namespace
    if child == 0:
        report_and_exit(lambda: _confine(spec, command, user, cap_mask, ruleset,
                                         allow_setgroups, stdio), "entering the jail", FAILED)
    # the waiter: CAP_KILL alone, nothing of the caller's but what it relays
    caps.drop_bounding(1 << CAP_KILL)
    sc.capset(1 << CAP_KILL, 1 << CAP_KILL, 0)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    argv = ["jailkit-exec", "wait", str(child), *stdio.waiter_args()]
    _close_fds({reaper_fd, *(fd for fd in (stdio.master, stdio.log_r) if fd is not None)})
    sc.execveat(reaper_fd, argv, {})


def _confine(spec, command, user, cap_mask, ruleset, allow_setgroups, stdio) -> None:
    os.setsid()  # not the caller's session: its terminal is out of reach (TIOCSTI)
    sc.join_session_keyring()  # not the caller's keys
    stdio.attach()
    stdio.own_session()  # on a terminal, the jail's pty becomes this session's (stdio.py)
    rlimits.apply(spec.rlimits)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    landlock.restrict(ruleset)
    uid, gid, groups = _user_ids(user, spec)
    caps.drop_bounding(cap_mask)
    caps.switch_user(uid, gid, groups if allow_setgroups else [], cap_mask, allow_setgroups)
    try:
        os.chdir(spec.workdir)
    except OSError:
        os.chdir("/")
    _close_fds(set())
    sc.unblock_signals()
    seccomp.install(spec.seccomp_allow)
    exec_command(command, spec.env)
