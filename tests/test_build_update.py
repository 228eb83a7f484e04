"""Rebuilds and `jailkit update`: only what changed is redone, state is kept, modes are reset."""

import json
import os
import re
import stat
import subprocess
import sys

import pytest
from conftest import jailkit_env, run_jailkit


def jailkit_ok(*args):
    result = run_jailkit(*args)
    assert result.returncode == 0, result.stderr
    return result


def test_noop_rebuild_copies_nothing_and_reads_no_file_contents(tmp_path):
    jail = tmp_path / "jail"
    jailkit_ok("build", "shell", "--root", jail)
    log = tmp_path / "strace.log"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", log,
         sys.executable, "-m", "jailkit", "build", "shell", "--root", jail, "--json"],
        capture_output=True, text=True, env=jailkit_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert not summary["changed"] and summary["copied"] == 0 and summary["linked"] == 0
    assert sorted(os.listdir(jail)) == ["current", "gen-1", "lock"]
    manifest = json.loads((jail / "current/manifest.json").read_text())
    sources = {e["source"] for e in manifest["entries"] if e["source"]}
    opened = set()
    for line in log.read_text().splitlines():
        match = re.search(r'open(?:at)?\((?:[A-Z0-9_]+|\d+), "([^"]+)", ([A-Z_|]+)', line)
        if match and "O_DIRECTORY" not in match.group(2) and "= -1" not in line:
            opened.add(match.group(1))
    assert sources, "the manifest names its host sources"
    assert not opened & sources, "a no-op rebuild opened host files it copies"
    assert not {p for p in opened if "/gen-1/root/" in p or p.startswith(str(jail / "gen-1/root"))}
    assert "manifest.json" in opened  # it decided from the manifest, relative to the gen dir fd


def test_update_keeps_state_and_reports_profile_edits(tmp_path):
    profile = tmp_path / "svc.toml"
    profile.write_text('extends = ["shell"]\n[writable."/var/lib/svc"]\nkind = "state"\n'
                       'mode = "0700"\n')
    jail = tmp_path / "jail"
    jailkit_ok("build", profile, "--root", jail)
    (jail / "state/var/lib/svc/data.db").write_text("written by the service\n")
    profile.write_text(profile.read_text().replace('extends = ["shell"]',
                                                   'extends = ["shell"]\nbinaries = ["/bin/nl"]'))
    result = jailkit_ok("update", profile, "--root", jail)
    assert "added    /usr/bin/nl" in result.stdout
    assert re.search(r"gen-2 built in .*: 1 added, 0 updated, 0 removed since the previous "
                     r"generation \(1 file copied, \d+ unchanged ones shared with it as "
                     r"hard links\)",
                     result.stdout)
    assert (jail / "state/var/lib/svc/data.db").read_text() == "written by the service\n"
    assert stat.S_IMODE((jail / "state/var/lib/svc").stat().st_mode) == 0o700
    profile.write_text(profile.read_text().replace('binaries = ["/bin/nl"]', ""))
    result = jailkit_ok("update", profile, "--root", jail)
    assert "removed  /usr/bin/nl" in result.stdout
    assert not (jail / "current/root/usr/bin/nl").exists()
    assert (jail / "state/var/lib/svc/data.db").exists()


def test_update_resets_modes_and_unchanged_files_are_hard_links(tmp_path):
    jail = tmp_path / "jail"
    jailkit_ok("build", "shell", "--root", jail)
    old_root = jail / "gen-1/root"
    os.chmod(old_root / "usr/bin/ls", 0o4777)
    dash_inode = (old_root / "usr/bin/dash").stat().st_ino
    result = jailkit_ok("update", "shell", "--root", jail, "--json")
    out = json.loads(result.stdout)
    assert out["updated"] == [{"path": "/usr/bin/ls",
                               "reason": "mode 4777 in the jail, reset to 0755"}]
    assert out["copied"] == 1 and out["linked"] == out["files"] - 1
    new_root = jail / "current/root"
    assert stat.S_IMODE((new_root / "usr/bin/ls").stat().st_mode) == 0o755
    assert (new_root / "usr/bin/dash").stat().st_ino == dash_inode
    assert run_jailkit("check", "shell", "--root", jail).returncode == 0


