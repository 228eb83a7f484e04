"""A jail's control groups: its limits, its accounting, and stopping every process of it.

Two hierarchies behind one interface (`plan`, `create`, `attach`, `remove`, `remove_stale`,
`kill`, `stats`): cgroup_v2.py (the unified hierarchy) first, cgroup_v1.py for controllers a
host mounts only there. A hybrid host (these machines: v1 controllers, and an empty v2 mount at
/sys/fs/cgroup/unified) puts the jail into a unified group too, without controllers: its
cgroup.kill, cgroup.procs and cpu.stat stop, list and time the whole jail — every process,
double-forked daemons included — where v1 has no such file (only freeze-and-kill).

Every group of a jail is `jailkit/NAME`, NAME the jail's name in the registry of running jails
(registry.py: unique while it runs), so a group that a killed launcher left behind is found by
name, and removed, by the next start of that jail or by `jailkit ps`. It sits at the top of each
hierarchy, except on cgroup v2 alone when root's launcher runs in a group delegated to it (a
systemd unit with Delegate=yes, as `jailkit unit` writes: systemd marks the unit's group with the
xattr trusted.delegate=1): then it is `UNIT/jailkit/NAME`, so that the unit's accounting, limits,
`systemctl status` and stop cover the jail, and the launcher moves itself (and whatever else is
in UNIT) into the leaf `UNIT/supervisor` first: a group with processes cannot delegate
controllers to its children (v2's "no internal processes" rule). The registry records where.
Groups are made before the jail's first process exists and joined by it before it starts
anything; the jail then enters its own cgroup namespace (it sees its group as /). The waiter
removes them when the jail exits.
"""

import errno
import os
import time

from jailkit.errors import JailkitError
from jailkit.launch import cgroup_v1, cgroup_v2

CGROUP_ROOT = "/sys/fs/cgroup"
PARENT = "jailkit"
LIMIT_KEYS = ("memory_max", "memory_high", "swap_max", "pids_max", "cpu_weight", "cpu_quota",
              "io_weight")
SUPERVISOR = "supervisor"  # a delegated group's leaf for the launcher (then waiter) and the rest
DELEGATE_XATTR = "trusted.delegate"
# `jailkit run` options for the limits, named in errors so the fix names what the user typed
RUN_OPTIONS = {"memory_max": "--memory", "pids_max": "--pids", "cpu_weight": "--cpu-weight",
               "cpu_quota": "--cpu-quota", "io_weight": "--io-weight"}


class Group:
    """One directory for one jail, with the files to write into it, in order, and (cgroup v2)
    the controllers its parents delegate to it."""

    __slots__ = ("path", "settings", "controllers", "delegated")

    def __init__(self, path: str, settings: list[tuple[str, str]], controllers=(),
                 delegated: str | None = None):
        self.path, self.settings, self.controllers = path, settings, tuple(controllers)
        self.delegated = delegated  # the delegated group it is made in (vacated first), or None

    def __repr__(self) -> str:
        return f"{self.path} " + " ".join(f"{k}={v}" for k, v in self.settings)


class Host:
    """Where this host's hierarchies are: `unified` (the v2 mount, or None) and `v2_only`
    (the unified mount is /sys/fs/cgroup itself, holding the controllers)."""

    __slots__ = ("unified", "v2_only")

    def __init__(self, root: str = CGROUP_ROOT):
        if os.path.exists(f"{root}/cgroup.controllers"):
            self.unified, self.v2_only = root, True
        elif os.path.exists(f"{root}/unified/cgroup.controllers"):
            self.unified, self.v2_only = f"{root}/unified", False
        else:
            self.unified, self.v2_only = None, False


def unenforceable(key: str, why: str) -> JailkitError:
    option = RUN_OPTIONS.get(key)
    leave_out = f"leave {option} out, or " if option else ""
    return JailkitError(f"this host cannot enforce cgroup.{key}: {why}: {leave_out}"
                        f"--set cgroup.{key}=null (or drop it from the profile's "
                        "[service.limits])")


def bfq_weight(key: str, weight: int) -> str:
    """`weight` (1-10000) as bfq takes it (1-1000), once a disk uses bfq: only that I/O
    scheduler honours a cgroup's weight, on v1 (blkio.bfq.weight) and v2 (io.bfq.weight; v2's
    io.weight is the iocost controller's, which no disk enables unless told)."""
    if not _bfq_disk():
        raise unenforceable(key, "no disk uses the bfq I/O scheduler, the only one that "
                                 "honours I/O weights (modprobe bfq; echo bfq > "
                                 "/sys/block/DISK/queue/scheduler)")
    return str(min(weight, 1000))


def _bfq_disk() -> bool:
    try:
        disks = os.listdir("/sys/block")
    except OSError:
        return False
    for disk in disks:
        try:
            with open(f"/sys/block/{disk}/queue/scheduler") as f:
                if "[bfq]" in f.read():
                    return True
        except OSError:
            continue
    return False


