"""`jailkit export --format oci` (and bundle, kube) judged by the real tools: oci-image-tool,
skopeo, umoci, podman (load, run, kube play), runc and the runtime-spec's JSON schema."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import NOBODY, as_nobody, nobody_jailkit
from exporting import export, mounts_containing, pod_of, podman, port_closed, runc_stop, wait_http
from services import build, free_port

pytestmark = pytest.mark.usefixtures("as_root")
SCHEMA_DIR = "/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema"


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    base = tmp_path_factory.mktemp("export-oci")
    port = free_port()
    build("nginx", base / "nginx", f"port={port}")
    return base, port


def run(*args, **kwargs):
    result = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=120,
                            **kwargs)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def manifest_digest(layout: Path) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]


def test_layout_is_reproducible_and_valid(nginx, tmp_path):
    base, port = nginx
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent),
               SOURCE_DATE_EPOCH="1700000000")
    for out in ("a", "b"):
        result = export("nginx", base / "nginx", "oci", tmp_path / out, "--set", f"port={port}",
                        env=env)
        assert result.returncode == 0, result.stderr
    assert manifest_digest(tmp_path / "a") == manifest_digest(tmp_path / "b")
    later = export("nginx", base / "nginx", "oci", tmp_path / "c", "--set", f"port={port}",
                   env=env | {"SOURCE_DATE_EPOCH": "1700000001"})
    assert later.returncode == 0 and manifest_digest(tmp_path / "c") != manifest_digest(
        tmp_path / "a")
    run("oci-image-tool", "validate", "--type", "image", tmp_path / "a")
    info = json.loads(run("skopeo", "inspect", "--config", f"oci:{tmp_path / 'a'}"))
    config = info["config"]
    assert config["Cmd"] == ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"]
    assert config["User"] == "0:0" and config["StopSignal"] == "SIGQUIT"
    assert config["ExposedPorts"] == {f"{port}/tcp": {}}
    assert config["Labels"]["org.jailkit.profile"] == "nginx"
    assert config["Labels"]["org.jailkit.manifest-digest"].startswith("sha256:")
    assert info["created"] == "2023-11-14T22:13:20Z"
    bundle = tmp_path / "unpacked"
    run("umoci", "unpack", "--image", f"{tmp_path / 'a'}:localhost/jailkit/nginx:gen-1", bundle)
    jail_conf = base / "nginx" / "current" / "root" / "etc" / "nginx" / "nginx.conf"
    assert (bundle / "rootfs" / "etc" / "nginx" / "nginx.conf").read_bytes() == \
        jail_conf.read_bytes()
    assert (bundle / "rootfs" / "usr" / "sbin" / "nginx").stat().st_mode & 0o777 == 0o755


def test_podman_runs_the_image_and_kube_play_runs_the_pod(nginx, tmp_path):
    base, port = nginx
    archive = tmp_path / "nginx.tar"
    assert export("nginx", base / "nginx", "oci", archive, "--set", f"port={port}").returncode == 0
    pod = tmp_path / "pod.yaml"
    assert export("nginx", base / "nginx", "kube", pod, "--set", f"port={port}").returncode == 0
    spec = pod_of(pod)["spec"]
    security = spec["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": sorted(
        c.removeprefix("CAP_") for c in json.loads(
            (base / "nginx" / "current" / "launch.json").read_text())["capabilities"])}
    assert {v["name"] for v in spec["volumes"]} == {
        m["name"] for m in spec["containers"][0]["volumeMounts"]}
    with podman() as pm:
        assert "Loaded image: localhost/jailkit/nginx:gen-1" in pm("load", "-i", archive).stdout
        pm("run", "-d", "--name", "jailkit-export-test", "--network", "host",
           "localhost/jailkit/nginx:gen-1")
        assert b"nginx" in wait_http(port)
        pm("stop", "-t", "10", "jailkit-export-test")
        pm("rm", "jailkit-export-test")
        assert port_closed(port)
        # no subordinate ids for podman's own user namespaces here: --userns host
        pm("kube", "play", "--userns", "host", pod, timeout=180)
        assert b"nginx" in wait_http(port)
        inspected = json.loads(pm("inspect", "nginx-nginx").stdout)[0]["HostConfig"]
        assert inspected["ReadonlyRootfs"] is True
        pm("kube", "down", pod, timeout=180)
        assert port_closed(port)


def validate_runtime_config(config: Path) -> None:
    """Against the runtime-spec's own schema, with Debian's python3-jsonschema."""
    check = (
        "import json, sys, pathlib, jsonschema\n"
        f"d = pathlib.Path({SCHEMA_DIR!r})\n"
        "schema = json.loads((d / 'config-schema.json').read_text())\n"
        "resolver = jsonschema.RefResolver(d.as_uri() + '/', schema)\n"
        "jsonschema.validate(json.load(open(sys.argv[1])), schema, resolver=resolver)\n"
    )
    run("/usr/bin/python3", "-c", check, config)


def test_bundle_validates_and_runc_runs_it_confined(nginx):
    base, port = nginx
    # runc's init enters rootfs as the jail's mapped root: the path must be traversable by it
    work = Path(tempfile.mkdtemp(prefix="jailkit-bundle-"))
    os.chmod(work, 0o711)
    state = work / "runc-state"
    bundle = work / "bundle"
    container = f"jailkit-export-{os.getpid()}"
    try:
        result = export("nginx", base / "nginx", "bundle", bundle)
        assert result.returncode == 0, result.stderr
        validate_runtime_config(bundle / "config.json")
        config = json.loads((bundle / "config.json").read_text())
        assert config["root"]["readonly"] and config["process"]["noNewPrivileges"]
        assert {n["type"] for n in config["linux"]["namespaces"]} == {
            "user", "mount", "pid", "ipc", "uts"}
        assert config["linux"]["uidMappings"][0]["hostID"] != 0
        denied = config["linux"]["seccomp"]["syscalls"][0]["names"]
        assert "mount" in denied and "ptrace" in denied
        proc = subprocess.Popen(["runc", "--root", state, "run", "--bundle", bundle, container],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            assert b"nginx" in wait_http(port)
            pid = int(run("runc", "--root", state, "state", container).split('"pid": ')[1]
                      .split(",")[0])
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f)
            assert status["Uid"].split()[0] != "0"  # the jail's root is not the host's
            assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
        finally:
            runc_stop(state, container, proc)
        assert port_closed(port)
        assert not mounts_containing(str(work)), "runc left mounts on the host"
        assert not os.path.exists(f"/sys/fs/cgroup/pids/{container}")
    finally:
        shutil.rmtree(work)


def test_an_ordinary_users_bundle_runs_under_rootless_runc(home):
    # nobody builds, exports and runs its own jail: the bundle maps nobody's own id to 0, and
    # runc needs no privilege to run it
    base = home / "home"
    assert nobody_jailkit(home, "build", "shell", "--root", base / "jail").returncode == 0
    exported = nobody_jailkit(home, "export", "shell", "--root", base / "jail", "--format",
                              "bundle", "-o", base / "bundle")
    assert exported.returncode == 0, exported.stderr
    config_path = base / "bundle/config.json"
    validate_runtime_config(config_path)
    config = json.loads(config_path.read_text())
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": NOBODY, "size": 1}]
    config["process"]["args"] = ["/bin/sh", "-c", "id -u; cat /proc/self/uid_map; "
                                 "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status"]
    config_path.write_text(json.dumps(config))
    state = base / "runc-state"
    result = subprocess.run(
        ["runc", "--root", state, "run", "--bundle", base / "bundle", f"jk-rootless-{os.getpid()}"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(base), "XDG_RUNTIME_DIR": str(base)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd="/",
        preexec_fn=as_nobody)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "0" and lines[1].split() == ["0", str(NOBODY), "1"]
    assert "NoNewPrivs:\t1" in result.stdout and "Seccomp:\t2" in result.stdout
    assert not mounts_containing(str(base)), "runc left mounts on the host"
