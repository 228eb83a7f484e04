"""`jailkit check`: every byte hashed; tampering, strays, setuid, world-writable, stale sources."""

import json
import os
import random
import shutil

import pytest
from conftest import run_jailkit

from jailkit.build.check import check_jail
from jailkit.build.jaildir import JailDir


@pytest.fixture
def jail(tmp_path):
    path = tmp_path / "jail"
    result = run_jailkit("build", "shell", "--root", path)
    assert result.returncode == 0, result.stderr
    return path


def findings(jail):
    with JailDir(jail) as opened:
        return [(f.kind, f.path) for f in check_jail(opened, "shell", str(jail))]


def test_clean_jail_has_no_findings(jail):
    result = run_jailkit("check", "shell", "--root", jail, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_same_size_one_byte_tamper_is_found_every_time(jail):
    root = jail / "current/root"
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                   and p.stat().st_size > 4096)
    rng = random.Random(50)
    for path in rng.sample(files, 20):
        original = path.read_bytes()
        st = path.stat()
        offset = rng.randrange(1024, len(original))  # past the first KiB jk_check samples
        tampered = bytearray(original)
        tampered[offset] ^= 0x01
        path.write_bytes(bytes(tampered))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        jail_path = "/" + str(path.relative_to(root))
        assert findings(jail) == [("modified", jail_path)], jail_path
        path.write_bytes(original)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert findings(jail) == []


def test_strays_setuid_world_writable_modes_and_planted_links(jail):
    root = jail / "current/root"
    (root / "etc/extra").write_text("x")
    shutil.copy("/usr/bin/true", root / "usr/bin/sneaky")
    os.chmod(root / "usr/bin/sneaky", 0o4755)
    os.chmod(root / "usr/bin/ls", 0o2755)
    os.chmod(root / "root", 0o777)
    os.unlink(root / "usr/bin/wc")
    os.unlink(root / "etc/passwd")
    os.symlink("/etc/passwd", root / "etc/passwd")  # would read the host's file if followed
    result = run_jailkit("check", "shell", "--root", jail)
    assert result.returncode == 1
    assert sorted(result.stdout.splitlines()) == sorted([
        "unexpected: /etc/extra: -rw-r--r-- not in the manifest",
        "unexpected: /usr/bin/sneaky: -rwsr-xr-x not in the manifest",
        "setuid: /usr/bin/sneaky: -rwsr-xr-x: setuid/setgid not asked for",
        "mode: /usr/bin/ls: 2755, manifest says 0755",
        "setuid: /usr/bin/ls: -rwxr-sr-x: setuid/setgid not asked for",
        "mode: /root: 0777, manifest says 0700",
        "world-writable: /root: drwxrwxrwx directory",
        "missing: /usr/bin/wc: file in the manifest, not in the jail",
        "replaced: /etc/passwd: manifest says file, the jail holds lrwxrwxrwx",
    ])


def test_stale_host_source_is_reported_and_update_fixes_it(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "data.txt").write_text("one\n")
    profile = tmp_path / "p.toml"
    profile.write_text(f'extends = ["shell"]\nfiles = ["{host}/data.txt"]\n')
    jail = tmp_path / "jail"
    assert run_jailkit("build", profile, "--root", jail).returncode == 0
    (host / "data.txt").write_text("two\n")
    result = run_jailkit("check", profile, "--root", jail, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == [{
        "kind": "stale", "path": f"{host}/data.txt",
        "detail": f"host source {host}/data.txt changed since the build: "
                  f"`jailkit update {profile} --root {jail}`"}]
    fix = json.loads(result.stdout)[0]["detail"].split("`")[1].split()
    result = run_jailkit(*fix[1:])  # the command the finding gives, as it is
    assert result.returncode == 0, result.stderr
    assert f"updated  {host}/data.txt: host file changed" in result.stdout
    assert run_jailkit("check", profile, "--root", jail).returncode == 0
    assert (jail / f"current/root{host}/data.txt").read_text() == "two\n"


def test_check_without_a_jail_is_one_line_error(tmp_path):
    result = run_jailkit("check", "shell", "--root", tmp_path / "none")
    assert result.returncode == 2
    assert result.stderr == (f"jailkit: no jail at {tmp_path}/none; build it first with "
                             "`jailkit build`\n")


def test_check_of_another_profile_in_a_jail_is_refused(jail):
    result = run_jailkit("check", "nginx", "--root", jail)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "'shell'" in result.stderr and "not 'nginx'" in result.stderr, result.stderr
