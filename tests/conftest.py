"""Shared fixtures: run the jailkit CLI from this checkout, as root or as another user."""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# Values bundled profiles need from their user (no default can stand in for an ssh key): a real
# public key line, checked by the profile's `public_keys` filter.
SETS_NEEDED = {"sshd": {"sftp_pubkey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAg4S0LaxFSOlzj/HU0YiRi"
                                       "aSMzFK1nVVYdurw0RjquR test@jailkit"}}


def jailkit_env(pythonpath: Path = REPO) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pythonpath)
    return env


def run_jailkit(*args, check=False, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run `jailkit ARGS` from this checkout in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "jailkit", *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
        env=env or jailkit_env(),
        **kwargs,
    )


@pytest.fixture(scope="session")
def world_readable_checkout() -> Iterator[Path]:
    """A copy of the package (with its profiles) that user nobody can import (the checkout may sit
    under /root). It lives outside pytest's base directory, which pytest resets to 0700
    whenever another session starts."""
    base = Path(tempfile.mkdtemp(prefix="jailkit-src-"))
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "jailkit", base / "jailkit", ignore=ignore)
    for path in [base, *base.rglob("*")]:
        # executables stay so: the pid-1 helper an editable install compiled beside its module
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    yield base
    shutil.rmtree(base)


@pytest.fixture(scope="session", autouse=True)
def nobody_registry() -> Iterator[None]:
    """`jailkit run` as nobody (several modules) makes nobody's registry of running jails,
    /tmp/jailkit-65534 (no XDG_RUNTIME_DIR): removed after the session if it made it."""
    registry = Path("/tmp/jailkit-65534")
    existed = registry.exists()
    yield
    if not existed and os.geteuid() == 0:
        shutil.rmtree(registry, ignore_errors=True)


@pytest.fixture
def as_root():
    """For tests that switch ids or enter namespaces as root: they fail, never skip, elsewhere."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root: run the suite as root, as the README and CI do")


# What a test needs, as markers (pyproject.toml lists them): `-m "not root"` runs what an ordinary
# user can, `-m "not root and not slow"` the pure tests in about a second.
SLOW_MODULES = {  # whole modules that build jails, compile programs or sweep the host's files
    "test_build", "test_build_safety", "test_build_update", "test_build_nobody", "test_check",
    "test_ldd_badinput", "test_ldd_cases", "test_ldd_cli", "test_ldd_system", "test_launch",
    "test_launch_nobody", "test_service_build_features",
}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__
        if "as_root" in item.fixturenames:
            item.add_marker(pytest.mark.root)
        if module.startswith("test_service_") and module != "test_service_profile_comments":
            item.add_marker(pytest.mark.service)
            item.add_marker(pytest.mark.slow)
        elif module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
