"""A hostile archive author against `jailkit import` run by root: what the archive says about the
host (the closure cache, each file's host identity and package) is never believed, its launch
settings are shown before they run, and its size is checked before anything is written."""

import bz2
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest
from conftest import nobody_jailkit, run_jailkit
from exporting import export, imported, rewrite

pytestmark = pytest.mark.usefixtures("as_root")


@pytest.fixture(scope="module")
def shell_archive(tmp_path_factory):
    base = tmp_path_factory.mktemp("import-attacks")
    built = run_jailkit("build", "shell", "--root", base / "jail", timeout=300)
    assert built.returncode == 0, built.stderr
    result = export("shell", base / "jail", "tar", base / "shell.tar")
    assert result.returncode == 0, result.stderr
    return base / "shell.tar"


def one_line_refusal(result, *words):
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_imported_closure_cannot_make_root_copy_a_host_file(home, tmp_path):
    """nobody builds and exports its own jail, names a root-only host file in the manifest's
    closure cache (with no stats to contradict it); root imports and updates."""
    secret = tmp_path / "secret"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    work = home / "home"
    result = nobody_jailkit(home, "build", "shell", "--root", str(work / "jail"))
    assert result.returncode == 0, result.stderr
    result = nobody_jailkit(home, "export", "shell", "--root", str(work / "jail"), "--format",
                            "tar", "-o", str(work / "shell.tar"))
    assert result.returncode == 0, result.stderr

    def steer(document):
        document["closure"]["files"].append(str(secret))
        document["closure"]["stats"] = {}

    archive = rewrite(work / "shell.tar", tmp_path / "steer.tar", None, manifest=steer)
    result = imported(archive, tmp_path / "jail")
    assert result.returncode == 0, result.stderr
    result = run_jailkit("update", "shell", "--root", tmp_path / "jail", timeout=300)
    assert result.returncode == 0, result.stderr
    copied = tmp_path / "jail" / "current" / "root" / str(secret).lstrip("/")
    assert not copied.exists(), "root copied a host file the archive named into the jail"


def sleep_member(items):
    document = json.loads(next(d for m, d in items if m.name == "manifest.json"))
    record = next(e for e in document["entries"]
                  if e["type"] == "file" and (e["source"] or "").endswith("bin/sleep"))
    return record["path"]


def test_imported_trojan_does_not_survive_update(shell_archive, tmp_path):
    """A trojaned /usr/bin/sleep whose record (size, sha256, host identity) matches it."""
    trojan = {}

    def swap(items):
        path = sleep_member(items)
        i = next(i for i, (m, _) in enumerate(items) if m.name == f"root{path}")
        data = b"TROJAN" + items[i][1][6:]
        items[i] = (items[i][0], data)
        trojan["path"], trojan["data"] = path, data
        m = next(i for i, (m, _) in enumerate(items) if m.name == "manifest.json")
        document = json.loads(items[m][1])
        for record in document["entries"]:
            if record["path"] == path:
                record["sha256"] = hashlib.sha256(data).hexdigest()
        items[m] = (items[m][0], json.dumps(document).encode())

    archive = rewrite(shell_archive, tmp_path / "trojan.tar", swap)
    assert imported(archive, tmp_path / "jail").returncode == 0
    result = run_jailkit("update", "shell", "--root", tmp_path / "jail", timeout=300)
    assert result.returncode == 0, result.stderr
    in_jail = tmp_path / "jail" / "current" / "root" / trojan["path"].lstrip("/")
    assert in_jail.read_bytes() != trojan["data"], "the archive's trojan survived update"
    assert run_jailkit("check", "shell", "--root", tmp_path / "jail").returncode == 0


@pytest.mark.parametrize("name", ["../../../../tmp/jailkit-x", "a/b", ".hidden", ""])
def test_launch_name_that_is_not_plain_is_refused(shell_archive, tmp_path, name):
    def rename(document):
        document["name"] = name

    archive = rewrite(shell_archive, tmp_path / "name.tar", None, launch=rename)
    one_line_refusal(imported(archive, tmp_path / "jail"), "launch.json", "name")
    assert not (tmp_path / "jail").exists()


