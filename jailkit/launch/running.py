"""Running jails, by name: list them with their accounting, signal and stop them (`ps`,
`stats`, `kill`, `stop`, `restart`).

Everything starts from the registry (registry.py), under its lock, so the entries of jails whose
waiter was killed are cleaned (their cgroups, then the entry) by whichever command comes next.
A jail is signalled through a pidfd of its waiter taken while its entry is locked (alive), so a
pid reused after the jail ended is never signalled.
"""

import os
import select
import signal
import time

from jailkit.errors import JailkitError
from jailkit.launch import cgroup
from jailkit.launch.registry import Registry
from jailkit.vocabulary import check_name

STOPPED, KILLED = 0, 1  # `jailkit stop`'s exit status: by its stop signal, or killed at timeout
NOT_RUNNING = 3  # the exit status of `stop`, `kill`, `restart` and `stats` for a NAME none runs as
KILL_WAIT = 10.0  # seconds for the waiter to exit once the whole jail is killed


def running() -> list[dict]:
    registry = Registry(create=False)
    try:
        with registry:
            return registry.running() if registry.fd is not None else []
    finally:
        registry.close()


class NotRunning(JailkitError):
    exit_code = NOT_RUNNING


def find(name: str) -> dict:
    """The entry of the running jail NAME (dead entries are cleaned on the way)."""
    for entry in running():
        if entry.get("name") == name:
            return entry
    if _has_log(name):
        raise NotRunning(f"{name} is not running (it ended; what it said last: jailkit logs "
                         f"{name})")
    names = ", ".join(e.get("name", "?") for e in running()) or "none is running"
    raise NotRunning(f"no running jail is named {name!r} ({names}): see `jailkit ps`")


