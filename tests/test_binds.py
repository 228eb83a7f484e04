"""Live host content: `[binds."/srv/www"] source = "/srv/mysite"` mounts a host directory into the
jail at run time, read-only (and nosuid, nodev, noexec) unless asked, opened on the host side by
descriptor with no symlink on its path."""

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from conftest import NOBODY, as_nobody, run_jailkit
from services import Service, free_port

pytestmark = pytest.mark.usefixtures("as_root")


@pytest.fixture
def site():
    """A host directory outside pytest's 0700 tree, as an administrator's /srv/mysite is."""
    base = Path(tempfile.mkdtemp(prefix="jailkit-site-"))
    base.chmod(0o755)
    (base / "site").mkdir(mode=0o755)
    (base / "site/index.html").write_text("first version\n")
    yield base
    shutil.rmtree(base)


def shell_with_bind(tmp_path, source, extra="") -> Path:
    profile = tmp_path / "data.toml"
    profile.write_text(f'extends = ["shell"]\n[binds."/srv/data"]\nsource = "{source}"\n{extra}')
    return profile


def run_in(profile, jail, *command):
    return run_jailkit("run", profile, "--root", jail, "--", *command, timeout=60)


def test_nginx_serves_a_live_host_directory(tmp_path, site):
    profile = tmp_path / "mysite.toml"
    profile.write_text(f'extends = ["nginx"]\n[binds."/srv/www"]\nsource = "{site}/site"\n')
    port = free_port()
    jail = tmp_path / "mysite"
    result = run_jailkit("build", profile, "--root", jail, "--set", "docroot=/srv/www",
                         "--set", f"port={port}", timeout=300)
    assert result.returncode == 0, result.stderr
    service = Service(str(profile), jail, tmp_path / "log")
    try:
        service.wait_port(port)
        url = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{url}/", timeout=10).read() == b"first version\n"
        (site / "site/news.html").write_text("written on the host after the start\n")
        assert urllib.request.urlopen(f"{url}/news.html", timeout=10).read() == \
            b"written on the host after the start\n"
    finally:
        service.proc.terminate()
        service.proc.wait(30)
    assert run_jailkit("check", profile, "--root", jail).returncode == 0  # not hashed


def test_a_read_only_bind_refuses_writes_and_exec_and_rw_allows_writes(tmp_path, site):
    jail = tmp_path / "jail"
    profile = shell_with_bind(tmp_path, f"{site}/site")
    assert run_jailkit("build", profile, "--root", jail).returncode == 0
    shutil.copy("/bin/true", site / "site/tool")
    read = run_in(profile, jail, "/bin/cat", "/srv/data/index.html")
    assert read.returncode == 0 and read.stdout == "first version\n", read.stderr
    write = run_in(profile, jail, "/bin/sh", "-c", "echo x > /srv/data/index.html")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert (site / "site/index.html").read_text() == "first version\n"
    assert run_in(profile, jail, "/srv/data/tool").returncode == 126  # noexec

    (site / "site").chmod(0o777)  # the jail's ids are not the host's: it must be let in
    profile = shell_with_bind(tmp_path, f"{site}/site", "rw = true\n")
    assert run_jailkit("build", profile, "--root", jail).returncode == 0
    write = run_in(profile, jail, "/bin/sh", "-c", "echo from-the-jail > /srv/data/new")
    assert write.returncode == 0, write.stderr
    assert (site / "site/new").read_text() == "from-the-jail\n"
    assert run_in(profile, jail, "/srv/data/tool").returncode == 126  # still noexec


def test_a_symlink_on_the_source_path_is_refused_at_build_and_at_run(tmp_path, site):
    (site / "link").symlink_to(site / "site")
    jail = tmp_path / "jail"
    built = run_jailkit("build", shell_with_bind(tmp_path, f"{site}/link"), "--root", jail)
    assert built.returncode == 2 and built.stderr.count("\n") == 1, built.stderr
    assert "symlink" in built.stderr and f"{site}/link" in built.stderr
    # built while it was a directory, swapped for a link afterwards: the run refuses too
    (site / "link").unlink()
    (site / "real").mkdir()
    profile = shell_with_bind(tmp_path, f"{site}/real")
    assert run_jailkit("build", profile, "--root", jail).returncode == 0
    (site / "real").rename(site / "moved")
    (site / "real").symlink_to("/etc")
    result = run_in(profile, jail, "/bin/ls", "/srv/data")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "symlink" in result.stderr and "passwd" not in result.stdout


def test_a_missing_source_is_one_line_at_build(tmp_path):
    built = run_jailkit("build", shell_with_bind(tmp_path, "/nonexistent/site"),
                        "--root", tmp_path / "jail")
    assert built.returncode == 2 and built.stderr.count("\n") == 1, built.stderr
    assert "binds" in built.stderr and "/nonexistent/site" in built.stderr


def test_an_ordinary_user_mounts_a_bind_of_its_own(world_readable_checkout, site):
    base = Path(tempfile.mkdtemp(prefix="jailkit-binds-nobody-"))
    try:
        os.chown(base, NOBODY, NOBODY)
        profile = base / "data.toml"
        profile.write_text(f'extends = ["shell"]\n[binds."/srv/data"]\nsource = "{site}/site"\n')
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
               "HOME": "/nonexistent"}

        def nobody(*args):
            return subprocess.run([sys.executable, "-m", "jailkit", *args], env=env, cwd="/",
                                  text=True, capture_output=True, preexec_fn=as_nobody,
                                  timeout=120)

        assert nobody("build", str(profile), "--root", str(base / "j")).returncode == 0
        read = nobody("run", str(profile), "--root", str(base / "j"), "--", "/bin/sh", "-c",
                      "cat /srv/data/index.html; echo x > /srv/data/f")
        assert read.stdout == "first version\n" and "Read-only" in read.stderr, read.stderr
    finally:
        shutil.rmtree(base)
