"""`jailkit trace` end to end: trace a real Debian service on the host, build the profile it
writes (unedited), run it in its jail and talk to it with its real client on 127.0.0.1."""

import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from conftest import NOBODY, REPO, as_nobody, run_jailkit
from services import Service, build, free_port

from jailkit.author.trace import parse_log

pytestmark = [pytest.mark.service, pytest.mark.slow]

MEMCACHED_PROBE = ("python3 -c \"import socket; "
                   "s = socket.create_connection(('127.0.0.1', {port})); "
                   "s.sendall(b'version\\r\\n'); assert s.recv(64).startswith(b'VERSION')\"")


def traced(tmp_path, name, probe, *command, duration=30):
    """Trace `command` from tmp_path (its working directory), with a private TMPDIR: the
    profile's path, and the pids strace saw."""
    profile, log = tmp_path / f"{name}.toml", tmp_path / f"{name}.log"
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    env["PYTHONPATH"] = str(REPO)
    args = ["trace", "-o", profile, "--log", log, "--duration", str(duration)]
    if probe:
        args += ["--probe", probe]
    result = run_jailkit(*args, "--", *command, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(scratch.iterdir()) == [], "the trace left files behind"
    pids = {call.pid for call in parse_log(log.read_text())}
    assert pids and not [p for p in pids if os.path.exists(f"/proc/{p}")], "processes left"
    return profile


def memcached_roundtrip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"set jailed 0 0 5\r\nhello\r\nget jailed\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    return data


def test_memcached_profile_from_trace_runs(as_root, tmp_path):
    port = free_port()
    profile = traced(tmp_path, "memcached", MEMCACHED_PROBE.format(port=port),
                     "memcached", "-p", str(port), "-l", "127.0.0.1", "-u", "memcache")
    text = profile.read_text()
    # it switched to memcache: the user, its group and the capabilities to switch
    assert '[users."memcache"]' in text and '[groups."memcache"]' in text
    assert '"CAP_SETUID",' in text and '"CAP_SETGID",' in text
    assert f'"{port}",  # TCP: bind by memcached' in text
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the traced memcached still runs"
    build(str(profile), tmp_path / "jail")
    service = Service(str(profile), tmp_path / "jail", tmp_path / "service.log")
    try:
        service.wait_port(port)
        assert memcached_roundtrip(port) == b"STORED\r\nVALUE jailed 0 5\r\nhello\r\nEND\r\n"
        service.assert_foreground_under_pid1("memcached")
        assert service.stop() == 0, service.log()
    finally:
        service.kill()


def test_redis_profile_from_trace_keeps_its_data(as_root, tmp_path):
    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    profile = traced(tmp_path, "redis", f"redis-cli -p {port} ping",
                     "redis-server", "--port", str(port), "--dir", str(data))
    text = profile.read_text()
    # the data directory it saved into is kept state; its dump from the trace is not copied
    assert f'[writable."{data}"]\nkind = "state"' in text
    # the port it listened on is its readiness check: a detached start returns once it answers
    assert f"ready = {{ tcp = {port} }}" in text
    build(str(profile), tmp_path / "jail")
    name = f"traced-redis-{port}"
    try:
        started = run_jailkit("run", profile, "--root", tmp_path / "jail", "--name", name,
                              "--detach", timeout=60)
        assert started.returncode == 0, started.stderr
        client = ["redis-cli", "-p", str(port)]
        assert subprocess.run([*client, "set", "jailed", "yes"], capture_output=True, text=True,
                              timeout=10).stdout.strip() == "OK"
        assert subprocess.run([*client, "get", "jailed"], capture_output=True, text=True,
                              timeout=10).stdout.strip() == "yes"
    finally:
        stopped = run_jailkit("stop", name, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    dump = tmp_path / "jail" / "state" / str(data).lstrip("/") / "dump.rdb"
    assert b"jailed" in dump.read_bytes()  # saved at SIGTERM, in DIR/state


def test_trace_stops_every_process_it_started(as_root, tmp_path):
    """Children that ignore SIGTERM and one that left its session (a daemon's double fork)
    are stopped too: they came back to the tracer, not to the host's init."""
    script = "trap '' TERM; sleep 600 & (setsid sleep 601 &); exec sleep 602"
    started = time.monotonic()
    profile = traced(tmp_path, "sleepers", None, "/bin/sh", "-c", script, duration=2)
    assert time.monotonic() - started < 30
    assert '"/usr/bin/sleep",' in profile.read_text()


def test_ordinary_user_traces_builds_and_runs(as_root, world_readable_checkout):
    """`nobody` traces redis, builds the profile in its XDG directory and runs it (its own uid
    is the jail's root: no user, no capability)."""
    home = world_readable_checkout / "trace-home"
    (home / "data").mkdir(parents=True)
    for path in (home, home / "data"):
        os.chown(path, NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": str(home)}
    port, profile = free_port(), home / "redis.toml"

    def jailkit(*args, **kwargs):
        return subprocess.run(["/opt/jailkit/bin/python", "-m", "jailkit", *map(str, args)],
                              env=env, cwd=home, text=True, capture_output=True,
                              preexec_fn=as_nobody, timeout=120, **kwargs)

    try:
        result = jailkit("trace", "-o", profile, "--probe", f"redis-cli -p {port} ping",
                         "--", "redis-server", "--port", port, "--dir", home / "data")
        assert result.returncode == 0, result.stderr
        assert "redis-server runs on the host, unconfined, as nobody" in result.stderr
        text = profile.read_text()
        assert "[users." not in text and "capabilities" not in text
        assert f'[writable."{home}/data"]' in text
        assert jailkit("build", profile).returncode == 0
        service = subprocess.Popen(
            ["/opt/jailkit/bin/python", "-m", "jailkit", "run", str(profile)], env=env,
            cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, preexec_fn=as_nobody)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and service.poll() is None:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            assert service.poll() is None, service.stderr.read()
            answer = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                    text=True, timeout=10)
            assert answer.stdout.strip() == "PONG"
        finally:
            service.terminate()
            service.wait(timeout=30)
    finally:
        shutil.rmtree(home)


def test_a_service_that_died_by_itself_fails_the_trace(tmp_path):
    """The port is taken: the traced http.server dies at once, and the probe is answered by the
    server already there, before the service has even started or once it has died (or there is
    no probe). The trace fails with one line giving the service's status, and writes no profile
    of that run."""
    profile = tmp_path / "site.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        probe = ("python3 -c \"import socket, time; time.sleep({}); "
                 f"socket.create_connection(('127.0.0.1', {port}))\"")
        for probing in (["--probe", probe.format(0)], ["--probe", probe.format(0)],
                        ["--probe", probe.format(2)], []):
            result = run_jailkit("trace", "-o", profile, "--duration", "4", *probing, "--",
                                 "python3", "-m", "http.server", "--bind", "127.0.0.1",
                                 str(port), cwd=tmp_path, timeout=60)
            assert result.returncode == 1, (probing, result.stderr)
            ours = [line for line in result.stderr.splitlines() if line.startswith("jailkit:")]
            assert ours[0] == ("jailkit: note: /usr/bin/python3 runs on the host, unconfined, as "
                               f"{pwd.getpwuid(os.getuid()).pw_name}, while it is traced"), ours
            ours = ours[1:]
            assert len(ours) == 1, result.stderr  # the rest is the service's own traceback
            assert "exited by itself" in ours[0] and "status 1" in ours[0], ours
            assert not profile.exists()


def test_a_traced_http_server_serves_its_site_not_the_jails_root(as_root, tmp_path):
    """`python3 -m http.server` serves the directory it was started in (it asks getcwd, then
    reads absolute paths): the profile's workdir must be that directory, or the jail's service
    serves the jail's / (its /etc/passwd)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("the site\n")
    (site / "about.html").write_text("about the site\n")
    port = free_port()
    fetch = ("python3 -c \"import urllib.request; "
             f"urllib.request.urlopen('http://127.0.0.1:{port}/index.html'); "
             f"urllib.request.urlopen('http://127.0.0.1:{port}/about.html')\"")
    result = run_jailkit("trace", "-o", tmp_path / "site.toml", "--probe", fetch, "--",
                         "python3", "-m", "http.server", "--bind", "127.0.0.1", str(port),
                         cwd=site, timeout=120)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "site.toml").read_text()
    assert f'workdir = "{site}"' in text
    # the site, two files read in it, is copied whole: no [directories] entry says it again
    assert f'    "{site}",' in text and f'[directories."{site}"]' not in text, text
    build(str(tmp_path / "site.toml"), tmp_path / "jail")
    service = Service(str(tmp_path / "site.toml"), tmp_path / "jail", tmp_path / "service.log")
    try:
        service.wait_port(port)
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{base}/index.html", timeout=10).read() == b"the site\n"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/etc/passwd", timeout=10)
        assert service.stop() == 128 + 15, service.log()  # http.server has no SIGTERM handler
    finally:
        service.kill()