def _has_log(name: str) -> bool:
    """Whether a detached jail of that name ran (its log is kept after it ends)."""
    try:
        check_name(name, "NAME")
    except JailkitError:
        return False  # no name: never a path
    registry = Registry(create=False)
    try:
        if registry.fd is None:
            return False
        os.stat(f"{name}.log", dir_fd=registry.fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    finally:
        registry.close()


def nspid(pid: int) -> list[str]:
    """Its pid in each pid namespace it is in, outermost first (world-readable, unlike ns/)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
    except OSError:
        return []


def jail_pid(waiter: int) -> int | None:
    """The jail's pid 1: the waiter's child that is pid 1 of a pid namespace below the waiter's
    (its other children, the launcher's `prime` process and the published ports' relay, are
    in the waiter's own)."""
    try:
        with open(f"/proc/{waiter}/task/{waiter}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    depth = len(nspid(waiter))
    for child in children:
        pids = nspid(int(child))
        if depth and len(pids) == depth + 1 and pids[-1] == "1":
            return int(child)
    return None


def service_pid(entry: dict) -> int:
    """The service: the child pid 1 adopted (`jailkit-reaper adopt STOPSIG PID`, PID in the
    jail's pid namespace: 2, or 3 where pid 1 ran `ip` first to set up a veth)."""
    init = jail_pid(entry["pid"])
    if init:
        try:
            with open(f"/proc/{init}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{init}/task/{init}/children") as f:
                children = f.read().split()
        except OSError:
            argv, children = [], []
        adopted = argv[3].decode() if len(argv) > 3 and argv[1] == b"adopt" else None
        for child in children:
            pids = nspid(int(child))
            if adopted and pids and pids[-1] == adopted:
                return int(child)
    raise JailkitError(f"{entry['name']}: its service is not running (starting or ending): "
                       "see `jailkit ps`")


def service_pidfd(name: str) -> tuple[int, int]:
    """(pid, pidfd) of the service of the running jail NAME, checked to be its service still
    once the pidfd is open (a pid reused meanwhile is never taken)."""
    service = service_pid(find(name))
    try:
        pidfd = os.pidfd_open(service)
    except ProcessLookupError:
        raise JailkitError(f"{name} ended meanwhile: see `jailkit ps`") from None
    if service_pid(find(name)) != service:
        os.close(pidfd)
        raise JailkitError(f"{name} ended meanwhile: see `jailkit ps`")
    return service, pidfd


def kill(name: str, signum: int) -> int:
    """Send `signum` to the service of the jail NAME itself, not through its pid 1 (which
    turns SIGTERM into the profile's stop signal, and could not pass SIGKILL on); its pid."""
    service, pidfd = service_pidfd(name)
    try:
        signal.pidfd_send_signal(pidfd, signum)
    finally:
        os.close(pidfd)
    return service


def systemd_unit(pid: int) -> tuple[str, bool] | None:
    """The systemd service (`NAME.service`) whose cgroup holds process `pid`, and whether a
    user's manager runs it (systemd's own hierarchy: name=systemd on a v1 or hybrid host, else
    the unified one); None for a process no service holds (a login session's)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            paths = {fields[1]: fields[2] for fields in
                     (line.rstrip("\n").split(":", 2) for line in f) if len(fields) == 3}
    except OSError:
        return None
    path = paths.get("name=systemd", paths.get(""))
    unit = (path or "").rsplit("/", 1)[-1]
    if not unit.endswith(".service") or unit.startswith("user@"):  # a user's manager itself
        return None
    return unit, "/user@" in path


def proc_usage(waiter: int) -> dict:
    """What a jail without cgroups (an ordinary user's) uses, as its processes count it in
    /proc: memory_current, the sum of their PSS (each one's RSS where its smaps_rollup cannot
    be read); cpu_usec, their CPU time with that of the children they waited for (pid 1 waits
    for every orphan, so little of a finished process is lost); pids, their threads. Empty when
    the jail's pid 1 is gone."""
    pid_1 = jail_pid(waiter)
    todo = [pid_1] if pid_1 else []
    memory = ticks = tasks = 0
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # ended meanwhile
        ticks += sum(int(field) for field in fields[11:15])  # utime stime cutime cstime
        memory += _memory(pid)
        tasks += len(threads)
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(child) for child in f.read().split()]
            except OSError:
                pass
    if not tasks:
        return {}
    return {"memory_current": memory, "cpu_usec": ticks * 1_000_000 // os.sysconf("SC_CLK_TCK"),
            "pids": tasks}


def _memory(pid: int) -> int:
    """Bytes of one process: its PSS (smaps_rollup: readable by the jail's owner, whose user
    namespace it runs in), else its RSS (status: readable by all)."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return 0


def usage(entry: dict) -> dict:
    """cgroup.stats of the jail, or for a jail without cgroups what its processes count."""
    found = cgroup.stats(entry.get("cgroups", []))
    if not entry.get("cgroups"):
        found.update(proc_usage(entry["pid"]))
    return found


def newest_generation(entry: dict) -> str | None:
    try:
        return os.readlink(f"{entry['dir']}/current")
    except OSError:
        return None


def row(entry: dict, now: float | None = None) -> dict:
    """What `ps` shows of one jail."""
    used = usage(entry)
    newest = newest_generation(entry)
    veth = entry.get("veth")
    return {
        "name": entry["name"], "dir": entry["dir"], "generation": entry["generation"],
        "newer_generation": newest if newest and newest != entry["generation"] else None,
        "pid": entry["pid"], "jail_pid": jail_pid(entry["pid"]),
        "uptime": round((now or time.time()) - entry["started"], 1),
        "memory": used["memory_current"], "cpu_seconds":
            None if used["cpu_usec"] is None else round(used["cpu_usec"] / 1e6, 2),
        "limits": {k: v for k, v in entry.get("limits", {}).items() if v is not None},
        "network": entry.get("network"),
        "address": veth["jail_addr"] if veth else None,
        "published": entry.get("publish", []),
        "detached": bool(entry.get("log")), "log": entry.get("log"),
    }


def stats(entry: dict) -> dict:
    return {"name": entry["name"], **usage(entry),
            "limits": {k: v for k, v in entry.get("limits", {}).items() if v is not None}}


def _wait(pidfd: int, seconds: float) -> bool:
    """Whether the process exited within `seconds`."""
    ready, _, _ = select.select([pidfd], [], [], max(0.0, seconds))
    return bool(ready)


def stop(entry: dict, timeout: float) -> int:
    """The stop signal (SIGTERM to the waiter, which pid 1 turns into the profile's), then,
    after `timeout` seconds, SIGKILL to every process of the jail at once. Returns STOPPED or
    KILLED once the waiter has exited (and removed the jail's cgroups and entry)."""
    name = entry["name"]
    try:
        pidfd = os.pidfd_open(entry["pid"])
    except ProcessLookupError:
        return STOPPED
    try:
        again = [e for e in running() if e.get("name") == name]
        if not again or again[0].get("pid") != entry["pid"]:
            return STOPPED  # ended meanwhile: the pidfd may be of another process
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if _wait(pidfd, timeout):
            result = STOPPED
        else:
            result = KILLED
            if not cgroup.kill(entry.get("cgroups", [])):
                # no cgroup (an ordinary user's jail): pid 1's death ends its pid namespace
                child = jail_pid(entry["pid"])
                if child:
                    child_fd = os.pidfd_open(child)
                    if jail_pid(entry["pid"]) == child:
                        signal.pidfd_send_signal(child_fd, signal.SIGKILL)
                    os.close(child_fd)
            if not _wait(pidfd, KILL_WAIT):
                raise JailkitError(f"{name}: its waiter (pid {entry['pid']}) did not exit "
                                   f"{KILL_WAIT:.0f} s after the jail was killed")
    finally:
        os.close(pidfd)
    running()  # cleans the entry, should the waiter not have
    return result
