"""`jailkit build` by an ordinary user (`nobody`): the XDG default root, no chown, same checks."""

import json
import os

import pytest
from conftest import NOBODY, nobody_jailkit


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
