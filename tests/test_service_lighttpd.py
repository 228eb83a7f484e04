"""The bundled lighttpd profile, for real: built, run by `jailkit run`, fetched over 127.0.0.1."""

import json
import os
import stat

import pytest
from services import host_uids, http_get, static_site, web_server

pytestmark = pytest.mark.usefixtures("as_root")


@pytest.fixture(scope="module")
def lighttpd(tmp_path_factory):
    base = tmp_path_factory.mktemp("lighttpd")
    files = {
        "index.html": b"<p>lit</p>\n",
        "data.json": b'{"n": 1}',
        "blob.bin": os.urandom(100_000),
    }
    docroot, profile = static_site(base, "lighttpd", files)
    with web_server(profile, base, docroot) as (service, port):
        yield service, port, docroot


def test_static_site_with_content_types_and_404(lighttpd):
    service, port, docroot = lighttpd
    assert http_get(port, "/") == (200, "text/html; charset=utf-8", b"<p>lit</p>\n")
    assert http_get(port, "/data.json") == (200, "application/json", b'{"n": 1}')
    blob = (docroot / "blob.bin").read_bytes()
    assert http_get(port, "/blob.bin") == (200, "application/octet-stream", blob)
    assert http_get(port, "/nothing-here")[0] == 404
    service.assert_foreground_under_pid1("lighttpd")


def test_runs_as_www_data_with_a_real_dev_null_and_no_shell_or_perl(lighttpd):
    service, _, _ = lighttpd
    (pid,) = [p for p in service.processes()
              if open(f"/proc/{p}/comm").read().strip() == "lighttpd"]
    (host_uid,) = host_uids([pid])
    with open(f"/proc/{pid}/uid_map") as f:
        inside, outside, _ = map(int, f.readline().split())
    assert host_uid - outside + inside == 33
    null = os.stat(f"/proc/{pid}/root/dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    manifest = json.loads((service.root / "current/manifest.json").read_text())
    names = {e["path"].rsplit("/", 1)[1] for e in manifest["entries"]}
    assert not names & {"sh", "dash", "bash", "perl"}, names & {"sh", "dash", "bash", "perl"}


def test_stops_on_sigterm_leaving_nothing(lighttpd):
    service, port, _ = lighttpd
    assert http_get(port, "/")[0] == 200
    assert service.stop() == 0, service.log()
