"""`jailkit run` in real namespaces: a real jail built by `jailkit build shell`, real escapes.

Launched as root here; as `nobody` in test_launch_nobody.py. A static probe (launch_probe.c,
compiled with gcc) is placed in the jail to try what a shell cannot.
"""

import contextlib
import fcntl
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    PROBE,
    REPO,
    descendants,
    host_uid,
    in_netns,
    jailkit_run,
    mount_points,
    run_jailkit,
    start,
    stop,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("as_root")

def sh(jail: Path, script: str, **kwargs):
    return jailkit_run(jail, "/bin/sh", "-c", script, **kwargs)


def links_in(netns: int) -> set[str]:
    out = subprocess.run([*in_netns(netns), "ip", "-o", "link"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def direct_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


# --- the command runs, and its status comes back -----------------------------------------


def own_cgroup_procs() -> str:
    with open("/proc/self/cgroup") as f:
        unified = next(line for line in f if line.startswith("0::")).strip()[3:]
    hybrid = f"/sys/fs/cgroup/unified{unified}/cgroup.procs"
    return hybrid if os.path.exists(hybrid) else f"/sys/fs/cgroup{unified}/cgroup.procs"


@pytest.mark.parametrize("busy", [False, True])
def test_the_waiter_keeps_no_child_but_the_jail(jail, busy):
    """As root the launcher first starts a process of its own (cgroup.prime: the kernel's wait
    before the jail's first cgroup move begins while Python still plans); the waiter it becomes
    reaps it, so the jail's pid 1 is all that stays below it, dead or alive. Busy: other cgroup
    moves keep the kernel's lock ready, so that process ends at once, before the launcher blocks
    signals (its SIGCHLD is lost)."""
    stop_moving = threading.Event()

    def move_ourselves():  # into the group we are in: a no-op move, as `prime` makes
        while not stop_moving.wait(0.002):
            with open(own_cgroup_procs(), "w") as f:
                f.write(str(os.getpid()))

    mover = threading.Thread(target=move_ourselves)
    if busy:
        mover.start()
    try:
        proc = start(jail, "/bin/sleep", "30")
    finally:
        stop_moving.set()
        if busy:
            mover.join()
    try:
        assert wait_for(lambda: len(direct_children(proc.pid)) == 1,
                        what="the waiter to reap every child but the jail's pid 1")
    finally:
        stop(proc)



def test_runs_command_and_passes_exit_status(jail):
    result = sh(jail, "echo in-jail; exit 7")
    assert result.returncode == 7, result.stderr
    assert result.stdout == "in-jail\n"


def test_killed_by_signal_is_128_plus_n(jail):
    assert sh(jail, "kill -KILL $$").returncode == 128 + 9


def test_missing_command_is_127_with_a_message(jail):
    result = jailkit_run(jail, "/bin/no-such-program")
    assert result.returncode == 127
    assert "cannot run /bin/no-such-program" in result.stderr


# --- the caller's terminal and stdin -----------------------------------------------------------


def test_background_run_does_not_read_the_callers_stdin(jail):
    # not interactive (stdin is not a terminal): the service reads /dev/null, not the pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "jailkit", "run", "shell", "--root", jail, "--", "/bin/cat"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"typed for the caller\n")
        proc.stdin.flush()  # and the pipe stays open
        assert proc.wait(20) == 0
        assert proc.stdout.read() == b""
    finally:
        stop(proc)
        proc.stdin.close()


def test_interactive_flag_passes_stdin_through(jail):
    result = run_jailkit("run", "-i", "shell", "--root", jail, "--", "/bin/cat",
                         input="hello\n", timeout=60)
    assert result.stdout == "hello\n", result.stderr


def run_on_a_terminal(jail: Path, script: str, typed: bytes) -> tuple[bytes, int]:
    """Run `script` in the jail from a session whose controlling terminal is a pty of the test's
    (so the launcher is in the terminal's foreground group); type `typed` once the waiter has
    made that terminal raw (keys typed before reach the jail too, but a ^D typed in cooked mode
    would become a NUL byte when the mode changes, as it would under `ssh -t`); return (what
    the terminal showed, the host terminal's device number)."""
    master, slave = os.openpty()
    host_tty = os.fstat(slave).st_rdev
    proc = subprocess.Popen(
        [sys.executable, "-m", "jailkit", "run", "shell", "--root", jail, "--", "/bin/sh", "-c",
         script], env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=slave, stdout=slave,
        stderr=slave, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    try:
        wait_for(lambda: not termios.tcgetattr(slave)[3] & termios.ICANON,
                 what="the caller's terminal to be raw")
        os.close(slave)
        slave = None
        os.write(master, typed)
        shown = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            try:
                chunk = os.read(master, 4096) if ready else b"?"
            except OSError:  # EIO: every slave end closed
                break
            if not chunk:
                break
            shown += chunk if chunk != b"?" else b""
            if proc.poll() is not None and not ready:
                break
        assert proc.wait(10) == 0, shown
        return shown, host_tty
    finally:
        stop(proc)
        os.close(master)
        if slave is not None:
            os.close(slave)


def test_interactive_terminal_reaches_the_jail_through_a_pty_of_its_own(jail):
    shown, host_tty = run_on_a_terminal(jail, f"read line; echo got:$line; {PROBE} tty",
                                        b"abc\n")
    assert b"got:abc" in shown
    kind, rdev = shown.split(b"stdin ")[1].split()[:2]
    assert kind == b"tty" and int(rdev) != host_tty  # a terminal, but not the caller's


def test_end_of_input_on_the_terminal_ends_the_jails_input(jail):
    shown, _ = run_on_a_terminal(jail, "cat; echo cat-ended", b"line\n\x04")  # ^D
    assert b"line" in shown and b"cat-ended" in shown


def test_environment_is_only_the_profiles(jail):
    result = jailkit_run(jail, "/bin/env", env={**os.environ, "PYTHONPATH": str(REPO),
                                                "LEAK_ME": "1"})
    assert sorted(result.stdout.split()) == ["HOME=/root", "PATH=/usr/bin:/bin", "TERM=dumb"]


def test_hostname_and_pid_namespace(jail):
    result = sh(jail, "uname -n; echo $$; ls /proc")
    hostname, pid, *listing = result.stdout.split()
    assert hostname == "shell"
    assert pid == "2"  # pid 1 is the reaper
    pids = sorted(int(p) for p in listing if p.isdigit())
    assert pids[:2] == [1, 2] and len(pids) == 3  # reaper, sh, ls


# --- nothing of the host is visible or reachable ----------------------------------------


def test_host_files_cannot_be_seen(jail, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("secret")
    result = sh(jail, f"test -e {marker} && echo vis''ible; ls /; tr '\\0' ' ' < /proc/1/cmdline")
    assert "visible" not in result.stdout
    listing = result.stdout.split()
    # /opt: the host's holds the venv; the jail has its own /var (its dpkg status file)
    assert "home" not in listing and "opt" not in listing and "bin" in listing
    assert "jailkit-reaper adopt" in result.stdout  # /proc/1 is the jail's own pid 1


def test_host_proc_1_root_cannot_be_reached(jail, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("secret")
    # The jail's pid 1 holds CAP_KILL, which the service lacks, so the kernel also refuses the
    # service its /proc/1/root; the service's own root is the jail's.
    result = sh(jail, f"ls /proc/self/root/ ; test -e /proc/1/root{marker} && echo vis''ible;"
                " ls /proc/1/root/ 2>&1")
    assert "visible" not in result.stdout
    own, pid1 = result.stdout.split("ls: ", 1)
    assert sorted(own.split()) == sorted(os.listdir(jail / "current" / "root"))
    assert "Permission denied" in pid1


def test_host_processes_cannot_be_seen_or_killed(jail):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        pid = victim.pid
        result = sh(jail, f"test -e /proc/{pid} && echo vis''ible; {PROBE} kill {pid}")
        assert "visible" not in result.stdout
        assert "kill No such process" in result.stdout
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_classic_chroot_escape_fails(jail, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("secret")
    # without CAP_SYS_CHROOT the chroot itself fails; with it, ".." stops at the pivoted root
    denied = jailkit_run(jail, PROBE, "chroot-escape", str(marker))
    assert denied.stdout.strip() == "chroot Operation not permitted"
    allowed = jailkit_run(jail, PROBE, "chroot-escape", str(marker), sets=[
        'capabilities=["CAP_SYS_CHROOT"]'])
    assert allowed.stdout.strip() == "host file hidden", allowed.stderr


@pytest.mark.parametrize("attempt", ["mount", "mknod", "ptrace 1", "keyctl", "unshare"])
def test_privileged_calls_fail(jail, attempt):
    # even with every capability the profile could list, seccomp refuses these
    result = jailkit_run(jail, PROBE, *attempt.split(), sets=[
        'capabilities=["CAP_SYS_ADMIN", "CAP_MKNOD", "CAP_SYS_PTRACE"]',
        'dangerous_capabilities=["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]'])
    assert result.stdout.split()[1:] == ["Operation", "not", "permitted"], result.stdout


@pytest.mark.parametrize("number", [467, 470, 1000, 0x3FFFFFFF])
def test_syscalls_newer_than_the_review_are_refused(jail, number):
    # 467 is open_tree_attr (Linux 6.15), a mount call a deny list written before it missed;
    # anything above the highest reviewed number is refused until someone reviews it
    result = jailkit_run(jail, PROBE, "syscall", str(number))
    assert result.stdout.strip() == f"syscall {number} Operation not permitted", result.stderr


@pytest.mark.parametrize("family, expected", [
    (40, "Address family not supported by protocol"),  # AF_VSOCK: no network namespace applies
    (17, "Address family not supported by protocol"),  # AF_PACKET, unless seccomp_allow says so
    (5, "Address family not supported by protocol"),  # AF_APPLETALK, one of many unreviewed
    (2, "ok"), (10, "ok"), (1, "ok"), (16, "ok"),  # AF_INET, AF_INET6, AF_UNIX, AF_NETLINK
])
def test_socket_families_a_service_does_not_need_are_refused(jail, family, expected):
    # in a network namespace of its own, with CAP_NET_RAW: the kernel alone would allow AF_PACKET
    result = jailkit_run(jail, PROBE, "socket", str(family), net="none",
                         sets=['capabilities=["CAP_NET_RAW"]'])
    assert result.stdout.strip() == f"socket {expected}", result.stderr


def test_af_packet_when_the_profile_allows_it(jail):
    # seccomp lets the family through; the kernel then asks for CAP_NET_RAW over the jail's
    # network namespace, which belongs to pid 1's user namespace: the service's capabilities
    # are held in its own, nested one (docs/kernel-notes.md, "Locked mounts"), so it is refused
    result = jailkit_run(jail, PROBE, "socket", "17", net="none", sets=[
        'capabilities=["CAP_NET_RAW"]', 'seccomp_allow=["AF_PACKET"]'])
    assert result.stdout.strip() == "socket Operation not permitted", result.stderr


def test_dangerous_capability_at_run_needs_the_same_opt_in(jail):
    refused = jailkit_run(jail, "/bin/true", sets=['capabilities=["CAP_SYS_PTRACE"]'])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--set 'dangerous_capabilities=[\"CAP_SYS_PTRACE\"]'" in refused.stderr
    sets = ['capabilities=["CAP_SYS_PTRACE"]', 'dangerous_capabilities=["CAP_SYS_PTRACE"]']
    accepted = jailkit_run(jail, "/bin/true", sets=sets)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stderr == ("jailkit: warning: CAP_SYS_PTRACE opens reading and writing the "
                               "memory of every process in the jail, pid 1 included "
                               "(/proc/PID/mem)\n")
    options = [arg for key_value in sets for arg in ("--set", key_value)]
    dry = run_jailkit("run", "shell", "--root", jail, "--dry-run", *options)
    assert "danger    CAP_SYS_PTRACE opens reading and writing" in dry.stdout, dry.stderr


def test_no_nested_user_namespace(jail):
    result = jailkit_run(jail, PROBE, "clone-userns")
    assert result.stdout.startswith("clone-userns ") and "ok" not in result.stdout, result.stdout


def test_root_and_dev_and_proc_sys_are_read_only(jail):
    result = sh(jail, "touch /x 2>&1; touch /etc/x 2>&1; echo 1 > /proc/sys/kernel/ostype; "
                      "echo b > /proc/sysrq-trigger || echo no-sysrq; touch /dev/x; "
                      "test -c /dev/null && echo null-is-char; echo ok > /tmp/w && cat /tmp/w")
    assert result.stdout.count("Read-only file system") == 2
    assert result.stderr.count("Read-only file system") == 2  # /proc/sys and /dev
    assert "no-sysrq" in result.stdout
    assert "null-is-char" in result.stdout and "ok" in result.stdout


def test_state_directory_is_owned_by_the_jails_ids_not_host_root(jail):
    state = jail / "state" / "spool"
    state.mkdir(parents=True)
    try:
        result = sh(jail, "echo kept > /tmp/file; cp /usr/bin/jkprobe /tmp/p; chmod 4755 /tmp/p; "
                          "grep ' /tmp ' /proc/self/mountinfo",
                    sets=['writable=[{"path": "/tmp", "kind": "bind", "source": "spool"}]'])
        assert result.returncode == 0, result.stderr
        assert "nosuid" in result.stdout.split()[5] and "nodev" in result.stdout.split()[5]
        assert (state / "file").read_text() == "kept\n"  # persistent, on the host's disk
        owner = (state / "file").stat().st_uid
        assert owner != 0 and state.stat().st_uid == owner  # the jail's root, as a mapped id
        assert (state / "p").stat().st_uid == owner  # its setuid file is not a host root one
    finally:
        shutil.rmtree(jail / "state")


def test_sys_only_when_asked_and_read_only(jail):
    assert "no-sys" in sh(jail, "test -e /sys/class || echo no-sys").stdout
    missing = sh(jail, "true", sets=["mount_sys=true"])
    assert missing.returncode == 2
    assert missing.stderr.startswith("jailkit: ") and missing.stderr.count("\n") == 1
    assert "the jail has no directory /sys" in missing.stderr
    sys_dir = jail / "current" / "root" / "sys"
    sys_dir.mkdir()
    try:
        result = sh(jail, "ls /sys/class/net; echo x > /sys/kernel/uevent_helper",
                    sets=["mount_sys=true"])
        assert "lo" in result.stdout.split()
        assert "Read-only file system" in result.stderr
    finally:
        sys_dir.rmdir()


def test_callers_open_fd_is_not_inherited(jail, tmp_path):
    with open(tmp_path / "secret", "w") as f:
        result = jailkit_run(jail, PROBE, "fds", pass_fds=[f.fileno()])
    assert result.stdout.strip() == "fds", result.stderr


# --- privileges ----------------------------------------------------------------------------


def status_fields(jail, sets=()):
    result = sh(jail, "cat /proc/self/status", sets=sets)
    return dict(line.split(":\t") for line in result.stdout.splitlines() if ":\t" in line)


def test_non_root_user_has_no_capabilities_no_new_privs_and_seccomp(jail):
    fields = status_fields(jail, sets=["user.uid=65534", "user.gid=65534"])
    assert fields["Uid"].split()[0] == "65534"
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    assert int(fields["CapBnd"], 16) == 0 and int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"


def test_listed_capability_is_kept_for_non_root_user(jail):
    fields = status_fields(jail, sets=["user.uid=65534", "user.gid=65534",
                                       'capabilities=["CAP_NET_BIND_SERVICE"]'])
    assert int(fields["CapEff"], 16) == 1 << 10
    assert int(fields["CapBnd"], 16) == 1 << 10


def test_pid_1_alone_keeps_kill(jail):
    # pid 1 holds CAP_KILL (and nothing else) for itself; the service does not get it.
    result = sh(jail, "grep -E '^Cap(Eff|Bnd)' /proc/1/status /proc/self/status",
                sets=["capabilities=[]"])
    fields = {}
    for line in result.stdout.splitlines():
        where, name, value = line.replace(":", " ", 2).split()
        fields[where.split("/")[2], name] = int(value, 16)
    assert fields["1", "CapEff"] == 1 << 5  # CAP_KILL
    assert fields["self", "CapEff"] == 0 and fields["self", "CapBnd"] == 0


def test_stop_signal_reaches_a_service_that_switched_user(jail):
    # As lighttpd does: started as the jail's root, then running as uid 33 (without CAP_KILL).
    proc = start(jail, PROBE, "become", "33", sets=['capabilities=["CAP_SETUID", "CAP_SETGID"]'])
    try:
        assert proc.stdout.readline().startswith("uid 33 euid 33")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
    finally:
        stop(proc)


def test_rlimit_above_the_launchers_hard_limit_is_one_line_naming_it(jail):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    result = sh(jail, "true", sets=[f'rlimits={{"nofile": [64, {hard + 1}]}}'])
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "rlimit nofile" in result.stderr, result.stderr


def test_rlimits_from_the_profile(jail):
    result = sh(jail, "ulimit -Sn; ulimit -Hn", sets=['rlimits={"nofile": [64, 128]}'])
    assert result.stdout.split() == ["64", "128"], result.stderr


def test_jail_root_is_not_host_root(jail):
    # Inside, the service's map is that of its namespace nested in pid 1's ("0 0 N"); the host
    # sees where its ids land.
    assert sh(jail, "cat /proc/self/uid_map").stdout.split()[:2] == ["0", "0"]
    proc = start(jail, "/bin/sleep", "30")
    try:
        service = list(descendants(proc.pid))[-1]
        text = wait_for(lambda: Path(f"/proc/{service}/uid_map").read_text())  # pid 1 writes it
        inside, outside, count = map(int, text.split())
        assert inside == 0 and outside != 0 and count >= 65534
        assert host_uid(service) == outside
    finally:
        stop(proc)


def test_several_ids_are_mapped_for_services_that_switch(jail):
    # nginx's master drops its workers to www-data (33): the id must exist, as a host uid that
    # is neither root nor the jail's root
    proc = start(jail, PROBE, "become", "33", sets=['capabilities=["CAP_SETUID", "CAP_SETGID"]'])
    try:
        assert proc.stdout.readline().strip() == "uid 33 euid 33 gid 33 egid 33"
        worker = list(descendants(proc.pid))[-1]
        base = host_uid(list(descendants(proc.pid))[0])  # the reaper runs as the jail's root
        assert base != 0 and host_uid(worker) == base + 33
    finally:
        stop(proc)


def test_explicitly_passed_fd_reaches_the_service(jail, tmp_path):
    out = tmp_path / "out"
    with open(out, "w") as f:
        fd = f.fileno()
        result = run_jailkit("run", "shell", "--root", jail, "--pass-fd", fd, "--",
                             PROBE, "write-fd", fd, "through\n", pass_fds=[fd])
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "through\n"


def test_smuggled_setuid_binary_gains_nothing(jail):
    root = jail / "current" / "root"
    smuggled = root / "usr/bin/jkprobe-suid"
    shutil.copy(root / PROBE.lstrip("/"), smuggled)
    os.chown(smuggled, 0, 0)
    smuggled.chmod(0o4755)
    try:
        result = jailkit_run(jail, "/usr/bin/jkprobe-suid", "ids",
                             sets=["user.uid=65534", "user.gid=65534"])
        assert result.stdout.strip() == "uid 65534 euid 65534 gid 65534 egid 65534"
    finally:
        smuggled.unlink()


# --- lifecycle -------------------------------------------------------------------------------


def test_sigterm_is_forwarded(jail):
    proc = start(jail, "/bin/sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; "
                                        "while :; do sleep 0.05; done")
    try:
        assert proc.stdout.readline() == "ready\n"  # the trap is set
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 42
        assert "got-term" in proc.stdout.read()
    finally:
        stop(proc)


def test_profiles_stop_signal_replaces_sigterm(jail):
    proc = start(jail, "/bin/sh", "-c", "trap 'exit 43' USR1; trap 'exit 44' TERM; echo ready; "
                                        "while :; do sleep 0.05; done",
                 sets=["stop_signal=SIGUSR1"])
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 43
    finally:
        stop(proc)


def test_sigint_and_sighup_are_forwarded(jail):
    for sig in (signal.SIGINT, signal.SIGHUP):
        proc = start(jail, "/bin/sleep", "30")
        try:
            proc.send_signal(sig)
            assert proc.wait(10) == 128 + sig
        finally:
            stop(proc)


def test_jail_dies_with_its_launcher(jail):
    proc = start(jail, "/bin/sleep", "30")
    inside = descendants(proc.pid)
    proc.kill()
    proc.wait(10)
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in inside))


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def test_nothing_is_left_behind(jail, netns):
    mounts, nets, files = mount_points(), links(), tree(jail)
    test_links = links_in(netns)
    proc = start(jail, "/bin/sleep", "30", netns=netns, sets=[
        "network=veth", "cgroup.memory_max=64M", "cgroup.pids_max=32"])
    try:
        inside = descendants(proc.pid)
        # named from the jail (its directory's name), not from the launcher's pid
        groups = [f"/sys/fs/cgroup/{c}/jailkit/shell" for c in ("unified", "memory", "pids")]
        assert all(os.path.isdir(g) for g in groups)
        assert f"jk{proc.pid}" in links_in(netns)
        assert mount_points() == mounts  # the jail's mounts live in its own namespace only
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
    finally:
        stop(proc)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in inside)
    assert not any(os.path.exists(g) for g in groups)
    assert links_in(netns) == test_links
    assert links() == nets
    assert mount_points() == mounts
    assert tree(jail) == files


# --- resources and network -------------------------------------------------------------------


def test_memory_limit_kills_a_hog(jail):
    # the hog stops at 256 MiB by itself, so a broken limit costs at most that
    result = jailkit_run(jail, PROBE, "hog", "256", sets=["cgroup.memory_max=32M"])
    assert result.returncode == 128 + signal.SIGKILL, result.stdout
    assert "allocated" not in result.stdout
    unlimited = jailkit_run(jail, PROBE, "hog", "48")
    assert unlimited.stdout.strip() == "allocated 48 MiB"


def test_pids_limit_stops_a_fork_flood(jail):
    # at most 64 forks are ever tried; all die with the jail's pid 1
    result = jailkit_run(jail, PROBE, "forks", "64", sets=["cgroup.pids_max=16"])
    made = int(result.stdout.split()[1])
    assert 0 < made < 16  # pid 1 and the probe count too


def test_network_none_has_only_loopback(jail):
    result = sh(jail, "cat /proc/net/dev", net="none")
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_network_defaults_to_none(jail):
    # the `shell` profile says nothing about its network
    result = run_jailkit("run", "shell", "--root", jail, "--dry-run")
    assert "network   none" in result.stdout, result.stderr
    assert '"network": "none"' in (jail / "current" / "launch.json").read_text()


@contextlib.contextmanager
def tcp_listener():
    """A listening socket of the test's own on a free 127.0.0.1 port (the backlog accepts)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield server.getsockname()[1]


def test_host_network_binds_only_the_listed_ports(jail):
    with tcp_listener() as port_a, tcp_listener() as port_b:
        pass  # two ports free a moment ago, now closed again
    sets = [f"ports.bind=[{port_a}]"]
    allowed = jailkit_run(jail, PROBE, "bind-tcp", str(port_a), net="host", sets=sets)
    assert allowed.stdout.strip() == "bind-tcp ok", allowed.stderr
    refused = jailkit_run(jail, PROBE, "bind-tcp", str(port_b), net="host", sets=sets)
    assert refused.stdout.strip() == "bind-tcp Permission denied", refused.stderr


def test_host_network_connects_only_to_the_listed_ports(jail):
    with tcp_listener() as listed, tcp_listener() as other:
        sets = [f"ports.connect=[{listed}]"]
        allowed = jailkit_run(jail, PROBE, "connect-tcp", str(listed), net="host", sets=sets)
        assert allowed.stdout.strip() == "connect-tcp ok", allowed.stderr
        refused = jailkit_run(jail, PROBE, "connect-tcp", str(other), net="host", sets=sets)
        assert refused.stdout.strip() == "connect-tcp Permission denied", refused.stderr


def test_host_abstract_unix_socket_cannot_be_reached(jail):
    # abstract unix sockets belong to the network namespace, which `host` shares
    name = f"jailkit-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("\0" + name)
        server.listen(1)
        result = jailkit_run(jail, PROBE, "connect-abstract", name, net="host")
    assert result.stdout.strip() == "connect-abstract Operation not permitted", result.stderr


WITHOUT_LANDLOCK = """
import os, struct, sys
from jailkit.launch import syscalls as sc
# a kernel without Landlock, as far as this process and its children can tell: the version
# query (landlock_create_ruleset, 444) fails with ENOSYS
insns = [(0x20, 0, 0, 0), (0x15, 0, 1, 444), (0x06, 0, 0, 0x00050000 | 38),
         (0x06, 0, 0, 0x7FFF0000)]
sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
sc.set_seccomp_filter(b"".join(struct.pack("=HBBI", *insn) for insn in insns))
os.execv(sys.executable, [sys.executable, "-m", "jailkit", "run", *sys.argv[1:]])
"""


def run_without_landlock(jail: Path, *args):
    return subprocess.run([sys.executable, "-c", WITHOUT_LANDLOCK, "shell", "--root", jail,
                           "--net", "host", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_kernel_without_landlock_is_said_warned_or_refused(jail):
    dry = run_without_landlock(jail, "--dry-run")
    assert "landlock  none" in dry.stdout, dry.stderr
    assert "landlock  not enforced on this kernel: TCP port limits" in dry.stdout
    ran = run_without_landlock(jail, "--", "/bin/true")
    assert ran.returncode == 0
    assert ran.stderr == ("jailkit: warning: not enforced on this kernel: TCP port limits "
                          "(Landlock ABI 4, Linux 6.7); abstract unix socket and signal scoping "
                          "(Landlock ABI 6, Linux 6.12)\n")
    refused = run_without_landlock(jail, "--set", "require_landlock=true", "--", "/bin/true")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "which the profile requires (require_landlock)" in refused.stderr
    on_this_kernel = jailkit_run(jail, "/bin/true", net="host", sets=["require_landlock=true"])
    assert on_this_kernel.returncode == 0 and on_this_kernel.stderr == ""


CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], 80), timeout=5) as conn:
    sys.stdout.write(conn.recv(16).decode())
"""


def test_veth_serves_a_low_port_on_the_jails_own_address(jail, netns):
    proc = start(jail, PROBE, "serve", "80", sets=["network=veth"], netns=netns)
    try:
        assert proc.stdout.readline().strip() == "listening"
        out = subprocess.run([*in_netns(netns), "ip", "-o", "-4", "addr", "show", "dev",
                              f"jk{proc.pid}"], capture_output=True, text=True, check=True).stdout
        host_addr = out.split()[3].split("/")[0]
        a, b, c, d = host_addr.split(".")
        jail_addr = f"{a}.{b}.{c}.{int(d) + 1}"
        client = subprocess.run([*in_netns(netns), sys.executable, "-c", CLIENT, jail_addr],
                                capture_output=True, text=True, timeout=30)
        assert client.stdout == "hello\n", client.stderr
        assert proc.wait(10) == 0
    finally:
        stop(proc)


# --- errors ------------------------------------------------------------------------------


def test_no_jail_built_says_how_to_build(tmp_path):
    result = run_jailkit("run", "shell", "--root", tmp_path / "none")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "jailkit build shell --root" in result.stderr


def test_bad_override_is_one_line(jail):
    result = jailkit_run(jail, "/bin/true", sets=["network=wifi"])
    assert result.returncode == 2
    assert result.stderr == "jailkit: launch spec: network must be one of host, none, veth, " \
                            "got 'wifi'\n"


def test_no_user_namespaces_is_one_line_naming_the_cause(jail):
    # a user namespace of the test's own in which no further one may be made
    script = ("echo 0 > /proc/sys/user/max_user_namespaces && "
              f"exec {sys.executable} -m jailkit "
              f"run shell --root {jail} -- /bin/true")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.startswith("jailkit: cannot create the jail's namespaces (No space left")
    assert result.stderr.count("\n") == 1 and "max_user_namespaces" in result.stderr


def test_usage_errors_look_like_click(jail):
    result = run_jailkit("run", "--net", "wifi", "shell")
    assert result.returncode == 2
    assert "Error: Invalid value for '--net'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "--set KEY=VALUE" in run_jailkit("run", "--help").stdout


def test_dry_run_prints_the_plan_and_runs_nothing(jail):
    result = run_jailkit("run", "shell", "--root", jail, "--dry-run", "--net", "veth")
    assert result.returncode == 0, result.stderr
    assert "tmpfs  /tmp" in result.stdout and "proc   /proc" in result.stdout
    assert "network   veth" in result.stdout


def test_run_of_another_profile_in_a_jail_is_refused(jail):
    """`run nginx --root <the shell jail>` would start the shell jail's service as if it were
    nginx's: refused, naming the jail's profile."""
    result = run_jailkit("run", "nginx", "--root", jail, "--", "/bin/true", timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "'shell'" in result.stderr and "not 'nginx'" in result.stderr, result.stderr
