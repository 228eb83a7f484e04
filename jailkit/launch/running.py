"""Running jails, by name: list them with their accounting, stop them (`ps`, `stats`, `stop`).

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

STOPPED, KILLED = 0, 1  # `jailkit stop`'s exit status: by its stop signal, or killed at timeout
KILL_WAIT = 10.0  # seconds for the waiter to exit once the whole jail is killed


def running() -> list[dict]:
    registry = Registry(create=False)
    try:
        with registry:
            return registry.running() if registry.fd is not None else []
    finally:
        registry.close()


def find(name: str) -> dict:
    for entry in running():
        if entry.get("name") == name:
            return entry
    names = ", ".join(e.get("name", "?") for e in running()) or "none is running"
    raise JailkitError(f"no running jail is named {name!r} ({names}): see `jailkit ps`")


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


def newest_generation(entry: dict) -> str | None:
    try:
        return os.readlink(f"{entry['dir']}/current")
    except OSError:
        return None


def row(entry: dict, now: float | None = None) -> dict:
    """What `ps` shows of one jail."""
    usage = cgroup.stats(entry.get("cgroups", []))
    newest = newest_generation(entry)
    veth = entry.get("veth")
    return {
        "name": entry["name"], "dir": entry["dir"], "generation": entry["generation"],
        "newer_generation": newest if newest and newest != entry["generation"] else None,
        "pid": entry["pid"], "jail_pid": jail_pid(entry["pid"]),
        "uptime": round((now or time.time()) - entry["started"], 1),
        "memory": usage["memory_current"], "cpu_seconds":
            None if usage["cpu_usec"] is None else round(usage["cpu_usec"] / 1e6, 2),
        "limits": {k: v for k, v in entry.get("limits", {}).items() if v is not None},
        "network": entry.get("network"),
        "address": veth["jail_addr"] if veth else None,
        "published": entry.get("publish", []),
        "detached": bool(entry.get("log")), "log": entry.get("log"),
    }


def stats(entry: dict) -> dict:
    return {"name": entry["name"], **cgroup.stats(entry.get("cgroups", [])),
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
