"""The second attacker's pass, on what came after the first: `run --publish` (the waiter's relay),
`jailkit import` of an archive asking for live binds, and `jailkit doctor`'s fix lines.

Each test is an attack that worked when it was written: it fails until the hole is closed.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import PROBE_IN_JAIL as PROBE
from conftest import REPO, probe_jail, run_jailkit, traversable_dir, wait_for
from exporting import export, imported, rewrite

pytestmark = pytest.mark.usefixtures("as_root")

PREFIX = "a2"
PORT = 18080  # in each publish test's own network namespace


@pytest.fixture(scope="module")
def base():
    with traversable_dir("jailkit-attacks2-") as base:  # the jails' unprivileged root passes
        yield base


@pytest.fixture(scope="module")
def shell_archive(base) -> Path:
    built = run_jailkit("build", "shell", "--root", base / "shell", timeout=300)
    assert built.returncode == 0, built.stderr
    result = export("shell", base / "shell", "tar", base / "shell.tar")
    assert result.returncode == 0, result.stderr
    return base / "shell.tar"


# -- import: the archive's live binds ---------------------------------------------------------

def test_import_refuses_an_archive_binding_the_host_root_unless_accepted(shell_archive, base):
    """import treats the archive as hostile, but took its `binds` as they came: a launch.json
    that mounts the host's / read-write and exec at /tmp/host imported without a word, and
    `jailkit run` as root then handed the jail the host's file system. Now the import is refused,
    naming each bind and the flag that accepts them, and nothing is written; accepted, each
    bind is in the notes."""
    def bind_host_root(document):
        document["binds"] = [{"path": "/tmp/host", "source": "/", "rw": True, "exec": True}]

    archive = rewrite(shell_archive, base / "binds.tar", None, launch=bind_host_root)
    jail = base / "imported-binds"
    try:
        refused = run_jailkit("import", archive, "--root", jail, timeout=120)
        assert refused.returncode != 0 and refused.stderr.count("\n") == 1, refused.stderr
        assert "/ at /tmp/host (read-write, exec)" in refused.stderr
        assert "--accept-binds" in refused.stderr
        assert not jail.exists()  # nothing restored
        accepted = run_jailkit("import", archive, "--root", jail, "--accept-binds", timeout=120)
        assert accepted.returncode == 0, accepted.stderr
        assert "a bind: the host's / at /tmp/host (read-write, exec)" in accepted.stderr
    finally:
        shutil.rmtree(jail, ignore_errors=True)


def test_import_says_an_archive_runs_without_the_default_limits(shell_archive, base):
    """A jail built by root gets memory_max 512m and pids_max 512 (launch.json's `cgroup`); an
    archive whose launch.json drops them imports silently and runs without any limit."""
    def no_limits(document):
        document["cgroup"] = {}

    archive = rewrite(shell_archive, base / "nolimits.tar", None, launch=no_limits)
    jail = base / "imported-bare"
    result = imported(archive, jail)
    try:
        planned = run_jailkit("run", "shell", "--root", jail, "--dry-run", timeout=60)
        assert planned.returncode == 0, planned.stderr
        # nothing limits it (cgroup v1's files or v2's)
        assert not any(f in planned.stdout for f in ("memory.limit_in_bytes", "memory.max",
                                                     "pids.max")), planned.stdout
        said = result.stdout + result.stderr
        assert result.returncode != 0 or ("memory_max" in said and "pids_max" in said), said
    finally:
        shutil.rmtree(jail, ignore_errors=True)


# -- doctor: fix lines steered by the service's own file names --------------------------------

EVIL_PATH = '/x"]\n[binds."/host"]\nsource = "/"\nrw = true\nexec = true\n#/f'


def test_doctor_fix_line_cannot_be_steered_into_a_host_bind(base, shell_archive):
    """The service names a file to create whose name closes doctor's TOML string and opens a
    table of its own: doctor's `fix` line (the profile text to add) then mounts the host's /
    read-write and exec into the jail. Every fix must be one line of TOML that says only what
    doctor means it to."""
    script = f"echo > '{EVIL_PATH}'; exit 1"
    result = run_jailkit("doctor", "shell", "--root", base / "shell", "--timeout", "20",
                         "--json", "--", "/bin/sh", "-c", script, timeout=120)
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert findings, result.stdout
    for finding in findings:
        fix = finding["fix"]
        assert "\n" not in fix and "\n" not in finding["detail"], finding
        if fix.startswith("[writable."):
            assert list(tomllib.loads(fix)) == ["writable"], fix


# -- run --publish: the relay's 512 connections -----------------------------------------------

@pytest.fixture(scope="module")
def closing(base) -> Path:
    """A jail whose service (service_probe listen) closes each connection as it accepts it."""
    return probe_jail(base, "loop")


HOLD = """
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for i in range(count):  # a few at a time: the service's listen backlog is 16
    held.append(socket.create_connection(("127.0.0.1", port), timeout=60))
    if len(held) % 8 == 0:
        assert all(s.recv(1) == b"" for s in held[-8:])  # the service has closed each
assert all(s.recv(1) == b"" for s in held)
print("held", len(held), flush=True)
sys.stdin.read()  # and keeps them, sending nothing
"""

ONE = """
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
    print("served" if s.recv(1) == b"" else "data")
except ConnectionError:
    print("reset")
"""


def test_a_client_cannot_hold_the_relay_after_the_service_closed(closing, names, net):
    """The relay keeps a connection until both ways have ended, and a client that never ends
    its own keeps it forever, after the service closed it, whatever the service's timeouts:
    512 such connections from one client (reaper.c RELAY_CONNECTIONS, across every published
    port of the jail) and every other client is reset, for as long as that client likes."""
    name = names("hold")
    started = subprocess.run(
        [*net, sys.executable, "-m", "jailkit", "run", "loop", "--root", closing, "--name", name,
         "--net", "veth", "--detach", "-p", f"127.0.0.1:{PORT}:80", "--", PROBE, "listen",
         "80", "0"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert started.returncode == 0, started.stderr
    wait_for(lambda: "listening" in Path(f"/run/jailkit/{name}.log").read_text(),
             what="the service")
    holder = subprocess.Popen([*net, sys.executable, "-c", HOLD, str(PORT), "512"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held 512\n"

        def served() -> bool:
            one = subprocess.run([*net, sys.executable, "-c", ONE, str(PORT)],
                                 capture_output=True, text=True, timeout=30)
            return one.stdout.strip() == "served"
        wait_for(served, seconds=30, what="a new client to be relayed while another holds "
                                          "512 connections the service has closed")
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert run_jailkit("stop", name, timeout=60).returncode == 0


# -- run --publish: host memory the relay holds for a client that does not read ----------------

HUGE = 64 << 20  # a file nginx serves: far beyond what the relay should hold per connection


@pytest.fixture(scope="module")
def nginx(base) -> Path:
    built = run_jailkit("build", "nginx", "--root", base / "nginx", "--set", "port=80",
                        timeout=300)
    assert built.returncode == 0, built.stderr
    with open(base / "nginx/current/root/var/www/html/huge.bin", "wb") as f:
        f.truncate(HUGE)
    return base / "nginx"


STALL = """
import socket, sys
conns = []
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never reads
    s.connect(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"GET /huge.bin HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    conns.append(s)
print("stalled", len(conns), flush=True)
sys.stdin.read()
"""


def tcp_memory(enter) -> int:
    """Bytes queued in every TCP socket of the test's network namespace (the relay's, and the
    clients' own, whose receive buffers are 4 KiB): `ss -tm`'s r (received, unread) + w
    (queued to send)."""
    out = subprocess.run([*enter, "ss", "-tmnH"], capture_output=True, text=True).stdout
    total = 0
    for field in out.replace("(", ",").replace(")", ",").split(","):
        if field[:1] in "rw" and field[1:].isdigit():
            total += int(field[1:])
    return total


def test_a_client_that_does_not_read_cannot_pin_host_memory_through_the_relay(nginx, names,
                                                                               net):
    """A client asks for a big file and never reads. Without the relay, what nginx has sent
    and the client not read waits in nginx's socket (the jail's: its memory cgroup on v2) and
    the client's small window. Through the relay, the relay's socket to the jail keeps reading
    (its receive buffer autotuned to MiBs while it read fast) and its socket to the client
    queues MiBs more: ~11 MiB of host kernel memory a connection, outside the jail's cgroups,
    512 connections ~6 GiB: past tcp_mem, every TCP socket of the host is starved. The relay's
    socket buffers must be bounded (SO_RCVBUF/SO_SNDBUF)."""
    name = names("stall")
    started = subprocess.run(
        [*net, sys.executable, "-m", "jailkit", "run", "nginx", "--root", nginx, "--name", name,
         "--net", "veth", "--detach", "-p", f"127.0.0.1:{PORT}:80"], capture_output=True,
        text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert started.returncode == 0, started.stderr
    count = 8
    staller = subprocess.Popen([*net, sys.executable, "-c", STALL, str(PORT), str(count)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert staller.stdout.readline() == f"stalled {count}\n"
        held = []

        def settled() -> bool:  # until the relay's queues stop growing
            held.append(tcp_memory(net))
            return len(held) > 20 and held[-1] == held[-20]
        wait_for(settled, seconds=30, what="the relay's queues to settle")
        per_connection = held[-1] / count
        assert per_connection < 2 << 20, (
            f"the relay holds {per_connection / (1 << 20):.1f} MiB of host TCP memory per "
            "connection whose client does not read")
    finally:
        staller.stdin.close()
        staller.wait(30)
    assert run_jailkit("stop", name, timeout=60).returncode == 0


def test_the_oci_note_quotes_the_podman_options_it_suggests(shell_archive, base):
    """`export --format oci` suggests `podman run -v SRC:PATH:FLAGS` for the live binds, with
    the paths as launch.json has them (an imported archive's): pasted into a shell, a mount
    point named `/tmp/a $(...)` runs that command. The suggestion must be shell-quoted."""
    path = "/tmp/a $(id >/dev/null)"

    def odd_bind(document):
        document["binds"] = [{"path": path, "source": "/srv", "rw": False, "exec": False}]

    archive = rewrite(shell_archive, base / "odd.tar", None, launch=odd_bind)
    jail = base / "imported-odd"
    try:
        assert run_jailkit("import", archive, "--root", jail, "--accept-binds",
                           timeout=120).returncode == 0
        result = export("shell", jail, "oci", base / "odd.oci")
        assert result.returncode == 0, result.stderr
        note = next(line for line in result.stderr.splitlines() if "podman run -v" in line)
        suggested = note.split("(podman run ", 1)[1].rsplit(")", 1)[0]
        assert shlex.split(suggested) == ["-v", f"/srv:{path}:ro,nosuid,nodev,noexec"], note
    finally:
        shutil.rmtree(jail, ignore_errors=True)
        shutil.rmtree(base / "odd.oci", ignore_errors=True)


def test_the_state_notes_quote_the_commands_they_suggest(shell_archive, base):
    """The notes on state directories suggest `podman run -v` (oci) and `cp -a` (bundle) with
    the directory and its DIR/state source as launch.json has them (an imported archive's):
    each must stay one shell word, whatever it holds."""
    path, source = "/tmp/b $(id >/dev/null)", "b $(id >/dev/null)"

    def odd_state(document):
        document["writable"] = [{"path": path, "kind": "bind", "source": source}]

    archive = rewrite(shell_archive, base / "odd-state.tar", None, launch=odd_state)
    jail = base / "imported-odd-state"
    try:
        assert run_jailkit("import", archive, "--root", jail, timeout=120).returncode == 0
        oci = export("shell", jail, "oci", base / "odd-state.oci")
        assert oci.returncode == 0, oci.stderr
        note = next(line for line in oci.stderr.splitlines() if "state directory" in line)
        suggested = note.split("(podman run ", 1)[1].split(") and copy", 1)[0]
        assert shlex.split(suggested) == ["-v", f"NAME:{path}"], note
        bundle = export("shell", jail, "bundle", base / "odd-state.bundle")
        assert bundle.returncode == 0, bundle.stderr
        note = next(line for line in bundle.stderr.splitlines() if "state directory" in line)
        copy = note.split("to keep the jail's files: ", 1)[1].split(" (or ", 1)[0]
        assert shlex.split(copy) == ["cp", "-a", f"{jail}/state/{source}/.",
                                     f"{base}/odd-state.bundle/state/{source}/"], note
    finally:
        shutil.rmtree(jail, ignore_errors=True)
        shutil.rmtree(base / "odd-state.oci", ignore_errors=True)
        shutil.rmtree(base / "odd-state.bundle", ignore_errors=True)
