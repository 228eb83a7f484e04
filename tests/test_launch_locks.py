"""A jail holding CAP_SYS_ADMIN, with the whole mount API let through seccomp, still cannot make
its read-only mounts writable or take them away; and its pid 1 is no host file it could change.

The jail is the root-built one of test_launch.py, launched as root (as `nobody`, with its own
jail, in test_launch_nobody.py). The attacks are a static probe (lock_probe.c) placed in the jail.
"""

import fcntl
import os

import pytest
from conftest import descendants, jailkit_run, run_jailkit, start, stop
from lock_attacks import ATTACKER, ATTACKS, LOCK_PROBE, add_lock_probe, check_attack_failed

pytestmark = pytest.mark.usefixtures("as_root")

@pytest.fixture(scope="module")
def lock_probe(jail):  # noqa: F811
    target = add_lock_probe(jail)
    yield LOCK_PROBE
    target.unlink()


@pytest.mark.parametrize("attack", ATTACKS)
def test_read_only_mounts_are_locked(jail, lock_probe, attack):  # noqa: F811
    result = jailkit_run(jail, lock_probe, *attack.split(), sets=ATTACKER)
    check_attack_failed(result, jail)


def test_pid_1_runs_from_a_sealed_memory_copy(jail):  # noqa: F811
    proc = start(jail, "/bin/sleep", "30")
    try:
        pid1 = list(descendants(proc.pid))[0]
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
