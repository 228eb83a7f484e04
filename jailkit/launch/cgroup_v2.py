"""cgroup v2, the unified hierarchy: one directory per jail, `UNIFIED/jailkit/NAME`.

Limits: memory.max, memory.high, memory.swap.max (0 unless the profile gives swap: a memory
limit the jail can swap past is none), pids.max, cpu.weight, cpu.max, io.bfq.weight — each only
where the hierarchy has that controller, which the parents then delegate (cgroup.subtree_control).
memory, pids and io are delegated even without a limit: their files are the jail's accounting
(memory.current, memory.peak, memory.events, pids.current, io.stat), absent otherwise.
Stopping: cgroup.kill (Linux 5.14) kills every process in the group at once, however it forked.
Tested on a hybrid host (the controller-less unified mount: kill, procs, cpu.stat) and on
Debian 12's kernel booted with cgroup v2 alone, in a VM (tests/test_debian_kernel.py).
"""

import os

from jailkit.errors import JailkitError

ACCOUNTING = {"memory", "pids", "io"}


def group(path: str, limits: dict, unified: str):
    from jailkit.launch.cgroup import Group, bfq_weight, unenforceable

    try:
        with open(f"{unified}/cgroup.controllers") as f:
            available = set(f.read().split())
    except OSError as e:
        raise JailkitError(f"cannot read {unified}/cgroup.controllers: {e.strerror}") from None
    settings, controllers = [], ACCOUNTING & available

    def need(controller: str, key: str) -> None:
        if controller not in available:
            raise unenforceable(key, f"the cgroup v2 hierarchy has no {controller} controller")
        controllers.add(controller)

    memory_max, swap_max = limits.get("memory_max"), limits.get("swap_max")
    for key, file in (("memory_max", "memory.max"), ("memory_high", "memory.high")):
        if limits.get(key) is not None:
            need("memory", key)
            settings.append((file, str(limits[key])))
    if memory_max is not None or swap_max is not None:
        need("memory", "swap_max")
        settings.append(("memory.swap.max", str(swap_max or 0)))
    if limits.get("pids_max") is not None:
        need("pids", "pids_max")
        settings.append(("pids.max", str(limits["pids_max"])))
    if limits.get("cpu_weight") is not None:
        need("cpu", "cpu_weight")
        settings.append(("cpu.weight", str(limits["cpu_weight"])))
    if limits.get("cpu_quota") is not None:
        need("cpu", "cpu_quota")
        settings.append(("cpu.max", f"{limits['cpu_quota'] * 1000} 100000"))
    if limits.get("io_weight") is not None:
        need("io", "io_weight")
        settings.append(("io.bfq.weight", bfq_weight("io_weight", limits["io_weight"])))
    return Group(path, settings, sorted(controllers))


def enable_controllers(parent: str, controllers: tuple[str, ...]) -> None:
    """Delegate `controllers` from the hierarchy's root down to `parent`."""
    wanted = set(controllers)
    if not wanted:
        return
    for directory in (os.path.dirname(parent), parent):
        with open(f"{directory}/cgroup.subtree_control") as f:
            missing = wanted - set(f.read().split())
        if missing:
            with open(f"{directory}/cgroup.subtree_control", "w") as f:
                f.write(" ".join(f"+{c}" for c in sorted(missing)))


def kill(path: str) -> None:
    with open(f"{path}/cgroup.kill", "w") as f:
        f.write("1")


def _fields(path: str) -> dict:
    try:
        with open(path) as f:
            return dict(line.split(None, 1) for line in f if " " in line)
    except OSError:
        return {}


def stats(path: str) -> dict:
    out = {}
    cpu = _fields(f"{path}/cpu.stat")  # present without the cpu controller
    if "usage_usec" in cpu:
        out["cpu_usec"] = int(cpu["usage_usec"])
    for key, file in (("memory_current", "memory.current"), ("memory_peak", "memory.peak"),
                      ("pids", "pids.current")):
        try:
            with open(f"{path}/{file}") as f:
                out[key] = int(f.read())
        except (OSError, ValueError):
            pass
    events = _fields(f"{path}/memory.events")
    if "oom_kill" in events:
        out["oom_kills"] = int(events["oom_kill"])
    try:
        with open(f"{path}/io.stat") as f:
            lines = f.read().splitlines()
        totals = {"rbytes": 0, "wbytes": 0}
        for line in lines:
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key in totals:
                    totals[key] += int(value)
        out["io_read_bytes"], out["io_write_bytes"] = totals["rbytes"], totals["wbytes"]
    except OSError:
        pass
    return out
