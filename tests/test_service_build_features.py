"""What the service profiles need from `jailkit build`: keys and certificates made once per jail
and kept, passwords hashed into the jail's shadow, user names and public keys from variables."""

import ctypes
import os
import stat
import subprocess
import sys

import pytest
from conftest import jailkit_env, run_jailkit

KEY_LINE = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
            "someone@example")


def build(*args):
    return run_jailkit("build", *args, timeout=300)


def pem_blocks(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("-----BEGIN")]


def test_tls_certificate_is_made_once_and_kept_across_rebuilds_and_updates(tmp_path):
    jail = tmp_path / "jail"
    pem = jail / "current/root/etc/nginx/tls/server.pem"
    assert build("nginx-tls", "--root", jail).returncode == 0
    first = pem.read_bytes()
    assert pem_blocks(pem) == ["-----BEGIN PRIVATE KEY-----", "-----BEGIN CERTIFICATE-----"]
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert stat.S_IMODE((jail / "generated").stat().st_mode) == 0o700
    text = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName"],
                          input=first, capture_output=True, check=True).stdout.decode()
    assert "CN = localhost" in text and "IP Address:127.0.0.1" in text

    other_port = build("nginx-tls", "--root", jail, "--set", "port=9443")  # a new generation
    assert other_port.returncode == 0, other_port.stderr
    assert "listen 9443 ssl" in (jail / "current/root/etc/nginx/nginx.conf").read_text()
    assert pem.read_bytes() == first
    assert run_jailkit("update", "nginx-tls", "--root", jail).returncode == 0
    assert pem.read_bytes() == first
    assert run_jailkit("check", "nginx-tls", "--root", jail).returncode == 0

    renamed = build("nginx-tls", "--root", jail, "--set", "server_name=www.example.org")
    assert renamed.returncode == 0, renamed.stderr
    assert pem.read_bytes() != first
    text = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem.read_bytes(),
                          capture_output=True, check=True).stdout.decode()
    assert "CN = www.example.org" in text


def test_dry_run_makes_no_key_and_no_directory(tmp_path):
    result = build("nginx-tls", "--root", tmp_path / "jail", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "note: /etc/nginx/tls/server.pem: a tls-cert made at build time" in result.stdout
    assert not (tmp_path / "jail").exists()


def test_bad_subject_is_one_line(tmp_path):
    result = build("nginx-tls", "--root", tmp_path / "jail", "--set", "server_name=a/CN=b")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "is not a host name" in result.stderr
    assert not list((tmp_path / "jail").glob("gen-*"))


def crypt_check(password: str, hashed: str) -> bool:
    libcrypt = ctypes.CDLL("libcrypt.so.1")
    libcrypt.crypt.restype = ctypes.c_char_p
    libcrypt.crypt.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    return libcrypt.crypt(password.encode(), hashed.encode()) == hashed.encode()


@pytest.fixture
def account_profile(tmp_path):
    path = tmp_path / "acct.toml"
    path.write_text('extends = ["libc"]\nbinaries = ["/bin/true"]\n'
                    '[variables]\nname = "alice"\npw = "first secret"\n'
                    '[users."{{ name }}"]\nuid = 1000\ngid = 1000\n'
                    'password = "{{ pw | crypt }}"\n'
                    '[groups.users]\ngid = 1000\n'
                    '[service]\ncommand = ["/bin/true"]\n')
    return path


def shadow(jail) -> dict[str, str]:
    lines = (jail / "current/root/etc/shadow").read_text().splitlines()
    return {line.split(":")[0]: line.split(":")[1] for line in lines}


def test_password_is_hashed_with_yescrypt_and_kept_while_unchanged(tmp_path, account_profile):
    jail = tmp_path / "jail"
    assert build(account_profile, "--root", jail).returncode == 0
    hashed = shadow(jail)["alice"]
    assert hashed.startswith("$y$") and crypt_check("first secret", hashed)
    assert "first secret" not in (jail / "current/root/etc/shadow").read_text()
    assert "alice:x:1000:1000:" in (jail / "current/root/etc/passwd").read_text()
    again = build(account_profile, "--root", jail)
    assert again.returncode == 0 and "up to date" in again.stdout  # same password, same hash

    changed = build(account_profile, "--root", jail, "--set", "pw=second", "--set", "name=bob")
    assert changed.returncode == 0, changed.stderr
    assert list(shadow(jail)) == ["bob"]
    assert crypt_check("second", shadow(jail)["bob"])
    assert not crypt_check("first secret", shadow(jail)["bob"])


@pytest.mark.parametrize("sets, message", [
    (["name=Not A Name"], "name = 'Not A Name' is not a user name"),
    (["pw="], "--set pw=: an empty value"),  # refused before the account checks
])
def test_bad_account_variables_are_one_line(tmp_path, account_profile, sets, message):
    result = build(account_profile, "--root", tmp_path / "jail",
                   *[arg for s in sets for arg in ("--set", s)])
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.fixture
def keys_profile(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text('extends = ["libc"]\nbinaries = ["/bin/true"]\n'
                    '[variables]\nkey = ""\n'
                    '[templates."/etc/keys"]\ntext = "{{ key | public_keys }}"\n'
                    '[service]\ncommand = ["/bin/true"]\n')
    return path


def test_public_key_from_a_line_or_a_file(tmp_path, keys_profile):
    jail = tmp_path / "jail"
    assert build(keys_profile, "--root", jail, "--set", f"key={KEY_LINE}").returncode == 0
    assert (jail / "current/root/etc/keys").read_text() == KEY_LINE + "\n"
    pub = tmp_path / "id.pub"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "id"],
                   check=True)
    assert build(keys_profile, "--root", jail, "--set", f"key={pub}").returncode == 0
    assert (jail / "current/root/etc/keys").read_text() == pub.read_text()