def needs_root(asked: list[str], typed: tuple = ()) -> JailkitError:
    """The refusal of limits `asked` (LIMIT_KEYS) to an ordinary user, naming what works:
    root, or the run without them (the `run` options in `typed`, else their launch.json keys).
    A cgroup that systemd delegates to the user (`systemd-run --user -p Delegate=yes`) is no
    fix: the jail's groups are `jailkit/NAME` at the top of each hierarchy (plan), root's, not
    below the caller's own group (and systemd delegates only cgroup v2 controllers to users)."""
    options = [RUN_OPTIONS[key] for key in asked if key in typed and key in RUN_OPTIONS]
    sets = [f"--set cgroup.{key}=null" for key in asked
            if key not in typed or key not in RUN_OPTIONS]
    without = " and ".join(filter(None, [", ".join(options) and f"leave out {', '.join(options)}",
                                         " ".join(sets)]))
    return JailkitError(f"cgroup limits ({', '.join(asked)}) need root: jailkit makes the "
                        f"jail's cgroups in {CGROUP_ROOT}, which only root can write: run as "
                        f"root, or run without them: {without}")


def delegated(host: Host) -> str | None:
    """The cgroup v2 group delegated to this process, root's (systemd's Delegate=yes: the xattr
    trusted.delegate=1, which only root can set), or None: the group it is in, or that group's
    parent when it is a SUPERVISOR leaf (a second jail started by the same unit)."""
    if not host.v2_only or os.geteuid() != 0:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            own = next((line[3:].strip() for line in f if line.startswith("0::")), "/")
    except OSError:
        return None
    path = host.unified + own.rstrip("/")
    for candidate in (path, os.path.dirname(path)) if own.endswith(f"/{SUPERVISOR}") else (path,):
        if candidate == host.unified:
            break
        try:
            if os.getxattr(candidate, DELEGATE_XATTR, follow_symlinks=False) == b"1":
                return candidate
        except OSError:  # no such xattr: not delegated
            continue
    return None


def plan(name: str, limits: dict, root: str = CGROUP_ROOT) -> list[Group]:
    """The jail's groups, with their limits (`limits`: LIMIT_KEYS -> int or None; cpu_quota in
    percent of one CPU). A limit this host cannot enforce is refused, naming the fix."""
    host = Host(root)
    if host.v2_only:
        unit = delegated(host)
        base = unit or host.unified  # its controllers are what the jail's group may have
        group = cgroup_v2.group(f"{base}/{PARENT}/{name}", limits, base)
        group.delegated = unit
        return [group]
    groups = cgroup_v1.groups(root, f"{PARENT}/{name}", limits, with_kill=host.unified is None)
    if host.unified:  # no controllers there: only to kill, list and time the whole jail
        groups.insert(0, Group(f"{host.unified}/{PARENT}/{name}", []))
    return groups


def candidates(name: str, root: str = CGROUP_ROOT) -> list[str]:
    """Every directory a jail named `name` may have (made or not)."""
    host = Host(root)
    paths = [f"{host.unified}/{PARENT}/{name}"] if host.unified else []
    unit = delegated(host)
    if unit:
        paths.append(f"{unit}/{PARENT}/{name}")
    if not host.v2_only:
        paths += [f"{root}/{c}/{PARENT}/{name}" for c in cgroup_v1.CONTROLLERS]
    return paths


def create(groups: list[Group]) -> None:
    made, current = [], ""
    try:
        for group in groups:
            current = group.path
            parent = os.path.dirname(group.path)
            parent_fd = _made_dir(os.path.dirname(parent), os.path.basename(parent), True)
            try:
                if group.path.startswith(CGROUP_ROOT + "/") and os.path.exists(
                        f"{parent}/cgroup.subtree_control"):
                    _enable_controllers(parent, group)
                group_fd = _made_dir(parent_fd, os.path.basename(group.path), False)
            finally:
                os.close(parent_fd)
            made.append(group)
            try:
                for key, value in group.settings:
                    fd = os.open(key, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=group_fd)
                    try:
                        os.write(fd, value.encode())
                    finally:
                        os.close(fd)
            finally:
                os.close(group_fd)
    except OSError as e:
        remove([g.path for g in made])
        if e.errno == errno.EEXIST:
            raise JailkitError(f"cgroup {current} exists: a jail of that name is still "
                               "running or stopping: see `jailkit ps`") from None
        hint = " (cgroups need root)" if os.geteuid() != 0 else ""
        raise JailkitError(f"cannot set up cgroup {current}: {e.strerror}{hint}") from None


