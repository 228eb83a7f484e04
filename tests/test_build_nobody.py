"""`jailkit build` by an ordinary user (`nobody`): the XDG default root, no chown, same checks."""

import json
import os
import shutil
import subprocess

import pytest

NOBODY = 65534


def as_nobody():
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


@pytest.fixture
def home(world_readable_checkout):
    """The checkout copy nobody can read, with a home it owns (removed afterwards)."""
    home = world_readable_checkout / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    yield world_readable_checkout
    shutil.rmtree(home)


def nobody_jailkit(home, *args):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(home), "HOME": str(home / "home")}
    return subprocess.run(["/opt/jailkit/bin/python", "-m", "jailkit", *args], env=env, cwd="/",
                          text=True, capture_output=True, preexec_fn=as_nobody, timeout=120)


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
