"""Running a bundled service profile for real: build its jail, `jailkit run` it in the background,
wait until its port answers, stop it with SIGTERM and check that nothing is left on the host."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import descendants, jailkit_env, run_jailkit


def free_port() -> int:
    """A TCP port nobody listens on now, picked by the kernel on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(profile: str, root: Path, *sets: str) -> None:
    options = [arg for key_value in sets for arg in ("--set", key_value)]
    result = run_jailkit("build", profile, "--root", root, *options, timeout=300)
    assert result.returncode == 0, result.stderr


def alive(pid: int, started: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19] == started
    except OSError:
        return False


def host_uids(pids) -> set[int]:
    """Real uids (as the host sees them) of the given processes."""
    uids = set()
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            uids.update(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    return uids


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


class Service:
    """`jailkit run PROFILE --root ROOT` as a subprocess of the test; its output goes to a file."""

    def __init__(self, profile: str, root: Path, log: Path):
        self.root = root
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jailkit", "run", profile, "--root", str(root)],
            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env=jailkit_env())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_port(self, port: int, seconds: float = 30) -> None:
        """Until something accepts connections on 127.0.0.1:port (or the service exits)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.log()}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"nothing answers on port {port}: {self.log()}")

    def processes(self) -> dict[int, str]:
        return descendants(self.proc.pid)

    def assert_foreground_under_pid1(self, program: str) -> None:
        """`program` is the direct child of the jail's pid 1 (jailkit's reaper), not a daemon
        that forked away from it."""
        for pid in self.processes():
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f)
            if status["Name"].strip() != program:
                continue
            parent = int(status["PPid"])
            with open(f"/proc/{parent}/status") as f:
                parent_status = dict(line.split(":", 1) for line in f)
            if parent_status["NSpid"].split()[-1] == "1":
                assert parent_status["Name"].strip() == "jailkit-reaper"
                return
        raise AssertionError(f"no {program} whose parent is the jail's pid 1")

    def stop(self) -> int:
        """SIGTERM to jailkit; its exit status, once it and every process it started are gone."""
        inside = self.processes()
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"jailkit run ignored SIGTERM: {self.log()}") from None
        deadline = time.monotonic() + 10
        while any(alive(p, s) for p, s in inside.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p, s in inside.items() if alive(p, s)], "jail processes left running"
        assert mounts_under(self.root) == [], "mounts left under the jail directory"
        return status

    def kill(self) -> None:
        """Cleanup after a failed test: the launcher takes the whole jail with it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def static_site(base: Path, parent: str, files: dict[str, bytes]) -> tuple[Path, Path]:
    """A docroot of our own, and a profile extending `parent` that copies it into the jail at
    the same path: (docroot, profile). Not under pytest's 0700 directories: the jail keeps the
    modes of the host directories above a copied tree, and www-data must get through them."""
    docroot = Path(tempfile.mkdtemp(prefix="jailkit-site-"))
    atexit.register(shutil.rmtree, docroot, True)
    docroot.chmod(0o755)
    for name, data in files.items():
        (docroot / name).write_bytes(data)
        (docroot / name).chmod(0o644)
    profile = base / f"{parent}-site.toml"
    profile.write_text(f'extends = ["{parent}"]\nfiles = ["{docroot}"]\n')
    return docroot, profile


@contextlib.contextmanager
def web_server(profile: Path, base: Path, docroot: Path):
    """The site's jail built on a free port and running: (service, port); killed afterwards."""
    port = free_port()
    build(str(profile), base / "jail", f"port={port}", f"docroot={docroot}")
    service = Service(str(profile), base / "jail", base / "service.log")
    try:
        service.wait_port(port)
        yield service, port
    finally:
        service.kill()


def http_get(port: int, path: str) -> tuple[int, str | None, bytes]:
    """(status, Content-Type, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, None, e.read()
