"""`jailkit doctor`: each bundled service with one entry it needs removed; doctor runs it under
strace in its jail and names the cause and the profile line to add."""

import ftplib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    NOBODY,
    SETS_NEEDED,
    as_nobody,
    descendants,
    in_netns,
    jailkit_env,
    run_jailkit,
    wait_for,
)
from services import free_port

pytestmark = pytest.mark.usefixtures("as_root")
PROFILES = Path(__file__).resolve().parent.parent / "jailkit/profiles"


def broken_copy(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    """A copy of bundled profile `name` in tmp_path with each (old, new) text replaced."""
    text = (PROFILES / f"{name}.toml").read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}-broken.toml"
    path.write_text(text)
    return path


def build(profile: Path, jail: Path, *sets: str) -> None:
    options = [arg for key_value in sets for arg in ("--set", key_value)]
    result = run_jailkit("build", profile, "--root", jail, *options, timeout=300)
    assert result.returncode == 0, result.stderr


def start_doctor(profile: Path | str, jail: Path, timeout: float = 6) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jailkit", "doctor", str(profile), "--root",
                             str(jail), "--timeout", str(timeout), "--json"], env=jailkit_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report_of(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err  # something was found
    return json.loads(out)


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the service under doctor never listened")


def fixes(report: dict) -> dict[str, str]:
    return {f["fix"]: f["kind"] for f in report["findings"]}


def test_a_healthy_nginx_is_no_failure_and_its_probes_are_marked(tmp_path):
    """nginx looks for files it goes on without (/etc/localtime, openssl.cnf) before it
    listens: a jail that serves is no failure, and those findings are shown apart as probes."""
    port = free_port()
    build("nginx", tmp_path / "j", f"port={port}", "address=127.0.0.1")
    doctor = start_doctor("nginx", tmp_path / "j")
    wait_port(port, doctor)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
        assert b"nginx is serving this page" in page.read()
    out, err = doctor.communicate(timeout=90)
    assert doctor.returncode == 0, out + err
    report = json.loads(out)
    assert report["stopped"], report
    assert report["findings"], "the host has neither /etc/localtime nor openssl.cnf to probe"
    assert all(f["kind"] == "missing-file" and f["went_on"] for f in report["findings"]), report
    # a file a bundled base brings is fixed by that base, not by naming the file
    fixes = {f["detail"].split('"')[1]: f["fix"] for f in report["findings"]}
    for path, base in (("/usr/lib/ssl/openssl.cnf", "tls"), ("/etc/localtime", "tzdata")):
        if path in fixes:
            assert fixes[path] == f'extends = ["{base}"]', fixes
    text = run_jailkit("doctor", "nginx", "--root", tmp_path / "j", "--timeout", "3", timeout=90)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "nothing the jail refused was found" in text.stdout
    assert "the service went on without" in text.stdout
    assert "\n  fix: " in text.stdout  # each probe still says how to give it the file


def test_nginx_without_mime_types_names_the_file(tmp_path):
    profile = broken_copy(tmp_path, "nginx", ('files = ["/etc/nginx/mime.types"]', "files = []"))
    build(profile, tmp_path / "j", f"port={free_port()}")
    report = report_of(start_doctor(profile, tmp_path / "j"))
    assert report["findings"][0]["fix"] == 'files = ["/etc/nginx/mime.types"]', report
    assert not report["findings"][0]["went_on"]  # it exited: nothing it met was a mere probe
    assert report["status"] == 1 and not report["stopped"]
    text = run_jailkit("doctor", profile, "--root", tmp_path / "j", timeout=90)
    assert text.returncode == 1
    assert 'fix: files = ["/etc/nginx/mime.types"]' in text.stdout
    assert profile.read_text().count("mime.types") == 1  # never changes the profile


def test_nginx_without_a_writable_directory_names_it(tmp_path):
    profile = broken_copy(tmp_path, "nginx", ('[writable."/run"]\nmode = "0755"\nsize = "1m"\n',
                                              ""))
    build(profile, tmp_path / "j", f"port={free_port()}")
    report = report_of(start_doctor(profile, tmp_path / "j"))
    assert fixes(report).get('[writable."/run"]') == "read-only", report


def test_lighttpd_without_its_user_names_the_account(tmp_path):
    profile = broken_copy(
        tmp_path, "lighttpd",
        ('[users.www-data]\nuid = 33\ngid = 33\nhome = "/var/www"\n', ""),
        ("[groups.www-data]\ngid = 33\n", ""),
        ('owner = "www-data"\ngroup = "www-data"\n', ""))
    build(profile, tmp_path / "j", f"port={free_port()}")
    report = report_of(start_doctor(profile, tmp_path / "j"))
    found = [f for f in report["findings"] if f["kind"] == "user"]
    assert found and found[0]["fix"].startswith("[users.www-data] uid = 33"), report


def test_sshd_without_sys_chroot_names_the_capability(tmp_path):
    profile = broken_copy(tmp_path, "sshd", (', "CAP_SYS_CHROOT"', ""))
    port = free_port()
    key = SETS_NEEDED["sshd"]["sftp_pubkey"]
    build(profile, tmp_path / "j", f"port={port}", f"sftp_pubkey={key}")
    doctor = start_doctor(profile, tmp_path / "j", timeout=8)
    wait_port(port, doctor)
    subprocess.run(["ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "sftpuser@127.0.0.1", "true"], capture_output=True, timeout=30)
    report = report_of(doctor)
    found = [f for f in report["findings"] if f["kind"] == "capability"]
    assert found and "CAP_SYS_CHROOT" in found[0]["fix"], report
    assert found[0]["fix"].startswith("[service] capabilities = [")


def test_vsftpd_without_a_pam_module_names_the_library(tmp_path):
    pam = (PROFILES / "pam.toml").read_text()
    module = '    "/usr/lib/*/security/pam_listfile.so",\n'
    assert module in pam
    (tmp_path / "pam.toml").write_text(pam.replace(module, ""))
    profile = broken_copy(tmp_path, "vsftpd", ('extends = ["pam"]', 'extends = ["pam.toml"]'))
    port = free_port()
    build(profile, tmp_path / "j", f"port={port}", "local_password=a passphrase")
    doctor = start_doctor(profile, tmp_path / "j", timeout=8)
    wait_port(port, doctor)
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", port, timeout=10)
        with pytest.raises(ftplib.error_perm):
            ftp.login("ftpuser", "a passphrase")
    report = report_of(doctor)
    wanted = [f for f in report["findings"] if f["fix"].startswith("libraries = [")
              and "pam_listfile.so" in f["fix"]]
    assert wanted and wanted[0]["kind"] == "missing-file", report


def test_a_daemonising_nginx_is_told_to_stay_in_the_foreground(tmp_path):
    profile = broken_copy(tmp_path, "nginx", ("daemon off;", "daemon on;"))
    build(profile, tmp_path / "j", f"port={free_port()}")
    report = report_of(start_doctor(profile, tmp_path / "j"))
    found = [f for f in report["findings"] if f["kind"] == "daemon"]
    assert found and "daemon off;" in found[0]["fix"], report


def test_a_refused_syscall_and_a_taken_port_from_a_command(tmp_path):
    jail = tmp_path / "py"
    build("python3", jail)
    script = ("import ctypes, socket\n"
              "print(ctypes.CDLL(None, use_errno=True).unshare(0x04000000))\n"  # CLONE_NEWUTS
              "a = socket.socket(); a.bind(('127.0.0.1', 8765)); a.listen()\n"
              "socket.socket().bind(('127.0.0.1', 8765))\n")
    result = run_jailkit("doctor", "python3", "--root", jail, "--json", "--",
                         "/usr/bin/python3", "-c", script, timeout=90)
    assert result.returncode == 1, result.stderr
    found = fixes(json.loads(result.stdout))
    assert found.get('[service] seccomp_allow = ["unshare"]') == "seccomp", found
    port_fix = next(fix for fix, kind in found.items() if kind == "port")
    assert f"jailkit build python3 --root {jail} --set port=N" in port_fix, port_fix


def test_port_fixes_suggest_no_capability(tmp_path, netns):
    """Below 1024 in the host's network a jail's capability does not help (the network is
    not the jail's user namespace's): the fix is a network of its own. In a veth jail every
    port may be bound, and a port in use is the service's own, not the host's."""
    jail = tmp_path / "py"
    build("python3", jail)
    twice = ("import socket\n"
             "a = socket.socket(); a.bind(('0.0.0.0', 80)); a.listen()\n"
             "socket.socket().bind(('0.0.0.0', 80))\n")
    veth = subprocess.run([*in_netns(netns), sys.executable, "-m", "jailkit", "doctor",
                           "python3", "--root", str(jail), "--net", "veth", "--json", "--",
                           "/usr/bin/python3", "-c", twice], env=jailkit_env(),
                          capture_output=True, text=True, timeout=90)
    assert veth.returncode == 1, veth.stderr
    ports = [f for f in json.loads(veth.stdout)["findings"] if f["kind"] == "port"]
    assert len(ports) == 1 and "already in use" in ports[0]["detail"], ports
    assert "host" not in ports[0]["detail"] and "CAP_" not in ports[0]["fix"], ports
    low = "import socket; socket.socket().bind(('127.0.0.1', 80))"
    host = run_jailkit("doctor", "python3", "--root", jail, "--net", "host", "--json", "--",
                       "/usr/bin/python3", "-c", low, timeout=90)
    assert host.returncode == 1, host.stderr
    ports = [f for f in json.loads(host.stdout)["findings"] if f["kind"] == "port"]
    assert len(ports) == 1 and "below 1024" in ports[0]["detail"], ports
    assert 'network = "veth"' in ports[0]["fix"] and "CAP_" not in ports[0]["fix"], ports


def test_doctor_of_a_jail_on_a_privileged_host_port_names_its_own_fix(tmp_path):
    """What `run` refuses before starting is refused by doctor too, with doctor's fix lines:
    a network of its own, where port 80 binds (doctor publishes nothing)."""
    jail = tmp_path / "web"
    build("nginx", jail, "port=80")
    result = run_jailkit("doctor", "nginx", "--root", jail, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.endswith(f"jailkit doctor nginx --root {jail} --net veth\n")
    assert "jailkit run" not in result.stderr and "--set port=8080" in result.stderr


def test_doctor_of_a_jail_never_built_is_one_line(tmp_path):
    result = run_jailkit("doctor", "nginx", "--root", tmp_path / "none")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_an_ordinary_user_doctors_its_own_jail(world_readable_checkout):
    base = Path(tempfile.mkdtemp(prefix="jailkit-doctor-nobody-"))
    try:
        os.chown(base, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
               "HOME": "/nonexistent"}

        def nobody(*args):
            return subprocess.run([sys.executable, "-m", "jailkit", *args], env=env, cwd="/",
                                  text=True, capture_output=True, preexec_fn=as_nobody,
                                  timeout=120)

        assert nobody("build", "shell", "--root", str(base / "j")).returncode == 0
        result = nobody("doctor", "shell", "--root", str(base / "j"), "--json", "--",
                        "/bin/sh", "-c", "echo x > /srv/out")
        assert result.returncode == 1, result.stderr
        found = fixes(json.loads(result.stdout))
        assert found.get('[writable."/srv"]') == "read-only", found
    finally:
        shutil.rmtree(base)


def test_a_jail_run_refuses_is_its_one_line(tmp_path):
    jail = tmp_path / "j"
    build("shell", jail)
    (jail / "current/launch.json").write_text("{}")
    result = run_jailkit("doctor", "shell", "--root", jail, "--", "/bin/true", timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "launch spec" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_doctor_stopped_by_a_signal_stops_what_it_started(tmp_path, signum):
    """A signal to doctor alone (not its process group: strace runs in a session of its own)
    stops strace and the traced jail and removes doctor's temporary directory."""
    jail, scratch = tmp_path / "j", tmp_path / "tmpdir"
    build("shell", jail)
    scratch.mkdir()
    env = dict(jailkit_env(), TMPDIR=str(scratch))
    proc = subprocess.Popen([sys.executable, "-m", "jailkit", "doctor", "shell", "--root",
                             str(jail), "--timeout", "120", "--", "/bin/sleep", "600"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = wait_for(lambda: (lambda below: below if any(
            _comm(p) == "sleep" for p in below) else None)(descendants(proc.pid)), 60)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0 and err.count("\n") == 1 and "interrupted" in err, err
    left = [p for p, start in started.items() if descendants(1).get(p) == start]
    for pid in left:  # the processes this test started, by pid and start time
        os.kill(pid, signal.SIGKILL)
    assert not left, f"doctor left {left} running"
    assert list(scratch.iterdir()) == [], "doctor left its temporary directory"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
