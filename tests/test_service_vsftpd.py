"""The bundled vsftpd profile, for real: built, run by `jailkit run`, used with ftplib and lftp."""

import ftplib
import io
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import NOBODY, run_jailkit, wait_for
from services import Service, build, free_port

pytestmark = pytest.mark.usefixtures("as_root")

TERMINATED = 128 + 15  # vsftpd has no SIGTERM handler: the stop signal ends it
PREFIX = "f"  # names of this module's detached jails: PREFIX, the session's pid, a word
# what PAM says through syslog(3), the only place it says why a login failed
WRONG_PASSWORD = ("syslog authpriv.notice: vsftpd: pam_unix(vsftpd:auth): authentication "
                  "failure; logname= uid=0 euid=0 tty=ftp ruser=ftpuser rhost=127.0.0.1  "
                  "user=ftpuser")
REFUSED_ROOT = ("syslog authpriv.notice: vsftpd: pam_listfile(vsftpd:auth): Refused user root "
                "for service vsftpd")


def free_range(count: int) -> tuple[int, int]:
    """`count` consecutive ports nobody listens on now."""
    for _ in range(100):
        low = random.randrange(40000, 60000)
        sockets = []
        try:
            for port in range(low, low + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return low, low + count - 1
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free port range")


@pytest.fixture(scope="module")
def anon(tmp_path_factory):
    base = tmp_path_factory.mktemp("vsftpd")
    anon_root = base / "pub"
    anon_root.mkdir(mode=0o755)
    (anon_root / "hello.txt").write_text("hello over ftp\n")
    (anon_root / "data.bin").write_bytes(os.urandom(200_000))
    for path in anon_root.iterdir():
        path.chmod(0o644)
    profile = base / "ftpsite.toml"
    # the local user's password from the profile itself
    profile.write_text(f'extends = ["vsftpd"]\nfiles = ["{anon_root}"]\n'
                       '[variables]\nlocal_password = "from the profile"\n')
    return base, profile, anon_root


def build_jail(anon, name: str, *sets: str):
    """The site's jail in base/name on free ports: (root, port, passive range)."""
    base, profile, anon_root = anon
    port = free_port()
    low, high = free_range(8)
    root = base / name
    build(str(profile), root, f"port={port}", f"anon_root={anon_root}", f"pasv_min={low}",
          f"pasv_max={high}", *sets)
    return root, port, (low, high)


def start(anon, name: str, *sets: str):
    base, profile, _ = anon
    root, port, pasv = build_jail(anon, name, *sets)
    service = Service(str(profile), root, base / f"{name}.log")
    service.wait_port(port)
    return service, port, pasv


@pytest.fixture
def vsftpd(anon):
    service, port, pasv = start(anon, "jail")
    try:
        yield service, port, pasv, anon[2]
    finally:
        service.kill()


def connect(port: int) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=10)
    return ftp


def retr(ftp: ftplib.FTP, name: str) -> bytes:
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", out.write)
    return out.getvalue()


def test_anonymous_download_through_the_passive_range(vsftpd):
    service, port, (low, high), anon_root = vsftpd
    ftp = connect(port)
    assert ftp.login().startswith("230")
    assert sorted(ftp.nlst()) == ["data.bin", "hello.txt"]
    assert low <= ftp.makepasv()[1] <= high
    assert retr(ftp, "data.bin") == (anon_root / "data.bin").read_bytes()
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.storbinary("STOR x.txt", io.BytesIO(b"no"))  # anonymous users cannot write
    ftp.quit()
    service.assert_foreground_under_pid1("vsftpd")
    assert service.stop() == TERMINATED, service.log()


def test_local_user_logs_in_through_pam_lists_downloads_uploads(vsftpd):
    service, port, _, _ = vsftpd
    ftp = connect(port)
    assert ftp.login("ftpuser", "from the profile").startswith("230")
    assert ftp.pwd() == "/"  # chrooted into its home
    ftp.cwd("files")
    payload = os.urandom(50_000)
    ftp.storbinary("STOR upload.bin", io.BytesIO(payload))
    assert "upload.bin" in ftp.nlst()
    assert retr(ftp, "upload.bin") == payload
    ftp.quit()
    # kept on the host in the jail's state directory, owned by the user's mapped uid
    stored = service.root / "state/srv/ftp-local/files/upload.bin"
    assert stored.read_bytes() == payload
    assert stored.stat().st_uid != 0
    assert service.stop() == TERMINATED, service.log()


def refuse_wrong_password_and_root(port: int) -> None:
    for user, password in (("ftpuser", "wrong"), ("root", "from the profile")):
        ftp = connect(port)
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.login(user, password)
        ftp.close()


