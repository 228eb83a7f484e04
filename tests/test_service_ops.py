"""Day two, second half: `jailkit logs`, `exec` and `unit`, and /dev/log in every jail, done
the way an administrator does them, on real detached jails (the bundled `shell` profile)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import jailkit_env, run_jailkit, traversable_dir, wait_for

pytestmark = pytest.mark.usefixtures("as_root")

PROFILE = """\
extends = ["shell"]

[service]
command = ["/bin/sh", "-c", "while :; do sleep 1; done"]
"""
PREFIX = "o"  # names of this module's jails: PREFIX, the session's pid, a word


@pytest.fixture(scope="module")
def base():
    with traversable_dir("jailkit-ops-") as base:
        (base / "svc.toml").write_text(PROFILE)
        yield base


@pytest.fixture(scope="module")
def jail(base):
    built = run_jailkit("build", base / "svc.toml", "--root", base / "shell", timeout=120)
    assert built.returncode == 0, built.stderr
    return base / "shell"


def detach(jail: Path, name: str, *command, args=()):
    started = run_jailkit("run", "svc", "--root", jail, "--name", name, "--detach", *args,
                          *(("--", *command) if command else ()), timeout=60)
    assert started.returncode == 0, started.stderr


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
    # kept after the jail ends, with the waiter's word on how it ended last
    assert run_jailkit("stop", name, timeout=30).returncode == 0
    assert log_lines(name)[-2:] == ["three", "jailkit: the service was killed by signal SIGTERM"]


def log_lines(name: str) -> list[str]:
    """`jailkit logs NAME`, its timestamps taken off."""
    shown = run_jailkit("logs", name, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert all(map(is_stamped, shown.stdout.splitlines()))
    return [line.split(" ", 1)[1] for line in shown.stdout.splitlines()]


def running_names() -> set[str]:
    import json

    listed = run_jailkit("ps", "--json", timeout=30)
    assert listed.returncode == 0, listed.stderr
    return {row["name"] for row in json.loads(listed.stdout)}


def test_the_log_ends_with_how_the_service_ended(jail, names):
    def ended(name, *command):  # one jail directory runs once at a time
        detach(jail, name, "/bin/sh", "-c", *command)
        wait_for(lambda: name not in running_names(), 30, "the service's end")
        return log_lines(name)

    # a last line without its newline: the waiter's line still begins a line of its own
    assert ended(names("exit3"), "echo bye; printf partial; sleep 1; exit 3") == [
        "bye", "partial", "jailkit: the service exited with status 3"]
    # a status above 128 of its own is no signal
    assert ended(names("exit137"), "sleep 1; exit 137") == [
        "jailkit: the service exited with status 137"]
    stopped = names("stopped")
    detach(jail, stopped, "/bin/sh", "-c", "echo up; while :; do sleep 1; done")
    assert run_jailkit("stop", stopped, timeout=30).returncode == 0
    assert log_lines(stopped) == ["up", "jailkit: the service was killed by signal SIGTERM"]
    # `logs -f` prints that line before it ends with the jail
    again = names("followed")
    detach(jail, again, "/bin/sh", "-c", "echo up; sleep 2; exit 4")
    follower = jailkit_popen("logs", again, "-f", stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
        follower.wait()
    assert out.splitlines()[-1].endswith(" jailkit: the service exited with status 4")
    assert f"{again} has ended" in err


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


def test_logs_of_a_silent_running_jail_say_where_its_files_are(jail, names):
    name = names("silent")
    detach(jail, name, "/bin/sleep", "600")
    shown = run_jailkit("logs", name, timeout=30)
    assert shown.returncode == 0 and shown.stdout == "", shown.stderr
    assert shown.stderr == (f"jailkit: note: {name} has written nothing to stdout, stderr or "
                            f"/dev/log yet; what it logs to files is in {jail}/state\n")


def test_logs_of_an_unknown_name_is_one_line_naming_ps(names):
    shown = run_jailkit("logs", names("nosuch"), timeout=30)
    assert shown.returncode == 3 and shown.stdout == ""  # as stop, stats and kill say it
    assert shown.stderr.count("\n") == 1 and "jailkit ps" in shown.stderr
    # a name that is no name never becomes a path
    shown = run_jailkit("logs", "../../etc/passwd", timeout=30)
    assert shown.returncode == 2 and shown.stdout == "" and shown.stderr.count("\n") == 1


# --- jailkit exec ---------------------------------------------------------------------------

NAMESPACE_KINDS = ("user", "mnt", "pid", "ipc", "uts", "net", "cgroup")
SHOW = ("id; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; "
        "for n in " + " ".join(NAMESPACE_KINDS) + "; do readlink /proc/self/ns/$n; done; "
        "cat /proc/self/uid_map /proc/2/uid_map /proc/1/comm /proc/self/cgroup; echo pids; "
        "ls /proc | grep '^[0-9]'")


def service_of(name: str, runner=run_jailkit) -> int:
    """The service's host pid: the child pid 1 adopts (its pid in the jail is pid 1's 4th
    argument, `jailkit-reaper adopt STOPSIG PID`)."""
    import json

    rows = json.loads(runner("ps", "--json").stdout)
    init = next(r["jail_pid"] for r in rows if r["name"] == name)
    adopted = Path(f"/proc/{init}/cmdline").read_bytes().split(b"\0")[3].decode()
    for child in Path(f"/proc/{init}/task/{init}/children").read_text().split():
        status = Path(f"/proc/{child}/status").read_text()
        if status.split("NSpid:")[1].split("\n")[0].split()[-1] == adopted:
            return int(child)
    raise AssertionError("no service")


def check_confined_like_the_service(shown: str, service: int, capabilities: str) -> None:
    status = dict(line.split(":\t") for line in shown.splitlines() if ":\t" in line)
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == capabilities
    assert status["CapAmb"] == status["CapInh"] == "0000000000000000"
    links = [line for line in shown.splitlines() if line.endswith("]") and ":[" in line]
    assert links == [os.readlink(f"/proc/{service}/ns/{kind}") for kind in NAMESPACE_KINDS]
    maps = [line.split() for line in shown.splitlines() if line.count(" ") > 4
            and line.split()[0].isdigit()]
    assert len(maps) == 2 and maps[0] == maps[1]  # its uid map is the service's
    assert "\njailkit-reaper\n" in shown  # /proc is the jail's: its pid 1 is jailkit's
    pids = [int(p) for p in shown.split("\npids\n")[1].split()]
    assert 1 in pids and 2 in pids and len(pids) < 10  # the jail's processes, not the host's
    assert "\n0::/\n" in shown  # in the jail's cgroup (its root in the jail's namespace)


def test_exec_runs_in_the_jails_namespaces_as_confined_as_its_service(jail, names):
    name = names("exec")
    detach(jail, name, args=("--set", 'capabilities=["CAP_NET_BIND_SERVICE"]'))
    shown = run_jailkit("exec", name, "--", "/bin/sh", "-c", SHOW, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("uid=0(root) gid=0(root)")
    check_confined_like_the_service(shown.stdout, service_of(name), "0000000000000400")
    assert run_jailkit("exec", name, "--user", "nobody", "--", "/bin/id", "-u",
                       timeout=30).stdout == "65534\n"
    # the command's status is passed on
    assert run_jailkit("exec", name, "--", "/bin/sh", "-c", "exit 7", timeout=30).returncode == 7


def test_exec_reaches_the_service_of_a_veth_jail(jail, names, netns):
    """In a veth jail pid 1 runs `ip` before the service, which is then pid 3, not 2."""
    name = names("execveth")
    started = subprocess.run(
        ["nsenter", f"--net=/proc/{netns}/ns/net", "--", sys.executable, "-m", "jailkit", "run",
         "svc", "--root", str(jail), "--name", name, "--detach", "--net", "veth"],
        env=jailkit_env(), capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    shown = run_jailkit("exec", name, "--", "/bin/sh", "-c", "ip -o addr show eth0 || "
                        "cat /proc/net/dev", timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "eth0" in shown.stdout  # the jail's own network namespace
    assert os.readlink(f"/proc/{service_of(name)}/ns/net") != os.readlink("/proc/self/ns/net")


def test_exec_of_a_program_the_jail_lacks_or_an_unknown_jail_is_one_line(jail, names):
    name = names("noshell")
    detach(jail, name)
    missing = run_jailkit("exec", name, "--", "bash", "-l", timeout=30)
    assert missing.returncode == 127 and missing.stderr.count("\n") == 1
    assert missing.stderr.endswith("bash: no such program in this jail (it holds only what its "
                                   "profile lists; a jail without a shell has none)\n")
    unknown = run_jailkit("exec", names("nosuch"), "--", "/bin/sh", timeout=30)
    assert unknown.returncode == 125 and unknown.stderr.count("\n") == 1  # as podman exec
    assert "jailkit ps" in unknown.stderr


def test_exec_exit_statuses_are_podman_execs(jail, names):
    """125: jailkit failed; 126: CMD found but not executable; 127: no such CMD; else CMD's."""
    name = names("statuses")
    detach(jail, name)
    cases = [
        (["--", "/etc/passwd"], 126, "/etc/passwd is not executable"),
        (["--", "/etc"], 126, "/etc is not executable"),
        (["--", "no-such-command"], 127, "no-such-command: no such program in this jail (it "
                                         "holds only what its profile lists)\n"),
        (["--user", "no-such-user", "--", "/bin/true"], 125, "--user no-such-user"),
        ([], 125, "Missing argument"),
    ]
    for args, status, line in cases:
        ran = run_jailkit("exec", name, *args, timeout=30)
        assert ran.returncode == status, (args, ran.returncode, ran.stderr)
        assert line in ran.stderr and "Traceback" not in ran.stderr, (args, ran.stderr)
        assert ran.stderr.count("\n") == 1 or status == 125 and not args, (args, ran.stderr)
    assert run_jailkit("exec", name, "--", "/bin/sh", "-c", "exit 3", timeout=30).returncode == 3
    assert name in running_names()


