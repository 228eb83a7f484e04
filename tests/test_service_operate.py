"""Day two: jails run as services, the way an administrator runs them.

`jailkit run --detach`, `ps`, `stats`, `stop`, `restart` on real jails (the bundled `shell`
profile with a small static probe added, service_probe.c), under pressure: a memory hog, a fork
flood, two CPU-bound jails, a service that ignores SIGTERM, a double-forking daemon, a killed
waiter, many start/stop cycles. Every wait is bounded, even where the limit under test is broken.
"""

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_jailkit, traversable_dir, wait_for

pytestmark = pytest.mark.usefixtures("as_root")

PROBE = "/usr/bin/service_probe"
PROFILE = """\
extends = ["shell"]

[variables]
motd = "one"

[templates."/etc/motd"]
text = "{{ motd }}"

[service]
command = ["/bin/sh", "-c", "while :; do sleep 1; done"]
"""
PREFIX = "t"  # names of this module's jails: PREFIX, the session's pid, a word


def build(base: Path, name: str, *sets) -> Path:
    built = run_jailkit("build", base / "svc.toml", "--root", base / name,
                        *(arg for s in sets for arg in ("--set", s)), timeout=120)
    assert built.returncode == 0, built.stderr
    root = base / name / "current" / "root"
    shutil.copy(base / "service_probe", root / PROBE.lstrip("/"))
    return base / name


@pytest.fixture(scope="module")
def base():
    with traversable_dir("jailkit-operate-") as base:
        (base / "svc.toml").write_text(PROFILE)
        subprocess.run(["gcc", "-static", "-O1", "-o", base / "service_probe",
                        REPO / "tests/service_probe.c"], check=True)
        yield base


@pytest.fixture(scope="module")
def jail_a(base):
    return build(base, "a")


@pytest.fixture(scope="module")
def jail_b(base):
    return build(base, "b")


def ps() -> dict:
    listed = run_jailkit("ps", "--json", timeout=30)
    assert listed.returncode == 0, listed.stderr
    return {row["name"]: row for row in json.loads(listed.stdout)}