@pytest.mark.parametrize("value, message", [
    ("", "no ssh public key"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqq", "not an ssh public key line"),
    ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
     "not an ssh public key line"),
    ("/nonexistent/id.pub", "cannot read"),
])
def test_bad_public_key_is_one_line(tmp_path, keys_profile, value, message):
    result = build(keys_profile, "--root", tmp_path / "jail", "--set", f"key={value}")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_generated_directory_is_not_followed_through_a_symlink(tmp_path):
    jail = tmp_path / "jail"
    assert build("nginx-tls", "--root", jail).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(jail / "generated", tmp_path / "moved")
    os.symlink(elsewhere, jail / "generated")
    result = build("nginx-tls", "--root", jail, "--set", "server_name=other")
    assert result.returncode != 0 and "(a symlink?)" in result.stderr, result.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_file_that_is_not_a_public_key_is_not_echoed(tmp_path, keys_profile):
    secret = tmp_path / "secret"
    secret.write_text("root:$y$j9T$notakey:19000:0:99999:7:::\n")
    result = build(keys_profile, "--root", tmp_path / "jail", "--set", f"key={secret}")
    assert result.returncode != 0
    assert f"key line 1 of {secret}" in result.stderr and "$y$" not in result.stderr


@pytest.mark.parametrize("kind, public", [("ssh-host-key-rsa", "ssh-rsa "),
                                          ("ssh-host-key-ecdsa", "ecdsa-sha2-nistp256 "),
                                          ("ssh-host-key-ed25519", "ssh-ed25519 ")])
def test_each_ssh_host_key_kind(tmp_path, kind, public):
    profile = tmp_path / "hk.toml"
    profile.write_text('extends = ["libc"]\nbinaries = ["/bin/true"]\n'
                       f'[generated."/etc/hk"]\nkind = "{kind}"\n'
                       '[service]\ncommand = ["/bin/true"]\n')
    assert build(profile, "--root", tmp_path / "jail").returncode == 0
    root = tmp_path / "jail/current/root/etc"
    assert (root / "hk").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE((root / "hk").stat().st_mode) == 0o600  # the default mode
    assert (root / "hk.pub").read_text().startswith(public)
    check = subprocess.run(["ssh-keygen", "-y", "-f", root / "hk"], capture_output=True,
                           text=True, check=True)
    assert check.stdout.split()[:2] == (root / "hk.pub").read_text().split()[:2]


def test_generated_entry_without_kind_is_one_line(tmp_path):
    profile = tmp_path / "bad.toml"
    profile.write_text('[generated."/etc/hk"]\nmode = "0600"\n')
    result = build(profile, "--root", tmp_path / "jail")
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert "missing `kind` (one of tls-cert, ssh-host-key-ed25519" in result.stderr


@pytest.mark.parametrize("name", ["root", "ftp", "nobody"])
def test_local_user_cannot_take_the_name_of_another_user(tmp_path, name):
    result = build("vsftpd", "--root", tmp_path / "jail", "--set", f"local_user={name}")
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert f"is '{name}', a user the profile already has" in result.stderr, result.stderr


def test_vsftpd_local_user_is_locked_until_a_password_is_given(tmp_path):
    assert build("vsftpd", "--root", tmp_path / "jail").returncode == 0
    assert shadow(tmp_path / "jail") == {"ftpuser": "!"}


def test_failed_first_build_leaves_no_directory_and_concurrent_builds_make_one_key(tmp_path):
    result = build("sshd", "--root", tmp_path / "failed")  # no sftp_pubkey: fails to plan
    assert result.returncode != 0 and not (tmp_path / "failed").exists()
    jail = tmp_path / "jail"
    builds = [subprocess.Popen([sys.executable, "-m", "jailkit", "build", "nginx-tls", "--root",
                                str(jail)], env=jailkit_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
              for _ in range(3)]
    for proc in builds:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    made = (jail / "generated/etc/nginx/tls/server.pem/server.pem").read_bytes()
    assert (jail / "current/root/etc/nginx/tls/server.pem").read_bytes() == made


def test_a_hash_is_kept_only_for_its_own_user(tmp_path, account_profile):
    jail = tmp_path / "jail"
    assert build(account_profile, "--root", jail).returncode == 0
    alice = shadow(jail)["alice"]
    assert build(account_profile, "--root", jail, "--set", "name=bob").returncode == 0
    bob = shadow(jail)["bob"]
    assert bob != alice and crypt_check("first secret", bob)
