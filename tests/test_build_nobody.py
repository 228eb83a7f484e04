"""`jailkit build` by an ordinary user (`nobody`): the XDG default root, no chown, same checks."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import REPO

NOBODY = 65534


def as_nobody():
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


@pytest.fixture
def home():
    """A checkout copy (package and bundled profiles) nobody can read, and a home it owns."""
    base = Path(tempfile.mkdtemp(prefix="jailkit-build-nobody-"))
    skip = shutil.ignore_patterns("__pycache__")
    for name in ("jailkit", "profiles"):
        shutil.copytree(REPO / name, base / name, ignore=skip)
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (base / "home").mkdir()
    os.chown(base / "home", NOBODY, NOBODY)
    yield base
    shutil.rmtree(base)


def nobody_jailkit(home, *args):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(home), "HOME": str(home / "home")}
    return subprocess.run(["/opt/jailkit/bin/python", "-m", "jailkit", *args], env=env, cwd="/",
                          text=True, capture_output=True, preexec_fn=as_nobody, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody (CI)")
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