def test_update_without_a_jail_is_an_error(tmp_path):
    result = run_jailkit("update", "shell", "--root", tmp_path / "none")
    assert result.returncode == 2
    assert result.stderr.startswith(f"jailkit: no jail at {tmp_path}/none")


@pytest.mark.usefixtures("as_root")
def test_state_written_by_the_running_service_survives_update(tmp_path):
    profile = tmp_path / "svc.toml"
    profile.write_text("""extends = ["shell"]
[users.www-data]
uid = 33
gid = 33
[groups.www-data]
gid = 33
[writable."/var/lib/app"]
kind = "state"
owner = "www-data"
group = "www-data"
mode = "0750"
[service]
user = "www-data"
""")
    jail = tmp_path / "jail"
    jailkit_ok("build", profile, "--root", jail)
    script = "id -un; echo kept >> /var/lib/app/data; cat /var/lib/app/data"
    result = jailkit_ok("run", "svc", "--root", jail, "--", "/bin/sh", "-c", script)
    assert result.stdout == "www-data\nkept\n"
    profile.write_text(profile.read_text() + '[writable."/var/log/app"]\nowner = "www-data"\n')
    assert "gen-2" in jailkit_ok("update", profile, "--root", jail).stdout
    result = jailkit_ok("run", "svc", "--root", jail, "--", "/bin/sh", "-c",
                        script + "; echo x > /var/log/app/l && cat /var/log/app/l")
    assert result.stdout == "www-data\nkept\nkept\nx\n"


def test_update_refuses_a_jail_of_another_profile(tmp_path):
    jail = tmp_path / "jail"
    jailkit_ok("build", "shell", "--root", jail)
    result = run_jailkit("update", "python3", "--root", jail)
    assert result.returncode == 2
    assert result.stderr == (f"jailkit: {jail} holds the jail of profile 'shell', not 'python3'; "
                             f"check --root, or pass `jailkit build python3 --root {jail} "
                             "--replace` to replace it\n")
    assert os.readlink(jail / "current") == "gen-1"


def imported_modules(*args) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "jailkit", *map(str, args)],
                            capture_output=True, text=True, env=jailkit_env(), timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines()
            if line.startswith("import time:")}


def test_commands_import_jinja2_and_pyelftools_only_when_needed(tmp_path):
    jail = tmp_path / "jail"
    assert "elftools" in imported_modules("build", "shell", "--root", jail)  # cold: closure
    for args in (["build", "shell", "--root", jail], ["update", "shell", "--root", jail],
                 ["check", "shell", "--root", jail], ["show", "nginx"], ["profiles"]):
        modules = imported_modules(*args)
        assert not {m for m in modules if m.startswith(("elftools", "jinja2"))}, args


def test_rebuild_sees_a_new_file_matching_a_question_mark_glob(tmp_path):
    # the closure cache is keyed by what every pattern expands to, `?` and `[` patterns included
    libs = tmp_path / "libs"
    libs.mkdir()
    real = "/usr/lib/x86_64-linux-gnu/libz.so.1"
    os.symlink(real, libs / "libA.so")
    profile = tmp_path / "g.toml"
    profile.write_text(f'extends = ["shell"]\nlibraries = ["{libs}/lib?.so"]\n')
    jail = tmp_path / "jail"
    jailkit_ok("build", profile, "--root", jail)
    os.symlink(real, libs / "libB.so")
    jailkit_ok("build", profile, "--root", jail)
    assert os.path.lexists(jail / f"current/root{libs}/libB.so")


def test_a_build_parses_ld_so_cache_once(tmp_path, monkeypatch):
    from jailkit.build.plan import make_plan
    from jailkit.elf.ldcache import LdCache
    from jailkit.profile.model import load

    parsed = []
    real_load = LdCache.load.__func__
    monkeypatch.setattr(LdCache, "load", classmethod(
        lambda cls, path: parsed.append(path) or real_load(cls, path)))
    profile = tmp_path / "libs.toml"
    profile.write_text('extends = ["shell"]\nlibraries = ["libz.so.1", "libnss_dns.so.2", '
                       '"libresolv.so.2"]\n')
    make_plan(load(str(profile)))
    assert parsed == ["/etc/ld.so.cache"]
