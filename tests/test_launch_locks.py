"""A jail holding CAP_SYS_ADMIN, with the whole mount API let through seccomp, still cannot make
its read-only mounts writable or take them away; and its pid 1 is no host file it could change.

The jail is the root-built one of test_launch.py, launched as root (as `nobody`, with its own
jail, in test_launch_nobody.py). The attacks are a static probe (lock_probe.c) placed in the jail.
"""

import fcntl
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_jailkit
from test_launch import descendants, jail, jailkit_run, start, stop  # noqa: F401 (jail: fixture)

pytestmark = pytest.mark.usefixtures("as_root")

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


@pytest.fixture(scope="module")
def lock_probe(jail):  # noqa: F811
    target = add_lock_probe(jail)
    yield LOCK_PROBE
    target.unlink()


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


@pytest.mark.parametrize("attack", ATTACKS)
def test_read_only_mounts_are_locked(jail, lock_probe, attack):  # noqa: F811
    result = jailkit_run(jail, lock_probe, *attack.split(), sets=ATTACKER)
    check_attack_failed(result, jail)


def test_pid_1_runs_from_a_sealed_memory_copy(jail):  # noqa: F811
    proc = start(jail, "/bin/sleep", "30")
    try:
        pid1 = descendants(proc.pid)[0]
        assert os.readlink(f"/proc/{pid1}/exe").startswith("/memfd:jailkit-reaper")
        fd = os.open(f"/proc/{pid1}/exe", os.O_RDONLY)
        try:  # no one can write, grow, shrink it or change its seals
            assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == (
                fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        finally:
            os.close(fd)
    finally:
        stop(proc)


def test_a_jail_without_proc_still_starts(jail):  # noqa: F811
    # pid 1 writes the service's id maps through a proc of its own, which the service never sees
    result = jailkit_run(jail, "/bin/sh", "-c", "ls -A /proc; echo $$", sets=["mount_proc=false"])
    assert result.stdout == "2\n", result.stderr


def test_dry_run_says_the_mounts_are_locked(jail):  # noqa: F811
    result = run_jailkit("run", "shell", "--root", jail, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "nested in pid 1's" in result.stdout and "locked    every mount" in result.stdout
    assert "sealed memory copy" in result.stdout