def stats(name: str) -> dict:
    shown = run_jailkit("stats", name, "--json", timeout=30)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def cgroup_dirs(name: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/jailkit/{name}")


def jail_processes(name: str) -> list[int]:
    with contextlib.suppress(FileNotFoundError), \
            open(f"/sys/fs/cgroup/unified/jailkit/{name}/cgroup.procs") as f:
        return [int(p) for p in f.read().split()]
    return []


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except (FileNotFoundError, ProcessLookupError):  # gone before or while reading
            pass
    return out


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def detach(jail: Path, name: str, *args, command=(), prefix=(), **kwargs):
    argv = ["run", "svc", "--root", jail, "--name", name, "--detach", *args]
    if command:
        argv += ["--", *command]
    if prefix:  # e.g. nsenter into a test's network namespace
        import sys

        return subprocess.run([*prefix, sys.executable, "-m", "jailkit", *map(str, argv)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, **kwargs)
    return run_jailkit(*argv, timeout=60, **kwargs)


def started(jail: Path, name: str, *args, **kwargs) -> dict:
    result = detach(jail, name, *args, **kwargs)
    assert result.returncode == 0, result.stderr
    assert f"jailkit stop {name}" in result.stdout
    return ps()[name]


def test_ps_lists_a_detached_jail_with_its_address_limits_and_usage(jail_a, names, netns):
    name = names("ps")
    enter = ["nsenter", f"--net=/proc/{netns}/ns/net", "--"]
    row = started(jail_a, name, "--net", "veth", "--memory", "64M", "--pids", "32",
                  "--cpu-weight", "400", prefix=enter)
    assert row["dir"] == str(jail_a) and row["generation"] == "gen-1"
    assert row["newer_generation"] is None and row["detached"]
    assert row["network"] == "veth" and row["address"].startswith("10.213.")
    assert row["limits"] == {"memory_max": 64 << 20, "pids_max": 32, "cpu_weight": 400}
    assert row["memory"] > 0 and row["cpu_seconds"] is not None and row["uptime"] >= 0
    table = run_jailkit("ps", timeout=30).stdout
    line = next(line for line in table.splitlines() if line.startswith(name + " "))
    assert row["address"] in line and "memory_max=64M" in line and str(jail_a) in line
    # its cgroups are named from the jail, and the jail sees its own as /
    assert sorted(cgroup_dirs(name)) and all(p.endswith(f"/jailkit/{name}")
                                             for p in cgroup_dirs(name))
    with open(f"/proc/{row['jail_pid']}/cgroup") as f:
        assert "0::/jailkit/" + name in f.read()  # from the host
    assert run_jailkit("stop", name, timeout=30).returncode == 0
    assert name not in ps() and not cgroup_dirs(name)
    assert not subprocess.run([*enter, "ip", "-o", "link"], capture_output=True,
                              text=True).stdout.count("jk")


def test_the_jail_sees_its_cgroup_as_root(jail_b, names):
    inside = run_jailkit("run", "svc", "--root", jail_b, "--name", names("cg"), "--",
                         "/bin/cat", "/proc/self/cgroup", timeout=60)
    assert inside.returncode == 0, inside.stderr
    assert "0::/\n" in inside.stdout and "memory:/\n" in inside.stdout


def test_a_second_run_of_one_jail_is_refused_naming_the_running_pid(jail_a, jail_b, names):
    first = started(jail_a, names("one"))
    again = run_jailkit("run", "svc", "--root", jail_a, "--", "/bin/true", timeout=60)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and f"(pid {first['pid']})" in again.stderr
    assert f"jailkit stop {first['name']}" in again.stderr
    taken = detach(jail_b, first["name"])
    assert taken.returncode == 2 and "pick another --name" in taken.stderr
    assert taken.stderr.count("\n") == 1


def test_detach_returns_once_the_ready_port_answers(jail_b, names):
    name, port = names("ready"), 18600 + os.getpid() % 300
    begin = time.monotonic()
    started(jail_b, name, "--net", "host", "--set", f"ready={{\"tcp\": {port}, \"timeout\": 10}}",
            "--set", f"ports.bind=[{port}]",
            command=[PROBE, "listen", str(port), "1000"])
    assert time.monotonic() - begin >= 0.9  # it waited for the service to listen
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    log = Path(f"/run/jailkit/{name}.log").read_text()
    assert log.endswith(" listening\n") and log[:4].isdigit() and "T" in log.split()[0]


def test_detach_gives_up_on_a_service_that_never_answers(jail_b, names):
    name, port = names("never"), 18900 + os.getpid() % 90
    begin = time.monotonic()
    result = detach(jail_b, name, "--net", "host", "--set",
                    f"ready={{\"tcp\": {port}, \"timeout\": 2}}")
    assert result.returncode == 1 and 2 <= time.monotonic() - begin < 20
    assert f"did not answer on 127.0.0.1:{port} within 2 s" in result.stderr
    assert name in ps()  # it keeps running, for the administrator to look at


def test_a_detached_jail_that_fails_to_start_is_reported_with_its_log(jail_b, names):
    name = names("fail")
    result = detach(jail_b, name, command=["/bin/sh", "-c", "echo before dying; exit 3"])
    assert result.returncode in (0, 3)  # it may exit before or after the start is seen
    if result.returncode == 3:
        assert "before dying" in result.stderr
    wait_for(lambda: name not in ps(), what="the jail's end")
    assert not cgroup_dirs(name)


TWO_CHILDREN = """
import ctypes, os, sys, time
os.posix_spawn("/bin/sleep", ["sleep", "30"], {})  # first, in our own pid namespace
if ctypes.CDLL(None, use_errno=True).unshare(0x20000000):  # CLONE_NEWPID: for the next child
    sys.exit("unshare failed")
os.posix_spawn("/bin/sleep", ["sleep", "30"], {})  # pid 1 of a namespace of its own
print("ready", flush=True)
time.sleep(30)
"""


DYING = 'command=["/bin/sh", "-c", "echo dying >&2; exit 3"]'


def test_a_service_failing_at_once_ends_its_error_with_the_doctor_hint(jail_b, names):
    """The profile's service exits at once: the last line of a foreground run says how and
    names `jailkit doctor`, the command that explains it; a detached start's report ends with
    the same; a command given after `--` exits as it likes, with no hint."""
    hint = f"to see why: jailkit doctor svc --root {jail_b}"
    result = run_jailkit("run", "svc", "--root", jail_b, "--set", DYING, timeout=60)
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert lines[0] == "dying" and len(lines) == 2, result.stderr
    assert lines[-1].startswith("jailkit: ") and "status 3" in lines[-1], result.stderr
    assert lines[-1].endswith(hint), result.stderr
    result = run_jailkit("run", "svc", "--root", jail_b, "--", "/bin/sh", "-c", "exit 3",
                         timeout=60)
    assert (result.returncode, result.stderr) == (3, "")
    name = names("dies")
    result = detach(jail_b, name, "--net", "host", "--set", 'ready={"tcp": 9, "timeout": 20}',
                    "--set", DYING)
    assert result.returncode == 3 and "dying" in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == f"jailkit: {hint}", result.stderr
    wait_for(lambda: name not in ps(), what="the jail's end")


def test_a_service_stopped_by_its_caller_gets_no_doctor_hint(jail_b):
    trapping = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jailkit", "run", "svc", "--root", jail_b, "--set",
         f'command=["/bin/sh", "-c", "{trapping}"]'],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 42
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_jails_pid_1_is_the_waiters_child_in_a_pid_namespace_below_it():
    """A waiter has other children than the jail (the launcher's `prime` process, listed
    first while it lives; the published ports' relay): ps, stop, exec and a detached start must
    take the one that is pid 1 of a namespace below, not the first listed."""
    from jailkit.launch.running import jail_pid

    parent = subprocess.Popen([sys.executable, "-c", TWO_CHILDREN], stdout=subprocess.PIPE,
                              text=True)
    children = []
    try:
        assert parent.stdout.readline() == "ready\n"
        with open(f"/proc/{parent.pid}/task/{parent.pid}/children") as f:
            children = [int(child) for child in f.read().split()]
        assert len(children) == 2 and jail_pid(parent.pid) == children[1]
    finally:
        for child in children:
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_a_jail_failing_in_its_setup_is_reported_with_its_log(jail_b, names):
    """pid 1 fails before the service exists (its /dev mount point is gone): the jail is over
    before the start is seen; the reason is one line, and its log is still named."""
    name = names("setup")
    dev = jail_b / "current/root/dev"
    dev.rmdir()
    try:
        result = detach(jail_b, name)
    finally:
        dev.mkdir(0o755)
    assert result.returncode == 2, result.stderr
    assert f"the end of its log /run/jailkit/{name}.log:" in result.stderr
    assert "the jail has no directory /dev to mount on" in result.stderr


def test_stop_ends_a_service_gracefully(jail_a, names):
    name = names("graceful")
    started(jail_a, name)
    begin = time.monotonic()
    stopped = run_jailkit("stop", name, timeout=30)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert time.monotonic() - begin < 5
    assert name not in ps() and not cgroup_dirs(name)
    assert not os.path.exists(f"/run/jailkit/{name}.json")


def test_a_service_ignoring_sigterm_is_killed_at_the_stop_timeout(jail_a, names):
    name = names("stubborn")
    started(jail_a, name, command=["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
    processes = wait_for(lambda: len(jail_processes(name)) >= 3 and jail_processes(name))
    begin = time.monotonic()
    stopped = run_jailkit("stop", name, "--timeout", "2", timeout=60)
    took = time.monotonic() - begin
    assert stopped.returncode == 1, stopped.stderr
    assert "did not stop within 2 s: killed" in stopped.stderr
    assert 2 <= took < 15
    assert not alive(processes) and not cgroup_dirs(name) and name not in ps()


def test_stop_kills_a_daemon_that_double_forked(jail_a, names):
    name = names("daemon")
    # the daemon leaves its parent (orphaned to the jail's pid 1) and ignores every stop signal
    daemon = "(sh -c 'trap \"\" TERM HUP INT; while :; do sleep 1; done' &) ; " \
             "trap '' TERM; while :; do sleep 1; done"
    started(jail_a, name, command=["/bin/sh", "-c", daemon])
    processes = wait_for(lambda: len(jail_processes(name)) >= 5 and jail_processes(name))
    stopped = run_jailkit("stop", name, "--timeout", "1", timeout=60)
    assert stopped.returncode == 1, stopped.stderr
    assert not alive(processes) and not cgroup_dirs(name)


def test_stop_of_a_jail_that_is_not_running_is_one_line_and_status_3(jail_a, names):
    never = run_jailkit("stop", names("never-ran"), timeout=30)
    assert never.returncode == 3 and never.stderr.count("\n") == 1, never.stderr
    assert "no running jail is named" in never.stderr and "jailkit ps" in never.stderr
    # one whose waiter was killed: its entry is stale until this stop cleans it
    name = names("stale")
    row = started(jail_a, name)
    processes = wait_for(lambda: len(jail_processes(name)) >= 3 and jail_processes(name))
    os.kill(row["pid"], signal.SIGKILL)
    wait_for(lambda: not alive([row["pid"], *processes]), what="the jail's death")
    stale = run_jailkit("stop", name, timeout=30)
    assert stale.returncode == 3 and stale.stderr.count("\n") == 1, stale.stderr
    assert f"{name} is not running" in stale.stderr
    assert f"jailkit logs {name}" in stale.stderr  # it ran: its log is kept
    assert name not in ps() and not cgroup_dirs(name)
    assert not os.path.exists(f"/run/jailkit/{name}.json")
    # and again, now that nothing is left of it
    assert run_jailkit("stop", name, timeout=30).returncode == 3


def test_kill_sends_a_signal_to_the_service_and_by_default_kills_it(jail_a, names):
    name = names("kill")
    started(jail_a, name, command=["/bin/sh", "-c", "trap 'echo got USR1' USR1; echo up; "
                                   "while :; do sleep 1; done"])
    log = Path(f"/run/jailkit/{name}.log")
    wait_for(lambda: " up\n" in log.read_text(), what="the service's start")
    for count, signal_name in enumerate(("USR1", "sigusr1", "SIGUSR1", "10"), 1):
        sent = run_jailkit("kill", name, "--signal", signal_name, timeout=30)
        assert sent.returncode == 0 and sent.stderr.count("\n") == 1, sent.stderr
        assert f"SIGUSR1 sent to the service of {name}" in sent.stderr
        # one at a time: a signal sent while the same one is pending would merge with it
        wait_for(lambda count=count: log.read_text().count("got USR1") == count,
                 what="the service's trap")
    assert name in ps()
    processes = jail_processes(name)
    killed = run_jailkit("kill", name, timeout=30)  # SIGKILL, as podman kill
    assert killed.returncode == 0 and f"SIGKILL sent to the service of {name}" in killed.stderr
    wait_for(lambda: name not in ps(), what="the jail's end")
    assert not alive(processes) and not cgroup_dirs(name)
    assert log.read_text().splitlines()[-1].endswith(
        " jailkit: the service was killed by signal SIGKILL")


def test_kill_of_an_unknown_name_or_signal_is_one_line(jail_a, names):
    name = names("killbad")
    started(jail_a, name)
    for bad in ("SIGBOGUS", "0", "65", "-9", ""):
        refused = run_jailkit("kill", name, "--signal", bad, timeout=30)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "e.g. TERM, HUP, USR1, KILL or 15" in refused.stderr, refused.stderr
    assert name in ps()
    unknown = run_jailkit("kill", names("nobody-runs-this"), timeout=30)
    assert unknown.returncode == 3 and unknown.stderr.count("\n") == 1
    assert "jailkit ps" in unknown.stderr


def test_stats_watch_ends_on_ctrl_c_with_130_and_no_traceback(jail_a, names):
    name = names("watch")
    started(jail_a, name)
    watcher = subprocess.Popen([sys.executable, "-m", "jailkit", "stats", name, "--watch"],
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2):  # two rounds: it is in its loop
            while not watcher.stdout.readline().startswith("  limits"):
                pass
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 130
        assert watcher.stderr.read() == ""
    finally:
        watcher.kill()
        watcher.wait()


def test_kill_9_of_the_waiter_leaves_nothing_once_the_next_command_ran(jail_a, names):
    name = names("killed")
    for round_ in range(2):  # the second start reuses the name: no "File exists"
        row = started(jail_a, name)
        processes = wait_for(lambda: len(jail_processes(name)) >= 3 and jail_processes(name))
        os.kill(row["pid"], signal.SIGKILL)
        gone = [row["pid"], *processes]
        wait_for(lambda gone=gone: not alive(gone), what="the jail's death")
        assert cgroup_dirs(name)  # the waiter did not live to remove them
        assert name not in ps(), round_  # the next command cleans up
        assert not cgroup_dirs(name) and not os.path.exists(f"/run/jailkit/{name}.json")
        assert not mounts_under(jail_a)


def test_a_memory_hog_is_oom_killed_in_its_cgroup_while_another_jail_carries_on(
        jail_a, jail_b, names):
    hog, bystander = names("hog"), names("bystander")
    started(jail_b, bystander, "--memory", "64M")
    started(jail_a, hog, "--memory", "64M",
            command=["/bin/sh", "-c", f"{PROBE} hog 400; echo hog ended $?; sleep 600"])
    log = Path(f"/run/jailkit/{hog}.log")
    wait_for(lambda: "hog ended" in log.read_text(), 30, "the hog's end")
    assert "hog ended 137" in log.read_text()  # SIGKILL by the OOM killer
    assert "hogged" not in log.read_text()
    counted = stats(hog)
    assert counted["oom_kills"] >= 1 and counted["memory_peak"] <= 64 << 20
    assert stats(bystander)["oom_kills"] == 0
    rows = ps()
    assert hog in rows and bystander in rows  # both jails still run
    shown = run_jailkit("stats", hog, timeout=30).stdout
    assert "oom kills 1" in shown or "oom kills" in shown and counted["oom_kills"] >= 1


def test_a_service_the_oom_killer_killed_says_so_last_in_its_log(jail_a, names):
    name = names("oom")
    # the service itself is the hog (exec), once the start was seen
    started(jail_a, name, "--memory", "32M",
            command=["/bin/sh", "-c", f"echo hogging; sleep 1; exec {PROBE} hog 400"])
    wait_for(lambda: name not in ps(), 30, "the hog's end")
    lines = Path(f"/run/jailkit/{name}.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "hogging", "jailkit: the service was killed by the kernel's OOM killer (out of memory "
                   "in the jail's cgroup)"]
    assert not cgroup_dirs(name)


def test_a_fork_flood_stops_at_pids_max(jail_a, names):
    name = names("flood")
    # dash gives up at the first fork that fails; the outer shell then forks no more
    flood = "sh -c 'i=0; while [ $i -lt 100 ]; do sleep 600 & i=$((i+1)); done'; " \
            "echo forked; exec sleep 600"
    started(jail_a, name, "--pids", "32", command=["/bin/sh", "-c", flood])
    log = Path(f"/run/jailkit/{name}.log")
    wait_for(lambda: "forked" in log.read_text(), 30, "the flood's end")
    assert "fork" in log.read_text().lower()  # dash: "Cannot fork"
    counted = stats(name)
    assert counted["pids"] <= 32
    assert len(jail_processes(name)) <= 32


def _busy(jail: Path, name: str, weight: int) -> None:
    def on_cpu_0():
        os.sched_setaffinity(0, {0})

    result = detach(jail, name, "--cpu-weight", str(weight),
                    command=["/bin/sh", "-c", "while :; do :; done"], preexec_fn=on_cpu_0)
    assert result.returncode == 0, result.stderr


def test_cpu_weights_share_one_cpu_about_one_to_four(jail_a, jail_b, names):
    light, heavy = names("light"), names("heavy")
    _busy(jail_a, light, 100)
    _busy(jail_b, heavy, 400)
    time.sleep(0.5)
    before = {n: stats(n)["cpu_usec"] for n in (light, heavy)}
    time.sleep(4)
    used = {n: stats(n)["cpu_usec"] - before[n] for n in (light, heavy)}
    ratio = used[heavy] / max(used[light], 1)
    assert 2.5 <= ratio <= 6, (used, ratio)


def test_bad_input_is_one_line_naming_the_fix(jail_a, names):
    cases = [
        (["run", "svc", "--root", jail_a, "--cpu-quota", "5o%", "--", "/bin/true"],
         "--cpu-quota '5o%': expected a percentage of one CPU such as 50%"),
        (["run", "svc", "--root", jail_a, "--memory", "64X", "--", "/bin/true"],
         "--memory '64X': expected a size such as 64M"),
        (["run", "svc", "--root", jail_a, "--io-weight", "100", "--", "/bin/true"],
         "leave --io-weight out"),
        (["run", "svc", "--root", jail_a, "--set", "cgroup.memory_high=64M", "--", "/bin/true"],
         "cannot enforce cgroup.memory_high"),
        (["run", "svc", "--root", jail_a, "--name", "../x", "--", "/bin/true"],
         "a jail name is"),
        (["stop", names("nobody-runs-this")], "no running jail is named"),
        (["stats", names("nor-this")], "see `jailkit ps`"),
    ]
    for args, expected in cases:
        result = run_jailkit(*args, timeout=60)
        assert result.returncode != 0, args
        assert result.stderr.count("\n") == 1 and expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_restart_starts_the_newest_generation_with_the_same_name_and_options(base, names):
    jail = build(base, "restartable")
    name = names("restart")
    first = started(jail, name, "--memory", "48M",
                    command=["/bin/sh", "-c", "cat /etc/motd; while :; do sleep 1; done"])
    build(base, "restartable", "motd=two")
    assert ps()[name]["newer_generation"] == "gen-2"
    assert "gen-1 < gen-2" in run_jailkit("ps", timeout=30).stdout
    restarted = run_jailkit("restart", name, timeout=60)
    assert restarted.returncode == 0, restarted.stderr
    row = ps()[name]
    assert row["pid"] != first["pid"] and row["generation"] == "gen-2"
    assert row["newer_generation"] is None and row["limits"]["memory_max"] == 48 << 20
    log = Path(f"/run/jailkit/{name}.log")
    wait_for(lambda: "two" in log.read_text())


def test_restart_refuses_what_it_could_not_start_again_and_keeps_it_running(base, names):
    jail = build(base, "unrestartable")
    name = names("norestart")
    first = started(jail, name)
    moved = base / "unrestartable-moved"
    jail.rename(moved)  # the jail directory is gone
    try:
        refused = run_jailkit("restart", name, timeout=60)
    finally:
        moved.rename(jail)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"cannot restart {name} (it keeps running): no jail is built in {jail}" \
        in refused.stderr
    assert ps()[name]["pid"] == first["pid"]
    # its newest generation cannot run
    build(base, "unrestartable", "motd=two")
    (jail / "gen-2/launch.json").write_text("{")
    refused = run_jailkit("restart", name, timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"cannot restart {name} (it keeps running): {jail}/gen-2/launch.json is not valid " \
        "JSON" in refused.stderr
    assert ps()[name]["pid"] == first["pid"]


def test_a_restart_whose_start_fails_says_how_to_start_it_again(base, names):
    import shlex

    jail = build(base, "restartfail")
    name, port = names("refail"), 19100 + os.getpid() % 200
    command = ["/bin/sh", "-c", f"[ -e /etc/fail-now ] && {{ echo refusing; exit 3; }}; "
                                f"exec {PROBE} listen {port} 0"]
    options = ["--net", "host", "--set", f'ready={{"tcp": {port}, "timeout": 20}}',
               "--set", f"ports.bind=[{port}]"]
    started(jail, name, *options, command=command)
    fail_now = jail / "current/root/etc/fail-now"
    fail_now.touch()  # the next start of its service fails
    try:
        restarted = run_jailkit("restart", name, timeout=90)
    finally:
        fail_now.unlink()
    assert restarted.returncode == 3, restarted.stderr
    assert "refusing" in restarted.stderr and name not in ps()
    how = f"jailkit: {name} was stopped and did not start again; to start it: "
    last = restarted.stderr.splitlines()[-1]
    assert last.startswith(how), restarted.stderr
    again = shlex.split(last[len(how):])
    assert again == ["jailkit", "run", "svc", "--root", str(jail), "--name", name, "--detach",
                     *options, "--", *command]
    assert run_jailkit(*again[1:], timeout=60).returncode == 0
    assert name in ps()


def _foreground(jail: Path, name: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*run_args(jail)[:-1], "--name", name, "--", "/bin/sh", "-c",
                             "sleep 600"], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)


def test_restart_refuses_a_jail_running_in_the_foreground(jail_a, names):
    name = names("fg")
    runner = _foreground(jail_a, name)
    try:
        wait_for(lambda: name in ps(), 30, "the foreground jail")
        refused = run_jailkit("restart", name, timeout=60)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"{name} runs in the foreground" in refused.stderr
        assert f"jailkit stop {name}" in refused.stderr
        assert ps()[name]["pid"] == runner.pid
    finally:
        run_jailkit("stop", name, "--timeout", "1", timeout=30)
        runner.kill()
        runner.wait()


def test_restart_of_a_jail_a_systemd_unit_runs_names_systemctl(jail_b, names):
    """systemd keeps a unit's processes in its cgroup (the name=systemd hierarchy on a hybrid
    host like this one, the unified one elsewhere): here a cgroup of the test's own stands in."""
    name = names("inunit")
    hierarchy = "/sys/fs/cgroup/systemd"
    if not os.path.isdir(hierarchy):
        hierarchy = "/sys/fs/cgroup"
    slice_ = Path(f"{hierarchy}/{PREFIX}{os.getpid()}.slice")
    group = slice_ / f"jailkit-{name}.service"
    group.mkdir(parents=True)

    def in_the_unit():
        (group / "cgroup.procs").write_text(str(os.getpid()))
    runner = None
    try:
        runner = _foreground(jail_b, name, preexec_fn=in_the_unit)
        wait_for(lambda: name in ps(), 30, "the unit's jail")
        refused = run_jailkit("restart", name, timeout=60)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"systemctl restart jailkit-{name}.service" in refused.stderr
        assert ps()[name]["pid"] == runner.pid
    finally:
        run_jailkit("stop", name, "--timeout", "1", timeout=30)
        if runner is not None:
            runner.kill()
            runner.wait()
        wait_for(lambda: not (group / "cgroup.procs").read_text(), what="the unit's end")
        group.rmdir()
        slice_.rmdir()


def test_no_leftovers_after_many_run_and_stop_cycles(jail_a, names, netns):
    """80 cycles of a foreground run and a detached veth run publishing a port (its relay a
    process of its own), stopped: 160 runs and stops, foreground and detached."""
    name = names("cycle")
    enter = ["nsenter", f"--net=/proc/{netns}/ns/net", "--"]
    for i in range(80):
        result = run_jailkit("run", "svc", "--root", jail_a, "--name", name, "--",
                             "/bin/sh", "-c", "echo $$", timeout=60)
        assert result.returncode == 0, (i, result.stderr)
        result = detach(jail_a, name, "--net", "veth", "--publish", "18090:80",
                        prefix=enter)
        assert result.returncode == 0, (i, result.stderr)
        assert run_jailkit("stop", name, timeout=30).returncode == 0
    assert name not in ps() and not cgroup_dirs(name)
    assert not os.path.exists(f"/run/jailkit/{name}.json")
    assert not mounts_under(jail_a)
    links = subprocess.run([*enter, "ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "jk" not in links
    listening = subprocess.run([*enter, "ss", "-Htln"], capture_output=True, text=True)
    assert listening.returncode == 0 and listening.stdout == ""
    for pattern in (str(jail_a), f"--entry {name}.json"):  # the jail's, its waiter and relay
        leftover = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
        assert leftover.stdout == "", pattern


def test_the_log_is_capped_and_rotated(jail_b, names):
    name = names("chatty")
    # ~3 MiB of output against a 1 MiB cap
    chatty = "i=0; while [ $i -lt 30000 ]; do echo line $i " + "x" * 80 + "; i=$((i+1)); done; " \
             "echo done; sleep 600"
    started(jail_b, name, command=["/bin/sh", "-c", chatty])
    log = Path(f"/run/jailkit/{name}.log")

    def ended() -> bool:
        # between the rename to .log.1 and the new file, there is no NAME.log for a moment
        with contextlib.suppress(FileNotFoundError):
            return log.read_text().endswith(" done\n")
        return False
    wait_for(ended, 60, "the output's end")
    rotated = Path(f"/run/jailkit/{name}.log.1")
    assert rotated.exists()
    assert log.stat().st_size <= (1 << 20) + 4096 and rotated.stat().st_size <= (1 << 20) + 4096
    last = log.read_text().splitlines()[-2]
    assert last.endswith("x" * 80) and last.split()[1:3] == ["line", "29999"]


def test_a_killed_foreground_launcher_leaves_no_cgroup_after_the_next_run(jail_b):
    """The attack of issue 10 with `run` alone: SIGKILL of the waiter of a foreground jail
    used to leak its cgroups (named after its pid) for good."""
    runner = subprocess.Popen([*run_args(jail_b), "/bin/sh", "-c", "sleep 600"],
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _reaper_below(runner.pid), what="the jail's start")
    finally:
        runner.kill()
        runner.wait()
    wait_for(lambda: not _reaper_below(runner.pid) and not alive(_children(runner.pid)),
             what="the jail's death")
    after = run_jailkit("run", "svc", "--root", jail_b, "--", "/bin/true", timeout=60)
    assert after.returncode == 0, after.stderr
    leaked = [d for d in glob.glob("/sys/fs/cgroup/*/jailkit/*")
              if d.endswith((f"-{runner.pid}", "/b"))]
    assert not leaked and not mounts_under(jail_b)


def run_args(jail: Path) -> list[str]:

    return [sys.executable, "-m", "jailkit", "run", "svc", "--root", str(jail), "--"]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def _reaper_below(pid: int) -> bool:
    """The jail's pid 1 runs the reaper: the jail has started."""
    for child in _children(pid):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{child}/comm") as f:
            if f.read().strip() == "jailkit-reaper":
                return True
    return False


def test_v1_freeze_and_kill_ends_every_process_of_a_group():
    """A host without a unified hierarchy stops a jail with the v1 freezer (tested here on
    this host's freezer, with real processes that fork while being killed)."""
    from jailkit.launch import cgroup

    group = f"/sys/fs/cgroup/freezer/jailkit/{PREFIX}{os.getpid()}freeze"
    os.makedirs(group)
    try:
        def join():
            with open(f"{group}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

        # a fork loop: each child forks again at once, so a kill one by one would race it
        loop = "while :; do sh -c 'sleep 600' & sleep 0.01; done"
        proc = subprocess.Popen(["sh", "-c", loop], preexec_fn=join)
        wait_for(lambda: len(cgroup.procs(group)) >= 10, what="the fork loop")
        assert cgroup.kill([group])
        proc.wait(10)
        wait_for(lambda: not cgroup.procs(group), what="the group to empty")
    finally:
        cgroup.kill([group])
        cgroup.remove([group], seconds=5)


def test_nginx_detached_serves_at_once_and_stops_gracefully(base, names):
    """The bundled profile's `ready` port: `run --detach` returns when nginx answers."""
    import urllib.request

    port = 18300 + os.getpid() % 250
    built = run_jailkit("build", "nginx", "--root", base / "nginx", "--set", f"port={port}",
                        timeout=120)
    assert built.returncode == 0, built.stderr
    name = names("nginx")
    result = run_jailkit("run", "nginx", "--root", base / "nginx", "--name", name, "--detach",
                         timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"answering on 127.0.0.1:{port}" in result.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.status == 200
    processes = jail_processes(name)
    assert len(processes) >= 3  # pid 1, the master, its workers
    stopped = run_jailkit("stop", name, timeout=60)
    assert stopped.returncode == 0, stopped.stderr  # SIGQUIT: nginx's graceful stop
    assert not alive(processes) and not cgroup_dirs(name)


def test_a_cpu_quota_caps_a_busy_jail(jail_a, names):
    name = names("quota")
    started(jail_a, name, "--cpu-quota", "30%", command=["/bin/sh", "-c", "while :; do :; done"])
    time.sleep(0.5)
    before, begin = stats(name)["cpu_usec"], time.monotonic()
    time.sleep(3)
    share = (stats(name)["cpu_usec"] - before) / 1e6 / (time.monotonic() - begin)
    assert 0.05 < share < 0.4, share  # 30% of one CPU, not the whole of it


def test_detach_refuses_a_ready_port_that_something_else_answers_already(jail_b, names):
    name = names("taken")
    with socket.socket() as other:  # another service, on the port the jail would be ready on
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = detach(jail_b, name, "--net", "host", "--set",
                        f"ready={{\"tcp\": {port}, \"timeout\": 5}}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"port {port} on 127.0.0.1 already answers" in result.stderr
    assert name not in ps() and not cgroup_dirs(name)


def test_a_failed_start_shows_the_lines_of_this_run_only(jail_b, names):
    name = names("again")
    for word in ("first", "second"):
        result = detach(jail_b, name, "--net", "host", "--set",
                        'ready={"tcp": 9, "timeout": 20}', command=[
            "/bin/sh", "-c", f"echo {word} attempt; sleep 1; exit 3"])
        assert result.returncode == 3, result.stderr
        assert f"{word} attempt" in result.stderr
        wait_for(lambda: name not in ps(), what="the jail's end")
    assert "first attempt" not in result.stderr
