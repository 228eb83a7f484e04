"""`jailkit export --format tar` and `jailkit import`: a round trip that runs, and hostile
archives (a tampered file, paths out of the tree, devices, links, setuid bits) refused by name
with nothing left behind."""

import io
import json
import os
import stat
import tarfile

import pytest
from conftest import NOBODY, nobody_jailkit, run_jailkit
from exporting import export, imported, members, rewrite
from services import Service, build, free_port, http_get

pytestmark = pytest.mark.usefixtures("as_root")


@pytest.fixture(scope="module")
def nginx_archive(tmp_path_factory):
    base = tmp_path_factory.mktemp("export-tar")
    port = free_port()
    build("nginx", base / "jail", f"port={port}")
    result = export("nginx", base / "jail", "tar", base / "nginx.tar", "--set", f"port={port}")
    assert result.returncode == 0, result.stderr
    return base, port, base / "nginx.tar"


def test_round_trip_runs_and_checks_clean(nginx_archive, tmp_path):
    base, port, archive = nginx_archive
    names = [m.name for m, _ in members(archive)]
    assert names[:4] == ["jailkit-archive.json", "manifest.json", "launch.json", "profile.toml"]
    shown = dict(members(archive)[3:4])
    assert f"port = {port}".encode() in next(iter(shown.values()))
    result = imported(archive, tmp_path / "copy")
    assert result.returncode == 0, result.stderr
    check = run_jailkit("check", "nginx", "--root", tmp_path / "copy")
    assert check.returncode == 0, check.stdout + check.stderr
    original = tmp_path / "copy" / "current" / "root" / "etc" / "nginx" / "nginx.conf"
    assert original.stat().st_uid == 0 and stat.S_IMODE(original.stat().st_mode) == 0o644
    service = Service("nginx", tmp_path / "copy", tmp_path / "service.log")
    try:
        service.wait_port(port)
        assert http_get(port, "/")[0] == 200
        assert service.stop() == 0, service.log()
    finally:
        service.kill()


def refused(archive, root, *words):
    """Import fails with one line naming `words`, and leaves no jail directory behind."""
    result = imported(archive, root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert not root.exists(), f"half-imported: {sorted(os.listdir(root))}"


def tree_member(items, path):
    return next(i for i, (m, _) in enumerate(items) if m.name == f"root{path}")


def test_tampered_file_is_refused_by_name(nginx_archive, tmp_path):
    def tamper(items):
        i = tree_member(items, "/etc/nginx/nginx.conf")
        data = bytearray(items[i][1])
        data[10] ^= 1  # same size, one bit
        items[i] = (items[i][0], bytes(data))

    archive = rewrite(nginx_archive[2], tmp_path / "bad.tar", tamper)
    refused(archive, tmp_path / "jail", "/etc/nginx/nginx.conf", "sha256")


def test_tampered_import_leaves_an_existing_jail_as_it_was(nginx_archive, tmp_path):
    assert imported(nginx_archive[2], tmp_path / "jail").returncode == 0
    before = sorted(os.listdir(tmp_path / "jail"))

    def tamper(items):
        i = tree_member(items, "/etc/passwd")
        items[i] = (items[i][0], items[i][1].replace(b"root:x:0", b"root:x:1"))

    result = imported(rewrite(nginx_archive[2], tmp_path / "bad.tar", tamper), tmp_path / "jail")
    assert result.returncode == 2 and "/etc/passwd" in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path / "jail")) == before
    assert run_jailkit("check", "nginx", "--root", tmp_path / "jail").returncode == 0


def add_member(items, info, data=None, manifest_entry=None):
    """Add a member right after /etc (where its depth-first order allows it), and (to get past
    the manifest check) a matching manifest entry."""
    items.insert(tree_member(items, "/etc") + 1, (info, data))
    if manifest_entry is not None:
        i = next(i for i, (m, _) in enumerate(items) if m.name == "manifest.json")
        document = json.loads(items[i][1])
        document["entries"].append(manifest_entry)
        items[i] = (items[i][0], json.dumps(document).encode())


def entry(path, kind, mode=0o644, target=None, data=b""):
    import hashlib

    return {"path": path, "type": kind, "mode": mode, "uid": 0, "gid": 0,
            "size": len(data) if kind == "file" else 0,
            "sha256": hashlib.sha256(data).hexdigest() if kind == "file" else None,
            "source": None, "target": target, "mtime": 0, "ino": 0, "host": None,
            "file_caps": False}


