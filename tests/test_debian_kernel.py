"""jailkit's cgroup v2 limits, accounting and kill, for real: on Debian 12's kernel booted with
cgroup v2 alone, in a VM (tests/vm.py), since these machines run hybrid cgroup v1; and
`jailkit unit` under the host's systemd 252 as the VM's pid 1, which these machines lack
(vm_systemd_checks.py: a second boot).

The jails are built here, copied onto a scratch ext4 image (mkfs.ext4 -d) that the guest mounts
at the same path, and tests/vm_checks.py runs the checks in the guest, as root, with this
checkout's jailkit (the host's / is the guest's, read-only). One boot for all of them; each
check is one test here. Needs the kernel: `python tests/vm.py fetch` (.ci/test-deps).
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import vm
import vm_checks
import vm_systemd_checks
from conftest import REPO, run_jailkit

pytestmark = pytest.mark.usefixtures("as_root")

PROFILE = """\
extends = ["shell"]

[service]
command = ["/bin/sh", "-c", "while :; do sleep 1; done"]
"""
BOOT_SECONDS = 360  # the guest's whole run: about 1 minute under TCG on an idle 2-core machine


@pytest.fixture(scope="module")
def guest() -> tuple[dict, str]:
    """Run vm_checks.py in the VM once: each check's outcome by name, and the console."""
    try:
        return run_checks()
    except RuntimeError as e:  # the VM is not installed here: said in one line
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def systemd_guest() -> tuple[dict, str]:
    """Run vm_systemd_checks.py in the VM booted with systemd as pid 1, once."""
    try:
        return run_checks(vm_systemd_checks)
    except RuntimeError as e:
        pytest.fail(str(e))


def run_checks(checks=vm_checks, echo=None) -> tuple[dict, str]:
    """Build the jails, boot the VM on them, run `checks` (vm_checks.py, or under systemd
    vm_systemd_checks.py) there (`echo` sees the console)."""
    # the guest has a /tmp and a /run of its own: a checkout there is shown to it
    shown = (str(REPO),) if REPO.parts[1] in ("tmp", "run") else ()
    base = Path(tempfile.mkdtemp(prefix="jailkit-vm-"))
    try:
        base.chmod(0o711)
        jails = base / "jails"
        jails.mkdir(mode=0o711)
        (base / "svc.toml").write_text(PROFILE)
        for jail in ("a", "b"):  # one jail directory runs one jail at a time
            built = run_jailkit("build", base / "svc.toml", "--root", jails / jail, timeout=300)
            assert built.returncode == 0, built.stderr
        subprocess.run(["gcc", "-static", "-O1", "-o", jails / f"a/current/root{vm_checks.PROBE}",
                        REPO / "tests/service_probe.c"], check=True)
        image = base / "jails.ext4"
        with open(image, "wb") as f:
            f.truncate(128 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-d", jails, image], check=True)
        command = f"{sys.executable} -u {checks.__file__} {jails} 2>&1"
        _, console = vm.run(command, disk=image, disk_at=str(jails), timeout=BOOT_SECONDS,
                            echo=echo, systemd=checks is vm_systemd_checks, host_dirs=shown)
    finally:
        shutil.rmtree(base)
    outcomes = {}
    for line in console.splitlines():
        if line.startswith(vm_checks.MARK):
            name, outcome = line.removeprefix(vm_checks.MARK).split(None, 1)
            outcomes[name] = outcome
    return outcomes, console


def test_the_guest_ran_every_check_on_a_v2_only_kernel(guest):
    outcomes, console = guest
    assert list(outcomes) == [check.__name__ for check in vm_checks.CHECKS], console[-3000:]


@pytest.mark.parametrize("name", [check.__name__ for check in vm_checks.CHECKS])
def test_check(guest, name):
    outcomes, console = guest
    assert name in outcomes, console[-3000:]
    assert outcomes[name].startswith("ok"), outcomes[name]


def test_the_systemd_guest_ran_every_check(systemd_guest):
    outcomes, console = systemd_guest
    assert list(outcomes) == [check.__name__ for check in vm_systemd_checks.CHECKS], \
        console[-3000:]


@pytest.mark.parametrize("name", [check.__name__ for check in vm_systemd_checks.CHECKS])
def test_under_systemd(systemd_guest, name):
    outcomes, console = systemd_guest
    assert name in outcomes, console[-3000:]
    assert outcomes[name].startswith("ok"), outcomes[name]
