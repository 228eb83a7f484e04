"""The jail's cgroup limits in each export format's terms, and what a format cannot carry.

An export carries the effective limits: launch.json's `cgroup`, which `jailkit run` enforces,
i.e. the profile's `[service.limits]` with jailkit's defaults filled in when root built the jail
(memory_max 512m, pids_max 512; none for an ordinary user's build). `run --memory` and the like
change one run only and are not exported.

Weights: jailkit's are cgroup v2's (1-10000, 100 the default), the runtime spec's are v1's
(cpu.shares 2-262144, blkio weight 10-1000), which runc and crun convert back to v2 weights on a
v2 host. A bundle gets the v1 value that converts to the profile's weight: for CPU, runc's
(>= 1.3.2) and crun's log-quadratic mapping, which takes 1024 shares to weight 100 (runc 1.1 on
Debian 12 maps linearly and gives 1024 shares weight 39 on a v2 host; on v1 the shares are
written as they are); for I/O, runc's linear [10, 1000] -> [1, 10000], to the nearest weight.
"""

import math

from jailkit.launch.cgroup import limits_text
from jailkit.launch.cgroup_v1 import CFS_PERIOD_US

MIN_SHARES, MAX_SHARES = 2, 1 << 18
MIN_BLKIO, MAX_BLKIO = 10, 1000
MIB, KIB = 1 << 20, 1 << 10


def cpu_weight_of_shares(shares: int) -> int:
    """cpu.weight for cpu.shares as runc (>= 1.3.2) and crun convert them (their float
    arithmetic: L = log2(shares), weight = ceil(10^((L^2 + 125 L) / 612 - 7/34)))."""
    if shares <= MIN_SHARES:
        return 1
    if shares >= MAX_SHARES:
        return 10000
    log = math.log2(shares)
    return math.ceil(math.pow(10, (log * log + 125 * log) / 612.0 - 7.0 / 34.0))


def shares_for_cpu_weight(weight: int) -> int:
    """The most cpu.shares that convert to `weight` (every weight 1-10000 is reached): where
    the curve meets the weight itself, as 1024 meets 100, the v1 default the v2 one."""
    low, high = MIN_SHARES, MAX_SHARES
    while low < high:  # the conversion only grows with the shares
        middle = (low + high + 1) // 2
        if cpu_weight_of_shares(middle) > weight:
            high = middle - 1
        else:
            low = middle
    return low


def io_weight_of_blkio(blkio: int) -> int:
    """io.weight for a runtime spec blkio weight, as runc converts it on cgroup v2."""
    return 1 + (blkio - MIN_BLKIO) * 9999 // (MAX_BLKIO - MIN_BLKIO)


def blkio_for_io_weight(weight: int) -> int:
    """The blkio weight that converts to the io weight nearest `weight` (the lower on a tie):
    runc's range is ten times coarser."""
    return min(range(MIN_BLKIO, MAX_BLKIO + 1),
               key=lambda b: (abs(io_weight_of_blkio(b) - weight), b))


def cpu_millis(quota: int) -> int:
    """Millicores of a quota in percent of one CPU: 50% is 500m."""
    return quota * 10