@pytest.mark.parametrize("name", ["root/../../../tmp/jailkit-escape", "/tmp/jailkit-escape",
                                  "root/etc/../../jailkit-escape", "elsewhere"])
def test_paths_out_of_the_tree_are_refused(nginx_archive, tmp_path, name):
    def plant(items):
        info = tarfile.TarInfo(name)
        info.size = 3
        add_member(items, info, b"owned")

    refused(rewrite(nginx_archive[2], tmp_path / "bad.tar", plant), tmp_path / "jail", name)
    assert not os.path.exists("/tmp/jailkit-escape")


def test_symlink_out_of_the_tree_is_refused(nginx_archive, tmp_path):
    def plant(items):
        info = tarfile.TarInfo("root/etc/escape")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc/shadow"
        add_member(items, info, None, entry("/etc/escape", "symlink", 0o777,
                                            "../../../../etc/shadow"))

    refused(rewrite(nginx_archive[2], tmp_path / "bad.tar", plant), tmp_path / "jail",
            "/etc/escape", "leaves the tree")


def test_write_through_a_planted_symlink_is_refused(nginx_archive, tmp_path):
    """A symlink member, then a file "below" it: creating it would write where the link points."""
    outside = tmp_path / "outside"
    outside.mkdir()

    def plant(items):
        link = tarfile.TarInfo("root/etc/trap")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        add_member(items, link, None, entry("/etc/trap", "symlink", 0o777, str(outside)))
        info = tarfile.TarInfo("root/etc/trap/owned")
        info.size = 5
        add_member(items, info, b"owned", entry("/etc/trap/owned", "file", data=b"owned"))

    refused(rewrite(nginx_archive[2], tmp_path / "bad.tar", plant), tmp_path / "jail",
            "/etc/trap/owned", "its directory does not come before it")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("kind,word", [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"),
                                       (tarfile.FIFOTYPE, "fifo"), (tarfile.LNKTYPE, "hard link")])
def test_devices_and_hard_links_are_refused(nginx_archive, tmp_path, kind, word):
    def plant(items):
        info = tarfile.TarInfo("root/etc/special")
        info.type, info.devmajor, info.devminor = kind, 1, 3
        info.linkname = "/etc/shadow" if kind == tarfile.LNKTYPE else ""
        add_member(items, info, None, entry("/etc/special", "file"))

    refused(rewrite(nginx_archive[2], tmp_path / "bad.tar", plant), tmp_path / "jail",
            "/etc/special", f"the archive holds a {word}")


def test_setuid_root_file_is_refused(nginx_archive, tmp_path):
    """As root, importing a setuid-root file would put a host-root shell under DIR."""
    def plant(items):
        info = tarfile.TarInfo("root/etc/rootshell")
        info.size, info.mode = 4, 0o4755
        add_member(items, info, b"\x7fELF", entry("/etc/rootshell", "file", 0o4755,
                                                  data=b"\x7fELF"))

    refused(rewrite(nginx_archive[2], tmp_path / "bad.tar", plant), tmp_path / "jail",
            "/etc/rootshell", "only a local build may set")


def test_members_and_manifest_must_match(nginx_archive, tmp_path):
    def extra(items):
        info = tarfile.TarInfo("root/etc/extra")
        info.size = 1
        add_member(items, info, b"x")

    refused(rewrite(nginx_archive[2], tmp_path / "a.tar", extra), tmp_path / "jail",
            "/etc/extra", "not in its manifest")

    def drop(items):
        del items[tree_member(items, "/etc/group")]

    refused(rewrite(nginx_archive[2], tmp_path / "b.tar", drop), tmp_path / "jail",
            "/etc/group", "not in the archive")

    def chmod(items):
        items[tree_member(items, "/etc/passwd")][0].mode = 0o600

    refused(rewrite(nginx_archive[2], tmp_path / "c.tar", chmod), tmp_path / "jail",
            "/etc/passwd", "mode")


def test_not_an_archive(tmp_path):
    (tmp_path / "junk").write_bytes(b"hello")
    refused(tmp_path / "junk", tmp_path / "jail", "not a jailkit archive")
    with tarfile.open(tmp_path / "other.tar", "w") as tar:
        tar.addfile(tarfile.TarInfo("README"), io.BytesIO(b""))
    refused(tmp_path / "other.tar", tmp_path / "jail", "not a jailkit archive")
    refused(tmp_path / "missing.tar", tmp_path / "jail", "no such file")


