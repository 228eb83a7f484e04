"""jailkit as a user gets it: `pip wheel .`, installed into a fresh venv of Debian's python3, works
with nothing from this checkout — bundled profiles, the compiled pid-1 helper and the console script
all come from the wheel.

SLOW (~30 s): one wheel build and one venv per session (the `package` marker; deselect with
`-m "not package"` while working on something else).
"""

import os
import shutil
import stat
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest
from conftest import NOBODY, REPO, as_nobody

pytestmark = [pytest.mark.package, pytest.mark.usefixtures("as_root")]

SOURCES = ("jailkit", "bin", "setup.py", "pyproject.toml", "README.md")
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


class Installed:
    def __init__(self, base: Path, wheel: Path, source: Path):
        self.base = base
        self.wheel = wheel
        self.source = source  # where the wheel was built from; removed before anything runs
        self.venv = base / "venv"
        self.script = self.venv / "bin" / "jailkit"

    def run(self, *args, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.script), *map(str, args)], env=CLEAN_ENV, cwd="/",
                              capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="session")
def installed():
    # outside pytest's base directory (0700): user nobody runs the installed jailkit too
    base = Path(tempfile.mkdtemp(prefix="jailkit-package-"))
    base.chmod(0o755)
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            # a helper compiled into the checkout by an editable install must not ride along
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "jailkit-reaper"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = ["/usr/bin/python3", "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", base / "wheels", source], check=True,
                   cwd=base, timeout=600)
    shutil.rmtree(source)
    (wheel,) = (base / "wheels").iterdir()
    subprocess.run(["/usr/bin/python3", "-m", "venv", base / "venv"], check=True, timeout=300)
    subprocess.run([base / "venv/bin/pip", "--disable-pip-version-check", "-q", "install", wheel],
                   check=True, cwd=base, timeout=600)
    yield Installed(base, wheel, source)
    shutil.rmtree(base)


def test_wheel_is_for_this_platform_and_holds_helper_and_profiles(installed):
    # a pure (py3-none-any) wheel would be installed on machines the compiled helper cannot run on
    assert installed.wheel.name.endswith("-py3-none-linux_x86_64.whl"), installed.wheel.name
    with zipfile.ZipFile(installed.wheel) as wheel:
        members = {info.filename: info for info in wheel.infolist()}
    helper = members["jailkit/launch/jailkit-reaper"]
    assert stat.S_IMODE(helper.external_attr >> 16) & 0o111, "the helper is not executable"
    assert "jailkit/profiles/nginx.toml" in members
    assert "jailkit-0.1.0.data/scripts/jailkit" in members


def test_installed_jailkit_lists_builds_runs_and_checks(installed, tmp_path):
    listed = installed.run("profiles")
    assert listed.returncode == 0, listed.stderr
    assert {"nginx", "shell", "sshd", "libc"} <= {line.split()[0] for line in
                                                  listed.stdout.splitlines()}
    nginx = tmp_path / "nginx"
    built = installed.run("build", "nginx", "--root", nginx)
    assert built.returncode == 0, built.stderr
    checked = installed.run("check", "nginx", "--root", nginx)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shell = tmp_path / "shell"
    assert installed.run("build", "shell", "--root", shell).returncode == 0
    ran = installed.run("run", "shell", "--root", shell, "--", "/bin/sh", "-c",
                        "echo pid $$; exit 3")
    assert (ran.returncode, ran.stdout) == (3, "pid 2\n"), ran.stderr  # pid 1: the helper


def test_installed_helper_is_the_wheels_own(installed):
    site_packages = next((installed.venv / "lib").glob("python3*/site-packages"))
    probe = subprocess.run(
        [installed.venv / "bin/python", "-c",
         "from jailkit.launch.plan import reaper_path; print(reaper_path())"],
        env=CLEAN_ENV, cwd="/", capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == str(site_packages / "jailkit/launch/jailkit-reaper")


def test_nothing_installed_names_the_checkout_or_build_tree(installed):
    needles = [str(REPO).encode(), str(installed.source).encode()]
    site_packages = next((installed.venv / "lib").glob("python3*/site-packages"))
    for path in [installed.script, *(site_packages / "jailkit").rglob("*"),
                 *site_packages.glob("jailkit-*.dist-info/*")]:
        if path.is_file() and path.suffix != ".pyc":
            data = path.read_bytes()
            assert not [n for n in needles if n in data], path


def test_installed_jailkit_runs_for_an_ordinary_user(installed):
    # nobody's own jail (jailkit refuses a jail directory another user owns), outside pytest's
    # tmp_path, which is closed to other users
    home = installed.base / "nobody"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    shell = home / "shell"
    built = installed.run("build", "shell", "--root", shell, preexec_fn=as_nobody)
    assert built.returncode == 0, built.stderr
    ran = installed.run("run", "shell", "--root", shell, "--", "/usr/bin/id", "-u",
                        preexec_fn=as_nobody)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "0\n"  # the jail's root, which is nobody on the host
