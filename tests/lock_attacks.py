"""The attacks on kernel-locked mounts and on pid 1's executable, shared by the root and the
`nobody` launch tests: a static probe (lock_probe.c) placed in a jail tries each."""

import subprocess
from pathlib import Path

from conftest import REPO

LOCK_PROBE = "/usr/bin/jklocks"
PLANTED = "jk-planted"  # what an attack tries to create on the host's copy of the jail
MOUNT_API = ["mount", "umount2", "mount_setattr", "open_tree", "move_mount", "fsopen",
             "fsconfig", "fsmount", "fspick", "pivot_root"]
ATTACKER = ['capabilities=["CAP_SYS_ADMIN"]', 'dangerous_capabilities=["CAP_SYS_ADMIN"]',
            f"seccomp_allow={MOUNT_API!r}".replace("'", '"')]

ATTACKS = [
    "remount / " + PLANTED,
    "setattr / " + PLANTED,
    "clone " + PLANTED,
    "clone-attr " + PLANTED,
    "remount /proc/sys x",
    "setattr /proc/sys x",
    "remount /dev x",
    "umount /proc/sys",
    "umount /dev",
]
# what let a service reach /proc/1/exe before pid 1 had a user namespace of its own
PID1_REACH = '["CAP_SYS_PTRACE", "CAP_KILL", "CAP_SETPCAP"]'
# steps that must never succeed: each one would make a mount writable, or reveal what is below
FORBIDDEN = {"remount", "setattr", "open_tree_attr", "write", "setuid", "umount", "umount-detach"}


def add_lock_probe(jail_dir: Path) -> Path:
    target = jail_dir / "current" / "root" / LOCK_PROBE.lstrip("/")
    subprocess.run(["gcc", "-static", "-O1", "-o", target, REPO / "tests/lock_probe.c"],
                   check=True)
    return target


def steps(output: str) -> dict[str, str]:
    """The probe's lines, step -> "ok" or the error."""
    return dict(line.split(" ", 1) for line in output.splitlines())


def check_attack_failed(result, jail_dir: Path) -> None:
    planted = jail_dir / "current" / "root" / PLANTED
    try:
        assert not planted.exists(), "the attack wrote a file onto the host's disk"
    finally:
        planted.unlink(missing_ok=True)  # before the fix: a setuid file owned by host root
    done = steps(result.stdout)
    assert done, result.stderr  # the probe ran and reported
    succeeded = {step for step, outcome in done.items() if outcome == "ok"} & FORBIDDEN
    assert not succeeded, result.stdout
