"""What an administrator hits when rebuilding and updating jails: remembered --set values, a jail
of another profile, paths a service serves, bases, generations still in use."""

import json
import os
import stat
import subprocess
import sys

from conftest import descendants, jailkit_env, run_jailkit, wait_for


def jailkit_ok(*args):
    result = run_jailkit(*args)
    assert result.returncode == 0, result.stderr
    return result


def nginx_conf(jail) -> str:
    return (jail / "current/root/etc/nginx/nginx.conf").read_text()


def test_update_and_rebuild_keep_the_set_values_the_jail_was_built_with(tmp_path):
    jail = tmp_path / "nginx"
    jailkit_ok("build", "nginx", "--root", jail, "--set", "port=9091",
               "--set", "docroot=/var/www")
    jailkit_ok("update", "nginx", "--root", jail)  # no --set repeated
    assert "listen 9091;" in nginx_conf(jail) and "root /var/www;" in nginx_conf(jail)
    assert json.loads((jail / "current/launch.json").read_text())["ports"]["bind"] == [9091]
    jailkit_ok("build", "nginx", "--root", jail, "--set", "port=9092")  # one overridden
    assert "listen 9092;" in nginx_conf(jail) and "root /var/www;" in nginx_conf(jail)
    sets = jail / "current/sets.json"
    assert stat.S_IMODE(sets.stat().st_mode) == 0o600  # a password may be among them
    assert json.loads(sets.read_text())["sets"] == {"port": "9092", "docroot": "/var/www"}
    shown = jailkit_ok("show", "nginx", "--root", jail)
    assert "--set port=9092" in shown.stdout and "docroot = \"/var/www\"" in shown.stdout
    assert json.loads(jailkit_ok("show", "nginx", "--root", jail, "--json").stdout)[
        "variables"]["port"] == 9092


def test_building_another_profile_into_a_jail_is_refused_without_replace(tmp_path):
    jail = tmp_path / "shell"
    jailkit_ok("build", "shell", "--root", jail)
    before = sorted(os.listdir(jail))
    typo = run_jailkit("build", "nginx", "--root", jail)
    assert typo.returncode == 2
    assert typo.stderr.count("\n") == 1 and "--replace" in typo.stderr
    assert "'shell'" in typo.stderr and sorted(os.listdir(jail)) == before
    assert (jail / "current/root/bin/sh").exists()
    jailkit_ok("build", "nginx", "--root", jail, "--replace")
    assert (jail / "current/root/usr/sbin/nginx").exists()


def test_a_docroot_that_is_not_in_the_jail_is_one_line_at_build_time(tmp_path):
    result = run_jailkit("build", "nginx", "--root", tmp_path / "j", "--set", "docroot=/srv/site")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "docroot" in result.stderr and "/srv/site" in result.stderr
    assert "files" in result.stderr and "binds" in result.stderr
    assert not (tmp_path / "j").exists()
    for profile, variable in (("lighttpd", "docroot"), ("vsftpd", "anon_root")):
        result = run_jailkit("build", profile, "--dry-run", "--set", f"{variable}=/nowhere")
        assert result.returncode == 2 and variable in result.stderr, result.stderr
    # in the tree: accepted
    site = tmp_path / "site.toml"
    site.write_text('extends = ["nginx"]\n[directories."/srv/site"]\n')
    jailkit_ok("build", site, "--root", tmp_path / "ok", "--set", "docroot=/srv/site")


def test_profiles_tells_bases_from_services_and_a_base_is_not_built(tmp_path):
    listed = jailkit_ok("profiles").stdout.splitlines()
    kinds = {line.split()[0]: line.split()[1] for line in listed}
    assert {kinds[b] for b in ("libc", "tls", "dns", "tzdata", "pam")} == {"base"}
    assert {kinds[s] for s in ("nginx", "shell", "python3", "vsftpd")} == {"service"}
    as_json = json.loads(jailkit_ok("profiles", "--json").stdout)
    assert as_json["pam"]["kind"] == "base" and as_json["sshd"]["kind"] == "service"
    result = run_jailkit("build", "tls", "--root", tmp_path / "tls")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "base" in result.stderr and "extends" in result.stderr
    assert not (tmp_path / "tls").exists()


def test_run_set_of_a_profile_variable_says_to_rebuild_with_build_set(tmp_path):
    jail = tmp_path / "nginx"
    jailkit_ok("build", "nginx", "--root", jail)
    result = run_jailkit("run", "nginx", "--root", jail, "--set", "port=9000", "--dry-run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"jailkit build nginx --root {jail} --set port=9000\n" in result.stderr
    assert "launch.json" in run_jailkit("run", "--help").stdout
    help_text = jailkit_ok("build", "--help").stdout
    assert "variable" in help_text and "run --set" in help_text


def test_python3_resolves_localhost(tmp_path):
    jail = tmp_path / "py"
    jailkit_ok("build", "python3", "--root", jail)
    result = run_jailkit("run", "python3", "--root", jail, "--", "/usr/bin/python3", "-c",
                         "import socket; print(socket.gethostbyname('localhost'))", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "127.0.0.1"


def test_update_says_a_running_jail_needs_a_restart_and_unused_generations_go_at_once(tmp_path):
    profile = tmp_path / "svc.toml"
    profile.write_text('extends = ["shell"]\n')
    jail = tmp_path / "svc"
    jailkit_ok("build", profile, "--root", jail)
    running = subprocess.Popen([sys.executable, "-m", "jailkit", "run", profile, "--root", jail,
                                "--", "/bin/sleep", "60"], env=jailkit_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.readlink(f"/proc/{running.pid}/exe").endswith("jailkit-reaper")
                 and len(descendants(running.pid)) >= 2)
        profile.write_text('extends = ["shell"]\nbinaries = ["/bin/nl"]\n')
        result = jailkit_ok("update", profile, "--root", jail)
        assert "gen-1 is still used by a running jail: restart it" in result.stdout
        assert sorted(os.listdir(jail)) == ["current", "gen-1", "gen-2", "lock"]
        as_json = json.loads(jailkit_ok("update", profile, "--root", jail, "--json").stdout)
        assert as_json["still_running"] == [1]
    finally:
        running.kill()
        running.wait(10)
    profile.write_text('extends = ["shell"]\n')
    result = jailkit_ok("update", profile, "--root", jail)
    assert "restart" not in result.stdout
    assert sorted(os.listdir(jail)) == ["current", "gen-3", "lock"]  # gen-1 and gen-2 gone now
