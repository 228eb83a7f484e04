"""The bundled nginx profile, for real: built, run by `jailkit run`, fetched over 127.0.0.1."""

import os
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from services import Service, build, free_port, host_uids, http_get, static_site, web_server

pytestmark = pytest.mark.usefixtures("as_root")


def jail_uid(pid: int, host_uid: int) -> int:
    """The uid a process has inside its own user namespace."""
    with open(f"/proc/{pid}/uid_map") as f:
        for inside, outside, count in (map(int, line.split()) for line in f):
            if outside <= host_uid < outside + count:
                return inside + host_uid - outside
    raise AssertionError(f"uid {host_uid} is not mapped in the jail of {pid}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("nginx")
    files = {"index.html": b"<p>jailed</p>\n", "blob.bin": os.urandom(300_000)}
    docroot, profile = static_site(base, "nginx", files)
    return base, profile, docroot


@pytest.fixture
def nginx(site):
    base, profile, docroot = site
    with web_server(profile, base, docroot) as (service, port):
        yield service, port, docroot


def get(port: int, path: str) -> tuple[int, bytes]:
    status, _, body = http_get(port, path)
    return status, body


def test_serves_exact_bytes_and_404_then_stops_cleanly(nginx):
    service, port, docroot = nginx
    assert get(port, "/blob.bin") == (200, (docroot / "blob.bin").read_bytes())
    assert get(port, "/") == (200, b"<p>jailed</p>\n")
    assert get(port, "/missing.html")[0] == 404
    service.assert_foreground_under_pid1("nginx")
    assert service.stop() == 0, service.log()


def test_master_is_jail_root_and_workers_are_www_data(nginx):
    service, port, _ = nginx
    get(port, "/")
    nginxes = {}
    for pid in service.processes():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        if cmdline.startswith(b"nginx: "):
            nginxes[pid] = cmdline
    masters = [p for p, c in nginxes.items() if c.startswith(b"nginx: master")]
    workers = [p for p, c in nginxes.items() if c.startswith(b"nginx: worker")]
    assert len(masters) == 1 and workers, nginxes
    (master_uid,) = host_uids(masters)
    assert master_uid != 0  # the jail's root is not the host's
    assert jail_uid(masters[0], master_uid) == 0
    assert {jail_uid(p, u) for p in workers for u in host_uids([p])} == {33}
    assert service.stop() == 0, service.log()


def test_ten_seconds_of_wrk_without_errors(nginx):
    service, port, _ = nginx
    result = subprocess.run(["wrk", "-t2", "-c32", "-d10s", f"http://127.0.0.1:{port}/blob.bin"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "requests in" in result.stdout
    assert int(result.stdout.split(" requests in")[0].split()[-1]) > 100, result.stdout
    assert "Socket errors" not in result.stdout, result.stdout
    assert "Non-2xx" not in result.stdout, result.stdout
    assert service.stop() == 0, service.log()


def test_tls_variant_serves_https_with_the_certificate_made_for_this_jail(site, tmp_path):
    base, _, docroot = site
    profile = tmp_path / "tlssite.toml"
    profile.write_text(f'extends = ["nginx-tls"]\nfiles = ["{docroot}"]\n')
    port = free_port()
    build(str(profile), tmp_path / "jail", f"port={port}", f"docroot={docroot}")
    pem = (tmp_path / "jail/current/root/etc/nginx/tls/server.pem").read_text()
    cert = pem[pem.index("-----BEGIN CERTIFICATE-----"):]
    context = ssl.create_default_context(cadata=cert)  # trust exactly this jail's certificate
    service = Service(str(profile), tmp_path / "jail", tmp_path / "nginx.log")
    try:
        service.wait_port(port)
        url = f"https://localhost:{port}/blob.bin"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            assert (response.status, response.read()) == (200, (docroot / "blob.bin").read_bytes())
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)
        plain = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
        assert plain.stdout == "400"  # plain HTTP on the TLS port
        assert service.stop() == 0, service.log()
    finally:
        service.kill()


def test_address_makes_nginx_listen_on_that_address_alone(tmp_path):
    """The README's first command builds with address=127.0.0.1: on a server, the quick
    start's page is not offered to the network."""
    port = free_port()
    build("nginx", tmp_path / "jail", f"port={port}", "address=127.0.0.1")
    service = Service("nginx", tmp_path / "jail", tmp_path / "service.log")
    try:
        service.wait_port(port)
        listening = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True,
                                   text=True, check=True).stdout.split()
        assert [column for column in listening if column.endswith(f":{port}")] == \
            [f"127.0.0.1:{port}"]
        assert http_get(port, "/")[0] == 200
        assert service.stop() == 0, service.log()
    finally:
        service.kill()
