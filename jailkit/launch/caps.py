"""Capabilities: keep only the ones the profile lists, in every set, for whatever user runs.

Order matters (measured, docs/kernel-notes.md): the bounding set is dropped first, while
CAP_SETPCAP is still held; then the ids change; then capset; then ambient, which is how a
non-root service user keeps a capability across exec.
"""

import os

from jailkit.launch import syscalls as sc
from jailkit.vocabulary import CAPABILITIES


def mask(names: list[str]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << CAPABILITIES[name]
    return bits


_last_cap = None


def last_cap() -> int:
    global _last_cap
    if _last_cap is None:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            _last_cap = int(f.read())
    return _last_cap


def drop_bounding(keep: int) -> None:
    for cap in range(last_cap() + 1):
        if not keep & (1 << cap):
            sc.prctl(sc.PR_CAPBSET_DROP, cap)


def switch_user(uid: int, gid: int, groups: list[int], keep: int, setgroups: bool) -> None:
    """Become the service user, keeping exactly the capabilities in `keep` across its exec.
    `setgroups` is False in a namespace where setgroups(2) is denied (then groups is empty)."""
    if setgroups:
        os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    if uid != 0 and keep:
        sc.prctl(sc.PR_SET_KEEPCAPS, 1)  # else setresuid to non-zero empties the permitted set
    os.setresuid(uid, uid, uid)
    # Inheritable must hold a cap before it can be made ambient.
    sc.capset(keep, keep, keep if uid != 0 else 0)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    if uid != 0:
        for cap in range(last_cap() + 1):
            if keep & (1 << cap):
                sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, cap)
        sc.prctl(sc.PR_SET_KEEPCAPS, 0)
