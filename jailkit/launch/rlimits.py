"""Resource limits from the profile, set just before the service starts (they are inherited)."""

import resource

RLIMITS = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": 10,  # RLIMIT_LOCKS: not exported by the resource module
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}


def apply(limits: dict[str, tuple[int | None, int | None]]) -> None:
    """Set each (soft, hard) pair; None means unlimited. Raising a hard limit fails (EPERM)."""
    for name, (soft, hard) in limits.items():
        unlimited = resource.RLIM_INFINITY
        soft = unlimited if soft is None else soft
        resource.setrlimit(RLIMITS[name], (soft, unlimited if hard is None else hard))