def test_archive_larger_than_the_free_space_is_refused_before_writing(shell_archive, tmp_path):
    """A 128 MiB file of zeros is a few hundred bytes of bz2: its declared size must fit the
    target (here a 32 MiB tmpfs) before a byte is written."""
    small = tmp_path / "small"
    small.mkdir()
    assert os.system(f"mount -t tmpfs -o size=32m jailkit-test {small}") == 0
    try:
        assert imported(shell_archive, small / "fits").returncode == 0  # the jail itself fits
        shutil.rmtree(small / "fits")
        size = 128 << 20
        big = hashlib.sha256()
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            big.update(zeros)

        def declare(document):
            document["entries"].append({
                "path": "/etc/big", "type": "file", "mode": 0o644, "uid": 0, "gid": 0,
                "size": size, "sha256": big.hexdigest(), "source": None, "target": None,
                "mtime": 0, "ino": 0, "host": None, "file_caps": False})

        plain = rewrite(shell_archive, tmp_path / "plain.tar", None, manifest=declare)
        # and the member itself, streamed into a bz2 archive right after /etc
        archive = tmp_path / "big.tar.bz2"
        with tarfile.open(plain) as src, bz2.open(archive, "wb") as raw, \
                tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as out:
            for member in src:
                out.addfile(member, src.extractfile(member) if member.isreg() else None)
                if member.name == "root/etc":
                    info = tarfile.TarInfo("root/etc/big")
                    info.size = size
                    out.addfile(info, _Zeros(size))
        assert archive.stat().st_size < 16 << 20  # the jail itself, and a few bytes for 128 MiB
        result = imported(archive, small / "jail")
        one_line_refusal(result, "free")
        assert os.statvfs(small).f_bfree * os.statvfs(small).f_bsize > 28 << 20
    finally:
        os.system(f"umount {small}")


class _Zeros(io.RawIOBase):
    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_member_larger_than_its_record_is_refused_as_seen(shell_archive, tmp_path):
    def grow(items):
        path = sleep_member(items)
        i = next(i for i, (m, _) in enumerate(items) if m.name == f"root{path}")
        items[i] = (items[i][0], items[i][1] + b"x" * 4096)

    one_line_refusal(imported(rewrite(shell_archive, tmp_path / "grow.tar", grow),
                              tmp_path / "jail"), "size")


def test_root_record_must_be_a_directory(shell_archive, tmp_path):
    """A "/" record typed symlink skipped the mode policy but was applied as a directory."""
    def root_as_symlink(document):
        for record in document["entries"]:
            if record["path"] == "/":
                record.update(type="symlink", target="x", mode=0o4777)

    def member(items):
        info = items[next(i for i, (m, _) in enumerate(items) if m.name == "root")][0]
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, "x", 0o4777

    archive = rewrite(shell_archive, tmp_path / "root.tar", member, manifest=root_as_symlink)
    one_line_refusal(imported(archive, tmp_path / "jail"), "/")
    assert not (tmp_path / "jail").exists()


def test_import_says_what_the_jail_asks_for(shell_archive, tmp_path):
    def ask(document):
        document["capabilities"] = ["CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"]
        document["dangerous_capabilities"] = ["CAP_SYS_ADMIN"]
        document["seccomp_allow"] = ["ptrace"]
        document["mount_sys"] = True
        document["network"] = "host"

    result = imported(rewrite(shell_archive, tmp_path / "ask.tar", None, launch=ask),
                      tmp_path / "jail")
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    for word in ("CAP_SYS_ADMIN", "ptrace", "mount_sys", "host"):
        assert word in said, said
    assert "CAP_NET_BIND_SERVICE" not in said  # not beyond the defaults of a service


def test_import_refuses_a_huge_uid_count(shell_archive, tmp_path):
    def count(document):
        document["uid_count"] = 1 << 20

    archive = rewrite(shell_archive, tmp_path / "count.tar", None, launch=count)
    one_line_refusal(imported(archive, tmp_path / "jail"), "uid_count")
