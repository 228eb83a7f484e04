"""cgroup v1: one directory per controller, `/sys/fs/cgroup/CONTROLLER/jailkit/NAME`.

Limits in v1's terms (v2's weights and percentages converted): memory.limit_in_bytes (and, with
swap accounting, memory.memsw.limit_in_bytes = memory + swap, else the jail just swaps),
pids.max, cpu.shares (weight 100 = 1024 shares) with cpu.cfs_quota_us, blkio.bfq.weight. v1 has
no memory.high: a profile that asks for it is refused here rather than silently unbounded.
memory, pids and blkio groups are made for accounting even without a limit; freezer (and
cpuacct, for CPU time) only on a host without a unified hierarchy, whose cgroup.kill and
cpu.stat serve otherwise.
"""

import os
import time

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "blkio", "freezer")
CFS_PERIOD_US = 100_000


def _has(root: str, controller: str) -> bool:
    return os.path.exists(f"{root}/{controller}/cgroup.procs")


def groups(root: str, leaf: str, limits: dict, with_kill: bool) -> list:
    from jailkit.launch.cgroup import Group, bfq_weight, unenforceable

    out = []
    memory_max, swap_max = limits.get("memory_max"), limits.get("swap_max")
    if limits.get("memory_high") is not None:
        raise unenforceable("memory_high", "cgroup v1's memory controller has no soft ceiling "
                                           "(memory.high is cgroup v2's); use memory_max")
    if _has(root, "memory"):
        settings = []
        if memory_max is not None:
            settings.append(("memory.limit_in_bytes", str(memory_max)))
            if os.path.exists(f"{root}/memory/memory.memsw.limit_in_bytes"):
                settings.append(("memory.memsw.limit_in_bytes",
                                 str(memory_max + (swap_max or 0))))
            elif swap_max is not None:
                raise unenforceable("swap_max", "the kernel has no swap accounting "
                                                "(boot with swapaccount=1)")
        elif swap_max is not None:
            raise unenforceable("swap_max", "on cgroup v1 swap is limited together with "
                                            "memory: give memory_max too")
        out.append(Group(f"{root}/memory/{leaf}", settings))
    elif memory_max is not None or swap_max is not None:
        raise unenforceable("memory_max", "no memory controller is mounted")
    if _has(root, "pids"):
        pids = limits.get("pids_max")
        out.append(Group(f"{root}/pids/{leaf}", [] if pids is None else [("pids.max", str(pids))]))
    elif limits.get("pids_max") is not None:
        raise unenforceable("pids_max", "no pids controller is mounted")
    cpu = []
    if limits.get("cpu_weight") is not None:
        cpu.append(("cpu.shares", str(max(2, limits["cpu_weight"] * 1024 // 100))))
    if limits.get("cpu_quota") is not None:
        cpu += [("cpu.cfs_period_us", str(CFS_PERIOD_US)),
                ("cpu.cfs_quota_us", str(limits["cpu_quota"] * CFS_PERIOD_US // 100))]
    if cpu:
        if not _has(root, "cpu"):
            raise unenforceable("cpu_weight" if limits.get("cpu_weight") else "cpu_quota",
                                "no cpu controller is mounted")
        out.append(Group(f"{root}/cpu/{leaf}", cpu))
    weight = limits.get("io_weight")
    blkio = []
    if weight is not None:
        if not os.path.exists(f"{root}/blkio/blkio.bfq.io_service_bytes"):
            raise unenforceable("io_weight", "the blkio controller has no BFQ weights here "
                                             "(modprobe bfq)")
        blkio.append(("blkio.bfq.weight", bfq_weight("io_weight", weight)))
    if _has(root, "blkio"):
        out.append(Group(f"{root}/blkio/{leaf}", blkio))
    if with_kill:
        out += [Group(f"{root}/{c}/{leaf}", []) for c in ("freezer", "cpuacct") if _has(root, c)]
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def stats(path: str) -> dict:
    controller = os.path.basename(os.path.dirname(os.path.dirname(path)))
    out = {}
    if controller == "memory":
        for key, name in (("memory_current", "usage_in_bytes"),
                          ("memory_peak", "max_usage_in_bytes")):
            text = _read(f"{path}/memory.{name}")
            if text is not None:
                out[key] = int(text)
        # failcnt stays 0 when memsw is limited: the kill count is the one to trust
        text = _read(f"{path}/memory.oom_control")
        if text is not None:
            fields = dict(line.split() for line in text.splitlines() if line)
            out["oom_kills"] = int(fields.get("oom_kill", 0))
    elif controller == "pids":
        text = _read(f"{path}/pids.current")
        if text is not None:
            out["pids"] = int(text)
    elif controller == "cpuacct":
        text = _read(f"{path}/cpuacct.usage")
        if text is not None:
            out["cpu_usec"] = int(text) // 1000
    elif controller == "blkio":
        text = _read(f"{path}/blkio.throttle.io_service_bytes_recursive")
        if text is not None:
            totals = {"Read": 0, "Write": 0}
            for line in text.splitlines():
                fields = line.split()
                if len(fields) == 3 and fields[1] in totals:
                    totals[fields[1]] += int(fields[2])
            out["io_read_bytes"], out["io_write_bytes"] = totals["Read"], totals["Write"]
    return out


def freeze_and_kill(path: str, seconds: float = 5.0) -> None:
    """v1 has no cgroup.kill: freeze the group so that nothing in it forks while its
    processes are killed one by one, then thaw it so that the kills are delivered."""
    with open(f"{path}/freezer.state", "w") as f:
        f.write("FROZEN")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(f"{path}/freezer.state") as f:
            if f.read().strip() == "FROZEN":
                break
        time.sleep(0.01)
    from jailkit.launch.cgroup import procs

    for pid in procs(path):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    with open(f"{path}/freezer.state", "w") as f:
        f.write("THAWED")
