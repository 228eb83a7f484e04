"""`jailkit run --publish`: a veth jail reached through a host port, relayed by its waiter.

Real services (the bundled `nginx` profile, and the `shell` profile with service_probe's echo),
real clients (curl, Python sockets), each test in a network namespace of its own (the `netns`
fixture: the veth, its routes and the published ports never touch the host's network), where
127.0.0.1 is that namespace's. Every wait is bounded; after each test nothing of its jails is
left: no process, port, veth, cgroup or registry entry.
"""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROBE_IN_JAIL as PROBE
from conftest import REPO, probe_jail, run_jailkit, traversable_dir, wait_for

pytestmark = pytest.mark.usefixtures("as_root")

PREFIX = "p"  # names of this module's jails
ECHO_PORT = 7
PORT = 18080  # free in every test's own network namespace
BIG = 8 << 20  # bytes: far beyond every buffer on the way
ECHO_COMMAND = ["--", PROBE, "echo", str(ECHO_PORT)]


@pytest.fixture(scope="module")
def base():
    with traversable_dir("jailkit-publish-") as base:
        yield base


@pytest.fixture(scope="module")
def nginx(base) -> Path:
    """The bundled nginx profile on port 80 (its own network's), with a big file to serve."""
    built = run_jailkit("build", "nginx", "--root", base / "nginx", "--set", "port=80",
                        timeout=120)
    assert built.returncode == 0, built.stderr
    (base / "nginx/current/root/var/www/html/big.bin").write_bytes(os.urandom(BIG))
    return base / "nginx"


@pytest.fixture(scope="module")
def echo(base) -> Path:
    return probe_jail(base, "echo")


