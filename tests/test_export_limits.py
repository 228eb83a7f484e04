"""The jail's cgroup limits and live host binds in exports: a runtime bundle and a Pod carry them
(runc and podman judge), an OCI image cannot and says so in one line each."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import run_jailkit
from exporting import export, mounts_containing, pod_of, podman, port_closed, runc_stop, wait_http
from services import free_port
from test_export_oci import run, validate_runtime_config

from jailkit.export import limits
from jailkit.profile.model import DEFAULT_MEMORY_MAX

MIB = 1 << 20
# a memory limit the profile leaves to jailkit's default (root's build): carried all the same
LIMITED = """extends = ["nginx"]
[binds."/srv/www"]
source = "{site}"
[service.limits]
pids_max = 40
swap_max = "16m"
cpu_weight = 40
cpu_quota = "50%"
"""


# --- conversions (pure) -------------------------------------------------------------------------

def test_cpu_weight_becomes_the_shares_runc_and_crun_turn_back_into_it():
    assert [limits.cpu_weight_of_shares(s) for s in (2, 1024, 2000, 262144)] == [1, 100, 170, 10000]
    for weight in range(1, 10001):
        assert limits.cpu_weight_of_shares(limits.shares_for_cpu_weight(weight)) == weight
    # the v1 default meets the v2 default, as jailkit's own v1 groups have it
    assert limits.shares_for_cpu_weight(100) == 1024


def test_io_weight_becomes_the_nearest_blkio_weight():
    assert limits.blkio_for_io_weight(1) == 10 and limits.blkio_for_io_weight(10000) == 1000
    for weight in (1, 50, 100, 555, 9999):
        got = limits.io_weight_of_blkio(limits.blkio_for_io_weight(weight))
        assert all(abs(got - weight) <= abs(limits.io_weight_of_blkio(b) - weight)
                   for b in range(10, 1001))


def test_runtime_resources_keep_memory_high_out_of_reservation():
    every = {"memory_max": 64 * MIB, "memory_high": 48 * MIB, "swap_max": 0, "pids_max": 9,
             "cpu_weight": 100, "cpu_quota": 150, "io_weight": 100}
    assert limits.runtime_resources(every) == {
        "memory": {"limit": 64 * MIB, "swap": 64 * MIB},  # memory + swap: no swap
        "pids": {"limit": 9},
        "cpu": {"shares": 1024, "quota": 150000, "period": 100000},
        "blockIO": {"weight": 20},
        "unified": {"memory.high": str(48 * MIB)},
    }
    assert limits.runtime_resources({"swap_max": 8 * MIB}) == {
        "unified": {"memory.swap.max": str(8 * MIB)}}
    assert limits.runtime_resources({}) == {}


def test_pod_requests_never_exceed_the_limits():
    resources, notes = limits.pod_resources({"memory_max": 64 * MIB, "cpu_weight": 200,
                                             "cpu_quota": 50})
    assert resources == {"limits": {"memory": str(64 * MIB), "cpu": "500m"},
                         "requests": {"memory": str(64 * MIB), "cpu": "500m"}}
    assert len(notes) == 1 and "cpu_weight=200" in notes[0]
    resources, notes = limits.pod_resources({"cpu_weight": 20})
    assert resources == {"requests": {"cpu": "200m"}} and notes == []


# --- the real thing ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """An nginx jail serving a live host directory, with limits: (jail, profile, port, site)."""
    site = Path(tempfile.mkdtemp(prefix="jailkit-export-site-"))
    try:
        site.chmod(0o755)
        (site / "index.html").write_text("served from the host\n")
        base = tmp_path_factory.mktemp("export-limits")
        profile = base / "limited.toml"
        profile.write_text(LIMITED.format(site=site))
        port = free_port()
        built = run_jailkit("build", profile, "--root", base / "jail", "--set",
                            "docroot=/srv/www", "--set", f"port={port}",
                            "--set", "worker_processes=1", timeout=300)
        assert built.returncode == 0, built.stderr
        yield base / "jail", profile, port, site
    finally:
        shutil.rmtree(site)


def cgroup_file(pid: int, controller: str, name: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        path = next(line.split(":", 2)[2].strip() for line in f
                    if controller in line.split(":")[1].split(","))
    return Path(f"/sys/fs/cgroup/{controller}{path}/{name}").read_text().strip()


def mount_options(pid: int, path: str) -> set[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        line = next(line for line in f if line.split()[4] == path)
    return set(line.split()[5].split(","))


def notes(result) -> list[str]:
    """The notes on limits and binds (nginx's state directory has its own: test_export_notes)."""
    return [line for line in result.stderr.splitlines() if line.startswith("jailkit: note: ")
            and not line.startswith("jailkit: note: state directory ")]


@pytest.mark.usefixtures("as_root")
def test_runc_runs_the_bundle_with_the_limits_and_the_bind_in_force(limited):
    jail, profile, port, site = limited
    work = Path(tempfile.mkdtemp(prefix="jailkit-bundle-limits-"))
    os.chmod(work, 0o711)  # runc's init enters rootfs as the jail's mapped root
    state, bundle = work / "runc-state", work / "bundle"
    container = f"jailkit-limits-{os.getpid()}"
    try:
        result = export(profile, jail, "bundle", bundle)
        assert result.returncode == 0 and notes(result) == [], result.stderr
        validate_runtime_config(bundle / "config.json")
        config = json.loads((bundle / "config.json").read_text())
        assert {"destination": "/srv/www", "type": "bind", "source": str(site),
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"]} in config["mounts"]
        proc = subprocess.Popen(["runc", "--root", state, "run", "--bundle", bundle, container],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            assert wait_http(port) == b"served from the host\n"
            pid = json.loads(run("runc", "--root", state, "state", container))["pid"]
            # the effective limits: the profile's, and root's default memory_max
            assert int(cgroup_file(pid, "memory", "memory.limit_in_bytes")) == \
                DEFAULT_MEMORY_MAX
            assert int(cgroup_file(pid, "memory", "memory.memsw.limit_in_bytes")) == \
                DEFAULT_MEMORY_MAX + 16 * MIB
            assert cgroup_file(pid, "pids", "pids.max") == "40"
            assert cgroup_file(pid, "cpu", "cpu.shares") == str(limits.shares_for_cpu_weight(40))
            assert cgroup_file(pid, "cpu", "cpu.cfs_quota_us") == "50000"
            assert cgroup_file(pid, "cpu", "cpu.cfs_period_us") == "100000"
            assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(pid, "/srv/www")
        finally:
            runc_stop(state, container, proc)
        assert port_closed(port)
        assert not mounts_containing(str(work)), "runc left mounts on the host"
        assert not os.path.exists(f"/sys/fs/cgroup/pids/{container}")
    finally:
        shutil.rmtree(work)


@pytest.mark.usefixtures("as_root")
def test_kube_play_runs_the_pod_with_the_memory_limit_and_the_bind_read_only(limited, tmp_path):
    jail, profile, port, site = limited
    pod = tmp_path / "pod.yaml"
    result = export(profile, jail, "kube", pod)
    assert result.returncode == 0, result.stderr
    said = notes(result)
    assert len(said) == 3, result.stderr  # swap, pids, the hostPath flags
    assert any("swap_max=16M" in line for line in said)
    assert any("pids_max=40" in line for line in said)
    assert any("/srv/www" in line and "noexec" in line for line in said)
    spec = pod_of(pod)["spec"]
    container = spec["containers"][0]
    assert container["resources"] == {
        "limits": {"memory": str(DEFAULT_MEMORY_MAX), "cpu": "500m"},
        "requests": {"memory": str(DEFAULT_MEMORY_MAX), "cpu": "400m"}}
    bind = next(v for v in spec["volumes"] if "hostPath" in v)
    assert bind["hostPath"] == {"path": str(site), "type": "Directory"}
    assert {"name": bind["name"], "mountPath": "/srv/www", "readOnly": True} in \
        container["volumeMounts"]
    archive = tmp_path / "image.tar"
    assert export(profile, jail, "oci", archive).returncode == 0
    with podman() as pm:
        pm("load", "-i", archive)
        pm("kube", "play", "--userns", "host", pod, timeout=180)
        try:
            assert wait_http(port) == b"served from the host\n"
            inspected = json.loads(pm("inspect", "limited-limited").stdout)[0]
            assert inspected["HostConfig"]["Memory"] == DEFAULT_MEMORY_MAX
            assert inspected["HostConfig"]["CpuQuota"] == 50000
            assert "ro" in mount_options(inspected["State"]["Pid"], "/srv/www")
        finally:
            pm("kube", "down", pod, timeout=180)
        assert port_closed(port)


@pytest.mark.usefixtures("as_root")
def test_an_oci_export_names_what_the_image_cannot_carry(limited, tmp_path):
    jail, profile, _, site = limited
    result = export(profile, jail, "oci", tmp_path / "layout")
    assert result.returncode == 0, result.stderr
    said = notes(result)
    assert len(said) == 2 and result.stderr.count("\n") == 3, result.stderr  # + the state one
    binds, = (line for line in said if "host directories" in line)
    assert f"/srv/www (from {site}, read-only)" in binds
    assert f"-v {site}:/srv/www:ro,nosuid,nodev,noexec" in binds
    cgroup, = (line for line in said if "cgroup limits" in line)
    assert "pids_max=40" in cgroup and "--pids-limit 40" in cgroup and "--cpus 0.5" in cgroup
    config = json.loads(run("skopeo", "inspect", "--config", f"oci:{tmp_path / 'layout'}"))
    # nginx's state directory only: an empty, writable volume is no read-only bind
    assert config["config"]["Volumes"] == {"/var/log/nginx": {}}


@pytest.mark.usefixtures("as_root")
def test_every_limit_and_a_writable_bind_reach_a_valid_bundle(tmp_path):
    site = Path(tempfile.mkdtemp(prefix="jailkit-export-site-"))
    try:
        profile = tmp_path / "every.toml"
        profile.write_text(
            f'extends = ["shell"]\n[binds."/srv/data"]\nsource = "{site}"\nrw = true\n'
            'exec = true\n[service.limits]\nmemory_max = "64m"\nmemory_high = "48m"\n'
            'io_weight = 300\n')
        built = run_jailkit("build", profile, "--root", tmp_path / "jail", timeout=300)
        assert built.returncode == 0, built.stderr
        result = export(profile, tmp_path / "jail", "bundle", tmp_path / "bundle")
        assert result.returncode == 0, result.stderr
        said = notes(result)
        assert len(said) == 1 and "memory.high" in said[0] and "cgroup v1" in said[0]
        validate_runtime_config(tmp_path / "bundle/config.json")
        config = json.loads((tmp_path / "bundle/config.json").read_text())
        assert config["linux"]["resources"]["unified"] == {"memory.high": str(48 * MIB)}
        assert config["linux"]["resources"]["blockIO"] == {
            "weight": limits.blkio_for_io_weight(300)}
        assert {"destination": "/srv/data", "type": "bind", "source": str(site),
                "options": ["bind", "rw", "nosuid", "nodev"]} in config["mounts"]
        kube = export(profile, tmp_path / "jail", "kube", tmp_path / "pod.yaml")
        assert kube.returncode == 0 and any(
            "memory_high=48M" in line and "io_weight=300" in line for line in notes(kube))
        pod = pod_of(tmp_path / "pod.yaml")["spec"]["containers"][0]
        assert {"name": "bind-0", "mountPath": "/srv/data", "readOnly": False} in \
            pod["volumeMounts"]
    finally:
        shutil.rmtree(site)