def test_stop_ends_what_exec_started_in_the_jail(jail, names):
    name = names("execstop")
    detach(jail, name)
    inside = jailkit_popen("exec", name, "--", "/bin/sleep", "600", stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "sleep" in run_jailkit("exec", name, "--", "/bin/sh", "-c",
                                                "cat /proc/[0-9]*/comm", timeout=30).stdout,
                 what="the exec'd sleep")
        assert run_jailkit("stop", name, timeout=30).returncode == 0
        assert inside.wait(10) != 0  # killed with the jail, not left behind
    finally:
        inside.kill()
        inside.wait()


def test_an_ordinary_user_execs_into_its_own_jail(world_readable_checkout):
    from conftest import NOBODY, as_nobody

    base = Path(tempfile.mkdtemp(prefix="jailkit-ops-nobody-"))
    os.chown(base, NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": "/nonexistent"}

    def jailkit(*args):
        return subprocess.run([sys.executable, "-m", "jailkit", *map(str, args)], env=env,
                              text=True, capture_output=True, preexec_fn=as_nobody, timeout=120,
                              cwd="/")
    name = f"{PREFIX}{os.getpid()}mine"
    try:
        assert jailkit("build", "shell", "--root", base / "shell").returncode == 0
        started = jailkit("run", "shell", "--root", base / "shell", "--name", name, "--detach",
                          "--", "/bin/sh", "-c", "while :; do sleep 1; done")
        assert started.returncode == 0, started.stderr
        shown = jailkit("exec", name, "--", "/bin/sh", "-c", SHOW)
        assert shown.returncode == 0, shown.stderr
        check_confined_like_the_service(shown.stdout, service_of(name, jailkit),
                                        "0000000000000000")
    finally:
        jailkit("stop", name, "--timeout", "1")
        for log in (f"{name}.log", f"{name}.log.1"):
            Path(f"/tmp/jailkit-{NOBODY}/{log}").unlink(missing_ok=True)
        shutil.rmtree(base)


# --- jailkit unit ---------------------------------------------------------------------------

def test_unit_is_a_valid_systemd_service_whose_commands_start_and_stop_the_jail(base, jail,
                                                                                 names):
    import shlex

    name = names("unit")
    made = run_jailkit("unit", "svc", "--root", jail, "--name", name, "--", "--memory", "64M",
                       timeout=30)
    assert made.returncode == 0 and made.stderr == "", made.stderr
    unit = base / f"jailkit-{name}.service"
    unit.write_text(made.stdout)
    verified = subprocess.run(["systemd-analyze", "verify", "--man=no", unit],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr
    fields = dict(line.split("=", 1) for line in made.stdout.splitlines() if "=" in line)
    assert fields["Type"] in ("simple", "exec") and fields["Restart"] == "on-failure"
    assert fields["Delegate"] == "yes" and fields["KillMode"] == "mixed"
    start, stop = shlex.split(fields["ExecStart"]), shlex.split(fields["ExecStop"][1:])
    assert os.path.isabs(start[0]) and os.access(start[0], os.X_OK)
    assert start[-8:] == ["run", "svc", "--root", str(jail), "--name", name, "--memory", "64M"]
    assert fields["WantedBy"] == "multi-user.target" and "User" not in fields
    assert stop[-4:] == ["stop", name, "--timeout", "10"] and stop[0] == start[0]
    # what systemd would run: the jail in the foreground, then stopped by ExecStop
    env = {"PATH": "/usr/bin:/bin", **dict([fields["Environment"].split("=", 1)])} \
        if "Environment" in fields else {"PATH": "/usr/bin:/bin"}
    service = subprocess.Popen(start, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: name in run_jailkit("ps", timeout=30).stdout, what="the unit's jail")
        # printed again while that jail runs: the unit is the same, and a note says it waits
        again = run_jailkit("unit", "svc", "--root", jail, "--name", name, "--", "--memory",
                            "64M", timeout=30)
        assert again.returncode == 0 and again.stdout == made.stdout, again.stderr
        assert again.stderr.startswith(f"jailkit: note: {name} runs now (pid "), again.stderr
        assert again.stderr.endswith(f"jailkit stop {name}, then systemctl start the unit\n")
        stopped = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert service.wait(10) is not None and name not in run_jailkit("ps", timeout=30).stdout
        # the status of a run that `jailkit stop` ended is a success to systemd: a stopped
        # unit is `inactive`, not `failed`
        assert fields["SuccessExitStatus"] == str(service.returncode), service.returncode
    finally:
        service.kill()
        service.wait()


def test_unit_refuses_options_it_sets_itself(jail):
    refused = run_jailkit("unit", "svc", "--root", jail, "--", "--detach", timeout=30)
    assert refused.returncode == 2 and "the unit sets it" in refused.stderr


def test_unit_refuses_what_its_run_could_not_start_in_one_line(base, jail):
    """A unit is read at boot, by no one: what `run` would refuse is refused now."""
    cases = [
        (["svc", "--root", base / "never-built"], f"no jail is built in {base}/never-built"),
        (["no-such-profile"], "no jail is built in /var/lib/jailkit/no-such-profile: build it "
                              "first: jailkit build no-such-profile"),
        (["nginx", "--root", jail], f"{jail} holds the jail of profile 'svc', not 'nginx'"),
        (["svc", "--root", jail, "--", "--memory", "64X"], "--memory '64X': expected a size"),
        (["svc", "--root", jail, "--", "--net", "nowhere"], "Invalid value for '--net'"),
        (["svc", "--root", jail, "--name", "../x"], "a jail name is"),
    ]
    for args, expected in cases:
        refused = run_jailkit("unit", *args, timeout=30)
        assert refused.returncode == 2 and refused.stdout == "", (args, refused.stdout)
        assert refused.stderr.count("\n") == 1 and expected in refused.stderr, \
            (args, refused.stderr)


def test_an_ordinary_users_unit_is_a_user_unit_that_starts_and_stops_its_jail(
        world_readable_checkout, names):
    """For a user's systemd (`systemctl --user`): WantedBy=default.target, no cgroup
    delegation (an ordinary user's jail has no cgroups), and the registry this user's
    `jailkit ps` reads, so that ps, logs and stop see the unit's jail."""
    import shlex

    from conftest import NOBODY, as_nobody

    base = Path(tempfile.mkdtemp(prefix="jailkit-ops-unit-"))
    os.chown(base, NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": "/nonexistent"}

    def as_user(*argv, **kwargs):
        return subprocess.run(list(map(str, argv)), env=kwargs.pop("env", env), text=True,
                              capture_output=True, preexec_fn=as_nobody, timeout=120, cwd="/",
                              **kwargs)
    name = f"{PREFIX}{os.getpid()}userunit"
    service = None
    try:
        built = as_user(sys.executable, "-m", "jailkit", "build", "shell", "--root",
                        base / "shell")
        assert built.returncode == 0, built.stderr
        made = as_user(sys.executable, "-m", "jailkit", "unit", "shell", "--root",
                       base / "shell", "--name", name, "--", "--", "/bin/sh", "-c",
                       "while :; do sleep 1; done")
        assert made.returncode == 0, made.stderr
        unit = base / f"jailkit-{name}.service"
        unit.write_text(made.stdout)
        runtime = base / "runtime"  # the user manager's own, for verify
        runtime.mkdir(mode=0o700)
        os.chown(runtime, NOBODY, NOBODY)
        verified = as_user("systemd-analyze", "--user", "verify", "--man=no", unit,
                           env={**env, "XDG_RUNTIME_DIR": str(runtime)})
        assert verified.returncode == 0 and verified.stderr == "", verified.stderr
        lines = made.stdout.splitlines()
        fields = dict(line.split("=", 1) for line in lines if "=" in line)
        assert fields["WantedBy"] == "default.target" and "Delegate" not in fields
        assert "After" not in fields  # network.target is the system manager's
        # this user's registry (no XDG_RUNTIME_DIR here: /tmp/jailkit-UID), named in the unit
        assert "UnsetEnvironment=XDG_RUNTIME_DIR" in lines
        assert any(line.startswith("#") and f"/tmp/jailkit-{NOBODY}" in line for line in lines)
        start, stop = shlex.split(fields["ExecStart"]), shlex.split(fields["ExecStop"][1:])
        assert start[start.index("--name") + 1] == name and stop[-3] == name
        unit_env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
                    **dict([fields["Environment"].split("=", 1)])}
        service = subprocess.Popen(start, env=unit_env, preexec_fn=as_nobody, cwd="/",
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)

        def listed():
            shown = as_user(sys.executable, "-m", "jailkit", "ps")
            return name in shown.stdout
        wait_for(listed, 30, "the unit's jail in this user's ps")
        stopped = as_user(*stop, env=unit_env)
        assert stopped.returncode == 0, stopped.stderr
        assert service.wait(10) is not None and not listed()
    finally:
        if service is not None:
            service.kill()
            service.wait()
        as_user(sys.executable, "-m", "jailkit", "stop", name, "--timeout", "1")
        shutil.rmtree(base)


# --- /dev/log -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def syslog_probe(base):
    probe = base / "syslog_probe"
    subprocess.run(["gcc", "-static", "-O1", "-o", probe, Path(__file__).parent /
                    "syslog_probe.c"], check=True, capture_output=True)
    return probe


def test_syslog_of_a_detached_jail_goes_to_its_log_from_any_user(jail, names, syslog_probe):
    """PAM and servers say why a login failed only through syslog(3): the jail's pid 1 relays
    its /dev/log into the jail's log, whichever user of the jail sends."""
    shutil.copy(syslog_probe, jail / "current/root/usr/bin/syslog_probe")
    name = names("syslog")
    try:
        detach(jail, name)
        sent = run_jailkit("exec", name, "--user", "nobody", "--", "/usr/bin/syslog_probe", "1",
                           "authentication failure; user=ftpuser", timeout=30)
        assert sent.returncode == 0, sent.stderr
    finally:
        (jail / "current/root/usr/bin/syslog_probe").unlink()

    def relayed():
        shown = run_jailkit("logs", name, timeout=30).stdout
        return [line for line in shown.splitlines() if "authentication failure" in line]
    line = wait_for(relayed, what="the message in the log")[0]
    assert is_stamped(line)
    assert line.split(" ", 1)[1].startswith("syslog auth.warning: probe[")
    assert line.endswith("]: authentication failure; user=ftpuser 0")


def test_a_jail_without_devices_has_dev_log_alone_read_only(jail, syslog_probe):
    """A profile that names no devices (vsftpd's) still gets /dev/log: PAM's only channel."""
    shutil.copy(syslog_probe, jail / "current/root/usr/bin/syslog_probe")
    try:
        ran = run_jailkit("run", "svc", "--root", jail, "--set", "devices=[]", "--", "/bin/sh",
                          "-c", "ls -A /dev; syslog_probe 1 alone; touch /dev/x", timeout=60)
    finally:
        (jail / "current/root/usr/bin/syslog_probe").unlink()
    assert ran.returncode == 1 and ran.stdout == "log\n", ran.stderr
    lines = ran.stderr.splitlines()
    assert lines[0].startswith("syslog auth.warning: probe[") and lines[0].endswith("]: alone 0")
    assert "Read-only file system" in lines[1]


def test_a_jail_built_without_dev_still_runs_and_says_how_to_get_syslog(jail):
    """Before /dev/log, a jail whose profile named no devices was built without /dev: after
    an upgrade it runs as it did, with one line saying what a rebuild adds."""
    dev = jail / "current/root/dev"
    dev.rmdir()
    try:
        ran = run_jailkit("run", "svc", "--root", jail, "--set", "devices=[]", "--", "/bin/sh",
                          "-c", "echo ran", timeout=60)
    finally:
        dev.mkdir(0o755)
    assert ran.returncode == 0 and ran.stdout == "ran\n", ran.stderr
    assert ran.stderr.splitlines() == [
        "jailkit: warning: the jail has no /dev, so no /dev/log for syslog (built by an older "
        "jailkit): rebuild it to get one"]


def test_syslog_goes_to_a_foreground_runs_stderr_rate_limited_one_line_each(jail,
                                                                            syslog_probe):
    shutil.copy(syslog_probe, jail / "current/root/usr/bin/syslog_probe")
    try:
        ran = run_jailkit("run", "svc", "--root", jail, "--", "/bin/sh", "-c",
                          "syslog_probe 1 'one\nforged line'; syslog_probe 250 flood",
                          timeout=60)
    finally:
        (jail / "current/root/usr/bin/syslog_probe").unlink()
    assert ran.returncode == 0, ran.stderr
    lines = ran.stderr.splitlines()
    assert lines[0].startswith("syslog auth.warning: probe[") and \
        lines[0].endswith("]: one forged line 0")  # a message cannot forge a line
    relayed = [line for line in lines if ": flood " in line]
    dropped = [line for line in lines if "syslog messages dropped" in line]
    assert 99 <= len(relayed) <= 200 and len(dropped) >= 1  # at most 100 a second
    assert len(relayed) + sum(int(line.split()[1]) for line in dropped) == 250
