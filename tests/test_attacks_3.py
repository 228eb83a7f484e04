"""Attacks on `jailkit rm` and on root's registry of id slices it gives back (a third attacker's
pass). Each test performs the attack; the jail's hostile service is played by a process of an
unprivileged id writing into the jail's state, as the service could before it was stopped."""

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import NOBODY, REPO, as_nobody

from jailkit.errors import JailkitError
from jailkit.launch import allocate

COUNT = 65536  # ids per jail, as a profile's default uid_count


@pytest.fixture
def base():
    base = Path(tempfile.mkdtemp(prefix="jailkit-attack3-"))
    base.chmod(0o711)
    yield base
    # rm -rf, not shutil.rmtree: this module's trees are deeper than Python's recursion limit
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=True)


def jailkit_rm(*args, nofile: int | None = None):
    """`jailkit rm ARGS` as root, with at most `nofile` descriptors if given."""
    def limit():
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "jailkit", "rm", *map(str, args)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120, preexec_fn=limit)


PLANT_DEEP = """
import os, sys
fd = int(sys.argv[1])  # the state directory, opened by root: nobody may not walk to it
for _ in range(int(sys.argv[2])):
    os.mkdir("d", 0o700, dir_fd=fd)
    child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = child
os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
"""


def test_a_tree_deeper_than_rms_descriptors_is_removed(as_root, base):
    """The service nests directories deeper than rm may hold descriptors (one per level): rm
    failed with EMFILE, half done (launch.json gone), and the jail could never be removed by
    jailkit. Its descriptor limit is lowered here so that the tree stays small."""
    jail = base / "jail"
    data = jail / "state/var/data"  # what `rm --keep-state` leaves, and a build keeps
    data.mkdir(parents=True)
    jail.chmod(0o700)
    os.chown(data, NOBODY, NOBODY)
    limit = 256
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        subprocess.run([sys.executable, "-c", PLANT_DEEP, str(fd), str(limit + 50)], check=True,
                       preexec_fn=as_nobody, pass_fds=(fd,))
    finally:
        os.close(fd)
    removed = jailkit_rm("--root", jail, nofile=limit)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"removed {jail} (0 generations, {limit + 50 + 4} entries")
    assert not os.path.lexists(jail)


@pytest.fixture
def registry(as_root, base, monkeypatch):
    """Root's registry of id slices, in a directory of this test's (a real one: allocate's
    code reads and writes it as it would /var/lib/jailkit)."""
    where = base / "registry"
    where.mkdir(mode=0o755)
    monkeypatch.setattr(allocate, "REGISTRY_DIR", str(where))
    return where / allocate.REGISTRY


def test_a_jail_path_cannot_forge_a_registry_entry(registry, base):
    """A jail directory whose name holds U+001C (which str.splitlines ends a line at, as it does
    \\r, \\v, \\f, U+0085, U+2028...) wrote one registry line that read back as two: the second
    a forged entry giving a later jail directory the victim's ids, so that one jail's root owns
    the other's files (and is uid 0 to it over SO_PERCRED)."""
    victim_dir, future_dir = base / "victim", base / "future"
    victim_dir.mkdir()
    victim = allocate.for_jail(str(victim_dir), COUNT, False)
    crafted = f"{base}/c\x1c{victim.uid - allocate.id_space()[0]} {COUNT} - {future_dir}"
    os.makedirs(crafted)
    try:
        allocate.for_jail(crafted, COUNT, False)
    except JailkitError as e:
        assert "control character" in e.message and "\n" not in e.message
    future_dir.mkdir()
    future = allocate.for_jail(str(future_dir), COUNT, False)
    assert future.uid != victim.uid
    assert len(registry.read_text().split("\n")) - 1 == 2  # the victim and future: nothing forged


def test_a_registry_line_is_one_entry_however_its_path_reads(registry, base):
    """A line of an older jailkit's, whose path holds a character str.splitlines ends lines
    at, is one entry: it gives no other directory an id slice."""
    first = allocate.id_space()[0]
    taken = base / "taken"
    taken.mkdir()
    old = f"{base}/old\u20280 {COUNT} - {base}/new"
    os.makedirs(old)  # it exists: its slice is not free
    registry.write_text(f"0 {COUNT} - {taken}\n{COUNT} {COUNT} - {old}\n")
    registry.chmod(0o644)
    (base / "new").mkdir()
    new = allocate.for_jail(str(base / "new"), COUNT, False)
    assert new.uid == first + 2 * COUNT
    released = allocate.release(old)
    assert released is not None and released.uid == first + COUNT
    assert f"0 {COUNT} - {taken}\n" in registry.read_text()


RACE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd, decoy = int(sys.argv[1]), sys.argv[2]
os.symlink(decoy, "link", dir_fd=fd)
os.symlink(decoy, "a/b/link", dir_fd=fd)
exchange = lambda a, b: libc.renameat2(fd, a.encode(), fd, b.encode(), 2)  # RENAME_EXCHANGE
os.write(1, b"racing\\n")
while True:  # directories and links to the decoy change places, a directory moves up and back
    exchange("a", "link")
    exchange("a/b", "a/b/link")
    exchange("link", "a")
    libc.renameat(fd, b"a/b/c", fd, b"c")
    exchange("a/b/link", "a/b")
    libc.renameat(fd, b"c", fd, b"a/b/c")
"""


def test_a_running_service_swapping_links_and_moving_directories_cannot_steer_rm(as_root,
                                                                                  base):
    """Should a process of the jail survive (or the running check fail), it races rm: it swaps
    its directories with links to a host directory, and moves a directory up (so that ".."
    from inside it is another directory) and back. rm may refuse; it never removes the
    host's directory, which a link followed would empty."""
    decoy = base / "decoy"
    decoy.mkdir()
    (decoy / "kept").write_text("host file\n")
    for path in (decoy, decoy / "kept"):
        os.chown(path, NOBODY, NOBODY)  # the racer's own: removable through a link
    for _ in range(5):
        jail = base / "jail"
        data = jail / "state/var/data"
        (data / "a/b/c/d").mkdir(parents=True)
        for n in range(200):
            (data / "a/b/c/d" / f"f{n}").write_text("x")
            (data / "a" / f"f{n}").write_text("x")
        jail.chmod(0o700)
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", data], check=True)
        fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
        racer = subprocess.Popen([sys.executable, "-c", RACE, str(fd), str(decoy)],
                                 preexec_fn=as_nobody, pass_fds=(fd,), stdout=subprocess.PIPE)
        os.close(fd)
        try:
            assert racer.stdout.readline() == b"racing\n"
            raced = jailkit_rm("--root", jail)
        finally:
            racer.kill()
            racer.wait()
        assert raced.returncode in (0, 2) and "Traceback" not in raced.stderr, raced.stderr
        assert (decoy / "kept").read_text() == "host file\n"
        if os.path.lexists(jail):  # refused mid-way: removed once nothing races it
            again = jailkit_rm("--root", jail)
            assert again.returncode == 0, again.stderr
        assert (decoy / "kept").read_text() == "host file\n"
