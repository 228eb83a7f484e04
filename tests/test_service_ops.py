"""Day two, second half: `jailkit logs`, `exec` and `unit`, and /dev/log in every jail, done
the way an administrator does them, on real detached jails (the bundled `shell` profile)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import jailkit_env, run_jailkit

pytestmark = pytest.mark.usefixtures("as_root")

PROFILE = """\
extends = ["shell"]

[service]
command = ["/bin/sh", "-c", "while :; do sleep 1; done"]
"""
PREFIX = f"o{os.getpid()}"


@pytest.fixture(scope="module")
def base():
    base = Path(tempfile.mkdtemp(prefix="jailkit-ops-"))
    base.chmod(0o711)
    (base / "svc.toml").write_text(PROFILE)
    yield base
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def jail(base):
    built = run_jailkit("build", base / "svc.toml", "--root", base / "shell", timeout=120)
    assert built.returncode == 0, built.stderr
    return base / "shell"


@pytest.fixture
def names():
    """Names for this test's jails; whatever still runs at its end is stopped, logs removed."""
    made = []

    def name(suffix: str) -> str:
        made.append(f"{PREFIX}{suffix}")
        return made[-1]

    yield name
    for leftover in made:
        run_jailkit("stop", leftover, "--timeout", "1", timeout=30)
        for log in (f"/run/jailkit/{leftover}.log", f"/run/jailkit/{leftover}.log.1"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log)


def detach(jail: Path, name: str, *command, args=()):
    started = run_jailkit("run", "svc", "--root", jail, "--name", name, "--detach", *args,
                          *(("--", *command) if command else ()), timeout=60)
    assert started.returncode == 0, started.stderr


def wait_for(predicate, seconds=10.0, what="the jail"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def jailkit_popen(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jailkit", *map(str, args)],
                            env=jailkit_env(), **kwargs)


def is_stamped(line: str) -> bool:
    stamp = line.split(" ", 1)[0]
    return len(stamp) == 24 and stamp[10] == "T" and stamp.endswith("Z") and stamp[:4].isdigit()


# --- jailkit logs ---------------------------------------------------------------------------

def test_logs_shows_a_detached_jails_output_timestamped_and_its_last_lines(jail, names):
    name = names("logs")
    detach(jail, name, "/bin/sh", "-c", "echo one; echo two >&2; echo three; sleep 600")
    log = Path(f"/run/jailkit/{name}.log")
    wait_for(lambda: log.exists() and log.read_text().endswith(" three\n"), what="its output")
    shown = run_jailkit("logs", name, timeout=30)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["one", "two", "three"]
    assert all(map(is_stamped, lines))
    last = run_jailkit("logs", name, "-n", "2", timeout=30)
    assert [line.split(" ", 1)[1] for line in last.stdout.splitlines()] == ["two", "three"]
    # kept after the jail ends
    assert run_jailkit("stop", name, timeout=30).returncode == 0
    assert run_jailkit("logs", name, "-n", "1", timeout=30).stdout.endswith(" three\n")


def test_logs_follows_across_rotation_without_losing_a_line(jail, names):
    name = names("follow")
    # ~3 MiB against the 1 MiB cap, at ~1 MiB/s (a follower looking 5 times a second cannot
    # miss a whole file): rotated three times while it is followed
    count = 24000
    chatty = (f"sleep 1; i=0; while [ $i -lt {count} ]; do echo line $i {'x' * 90}; "
              "i=$((i+1)); [ $((i % 1000)) = 0 ] && sleep 0.1; done; echo done; sleep 600")
    detach(jail, name, "/bin/sh", "-c", chatty)
    follower = jailkit_popen("logs", name, "-f", stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 120
        for line in follower.stdout:
            seen.append(line)
            if line.endswith(" done\n") or time.monotonic() > deadline:
                break
        assert Path(f"/run/jailkit/{name}.log.1").exists()  # it did rotate
        numbers = [int(line.split()[2]) for line in seen if " line " in line]
        assert numbers == list(range(count)), "lines lost or repeated across the rotation"
        # it stops when interrupted: no traceback
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 130
        assert "Traceback" not in follower.stderr.read()
    finally:
        follower.kill()
        follower.wait()


def test_logs_follow_ends_with_the_jail(jail, names):
    name = names("ends")
    detach(jail, name, "/bin/sh", "-c", "echo started; sleep 600")
    follower = jailkit_popen("logs", name, "--follow", stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout.readline().endswith(" started\n")
        assert run_jailkit("stop", name, timeout=30).returncode == 0
        assert follower.wait(10) == 0
        assert f"{name} has ended" in follower.stderr.read()
    finally:
        follower.kill()
        follower.wait()


def test_logs_of_an_unknown_name_is_one_line_naming_ps(names):
    shown = run_jailkit("logs", names("nosuch"), timeout=30)
    assert shown.returncode == 2 and shown.stdout == ""
    assert shown.stderr.count("\n") == 1 and "jailkit ps" in shown.stderr
    # a name that is no name never becomes a path
    shown = run_jailkit("logs", "../../etc/passwd", timeout=30)
    assert shown.returncode == 2 and shown.stdout == "" and shown.stderr.count("\n") == 1
