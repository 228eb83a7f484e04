"""Helpers for the export tests: a built jail, `jailkit export`, and podman with storage of its
own (a temporary directory for images, containers, volumes, runtime state and configuration),
so that the host's container storage is never touched and everything goes away afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from conftest import run_jailkit

# podman writes its image-copy cache to /var/lib/containers/cache whatever its --root says
PODMAN_HOST_CACHE = Path("/var/lib/containers")


def export(profile, root: Path, fmt: str, out: Path, *extra, env=None):
    return run_jailkit("export", profile, "--root", root, "--format", fmt, "-o", out, *extra,
                       env=env, timeout=300)


def kube_documents(path) -> list[dict]:
    """The documents of a `--format kube` file, read by a YAML parser, each checked against
    the Kubernetes API's own types (the official client's models, generated from its OpenAPI):
    a field they do not know, or of another type, fails."""
    import yaml
    from kubernetes.client import ApiClient
    from kubernetes.client.models import V1PersistentVolumeClaim, V1Pod

    documents = list(yaml.safe_load_all(Path(path).read_text()))
    models = {"Pod": V1Pod, "PersistentVolumeClaim": V1PersistentVolumeClaim}
    for document in documents:
        model = models[document["kind"]].from_dict(document)
        assert ApiClient().sanitize_for_serialization(model) == document, document
    return documents


def pod_of(path) -> dict:
    return next(d for d in kube_documents(path) if d["kind"] == "Pod")


def wait_http(port: int, seconds: float = 30) -> bytes:
    """The body of GET / on 127.0.0.1:port once something answers (bounded)."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def runc_stop(state, container: str, proc: subprocess.Popen) -> None:
    """Stop nginx run by `runc run` (proc) gracefully, by force if it lingers, and delete it."""
    subprocess.run(["runc", "--root", state, "kill", container, "SIGQUIT"], capture_output=True)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        subprocess.run(["runc", "--root", state, "kill", container, "SIGKILL"])
        proc.wait(timeout=30)
    subprocess.run(["runc", "--root", state, "delete", "--force", container],
                   capture_output=True)


def mounts_containing(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if text in line]


class Podman:
    """podman with private storage and configuration (runc, cgroupfs, file events, host
    networking only: no bridge, no CNI files)."""

    def __init__(self, base: Path):
        self.base = base
        self.had_cache = PODMAN_HOST_CACHE.exists()
        (base / "tmp").mkdir(parents=True)
        (base / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/root"\nrunroot = "{base}/run"\n')
        (base / "containers.conf").write_text(
            "[containers]\n"
            # runc cannot raise these limits above the defaults on these machines (hybrid cgroups)
            'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
            "[engine]\n"
            f'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{base}/events.log"\nruntime = "runc"\n'
            f'tmp_dir = "{base}/libpod"\nvolume_path = "{base}/volumes"\n'
            f'static_dir = "{base}/static"\n'
            f'[network]\nnetwork_config_dir = "{base}/net.d"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(base / "containers.conf"),
                        CONTAINERS_STORAGE_CONF=str(base / "storage.conf"),
                        TMPDIR=str(base / "tmp"))

    def __call__(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "run"),
             "--runtime", "runc", *map(str, args)],
            capture_output=True, text=True, env=self.env, timeout=timeout)
        if check:
            assert result.returncode == 0, (args, result.stderr)
        return result

    def cleanup(self) -> None:
        self("pod", "rm", "--all", "--force", check=False)
        self("rm", "--all", "--force", check=False)
        self("volume", "rm", "--all", "--force", check=False)
        self("rmi", "--all", "--force", check=False)
        assert not mounts_containing(str(self.base)), "podman left mounts"
        shutil.rmtree(self.base, ignore_errors=True)
        if not self.had_cache:
            shutil.rmtree(PODMAN_HOST_CACHE, ignore_errors=True)


@contextlib.contextmanager
def podman():
    instance = Podman(Path(tempfile.mkdtemp(prefix="jailkit-podman-")))
    try:
        yield instance
    finally:
        instance.cleanup()


def members(archive):
    """[(TarInfo, data or None)] of an archive, in order."""
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]


def rewrite(source, target, change, manifest=None, launch=None):
    """A copy of tar `source`: change(members) on its [(TarInfo, data)], manifest(document) on its
    manifest.json, launch(document) on its launch.json."""
    items = members(source)
    for name, edit in (("manifest.json", manifest), ("launch.json", launch)):
        if edit is not None:
            i = next(i for i, (m, _) in enumerate(items) if m.name == name)
            document = json.loads(items[i][1])
            edit(document)
            items[i] = (items[i][0], json.dumps(document).encode())
    if change is not None:
        change(items)
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return target


def imported(archive, root):
    return run_jailkit("import", archive, "--root", root, timeout=120)