def runtime_resources(limits: dict) -> dict:
    """`linux.resources` of a runtime bundle. memory.high has no field of its own (the spec's
    `reservation` is memory.low on v2, a protection, not a ceiling): it goes in `unified`,
    as does swap without a memory limit, which runc refuses on a cgroup v1 host, as `jailkit
    run` refuses both there."""
    memory_max, swap_max = limits.get("memory_max"), limits.get("swap_max")
    resources, memory, unified = {}, {}, {}
    if memory_max:
        # the spec's swap is memory + swap; none unless the profile gives some, as jailkit
        memory = {"limit": memory_max, "swap": memory_max + (swap_max or 0)}
    elif swap_max is not None:
        unified["memory.swap.max"] = str(swap_max)
    if limits.get("memory_high"):
        unified["memory.high"] = str(limits["memory_high"])
    if memory:
        resources["memory"] = memory
    if limits.get("pids_max"):
        resources["pids"] = {"limit": limits["pids_max"]}
    cpu = {}
    if limits.get("cpu_weight"):
        cpu["shares"] = shares_for_cpu_weight(limits["cpu_weight"])
    if limits.get("cpu_quota"):
        cpu |= {"quota": limits["cpu_quota"] * CFS_PERIOD_US // 100, "period": CFS_PERIOD_US}
    if cpu:
        resources["cpu"] = cpu
    if limits.get("io_weight"):
        resources["blockIO"] = {"weight": blkio_for_io_weight(limits["io_weight"])}
    if unified:
        resources["unified"] = unified
    return resources


def runtime_notes(limits: dict) -> list[str]:
    unified = runtime_resources(limits).get("unified")
    if not unified:
        return []
    return [f"the bundle sets {', '.join(sorted(unified))} through linux.resources.unified, "
            "which runc refuses on a cgroup v1 host (as `jailkit run` refuses them there)"]


def pod_resources(limits: dict) -> tuple[dict, list[str]]:
    """(a container's `resources`, notes on what it cannot hold). Requests: memory as much as
    the limit (what the scheduler must find free for the jail); CPU the request whose shares
    the kubelet sets (millicores x 1024 / 1000) equal jailkit's on cgroup v1 (weight x 1024 /
    100), i.e. weight x 10m, at most the CPU limit; without a weight, the CPU limit."""
    resources, notes = {"limits": {}, "requests": {}}, []
    if limits.get("memory_max"):
        resources["limits"]["memory"] = resources["requests"]["memory"] = \
            str(limits["memory_max"])
    quota, weight = limits.get("cpu_quota"), limits.get("cpu_weight")
    if quota:
        resources["limits"]["cpu"] = f"{cpu_millis(quota)}m"
    if weight:
        request = cpu_millis(weight)
        if quota and request > cpu_millis(quota):
            notes.append(f"cpu_weight={weight} would request {request}m of CPU, more than the "
                         f"limit (cpu_quota={quota}%): the request is the limit")
            request = cpu_millis(quota)
        resources["requests"]["cpu"] = f"{request}m"
    elif quota:
        resources["requests"]["cpu"] = resources["limits"]["cpu"]
    lost = {key: limits[key] for key in ("memory_high", "io_weight") if limits.get(key)}
    if limits.get("swap_max"):
        lost["swap_max"] = limits["swap_max"]
    if lost:
        notes.append(f"a Pod has no field for {limits_text(lost)} (Kubernetes sets swap and "
                     "memory.high per node): not carried")
    if limits.get("pids_max"):
        notes.append(f"a Pod has no field for pids_max={limits['pids_max']} (the kubelet's "
                     "podPidsLimit is per node): kept as the annotation jailkit.dev/pids-max "
                     "only")
    return {k: v for k, v in resources.items() if v}, notes


def _size(value: int) -> str:
    for unit, size in (("g", 1 << 30), ("m", MIB), ("k", KIB)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def run_options(limits: dict) -> str:
    """`podman run` options giving a container the same limits (podman converts weights as
    a bundle does)."""
    options = []
    memory_max, swap_max = limits.get("memory_max"), limits.get("swap_max")
    if memory_max:
        options += [f"--memory {_size(memory_max)}",
                    f"--memory-swap {_size(memory_max + (swap_max or 0))}"]
    if limits.get("memory_high"):
        options.append(f"--cgroup-conf memory.high={limits['memory_high']}")
    if limits.get("pids_max"):
        options.append(f"--pids-limit {limits['pids_max']}")
    if limits.get("cpu_weight"):
        options.append(f"--cpu-shares {shares_for_cpu_weight(limits['cpu_weight'])}")
    if limits.get("cpu_quota"):
        options.append(f"--cpus {limits['cpu_quota'] / 100:g}")
    if limits.get("io_weight"):
        options.append(f"--blkio-weight {blkio_for_io_weight(limits['io_weight'])}")
    return " ".join(options)


def image_notes(limits: dict) -> list[str]:
    if not any(limits.get(key) is not None for key in limits):
        return []
    return [f"an OCI image cannot carry cgroup limits ({limits_text(limits)}): give them at run "
            f"time (podman run {run_options(limits)}), or export --format bundle or kube"]