def _enable_controllers(parent: str, group: Group) -> None:
    if not group.delegated:
        cgroup_v2.enable_controllers(parent, group.controllers)
        return
    for attempt in range(3):
        _vacate(group.delegated)
        try:
            cgroup_v2.enable_controllers(parent, group.controllers)
            return
        except OSError as e:  # EBUSY: the `prime` helper moved itself back meanwhile
            if e.errno != errno.EBUSY or attempt == 2:
                raise


def _vacate(delegated: str) -> None:
    """Move every process in `delegated` (this launcher, its `prime` helper, what else the unit
    started) into its leaf SUPERVISOR, so that `delegated` may delegate controllers."""
    leaf_fd = _made_dir(delegated, SUPERVISOR, True)
    try:
        for _ in range(100):  # bounded: a process of the unit may fork meanwhile
            left = procs(delegated)
            if not left:
                return
            for pid in left:
                fd = os.open("cgroup.procs", os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=leaf_fd)
                try:
                    os.write(fd, str(pid).encode())
                except ProcessLookupError:
                    pass  # it ended
                finally:
                    os.close(fd)
    finally:
        os.close(leaf_fd)
    raise OSError(errno.EBUSY, f"processes keep appearing in {delegated}")


def _made_dir(where, name: str, exist_ok: bool) -> int:
    """mkdir `name` in `where` (a path or a descriptor), then its descriptor: never through a
    symlink, so that nothing planted where root makes a jail's group steers root's writes."""
    at = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if isinstance(where, str) \
        else where
    try:
        try:
            os.mkdir(name, dir_fd=at)
        except FileExistsError:
            if not exist_ok:
                raise
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=at)
    finally:
        if at is not where:
            os.close(at)


def prime(reaper: str) -> None:
    """Have the kernel's wait before the jail's first cgroup move (reaper.c, `prime`) begin now,
    in a process of its own, while this one still plans; the waiter reaps it."""
    try:
        os.posix_spawn(reaper, ["jailkit-reaper", "prime"], {})
    except OSError:
        pass  # only time is lost: attach() then waits itself


def attach(groups: list[Group], pid: int) -> None:
    for group in groups:
        with open(f"{group.path}/cgroup.procs", "w") as f:
            f.write(str(pid))


def remove(paths: list[str], seconds: float = 2.0) -> None:
    """rmdir each; a group is busy for a moment after its last process exits (bounded)."""
    deadline = time.monotonic() + seconds
    for path in paths:
        while True:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                raise JailkitError(f"cannot remove cgroup {path}: {e.strerror}") from None
            break


def procs(path: str) -> list[int]:
    try:
        with open(f"{path}/cgroup.procs") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def remove_stale(name: str, root: str = CGROUP_ROOT) -> list[str]:
    """Remove the groups of a jail named `name` that no running jail holds (left by a launcher
    that was killed); refused while one still has processes. Returns those removed."""
    stale = [p for p in candidates(name, root) if os.path.isdir(p)]
    for path in stale:
        if procs(path):
            raise JailkitError(
                f"cgroup {path} still holds processes of a jail named {name} that jailkit's "
                f"registry does not know: end them (pids in {path}/cgroup.procs) or pick "
                "another --name")
    remove(stale)
    return stale


def kill(paths: list[str]) -> bool:
    """SIGKILL every process of the jail at once: cgroup.kill on the unified hierarchy, else
    freeze (no process can fork meanwhile), kill each, thaw. False if no group can."""
    for path in paths:
        if os.path.exists(f"{path}/cgroup.kill"):
            cgroup_v2.kill(path)
            return True
    for path in paths:
        if os.path.exists(f"{path}/freezer.state"):
            cgroup_v1.freeze_and_kill(path)
            return True
    return False


def stats(paths: list[str]) -> dict:
    """Accounting of the jail: memory_current, memory_peak, cpu_usec, pids, oom_kills,
    io_read_bytes, io_write_bytes; None where this host does not count it."""
    found = dict.fromkeys(("memory_current", "memory_peak", "cpu_usec", "pids", "oom_kills",
                           "io_read_bytes", "io_write_bytes"))
    for path in paths:
        reader = cgroup_v2 if os.path.exists(f"{path}/cgroup.events") else cgroup_v1
        for key, value in reader.stats(path).items():
            if found[key] is None:
                found[key] = value
    return found


def limits_text(limits: dict) -> str:
    """`memory_max=64M pids_max=32 cpu_quota=50%` for people."""
    shown = []
    for key in LIMIT_KEYS:
        value = limits.get(key)
        if value is None:
            continue
        if key in ("memory_max", "memory_high", "swap_max"):
            value = human_bytes(value)
        elif key == "cpu_quota":
            value = f"{value}%"
        shown.append(f"{key}={value}")
    return " ".join(shown) or "-"


def human_bytes(value: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if value >= 1 << shift and value % (1 << shift) == 0 or value >= 10 << shift:
            number = value / (1 << shift)
            return f"{number:.0f}{unit}" if number == int(number) else f"{number:.1f}{unit}"
    return str(value)
