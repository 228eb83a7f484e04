"""`jailkit build` by an ordinary user (`nobody`): the XDG default root, no chown, same checks."""

import json
import os
import subprocess
import sys

import pytest
from conftest import NOBODY, as_nobody, nobody_jailkit, nobody_with_subids


@pytest.mark.usefixtures("as_root")
def test_ordinary_user_builds_checks_and_updates_in_xdg_data_dir(home):
    result = nobody_jailkit(home, "build", "shell", "--json")
    assert result.returncode == 0, result.stderr
    jail = home / "home/.local/share/jailkit/shell"
    assert json.loads(result.stdout)["root"] == str(jail)
    dash = jail / "current/root/usr/bin/dash"
    assert (dash.stat().st_uid, dash.read_bytes()) == (NOBODY, open("/usr/bin/dash", "rb").read())
    assert nobody_jailkit(home, "check", "shell").returncode == 0
    result = nobody_jailkit(home, "update", "shell")
    assert result.returncode == 0 and "up to date" in result.stdout
    result = nobody_jailkit(home, "build", "shell", "--root", "/var/lib/jailkit/x")
    assert result.returncode == 2
    assert result.stderr == ("jailkit: cannot create jail directory /var/lib/jailkit/x: "
                             "Permission denied\n")


@pytest.mark.usefixtures("as_root")
def test_a_symlinked_profile_builds_and_runs_the_jail_named_as_typed(home):
    # x.toml -> shell.toml: build and run must agree on the jail's directory without --root;
    # both name it `x`, what the user typed (jailkit.vocabulary.jail_name)
    link = home / "home/x.toml"
    os.symlink(home / "jailkit/profiles/shell.toml", link)
    result = nobody_jailkit(home, "build", str(link), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["root"] == str(home / "home/.local/share/jailkit/x")
    result = nobody_jailkit(home, "run", str(link), "--", "/bin/true")
    assert (result.returncode, result.stderr) == (0, "")
    result = nobody_jailkit(home, "run", str(link), "--", "/bin/uname", "-n")
    assert result.stdout == "x\n"  # the hostname defaults to the jail's name


# --- what an ordinary user meets first: ids it cannot map, and no usable default directory


def nobody_env_jailkit(home, *args, env):
    """`jailkit ARGS` as nobody with exactly `env` (besides PATH and PYTHONPATH)."""
    return subprocess.run([sys.executable, "-m", "jailkit", *args], cwd="/", text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(home), **env},
                          capture_output=True, preexec_fn=as_nobody, timeout=120)


def one_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("jailkit: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.mark.usefixtures("as_root")
def test_ids_an_ordinary_user_cannot_map_warn_at_build_and_are_refused_at_run(home, subid_file):
    # nginx's master switches to www-data (uid and gid 33): without a range of subordinate ids
    # for nobody, only nobody's own id can be mapped
    no_range = nobody_with_subids(subid_file("someone:100000:65536\n"))

    def jailkit(*args):
        return subprocess.run([*no_range, sys.executable, "-m", "jailkit", *args], text=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(home),
                                   "HOME": str(home / "home")},
                              capture_output=True, timeout=120)

    result = jailkit("build", "nginx", "--set", "address=127.0.0.1")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("jailkit: warning")]
    assert len(warnings) == 1, result.stderr
    assert "uid 33 (www-data)" in warnings[0] and "gid 33 (www-data)" in warnings[0]
    assert "/etc/subuid" in warnings[0] and "as root" in warnings[0]
    for dry_run in ([], ["--dry-run"]):
        refused = one_line(jailkit("run", "nginx", *dry_run))
        assert "uid 33 (www-data)" in refused and "gid 33 (www-data)" in refused, refused
        assert "usermod --add-subuids" in refused and "--add-subgids" in refused, refused
        assert "/etc/subuid" in refused and "run jailkit as root" in refused, refused


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("home_env", [{}, {"HOME": "/nonexistent"}, {"HOME": "/"}])
def test_an_unusable_default_jail_directory_is_one_line_naming_root_and_xdg(home, home_env):
    # no HOME (nobody's passwd home, /nonexistent, is used), or one nobody cannot write
    for command in (["build", "shell"], ["run", "shell", "--", "/bin/true"],
                    ["run", "shell", "--dry-run"]):
        line = one_line(nobody_env_jailkit(home, *command, env=home_env))
        assert "--root DIR" in line and "XDG_DATA_HOME" in line, line
        assert "build it first" not in line, line


@pytest.mark.usefixtures("as_root")
def test_an_unusable_registry_is_one_line_naming_xdg_runtime_dir(home):
    jail = home / "home/jail"
    assert nobody_jailkit(home, "build", "shell", "--root", jail).returncode == 0
    missing = {"HOME": str(home / "home"), "XDG_RUNTIME_DIR": "/nonexistent/run"}
    for command in (["--", "/bin/true"], ["--dry-run"], ["--detach", "--", "/bin/true"]):
        line = one_line(nobody_env_jailkit(home, "run", "shell", "--root", jail, *command,
                                           env=missing))
        assert "/nonexistent/run/jailkit" in line and "XDG_RUNTIME_DIR" in line, line
    listed = nobody_env_jailkit(home, "ps", env=missing)  # nothing runs: nothing to list
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    # a relative XDG_RUNTIME_DIR is no directory (the XDG rule: ignored), never ./run/jailkit
    # (from /, root's own /run/jailkit)
    relative = {"HOME": str(home / "home"), "XDG_RUNTIME_DIR": "run"}
    result = nobody_env_jailkit(home, "run", "shell", "--root", jail, "--", "/bin/true",
                                env=relative)
    assert (result.returncode, result.stderr) == (0, "")
    assert nobody_env_jailkit(home, "ps", env=relative).returncode == 0


@pytest.mark.usefixtures("as_root")
def test_a_privileged_port_on_the_hosts_network_is_refused_naming_the_profiles_port(home):
    """An ordinary user's jail cannot bind port 81 on the host's network (below
    net.ipv4.ip_unprivileged_port_start): refused before it starts, with the rebuild that
    fixes it, and not `--net veth`, which needs root."""
    jail = home / "home/nginx81"
    built = nobody_jailkit(home, "build", "nginx", "--root", jail, "--set", "port=81")
    assert built.returncode == 0, built.stderr
    for dry_run in ([], ["--dry-run"]):
        line = one_line(nobody_jailkit(home, "run", "nginx", "--root", jail, *dry_run))
        assert "port 81" in line and f"jailkit build nginx --root {jail} --set port=8081" in line
        assert "--net veth" not in line, line


@pytest.mark.usefixtures("as_root")
def test_root_s_jail_is_refused_to_a_user_without_telling_them_to_remove_it(home, jail):
    """As a user, root's jail is not theirs to run, change or remove: the fix says so."""
    for command in (["run", "shell", "--root", jail, "--dry-run"],
                    ["run", "shell", "--root", jail, "--", "/bin/true"]):
        line = one_line(nobody_jailkit(home, *command))
        assert line.endswith("owned by uid 0, not by you (uid 65534), and its owner could swap "
                             "what it holds; run this as root, or choose a --root of your own\n")