def test_export_bad_input_one_line_exit_2(nginx_archive, tmp_path):
    base, _, archive = nginx_archive
    cases = [
        (("--format", "zip", "-o", tmp_path / "x"), "--format 'zip'"),
        (("--format", "tar", "-o", archive), "exists"),
    ]
    for args, word in cases:
        result = run_jailkit("export", "nginx", "--root", base / "jail", *args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr
    result = run_jailkit("export", "nginx", "--root", tmp_path / "never", "--format", "oci",
                         "-o", tmp_path / "img")
    assert result.returncode == 2 and "build it first" in result.stderr, result.stderr
    assert not (tmp_path / "img").exists()
    forced = export("nginx", base / "jail", "tar", archive, "--force")
    assert forced.returncode == 0, forced.stderr


def test_export_refuses_a_jail_modified_since_its_build(tmp_path):
    build("shell", tmp_path / "jail")
    target = tmp_path / "jail" / "current" / "root" / "etc" / "passwd"
    data = target.read_bytes()
    target.write_bytes(data.replace(b"root", b"toor"))
    result = export("shell", tmp_path / "jail", "tar", tmp_path / "out.tar")
    assert result.returncode == 2, result.stderr
    assert "/etc/passwd" in result.stderr and "jailkit check" in result.stderr
    assert not (tmp_path / "out.tar").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []


def test_an_ordinary_user_exports_imports_checks_and_runs_its_own_jail(home):
    base = home / "home"
    assert nobody_jailkit(home, "build", "shell", "--root", base / "jail").returncode == 0
    archive = base / "shell.tar"
    exported = nobody_jailkit(home, "export", "shell", "--root", base / "jail", "--format", "tar",
                              "-o", archive)
    assert exported.returncode == 0, exported.stderr
    imported = nobody_jailkit(home, "import", archive, "--root", base / "copy")
    assert imported.returncode == 0, imported.stderr
    assert nobody_jailkit(home, "check", "shell", "--root", base / "copy").returncode == 0
    ran = nobody_jailkit(home, "run", "shell", "--root", base / "copy", "--", "/bin/sh", "-c",
                         "echo from the import")
    assert (ran.returncode, ran.stdout) == (0, "from the import\n"), ran.stderr
    assert (base / "copy").stat().st_uid == NOBODY


def _sets_of(jail) -> dict:
    return json.loads((jail / "current/sets.json").read_text())


def test_the_jails_set_values_travel_with_the_archive(tmp_path):
    """A jail built with `--set port=P`, exported without --set: the archive's profile.toml
    shows P, the archive carries the remembered values (0600), and an update after import
    keeps P instead of reverting to the profile's 8080."""
    port = free_port()
    build("nginx", tmp_path / "jail", f"port={port}")
    archive = tmp_path / "nginx.tar"
    assert export("nginx", tmp_path / "jail", "tar", archive).returncode == 0
    items = dict((m.name, (m, data)) for m, data in members(archive))
    assert f"port = {port}".encode() in items["profile.toml"][1]
    info, data = items["sets.json"]
    assert stat.S_IMODE(info.mode) == 0o600
    assert json.loads(data) == {"profile": "nginx", "sets": {"port": str(port)}}
    copy = tmp_path / "copy"
    assert imported(archive, copy).returncode == 0
    assert _sets_of(copy) == {"profile": "nginx", "sets": {"port": str(port)}}
    assert stat.S_IMODE((copy / "current/sets.json").stat().st_mode) == 0o600
    assert run_jailkit("update", "nginx", "--root", copy, timeout=300).returncode == 0
    assert f"listen {port};" in (copy / "current/root/etc/nginx/nginx.conf").read_text()


def test_an_archive_without_set_values_keeps_the_jails_own(nginx_archive, tmp_path):
    """Importing into an existing jail an archive that carries no remembered values (an older
    jailkit's) leaves the jail's own; a sets.json that is not string -> string is refused."""
    port = free_port()
    build("nginx", tmp_path / "jail", f"port={port}")
    bare = rewrite(nginx_archive[2], tmp_path / "bare.tar",
                   lambda items: items.remove(next(i for i in items if i[0].name == "sets.json")))
    assert imported(bare, tmp_path / "jail").returncode == 0
    assert _sets_of(tmp_path / "jail") == {"profile": "nginx", "sets": {"port": str(port)}}

    def bad_sets(items):
        i = next(i for i, (m, _) in enumerate(items) if m.name == "sets.json")
        items[i] = (items[i][0], b'{"profile": "nginx", "sets": {"port": 8080}}')

    refused(rewrite(nginx_archive[2], tmp_path / "bad.tar", bad_sets), tmp_path / "new",
            "sets.json")