def test_wrong_password_and_root_are_refused_and_say_why_on_stderr(vsftpd):
    """A foreground run: the jail's /dev/log goes to jailkit's stderr."""
    service, port, _, _ = vsftpd
    refuse_wrong_password_and_root(port)
    assert service.stop() == TERMINATED, service.log()
    lines = service.log().splitlines()
    assert WRONG_PASSWORD in lines and REFUSED_ROOT in lines, service.log()


def test_failed_logins_of_a_detached_jail_are_in_its_log(anon, names):
    """The profile names no devices; its jail has /dev/log all the same, and a failed login
    leaves PAM's line in `jailkit logs`, timestamped, as it happens."""
    root, port, _ = build_jail(anon, "detached")
    name = names("logins")
    started = run_jailkit("run", anon[1], "--root", root, "--name", name, "--detach",
                          timeout=60)
    assert started.returncode == 0, started.stderr
    refuse_wrong_password_and_root(port)

    def logged():
        lines = [line.split(" ", 1)[1] for line in
                 run_jailkit("logs", name, timeout=30).stdout.splitlines()]
        return WRONG_PASSWORD in lines and REFUSED_ROOT in lines
    wait_for(logged, seconds=20, what="PAM's lines in the jail's log")
    assert run_jailkit("stop", name, timeout=60).returncode == 0


def test_password_from_set_replaces_the_profiles(anon, tmp_path):
    service, port, _ = start(anon, "jail-set", "local_password=given with set")
    note = tmp_path / "note.txt"
    note.write_text("sent with lftp\n")
    try:
        ftp = connect(port)
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.login("ftpuser", "from the profile")
        ftp.close()
        result = subprocess.run(
            ["lftp", "-u", "ftpuser,given with set", "-p", str(port), "-e",
             f"set ftp:passive-mode on; cls -1 /; put {note} -o /files/note.txt; "
             "cat /files/note.txt; bye", "127.0.0.1"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "/files/\nsent with lftp\n"
        assert service.stop() == TERMINATED, service.log()
    finally:
        service.kill()


def test_an_ordinary_users_jail_logs_failed_logins_too(world_readable_checkout):
    """vsftpd switches between four ids, so an ordinary user runs it with subordinate ids (a
    range for nobody in /etc/subuid and /etc/subgid, bound over the host's files only in this
    test's own mount namespace). Its registry and logs are its own (XDG_RUNTIME_DIR)."""
    base = Path(tempfile.mkdtemp(prefix="jailkit-vsftpd-nobody-"))
    base.chmod(0o711)
    home, subid = base / "home", base / "subid"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    subid.write_text("nobody:300000:65536\n")
    subid.chmod(0o644)
    env = ["PATH=/usr/bin:/bin", f"PYTHONPATH={world_readable_checkout}", f"HOME={home}",
           f"XDG_RUNTIME_DIR={home}"]

    def jailkit(*args):
        script = (f"mount --bind {subid} /etc/subuid && mount --bind {subid} /etc/subgid && "
                  f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
                  + shlex.join(["env", *env, sys.executable, "-m", "jailkit", *args]))
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script], cwd="/", capture_output=True, text=True, timeout=300)

    try:
        port = free_port()
        low, high = free_range(8)
        built = jailkit("build", "vsftpd", "--root", str(home / "ftp"), "--set", f"port={port}",
                        "--set", f"pasv_min={low}", "--set", f"pasv_max={high}", "--set",
                        "local_password=from the profile")
        assert built.returncode == 0, built.stderr
        started = jailkit("run", "vsftpd", "--root", str(home / "ftp"), "--name", "ftp",
                          "--detach")
        assert started.returncode == 0, started.stderr
        assert f"{home}/jailkit/ftp.log" in started.stdout
        refuse_wrong_password_and_root(port)

        def logged():
            lines = [line.split(" ", 1)[1] for line in
                     jailkit("logs", "ftp").stdout.splitlines()]
            return WRONG_PASSWORD in lines and REFUSED_ROOT in lines
        wait_for(logged, seconds=20, what="PAM's lines in the jail's log")
        stopped = jailkit("stop", "ftp")
        assert stopped.returncode == 0, stopped.stderr
    finally:
        jailkit("stop", "ftp", "--timeout", "1")
        shutil.rmtree(base)


def zombies(service: Service) -> list[int]:
    found = []
    for pid in service.processes():
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    found.append(pid)
        except OSError:
            pass
    return found


def test_two_hundred_sessions_in_a_row(vsftpd):
    service, port, _, anon_root = vsftpd
    expected = (anon_root / "hello.txt").read_bytes()
    for _ in range(200):
        ftp = connect(port)
        ftp.login()
        assert retr(ftp, "hello.txt") == expected
        ftp.quit()
    assert service.proc.poll() is None, service.log()
    deadline = time.monotonic() + 10
    while (zombies(service) or len(service.processes()) > 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert zombies(service) == []  # the jail's pid 1 reaped every session
    assert len(service.processes()) == 2  # pid 1 and the listener
    assert service.stop() == TERMINATED, service.log()
