"""`jailkit run` launched by an ordinary user (`nobody`): a single-id map, same confinement.

The jail is built by nobody (its own: a jail directory is its owner's alone), with the probe of
test_launch.py added; the launcher is a world-readable copy of the package run with the venv's
interpreter, whose reaper lies beside it.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import (
    NOBODY,
    PROBE,
    REPO,
    as_nobody,
    descendants,
    mount_points,
    nobody_with_subids,
    wait_for,
)
from lock_attacks import (
    ATTACKER,
    ATTACKS,
    LOCK_PROBE,
    PID1_REACH,
    add_lock_probe,
    check_attack_failed,
    steps,
)

pytestmark = pytest.mark.usefixtures("as_root")

def command(checkout, jail_dir, *args, sets=(), options=()):
    options = [*options, *(arg for key_value in sets for arg in ("--set", key_value))]
    return [sys.executable, "-m", "jailkit", "run", "shell", "--root", str(jail_dir),
            *options, *(["--", *args] if args else [])]


def nobody_run(checkout, jail_dir, *args, sets=(), options=(), **kwargs):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(checkout), "HOME": "/nonexistent"}
    # cwd: `python -m` puts it first on sys.path, and the checkout must be the world-readable copy
    return subprocess.run(command(checkout, jail_dir, *args, sets=sets, options=options), env=env,
                          text=True, capture_output=True, preexec_fn=as_nobody, timeout=60, cwd="/",
                          **kwargs)


@pytest.fixture(scope="module")
def jail(world_readable_checkout):
    """A `shell` jail nobody built for itself, with the probe added (owned by the jail's root)."""
    base = Path(tempfile.mkdtemp(prefix="jailkit-launch-nobody-"))
    os.chown(base, NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": "/nonexistent"}
    try:
        built = subprocess.run([sys.executable, "-m", "jailkit", "build", "shell",
                                "--root", str(base / "shell")], env=env, text=True, cwd="/",
                               capture_output=True, preexec_fn=as_nobody, timeout=120)
        assert built.returncode == 0, built.stderr
        probe = base / "shell/current/root" / PROBE.lstrip("/")
        subprocess.run(["gcc", "-static", "-O1", "-o", probe, REPO / "tests/launch_probe.c"],
                       check=True)
        os.chown(probe, NOBODY, NOBODY)
        yield base / "shell"
    finally:
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def run(world_readable_checkout, jail):
    def run(*args, **kwargs):
        return nobody_run(world_readable_checkout, jail, *args, **kwargs)

    return run


def test_runs_with_a_single_id_map_and_passes_status(run):
    result = run("/bin/sh", "-c", "id -u; cat /proc/self/uid_map; exit 5")
    assert result.returncode == 5, result.stderr
    # the service's namespace, nested in pid 1's, maps the same single id (the host's view of
    # it, nobody, in test_sigterm_is_forwarded_and_nothing_is_left)
    uid, inside, outside, count = result.stdout.split()
    assert (uid, inside, outside, count) == ("0", "0", "0", "1")


def test_confinement_is_the_same(run, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("secret")
    result = run("/bin/sh", "-c", f"test -e {marker} && echo vis''ible; touch /x; "
                                  "echo w > /tmp/w && cat /tmp/w; cat /proc/self/status")
    fields = dict(line.split(":\t") for line in result.stdout.splitlines() if ":\t" in line)
    assert "visible" not in result.stdout
    assert "Read-only file system" in result.stderr
    assert "w" in result.stdout.split()
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"


def test_chroot_escape_fails(run, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("secret")
    result = run(PROBE, "chroot-escape", str(marker), sets=['capabilities=["CAP_SYS_CHROOT"]'])
    assert result.stdout.strip() == "host file hidden", result.stderr


@pytest.mark.parametrize("attempt", ["mount", "mknod", "ptrace 1", "keyctl", "unshare"])
def test_privileged_calls_fail(run, attempt):
    result = run(PROBE, *attempt.split(), sets=['capabilities=["CAP_SYS_ADMIN", "CAP_MKNOD"]',
                                                'dangerous_capabilities=["CAP_SYS_ADMIN"]'])
    assert result.stdout.split()[1:] == ["Operation", "not", "permitted"], result.stderr


def test_jail_cannot_signal_a_host_process_of_its_own_host_uid(run):
    # the jail's root is nobody on the host here, and a pidfd passed in is a handle on a host
    # process: the pid namespace refuses it (EINVAL), and Landlock's signal scope would too
    # (test_launch_spec.py shows the scope alone stopping a signal)
    victim = subprocess.Popen(["sleep", "60"], preexec_fn=as_nobody)
    pidfd = os.pidfd_open(victim.pid)
    try:
        result = run(PROBE, "pidfd-kill", str(pidfd), options=["--pass-fd", str(pidfd)],
                     pass_fds=[pidfd])
        assert result.stdout.startswith("pidfd-kill ") and "ok" not in result.stdout, result.stderr
        assert victim.poll() is None
    finally:
        os.close(pidfd)
        victim.kill()
        victim.wait()


def test_callers_fd_is_not_inherited(run):
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    try:
        result = run(PROBE, "fds", pass_fds=[read_end])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.stdout.strip() == "fds"


def test_sigterm_is_forwarded_and_nothing_is_left(world_readable_checkout, jail):
    mounts = mount_points()
    proc = subprocess.Popen(
        command(world_readable_checkout, jail, "/bin/sh", "-c",
                "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"),
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout)},
        preexec_fn=as_nobody, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
    )
    try:
        assert proc.stdout.readline() == "ready\n"  # the trap is set
        service = list(descendants(proc.pid))[1]  # after the reaper
        assert Path(f"/proc/{service}/uid_map").read_text().split() == ["0", str(NOBODY), "1"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert mount_points() == mounts


def test_an_ordinary_user_runs_lists_and_stops_its_own_detached_jail(world_readable_checkout,
                                                                     jail):
    """No cgroups for an ordinary user here: the registry is its own (/tmp/jailkit-UID without
    XDG_RUNTIME_DIR), and a service that ignores SIGTERM is still ended, with all of its jail,
    by killing the jail's pid 1 (its pid namespace goes with it)."""
    registry = Path(f"/tmp/jailkit-{NOBODY}")  # removed at the session's end (conftest.py)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": "/nonexistent"}

    def jailkit(*args):
        return subprocess.run(["/opt/jailkit/bin/python", "-m", "jailkit", *args], env=env,
                              text=True, capture_output=True, preexec_fn=as_nobody, timeout=60,
                              cwd="/")

    try:
        started = jailkit("run", "shell", "--root", str(jail), "--name", "mine", "--detach",
                          "--", "/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done")
        assert started.returncode == 0, started.stderr
        assert f"{registry}/mine.log" in started.stdout
        assert registry.stat().st_uid == NOBODY and registry.stat().st_mode & 0o077 == 0
        import json

        rows = json.loads(jailkit("ps", "--json").stdout)
        assert [r["name"] for r in rows] == ["mine"] and rows[0]["dir"] == str(jail)
        processes = [rows[0]["jail_pid"], *descendants(rows[0]["jail_pid"])]
        assert len(processes) >= 3
        root_view = subprocess.run(["/opt/jailkit/bin/python", "-m", "jailkit", "ps", "--json"],
                                   env=env, text=True, capture_output=True, timeout=60)
        assert "mine" not in [r["name"] for r in json.loads(root_view.stdout)]
        stopped = jailkit("stop", "mine", "--timeout", "1")
        assert stopped.returncode == 1 and "killed" in stopped.stderr, stopped.stderr
        assert not [p for p in processes if Path(f"/proc/{p}").exists()]
        assert not (registry / "mine.json").exists() and jailkit("ps", "--json").stdout == "[]\n"
    finally:
        jailkit("stop", "mine", "--timeout", "0")
        for log in ("mine.log", "mine.log.1"):
            (registry / log).unlink(missing_ok=True)


def test_ps_and_stats_show_an_ordinary_users_jail_as_its_processes_count_it(
        world_readable_checkout, jail):
    """No cgroups for an ordinary user's jail: its memory (PSS), CPU time and processes are
    those of its processes, read from /proc; what only a cgroup counts stays unknown."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": "/nonexistent"}

    def jailkit(*args):
        return subprocess.run([sys.executable, "-m", "jailkit", *args], env=env, text=True,
                              capture_output=True, preexec_fn=as_nobody, timeout=60, cwd="/")

    log = Path(f"/tmp/jailkit-{NOBODY}/busy.log")
    try:
        started = jailkit("run", "shell", "--root", str(jail), "--name", "busy", "--detach",
                          "--", "/bin/sh", "-c", "i=0; while [ $i -lt 300000 ]; do "
                          "i=$((i+1)); done; echo counted; exec sleep 60")
        assert started.returncode == 0, started.stderr
        wait_for(lambda: "counted" in log.read_text(), seconds=60, what="the busy loop")
        import json

        row = json.loads(jailkit("ps", "--json").stdout)[0]
        assert row["memory"] > 0 and row["cpu_seconds"] > 0, row
        table = jailkit("ps").stdout.splitlines()
        assert table[0].split()[3] == "MEMORY" and table[1].split()[3] != "-", table
        usage = json.loads(jailkit("stats", "busy", "--json").stdout)
        assert usage["memory_current"] > 0 and usage["cpu_usec"] > 0, usage
        assert usage["pids"] == 2, usage  # pid 1 and the service, now sleep
        assert usage["memory_peak"] is None and usage["oom_kills"] is None
    finally:
        jailkit("stop", "busy", "--timeout", "0")
        for name in ("busy.log", "busy.log.1"):
            (log.parent / name).unlink(missing_ok=True)


@pytest.mark.parametrize("sets, cause", [
    (["network=veth"], "network 'veth' needs root"),
    (["cgroup.pids_max=10"], "cgroup limits (pids_max) need root"),
    (["cgroup.cpu_weight=400"], "cgroup limits (cpu_weight) need root"),
    (["user.uid=33"], "an ordinary user can only map one id"),
])
def test_what_needs_root_is_a_one_line_error(run, sets, cause):
    result = run("/bin/true", sets=sets)
    assert result.returncode == 2
    assert result.stderr.startswith("jailkit: ") and result.stderr.count("\n") == 1
    assert cause in result.stderr



@pytest.mark.parametrize("options, typed", [
    (["--memory", "64M"], "--memory"),
    (["--pids", "32", "--cpu-quota", "50%"], "--pids, --cpu-quota"),
    (["--set", "cgroup.memory_max=64M"], "--set cgroup.memory_max=null"),  # or the profile's
])
def test_a_cgroup_limit_as_an_ordinary_user_names_the_fixes_that_work(run, options, typed):
    """jailkit makes its groups at the top of each hierarchy, which only root can write (a
    systemd scope delegated to the user is elsewhere, and this host's controllers are v1,
    which systemd never delegates): the fixes are root, or the run without the limit."""
    result = run("/bin/true", options=options)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"run without them: {'' if typed.startswith('--set') else 'leave out '}{typed}" \
        in result.stderr, result.stderr
    assert "run as root" in result.stderr and "systemd-run" not in result.stderr


def test_subordinate_ids_give_an_ordinary_user_several_ids(world_readable_checkout, jail):
    # /etc/subuid and /etc/subgid with a range for nobody, only in a private mount namespace of
    # this test (never on the host); newuidmap reads them there
    with tempfile.NamedTemporaryFile("w", prefix="jailkit-subid-", delete=False) as f:
        f.write("nobody:200000:65536\n")
    os.chmod(f.name, 0o644)
    try:
        script = (
            f"mount --bind {f.name} /etc/subuid && mount --bind {f.name} /etc/subgid && "
            "cd / && exec setpriv --reuid=65534 --regid=65534 --clear-groups "
            f"env PATH=/usr/bin:/bin PYTHONPATH={world_readable_checkout} "
            + " ".join(command(world_readable_checkout, jail, "/bin/sh", "-c",
                               f"'{PROBE} ids; exec sleep 30'",
                               sets=["user.uid=33", "user.gid=33"]))
        )
        # unshare and sh exec: the process becomes the launcher, then its waiter
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                 script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline() == "uid 33 euid 33 gid 33 egid 33\n", proc.stderr
            service = list(descendants(proc.pid))[1]  # after the reaper
            # the host's view of the service's ids (inside, its map is its nested namespace's)
            uid_map = Path(f"/proc/{service}/uid_map").read_text().splitlines()
        finally:
            proc.kill()
            proc.wait(10)
    finally:
        os.unlink(f.name)
    assert [line.split() for line in uid_map] == [["0", "65534", "1"], ["1", "200000", "65535"]]


def test_a_service_failing_at_once_ends_its_error_with_the_doctor_hint(run, jail):
    result = run(sets=['command=["/bin/sh", "-c", "exit 4"]'])
    assert result.returncode == 4
    line = result.stderr.splitlines()[-1]
    assert line.startswith("jailkit: ") and "status 4" in line, result.stderr
    assert line.endswith(f"to see why: jailkit doctor shell --root {jail}"), result.stderr
    # a session typed into the service is ended by its user: no hint
    typed = run(options=["-i"], input="exit 3\n")
    assert typed.returncode == 3 and typed.stderr == "", typed.stderr


def nobody_dry_run(checkout, jail_dir, subids, *sets):
    """`run --dry-run` as nobody, with the file `subids` as /etc/subuid and /etc/subgid."""
    return subprocess.run(
        [*nobody_with_subids(subids), *command(checkout, jail_dir, "/bin/true", sets=sets,
                                               options=["--dry-run"])],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(checkout)}, text=True,
        capture_output=True, timeout=60)


def one_line(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("jailkit: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


SWITCHING = 'capabilities=["CAP_SETUID", "CAP_SETGID"]'


def test_a_service_that_may_switch_ids_needs_every_user_of_its_jail_mapped(
        world_readable_checkout, jail, subid_file):
    """The shell jail's /etc/passwd holds root and nobody (65534): a service that may switch ids
    may become nobody, which must then be mapped (else its setuid fails late, inside)."""
    others = subid_file("someone:100000:65536\n")
    line = one_line(nobody_dry_run(world_readable_checkout, jail, others, SWITCHING))
    assert "uid 65534 (nobody), gid 65534 (nogroup) mapped" in line, line
    # the range it suggests begins after the ranges given already
    assert "usermod --add-subuids 165536-231071 --add-subgids 165536-231071 nobody" in line, line
    small = subid_file("nobody:200000:1000\n")
    line = one_line(nobody_dry_run(world_readable_checkout, jail, small, SWITCHING))
    assert "uid 65534 (nobody)" in line and "ids 1-1000 only" in line, line
    assert "widen that range" in line and "as root" in line, line
    # without switching, nobody need not be mapped; a writable directory's owner must be
    line = one_line(nobody_dry_run(world_readable_checkout, jail, others,
                                   'writable=[{"path": "/tmp", "uid": 33, "gid": 33}]'))
    assert "the jail needs uid 33, gid 33 mapped" in line, line
    assert nobody_dry_run(world_readable_checkout, jail, others).returncode == 0
    covered = nobody_dry_run(world_readable_checkout, jail,
                             subid_file("nobody:200000:65536\n"), SWITCHING)
    assert covered.returncode == 0, covered.stderr
    assert "uid 1-65535 -> 200000-265534" in covered.stdout and "(newuidmap)" in covered.stdout


def test_state_directory_is_bound_for_an_ordinary_user(run, jail):
    state = jail / "state" / "spool"
    state.mkdir(parents=True)
    os.chown(state, NOBODY, NOBODY)  # as `nobody` built it
    try:
        result = run("/bin/sh", "-c", "echo kept > /tmp/file",
                     sets=['writable=[{"path": "/tmp", "kind": "bind", "source": "spool"}]'])
        assert result.returncode == 0, result.stderr
        assert (state / "file").read_text() == "kept\n"
        assert (state / "file").stat().st_uid == NOBODY
    finally:
        shutil.rmtree(jail / "state")


# --- the read-only mounts are locked, and pid 1 is no file of the user's (test_launch_locks.py)


@pytest.fixture(scope="module")
def lock_probe(jail):
    target = add_lock_probe(jail)
    os.chown(target, NOBODY, NOBODY)
    yield LOCK_PROBE
    target.unlink()


@pytest.mark.parametrize("attack", ATTACKS)
def test_read_only_mounts_are_locked(run, jail, lock_probe, attack):
    # nobody's own jail: before the lock, a writable remount of / wrote into nobody's tree
    check_attack_failed(run(lock_probe, *attack.split(), sets=ATTACKER), jail)


@pytest.fixture
def own_install(world_readable_checkout):
    """jailkit as an ordinary user installs it: the package with its reaper beside
    jailkit/launch/, owned by the user (so a jail that reached the reaper file could chmod it)."""
    prefix = Path(tempfile.mkdtemp(prefix="jailkit-prefix-"))
    prefix.chmod(0o755)
    shutil.copytree(world_readable_checkout / "jailkit", prefix / "jailkit")
    reaper = prefix / "jailkit" / "launch" / "jailkit-reaper"
    os.chown(reaper, NOBODY, NOBODY)
    reaper.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix)


def test_pid_1_executable_cannot_be_changed_from_the_jail(own_install, jail, lock_probe):
    reaper = own_install / "jailkit" / "launch" / "jailkit-reaper"
    before = reaper.stat()
    result = subprocess.run(
        [sys.executable, "-m", "jailkit", "run", "shell", "--root", jail,
         "--set", f"capabilities={PID1_REACH}", "--set", f"dangerous_capabilities={PID1_REACH}",
         "--", lock_probe, "pid1-exe"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(own_install)},
        preexec_fn=as_nobody, capture_output=True, text=True, timeout=60, cwd="/",
    )
    done = steps(result.stdout)
    assert "readlink" in done, result.stderr
    after = reaper.stat()
    assert (after.st_mode, after.st_uid, after.st_size) == (before.st_mode, before.st_uid,
                                                            before.st_size)
    assert done["fchmod" if "fchmod" in done else "open-read"] != "ok"
    assert done["chmod"] != "ok" and done["open-write"] != "ok"
    link = done["readlink"]  # unreadable now; were it readable, no host file
    assert not link.startswith("/") or link.startswith("/memfd:jailkit-reaper"), link
