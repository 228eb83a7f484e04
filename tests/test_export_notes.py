"""What an export leaves on the host or hands out, said in its notes and carried into each
format, judged by the real tools: the state directories (image volumes for podman, claims for
`podman kube play`, the bundle's own binds filled as the note says for runc), the secrets made
for the jail (named; left out on request, and the image serves once they are given back), the
bundle's printed `runc run` command, a Pod that restarts its service and an image reference a
registry takes from a jail name with capitals and '..'."""

import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import run_jailkit
from exporting import (
    export,
    kube_documents,
    mounts_containing,
    podman,
    port_closed,
    runc_stop,
    wait_http,
)
from services import Service, build, free_port
from test_export_oci import run

pytestmark = pytest.mark.usefixtures("as_root")
NAME = "Web..Site_"  # a valid jail name; as an image's path component: web-site
IMAGE = "localhost/jailkit/web-site:gen-1"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def notes(result) -> list[str]:
    return [line.removeprefix("jailkit: note: ") for line in result.stderr.splitlines()
            if line.startswith("jailkit: note: ")]


def note_on(result, words: str) -> str:
    found = [line for line in notes(result) if words in line]
    assert len(found) == 1, result.stderr
    return found[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An nginx jail named NAME that has served a request: its access log is in its state
    directory, DIR/state/var/log/nginx. (profile, jail, port)"""
    base = tmp_path_factory.mktemp("export-notes")
    profile = base / f"{NAME}.toml"
    profile.write_text('extends = ["nginx"]\n')
    port = free_port()
    build(str(profile), base / NAME, f"port={port}", "address=127.0.0.1")
    service = Service(str(profile), base / NAME, base / "service.log")
    try:
        service.wait_port(port)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/earlier", timeout=10)
        assert service.stop() == 0, service.log()
    finally:
        service.kill()
    log = base / NAME / "state/var/log/nginx/access.log"
    assert "GET /earlier " in log.read_text()
    return profile, base / NAME, port


def test_an_image_declares_each_state_directory_a_volume_and_has_a_registry_name(served,
                                                                                 tmp_path):
    profile, jail, port = served
    archive = tmp_path / "image.tar"
    result = export(profile, jail, "oci", archive)
    assert result.returncode == 0, result.stderr
    assert f"({IMAGE}, manifest sha256:" in result.stdout
    said = note_on(result, "state directory /var/log/nginx")
    assert f"its files stay in {jail}/state/var/log/nginx, not in the image" in said
    assert "podman run -v NAME:/var/log/nginx" in said
    config = json.loads(run("skopeo", "inspect", "--config", f"oci-archive:{archive}"))
    assert config["config"]["Volumes"] == {"/var/log/nginx": {}}
    with podman() as pm:
        assert f"Loaded image: {IMAGE}" in pm("load", "-i", archive).stdout
        pm("run", "-d", "--name", "jailkit-notes-volume", "--network", "host", IMAGE)
        assert b"nginx" in wait_http(port)
        mounts = json.loads(pm("inspect", "jailkit-notes-volume").stdout)[0]["Mounts"]
        volume, = (m for m in mounts if m["Destination"] == "/var/log/nginx")
        assert volume["Type"] == "volume"
        pm("stop", "-t", "10", "jailkit-notes-volume")  # SIGQUIT: nginx writes its log out
        where = json.loads(pm("volume", "inspect", volume["Name"]).stdout)[0]["Mountpoint"]
        assert "GET / " in (Path(where) / "access.log").read_text()
        pm("rm", "jailkit-notes-volume")
    assert port_closed(port)


def test_a_pod_claims_each_state_directory_and_restarts_its_service(served, tmp_path):
    profile, jail, port = served
    pod = tmp_path / "pod.yaml"
    result = export(profile, jail, "kube", pod)
    assert result.returncode == 0, result.stderr
    assert f"(image {IMAGE}, from `--format oci`)" in result.stdout
    claim, spec = kube_documents(pod)  # the claim first: the Pod's volume needs it
    assert claim["kind"] == "PersistentVolumeClaim" and DNS_LABEL.fullmatch(
        claim["metadata"]["name"]), claim
    name = claim["metadata"]["name"]
    assert name == "web--site-var-log-nginx"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    said = note_on(result, "state directory /var/log/nginx")
    assert f"the PersistentVolumeClaim {name} there" in said and f"{jail}/state" in said
    assert spec["metadata"]["annotations"]["jailkit.dev/stop-signal"] == "SIGQUIT"  # nginx's
    pod_spec = spec["spec"]
    assert pod_spec["restartPolicy"] == "Always"  # a service: it has a port
    container, = pod_spec["containers"]
    assert container["image"] == IMAGE
    volume, = (v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"] == {"claimName": name}
    assert {"name": volume["name"], "mountPath": "/var/log/nginx"} in container["volumeMounts"]
    archive = tmp_path / "image.tar"
    assert export(profile, jail, "oci", archive).returncode == 0
    with podman() as pm:
        pm("load", "-i", archive)
        pm("kube", "play", "--userns", "host", pod, timeout=180)
        try:
            assert b"nginx" in wait_http(port)
            assert name in pm("volume", "ls", "--format", "{{.Name}}").stdout.split()
            inspected = json.loads(pm("inspect", f"{spec['metadata']['name']}-"
                                                 f"{container['name']}").stdout)[0]
            assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "always"
            claimed, = (m for m in inspected["Mounts"] if m["Destination"] == "/var/log/nginx")
            assert claimed["Name"] == name
        finally:
            pm("kube", "down", pod, timeout=180)
        assert port_closed(port)


def test_the_bundle_runs_as_printed_and_its_note_carries_the_state_over(served):
    profile, jail, port = served
    work = Path(tempfile.mkdtemp(prefix="jailkit-bundle-notes-"))
    os.chmod(work, 0o711)  # runc's init enters rootfs as the jail's mapped root
    bundle, state = work / "bundle", work / "runc-state"
    try:
        result = export(profile, jail, "bundle", bundle)
        assert result.returncode == 0, result.stderr
        printed = result.stdout.rsplit("(", 1)[1].rstrip(")\n")
        assert printed == f"runc run -b {bundle} {NAME}"
        said = note_on(result, "state directory /var/log/nginx")
        copy = said.split("to keep the jail's files: ", 1)[1].split(" (or ", 1)[0]
        subprocess.run(shlex.split(copy), check=True, timeout=60)
        kept = bundle / "state/var/log/nginx/access.log"
        assert "GET /earlier " in kept.read_text()
        argv = shlex.split(printed)
        proc = subprocess.Popen([argv[0], "--root", state, *argv[1:]], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert b"nginx" in wait_http(port)
        finally:
            runc_stop(state, NAME, proc)
        log = kept.read_text()  # the jail's log, carried over, and what runc's nginx added
        assert "GET /earlier " in log and "GET / " in log, log
        assert port_closed(port)
        assert not mounts_containing(str(work)), "runc left mounts on the host"
    finally:
        shutil.rmtree(work)


def https_body(port: int, seconds: float = 30) -> bytes:
    """The body of GET / over TLS (a self-signed certificate) once nginx answers (bounded)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/", timeout=10,
                                        context=context) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_secrets_are_named_and_an_image_without_them_serves_once_given_them(tmp_path):
    port = free_port()
    jail = tmp_path / "nginx-tls"
    build("nginx-tls", jail, f"port={port}", "address=127.0.0.1")
    key = "/etc/nginx/tls/server.pem"
    full = export("nginx-tls", jail, "oci", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    said = note_on(full, "holds secrets")
    assert f"{key} (a private key made for this jail)" in said
    assert "--without-secrets" in said and "registry" in said
    archive = tmp_path / "without.tar"
    result = export("nginx-tls", jail, "oci", archive, "--without-secrets")
    assert result.returncode == 0, result.stderr
    assert not [line for line in notes(result) if "holds secrets" in line], result.stderr
    left = note_on(result, "left out of the image")
    assert f"-v FILE:{key}:ro" in left
    config = json.loads(run("skopeo", "inspect", "--config", f"oci-archive:{archive}"))
    assert config["config"]["Labels"]["org.jailkit.left-out"] == key
    bundle = tmp_path / "bundle"
    assert export("nginx-tls", jail, "bundle", bundle, "--without-secrets").returncode == 0
    assert not (bundle / f"rootfs{key}").exists()
    assert (bundle / "rootfs/etc/nginx/nginx.conf").exists()
    image = "localhost/jailkit/nginx-tls:gen-1"
    with podman() as pm:
        pm("load", "-i", archive)
        missing = pm("run", "--rm", "--network", "host", image, check=False, timeout=60)
        assert missing.returncode != 0 and "server.pem" in missing.stderr, missing.stderr
        given = jail / f"current/root{key}"  # the key, as the note says: mounted at run time
        pm("run", "-d", "--name", "jailkit-notes-tls", "--network", "host", "-v",
           f"{given}:{key}:ro", image)
        try:
            assert b"nginx" in https_body(port)
        finally:
            pm("rm", "--force", "--time", "10", "jailkit-notes-tls")
    assert port_closed(port)


def test_an_archive_says_what_it_holds_and_leaves_out(tmp_path):
    locked, hashed = tmp_path / "locked", tmp_path / "hashed"
    build("vsftpd", locked, f"port={free_port()}")
    build("vsftpd", hashed, f"port={free_port()}", "local_password=a passphrase")
    quiet = export("vsftpd", locked, "tar", tmp_path / "locked.tar")
    assert quiet.returncode == 0, quiet.stderr
    assert not [line for line in notes(quiet) if "secrets" in line], quiet.stderr  # "!" only
    result = export("vsftpd", hashed, "tar", tmp_path / "hashed.tar")
    assert result.returncode == 0, result.stderr
    assert "/etc/shadow (password hashes)" in note_on(result, "the archive holds secrets")
    for path in ("/srv/ftp-local/files", "/var/log/vsftpd"):
        said = note_on(result, f"state directory {path}:")
        assert f"{hashed}/state{path}, not in the archive" in said
    for fmt in ("tar", "kube"):
        refused = export("vsftpd", hashed, fmt, tmp_path / f"x.{fmt}", "--without-secrets")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "--format oci --without-secrets" in refused.stderr
        assert not (tmp_path / f"x.{fmt}").exists()


def test_a_command_jail_is_restarted_only_when_it_fails(tmp_path):
    build("shell", tmp_path / "j")
    result = run_jailkit("export", "shell", "--root", tmp_path / "j", "--format", "kube", "-o",
                         tmp_path / "pod.yaml")
    assert result.returncode == 0, result.stderr
    documents = kube_documents(tmp_path / "pod.yaml")
    assert [d["kind"] for d in documents] == ["Pod"]  # no state directory: no claim
    assert documents[0]["spec"]["restartPolicy"] == "OnFailure"


def test_two_jails_of_one_profile_export_under_their_own_names(tmp_path):
    """An image, a container and a Pod are named as `run` and `ps` name the jail (its
    directory's name), not by its profile: two jails of one profile would share them."""
    for name in ("site-a", "site-b"):
        build("shell", tmp_path / name)
        image = export("shell", tmp_path / name, "oci", tmp_path / f"{name}.tar")
        assert image.returncode == 0, image.stderr
        assert f"(localhost/jailkit/{name}:gen-1, manifest sha256:" in image.stdout
        bundle = export("shell", tmp_path / name, "bundle", tmp_path / f"{name}-bundle")
        assert bundle.returncode == 0, bundle.stderr
        assert f"runc run -b {tmp_path / f'{name}-bundle'} {name}" in bundle.stdout
