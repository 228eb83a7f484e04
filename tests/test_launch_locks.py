"""A jail holding CAP_SYS_ADMIN, with the whole mount API let through seccomp, still cannot make
its read-only mounts writable or take them away; and its pid 1 is no host file it could change.

The jail is the root-built one of test_launch.py, launched as root and as `nobody`. The attacks
are a static probe (lock_probe.c) placed in the jail.
"""

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, run_jailkit
from test_launch import descendants, jail, jailkit_run, start, stop  # noqa: F401 (jail: fixture)
from test_launch_nobody import NOBODY, as_nobody, nobody_run

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


@pytest.fixture(scope="module")
def lock_probe(jail):  # noqa: F811
    target = jail / "current" / "root" / LOCK_PROBE.lstrip("/")
    subprocess.run(["gcc", "-static", "-O1", "-o", target, REPO / "tests/lock_probe.c"],
                   check=True)
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


@pytest.mark.parametrize("attack", ATTACKS)
def test_read_only_mounts_are_locked_for_an_ordinary_user(world_readable_checkout, jail,  # noqa: F811
                                                          lock_probe, attack):
    result = nobody_run(world_readable_checkout, jail, lock_probe, *attack.split(),
                        sets=ATTACKER)
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


@pytest.fixture
def own_install(world_readable_checkout):
    """jailkit as an ordinary user installs it: an interpreter and a reaper beside it that the
    user owns (so a jail that reached the reaper file could chmod it)."""
    prefix = Path(tempfile.mkdtemp(prefix="jailkit-prefix-"))
    prefix.chmod(0o755)
    (prefix / "bin").mkdir()
    (prefix / "bin" / "python").symlink_to("/usr/bin/python3")
    reaper = prefix / "libexec" / "jailkit" / "jailkit-reaper"
    reaper.parent.mkdir(parents=True)
    shutil.copy("/opt/jailkit/libexec/jailkit/jailkit-reaper", reaper)
    os.chown(reaper, NOBODY, NOBODY)
    reaper.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix)


def test_pid_1_executable_cannot_be_changed_from_the_jail(own_install, world_readable_checkout,
                                                          jail, lock_probe):  # noqa: F811
    reaper = own_install / "libexec" / "jailkit" / "jailkit-reaper"
    before = reaper.stat()
    result = subprocess.run(
        [own_install / "bin" / "python", "-m", "jailkit", "run", "shell", "--root", jail,
         "--set", f"capabilities={PID1_REACH}", "--set", f"dangerous_capabilities={PID1_REACH}",
         "--",
         lock_probe, "pid1-exe"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout)},
        preexec_fn=as_nobody, capture_output=True, text=True, timeout=60, cwd="/",
    )
    done = steps(result.stdout)
    assert "readlink" in done, result.stderr
    after = reaper.stat()
    assert (after.st_mode, after.st_uid, after.st_size) == (before.st_mode, before.st_uid,
                                                            before.st_size)
    assert done["fchmod" if "fchmod" in done else "open-read"] != "ok"
    assert done["chmod"] != "ok" and done["open-write"] != "ok"
    link = done["readlink"]
    assert not link.startswith("/") or link.startswith("/memfd:jailkit-reaper"), link