def jailkit(enter: list[str], *args, timeout=60) -> subprocess.CompletedProcess:
    """`jailkit ARGS` in the test's network namespace (where the veth and the ports are)."""
    return subprocess.run([*enter, sys.executable, "-m", "jailkit", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def detach(enter, jail: Path, name: str, *args) -> subprocess.CompletedProcess:
    profile = "nginx" if jail.name == "nginx" else "echo"
    return jailkit(enter, "run", profile, "--root", jail, "--name", name, "--net", "veth",
                   "--detach", *args)


def ps() -> dict:
    listed = run_jailkit("ps", "--json", timeout=30)
    assert listed.returncode == 0, listed.stderr
    return {row["name"]: row for row in json.loads(listed.stdout)}


def relay_of(waiter: int) -> int:
    """The waiter's relay child (jailkit-reaper's `wait --publish`)."""
    def find():
        with open(f"/proc/{waiter}/task/{waiter}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/comm") as comm:
                    if comm.read().strip() == "jailkit-publish":
                        return int(child)
        return None
    return wait_for(find, what="the relay")


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


CLIENT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("open")
except ConnectionRefusedError:
    print("closed")
"""


def port_state(enter, port: int = PORT) -> str:
    return subprocess.run([*enter, sys.executable, "-c", CLIENT, str(port)], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def veths(enter) -> str:
    links = subprocess.run([*enter, "ip", "-o", "link"], capture_output=True, text=True).stdout
    return "".join(line for line in links.splitlines() if ": jk" in line)


def nothing_left(enter, name: str, processes: list[int]) -> None:
    assert port_state(enter) == "closed"
    assert all(gone(p) for p in processes), processes
    assert veths(enter) == ""
    assert name not in ps() and not os.path.exists(f"/run/jailkit/{name}.json")
    assert not glob.glob(f"/sys/fs/cgroup/*/jailkit/{name}")


def curl(enter, url: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*enter, "curl", "-sS", "--max-time", "30", *args, url],
                          capture_output=True, timeout=60)


def test_nginx_is_served_through_a_published_port_until_the_jail_stops(nginx, names, net):
    name = names("nginx")
    result = detach(net, nginx, name, "--publish", f"127.0.0.1:{PORT}:80")
    assert result.returncode == 0, result.stderr
    row = ps()[name]
    address = row["address"]
    assert f"; address {address}, published 127.0.0.1:{PORT}->80/tcp;" in result.stdout
    assert row["published"] == [{"host_addr": "127.0.0.1", "host_port": PORT, "jail_port": 80}]
    table = run_jailkit("ps", timeout=30).stdout
    line = next(line for line in table.splitlines() if line.startswith(name + " "))
    assert f"veth {address} 127.0.0.1:{PORT}->80/tcp" in line
    with open(f"/proc/{row['jail_pid']}/comm") as f:  # ps and stop find pid 1, not the relay
        assert f.read() == "jailkit-reaper\n"
    # a multi-megabyte body, intact
    fetched = curl(net, f"http://127.0.0.1:{PORT}/big.bin")
    assert fetched.returncode == 0, fetched.stderr
    expected = (nginx / "current/root/var/www/html/big.bin").read_bytes()
    assert hashlib.sha256(fetched.stdout).digest() == hashlib.sha256(expected).digest()
    page = curl(net, f"http://127.0.0.1:{PORT}/", "-w", "%{http_code}")
    assert page.stdout.endswith(b"200") and b"nginx is serving" in page.stdout
    relay = relay_of(row["pid"])
    stopped = run_jailkit("stop", name, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    nothing_left(net, name, [row["pid"], row["jail_pid"], relay])


RESET_MIDWAY = """
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"GET /big.bin HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
got = 0
while got < 1 << 16:
    got += len(s.recv(1 << 16))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()  # a reset while the relay is still writing the answer
print("reset")
"""


def test_a_client_reset_midway_ends_its_connection_not_the_relay(nginx, names, net):
    """The relay is writing an answer (splice(2) from its pipe) when the client resets: the
    error ends that connection, and the relay goes on serving the next ones."""
    name = names("reset")
    result = detach(net, nginx, name, "--publish", f"127.0.0.1:{PORT}:80")
    assert result.returncode == 0, result.stderr
    relay = relay_of(ps()[name]["pid"])
    for _ in range(5):
        reset = subprocess.run([*net, sys.executable, "-c", RESET_MIDWAY, str(PORT)],
                               capture_output=True, text=True, timeout=60)
        assert reset.stdout == "reset\n", reset.stderr
    fetched = curl(net, f"http://127.0.0.1:{PORT}/big.bin")
    assert fetched.returncode == 0, fetched.stderr
    assert len(fetched.stdout) == BIG
    assert not gone(relay)
    assert run_jailkit("stop", name, timeout=60).returncode == 0


def test_the_relay_keeps_nothing_of_roots(echo, names, net):
    """The relay reads whatever any client sends, on the host: as root with every capability,
    a flaw in it was the host's. It runs as nobody, with no capability, no way to gain one and
    a seccomp filter, and still relays."""
    name = names("confined")
    result = detach(net, echo, name, "--publish", f"127.0.0.1:{PORT}:{ECHO_PORT}", *ECHO_COMMAND)
    assert result.returncode == 0, result.stderr
    relay = relay_of(ps()[name]["pid"])
    with open(f"/proc/{relay}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].strip() == ""
    assert all(int(status[c], 16) == 0 for c in ("CapInh", "CapPrm", "CapEff", "CapAmb"))
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    sent = subprocess.run([*net, sys.executable, "-c", SEND_SMALL, str(PORT)],
                          capture_output=True, text=True, timeout=60)
    assert sent.stdout == "echoed\n", sent.stderr
    assert not gone(relay)  # its filter let it do its whole job
    assert run_jailkit("stop", name, timeout=60).returncode == 0


SEND_SMALL = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"ping")
s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(4096):
    got += chunk
print("echoed" if got == b"ping" else got)
"""


ECHO = """
import hashlib, os, socket, sys, threading
data = os.urandom(int(sys.argv[2]))
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
def send():
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)  # the echo ends once it sees this end of input
sender = threading.Thread(target=send)
sender.start()
back = hashlib.sha256()
size = 0
while chunk := conn.recv(1 << 16):
    back.update(chunk)
    size += len(chunk)
sender.join()
print(size, back.hexdigest() == hashlib.sha256(data).hexdigest())
"""


def test_a_privileged_port_on_the_hosts_network_is_refused_and_publishing_it_works(
        nginx, names, net):
    """nginx on port 80 of the host's network (the profile's own network) could not bind it,
    not even in root's jail (its root is no host root; net.ipv4.ip_unprivileged_port_start is
    1024): refused before it starts, in one line naming the rebuild with the profile's port
    variable and the run that publishes the port from a network of its own, which serves."""
    for dry_run in ([], ["--dry-run"]):
        refused = jailkit(net, "run", "nginx", "--root", nginx, *dry_run)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "port 80" in refused.stderr
        assert f"jailkit build nginx --root {nginx} --set port=8080" in refused.stderr
        assert f"jailkit run nginx --root {nginx} --net veth --publish 80:80" in refused.stderr
    name = names("low")
    started = jailkit(net, "run", "nginx", "--root", nginx, "--name", name, "--net", "veth",
                      "--publish", "80:80", "--detach")
    assert started.returncode == 0, started.stderr
    page = curl(net, "http://127.0.0.1:80/", "-w", "%{http_code}")
    assert page.stdout.endswith(b"200"), page.stderr
    assert run_jailkit("stop", name, timeout=60).returncode == 0


def test_a_big_upload_comes_back_intact_and_the_half_close_is_passed_on(echo, names, net):
    """Both ways at once, 8 MiB each; the client's end of input reaches the service (which
    closes only then), while the other way stays open until the echo is all back."""
    name = names("echo")
    result = detach(net, echo, name, "-p", f"127.0.0.1:{PORT}:{ECHO_PORT}",
                    "-p", f"127.0.0.1:{PORT + 1}:9",  # nothing listens on 9 in the jail
                    *ECHO_COMMAND)
    assert result.returncode == 0, result.stderr
    row = ps()[name]
    wait_for(lambda: "echoing" in Path(row["log"]).read_text(), what="the echo service")
    relay = relay_of(row["pid"])
    for _ in range(2):
        echoed = subprocess.run([*net, sys.executable, "-c", ECHO, str(PORT), str(BIG)],
                                capture_output=True, text=True, timeout=60)
        assert echoed.stdout.split() == [str(BIG), "True"], echoed.stderr
        # a port nothing answers on in the jail: that client is reset, the jail carries on
        # (over loopback the reset comes before connect() returns: "couldn't connect")
        refused = curl(net, f"http://127.0.0.1:{PORT + 1}/")
        assert refused.returncode in (7, 52, 56), refused
    assert ps()[name]["pid"] == row["pid"] and relay_of(row["pid"]) == relay
    assert run_jailkit("stop", name, timeout=60).returncode == 0
    nothing_left(net, name, [row["pid"], relay])
    assert port_state(net, PORT + 1) == "closed"


MANY = """
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
port, count = int(sys.argv[1]), int(sys.argv[2])
served = refused = 0
conns = []
for _ in range(count):
    try:
        conns.append(socket.create_connection(("127.0.0.1", port), timeout=20))
    except ConnectionResetError:  # reset by the relay before connect() returned
        refused += 1
for conn in conns:  # every connection open at once, each then asked for a page
    try:
        conn.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        reply = conn.recv(4096)
        served += reply.startswith(b"HTTP/1.1 200")
        refused += reply == b""
    except ConnectionResetError:
        refused += 1
for conn in conns:
    conn.close()
print(served, refused)
"""


def many(enter, count: int) -> list[int]:
    result = subprocess.run([*enter, sys.executable, "-c", MANY, str(PORT), str(count)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [int(n) for n in result.stdout.split()]


def test_many_connections_at_once_and_a_bound_beyond_which_they_are_refused(nginx, names, net):
    name = names("many")
    result = detach(net, nginx, name, "-p", f"127.0.0.1:{PORT}:80")
    assert result.returncode == 0, result.stderr
    assert many(net, 300) == [300, 0]
    # the relay holds 512 connections at once (reaper.c RELAY_CONNECTIONS); more are reset
    assert many(net, 600) == [512, 88]
    assert many(net, 50) == [50, 0]  # and serves again once they ended
    assert run_jailkit("stop", name, timeout=60).returncode == 0
    assert port_state(net) == "closed"


HOLD = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_port_in_use_is_one_line_and_nothing_is_left(nginx, names, net):
    holder = subprocess.Popen([*net, sys.executable, "-c", HOLD, str(PORT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        name = names("busy")
        for args in (["--detach"], []):  # detached, and in the foreground
            result = jailkit(net, "run", "nginx", "--root", nginx, "--name", name, "--net",
                             "veth", "-p", f"127.0.0.1:{PORT}:80", *args)
            assert result.returncode != 0
            assert result.stderr.count("\n") == 1, result.stderr
            assert f"127.0.0.1:{PORT}: the port is in use" in result.stderr
            assert "Traceback" not in result.stderr
            assert veths(net) == "" and name not in ps()
            assert not os.path.exists(f"/run/jailkit/{name}.json")
            assert not glob.glob(f"/sys/fs/cgroup/*/jailkit/{name}")
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_kill_9_of_the_waiter_closes_the_port(nginx, names, net):
    name = names("killed")
    result = detach(net, nginx, name, "-p", f"127.0.0.1:{PORT}:80")
    assert result.returncode == 0, result.stderr
    row = ps()[name]
    relay = relay_of(row["pid"])
    assert port_state(net) == "open"
    os.kill(row["pid"], signal.SIGKILL)
    wait_for(lambda: gone(relay) and gone(row["jail_pid"]), what="the relay's and jail's end")
    nothing_left(net, name, [row["pid"], row["jail_pid"], relay])  # ps cleaned its cgroups


def test_restart_keeps_publishing(nginx, names, net):
    name = names("restart")
    result = detach(net, nginx, name, "-p", f"127.0.0.1:{PORT}:80")
    assert result.returncode == 0, result.stderr
    first = ps()[name]
    restarted = jailkit(net, "restart", name)
    assert restarted.returncode == 0, restarted.stderr
    assert f"published 127.0.0.1:{PORT}->80/tcp" in restarted.stdout
    again = ps()[name]
    assert again["pid"] != first["pid"] and again["published"] == first["published"]
    page = curl(net, f"http://127.0.0.1:{PORT}/", "-o", "/dev/null", "-w", "%{http_code}")
    assert page.stdout == b"200", page.stderr
    assert run_jailkit("stop", name, timeout=60).returncode == 0
    assert port_state(net) == "closed"


def test_a_foreground_veth_run_says_its_address_and_ports(echo, names, net):
    name = names("fg")
    result = jailkit(net, "run", "echo", "--root", echo, "--name", name, "--net", "veth",
                     "-p", f"{PORT}:{ECHO_PORT}", "--", "/bin/true")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"jailkit: {name}: address 10.213.")
    assert result.stderr.endswith(f", published 0.0.0.0:{PORT}->{ECHO_PORT}/tcp\n")
    assert port_state(net) == "closed" and veths(net) == ""


@pytest.mark.parametrize(("args", "expected"), [
    (["--publish", "8080:80"], "add --net veth"),
    (["--net", "none", "-p", "8080:80"], "a jail with network 'none' has none"),
    # a privileged port on the host's network is refused too, but what was asked is a publish
    (["--net", "host", "--set", "ports.bind=[80]", "-p", "127.0.0.1:8080:80"],
     "a jail with network 'host' has none: add --net veth"),
    (["--net", "veth", "-p", "8080"], "give [HOSTADDR:]HOSTPORT:JAILPORT"),
    (["--net", "veth", "-p", "0:80"], "HOSTPORT '0' is not a port from 1 to 65535"),
    (["--net", "veth", "-p", "80:65536"], "JAILPORT '65536' is not a port"),
    (["--net", "veth", "-p", "localhost:80:80"], "'localhost' is not an IPv4 or IPv6 address"),
    (["--net", "veth", "-p", "::1:80:80"], "an IPv6 address goes in brackets"),
    (["--net", "veth", "-p", "53:53/udp"], "only TCP ports are published"),
    (["--net", "veth", "-p", "80:80", "-p", "0.0.0.0:80:81"], "0.0.0.0:80 is published twice"),
    (["--net", "veth", "-p", "192.0.2.1:8080:80"], "this host has no address 192.0.2.1"),
])
def test_bad_publish_is_one_line_naming_the_fix(echo, names, net, args, expected):
    name = names("bad")
    result = jailkit(net, "run", "echo", "--root", echo, "--name", name, *args, "--", "/bin/true")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert veths(net) == "" and name not in ps()
