"""The bundled sshd profile, for real: an sftp-only server used with OpenSSH's sftp and ssh."""

import json
import os
import stat
import subprocess

import pytest
from conftest import run_jailkit, wait_for
from services import Service, build, free_port

pytestmark = pytest.mark.usefixtures("as_root")
PREFIX = "h"  # names of this module's detached jails: PREFIX, the session's pid, a word


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The user's key pair, made here."""
    base = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tester",
                    "-f", base / "id"], check=True)
    return base


@pytest.fixture
def sshd(client):
    port = free_port()
    root = client / "jail"
    build("sshd", root, f"port={port}", "sftp_user=alice", f"sftp_pubkey={client / 'id.pub'}")
    host_key = (root / "current/root/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    (client / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    service = Service("sshd", root, client / "sshd.log")
    try:
        service.wait_port(port)
        yield service, port
    finally:
        service.kill()


def options(client, user="alice", key=None):
    """Only this test's key (or `key`) and the jail's own host key are trusted (no user
    config)."""
    return ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-i", str(key or client / "id"), "-o",
            f"UserKnownHostsFile={client / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", f"User={user}"]


def sftp(client, port, batch: str, user="alice", key=None):
    return subprocess.run(["sftp", *options(client, user, key), "-P", str(port), "-b", "-",
                           "127.0.0.1"], input=batch, capture_output=True, text=True, timeout=60)


def test_host_keys_are_private_and_kept_across_rebuilds(client, sshd):
    service, port = sshd
    keys = service.root / "current/root/etc/ssh"
    for name in ("ssh_host_ed25519_key", "ssh_host_ecdsa_key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
        assert stat.S_IMODE((keys / f"{name}.pub").stat().st_mode) == 0o644
    before = (keys / "ssh_host_ed25519_key").read_bytes()
    build("sshd", service.root, f"port={port}", "sftp_user=alice",
          f"sftp_pubkey={client / 'id.pub'}")
    assert (keys / "ssh_host_ed25519_key").read_bytes() == before
    other = client / "other-jail"
    build("sshd", other, f"sftp_pubkey={client / 'id.pub'}")
    assert (other / "current/root/etc/ssh/ssh_host_ed25519_key").read_bytes() != before
    assert service.stop() == 0, service.log()


def test_sftp_put_and_get_with_the_users_key(client, sshd, tmp_path):
    service, port = sshd
    payload = os.urandom(300_000)
    (tmp_path / "up.bin").write_bytes(payload)
    result = sftp(client, port, f"put {tmp_path / 'up.bin'} up.bin\npwd\n"
                                f"get up.bin {tmp_path / 'down.bin'}\n")
    assert result.returncode == 0, result.stderr + service.log()
    assert "Remote working directory: /files" in result.stdout
    assert (tmp_path / "down.bin").read_bytes() == payload
    assert (service.root / "state/srv/sftp/files/up.bin").read_bytes() == payload
    service.assert_foreground_under_pid1("sshd")
    assert service.stop() == 0, service.log()


def test_shell_commands_and_other_users_are_refused(client, sshd, tmp_path):
    service, port = sshd
    marker = tmp_path / "ran"
    result = subprocess.run(["ssh", *options(client), "-p", str(port), "127.0.0.1",
                             f"echo shell-ran; touch {marker}"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "shell-ran" not in result.stdout
    assert "sftp connections only" in result.stdout + result.stderr
    tty = subprocess.run(["ssh", *options(client), "-tt", "-p", str(port), "127.0.0.1"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert tty.returncode != 0 and "$ " not in tty.stdout
    for user in ("root", "sftpuser"):
        assert sftp(client, port, "ls\n", user=user).returncode != 0
    manifest = json.loads((service.root / "current/manifest.json").read_text())
    names = {e["path"].rsplit("/", 1)[1] for e in manifest["entries"]}
    assert not names & {"sh", "dash", "bash"}  # no shell in the jail to escape to
    assert service.stop() == 0, service.log()


def test_missing_public_key_is_one_line(tmp_path):
    result = run_jailkit("build", "sshd", "--root", tmp_path / "jail")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "no ssh public key" in result.stderr, result.stderr


def test_clients_keep_trusting_the_server_across_update_and_rebuild(client, sshd, tmp_path):
    service, port = sshd
    assert sftp(client, port, "pwd\n").returncode == 0
    assert service.stop() == 0, service.log()
    updated = run_jailkit("update", "sshd", "--root", service.root, "--set", f"port={port}",
                          "--set", "sftp_user=alice", "--set", f"sftp_pubkey={client / 'id.pub'}")
    assert updated.returncode == 0, updated.stderr
    new_port = free_port()
    build("sshd", service.root, f"port={new_port}", "sftp_user=alice",
          f"sftp_pubkey={client / 'id.pub'}")
    known = (client / "known_hosts").read_text()
    (client / "known_hosts").write_text(known.replace(f"]:{port} ", f"]:{new_port} "))
    again = Service("sshd", service.root, tmp_path / "sshd-again.log")
    try:
        again.wait_port(new_port)
        result = sftp(client, new_port, "pwd\n")  # StrictHostKeyChecking against the old key
        assert result.returncode == 0, result.stderr + again.log()
        assert again.stop() == 0, again.log()
    finally:
        again.kill()


def test_failed_logins_of_a_detached_jail_are_in_its_log(client, names, tmp_path):
    """An unknown user and a key the server does not know: both refused, and both in
    `jailkit logs` (sshd -e: its stderr, the jail's log)."""
    port = free_port()
    root = tmp_path / "jail"
    build("sshd", root, f"port={port}", "sftp_user=alice", f"sftp_pubkey={client / 'id.pub'}")
    host_key = (root / "current/root/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    (client / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "stranger"],
                   check=True)
    name = names("logins")
    started = run_jailkit("run", "sshd", "--root", root, "--name", name, "--detach", timeout=60)
    assert started.returncode == 0, started.stderr
    assert sftp(client, port, "ls\n", user="mallory").returncode != 0
    assert sftp(client, port, "ls\n", key=tmp_path / "stranger").returncode != 0

    def logged():
        lines = [line.split(" ", 1)[1] for line in
                 run_jailkit("logs", name, timeout=30).stdout.splitlines()]
        invalid = [line for line in lines if line.startswith("Invalid user mallory from "
                                                               "127.0.0.1 port ")]
        alice = [line for line in lines if line.startswith("Connection closed by "
                                                             "authenticating user alice "
                                                             "127.0.0.1 port ")]
        return invalid and alice
    wait_for(logged, seconds=20, what="sshd's refusals in the jail's log")
    # its monitor could end each refused connection's pre-auth child (CAP_KILL in the jail)
    assert "Operation not permitted" not in run_jailkit("logs", name, timeout=30).stdout
    assert run_jailkit("stop", name, timeout=60).returncode == 0
