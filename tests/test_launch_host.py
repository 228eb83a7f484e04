"""What `jailkit run` does on the host for a jail, attacked from the jail directory and from
inside a running jail: resolving the jail directory through descriptors, per-jail id ranges and
veth subnets, and the kernel counters a jail is charged to.

Each test works on its own copy of one `shell` jail built here (so it may tamper with it).
"""

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import (
    NOBODY,
    REPO,
    as_nobody,
    descendants,
    in_netns,
    run_jailkit,
    start,
    stop,
    traversable_dir,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("as_root")

INOTIFY_PROBE = "/usr/bin/jkinotify"
INOTIFY_SOURCE = r"""
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>
/* make inotify instances until the kernel refuses (at most 10,000), then hold them until stdin
   closes, so the test can look at the host meanwhile */
int main(void)
{
	int made = 0;
	while (made < 10000 && inotify_init1(IN_CLOEXEC) >= 0)
		made++;
	printf("made %d\n", made);
	fflush(stdout);
	char c;
	read(0, &c, 1);
	return 0;
}
"""


@pytest.fixture(scope="module")
def built() -> Path:
    """A `shell` jail with the inotify probe in its tree; tests copy it."""
    base = Path(tempfile.mkdtemp(prefix="jailkit-host-"))
    base.chmod(0o711)
    result = run_jailkit("build", "shell", "--root", base / "shell")
    assert result.returncode == 0, result.stderr
    source = base / "jkinotify.c"
    source.write_text(INOTIFY_SOURCE)
    subprocess.run(["gcc", "-static", "-O1", "-o",
                    base / "shell/current/root" / INOTIFY_PROBE.lstrip("/"), source], check=True)
    yield base / "shell"
    shutil.rmtree(base)


@pytest.fixture
def jail(built) -> Path:
    """A fresh copy of the built jail, at a path of its own (so a jail of its own)."""
    with traversable_dir("jailkit-host-") as base:
        subprocess.run(["cp", "-a", built, base / "jail"], check=True)
        yield base / "jail"


@pytest.fixture
def host_dir() -> Path:
    """A host directory owned by root, with a marker, that no jail may be given."""
    path = Path(tempfile.mkdtemp(prefix="jailkit-hostdir-"))
    path.chmod(0o755)
    (path / "incoming").mkdir(mode=0o755)
    (path / "incoming" / "host-marker").write_text("host\n")
    yield path
    shutil.rmtree(path)


def run(jail: Path, *command, sets=(), **kwargs):
    options = [arg for key_value in sets for arg in ("--set", key_value)]
    return run_jailkit("run", "shell", "--root", jail, *options, "--", *command, timeout=60,
                       **kwargs)


def one_line_error(result, *words) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("jailkit: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr
    return result.stderr


def uid_map(jail: Path) -> tuple[int, int]:
    """(first host uid, count) of the jail's id range, as the host sees the service's map (the
    service itself reads "0 0 N": its user namespace is nested in the jail's, same ids)."""
    proc = start(jail, "/bin/sleep", "30")
    try:
        service = list(descendants(proc.pid))[1]  # after pid 1, which writes its map
        text = wait_for(lambda: Path(f"/proc/{service}/uid_map").read_text())
    finally:
        stop(proc)
    inside, outside, count = text.split()
    assert inside == "0"
    return int(outside), int(count)


def mounted_sources() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


# --- item 1: the jail directory is resolved through descriptors, never followed --------------

# Two state directories, the second inside the first on the host (DIR/state/data/uploads/incoming)
# but mounted apart in the jail: the jail can rename what lies between them through /tmp/a.
NESTED = ('writable=[{"path": "/tmp", "kind": "tmpfs"}, '
          '{"path": "/tmp/a", "kind": "bind", "source": "data"}, '
          '{"path": "/tmp/b", "kind": "bind", "source": "data/uploads/incoming"}]')


def nested_state(jail: Path, owner: int = 0) -> None:
    incoming = jail / "state/data/uploads/incoming"
    incoming.mkdir(parents=True)
    for path in (jail / "state", jail / "state/data", incoming.parent, incoming):
        os.chown(path, owner, owner)


def test_nested_state_dirs_work(jail):
    nested_state(jail)
    result = run(jail, "/bin/sh", "-c", "echo a > /tmp/a/f && echo b > /tmp/b/f",
                 sets=[NESTED])
    assert result.returncode == 0, result.stderr
    assert (jail / "state/data/f").read_text() == "a\n"
    assert (jail / "state/data/uploads/incoming/f").read_text() == "b\n"


def test_jail_cannot_point_a_nested_state_dir_at_a_host_dir(jail, host_dir):
    nested_state(jail)
    # the jail's root owns /tmp/a (DIR/state/data): it swaps `uploads` for a link to the host
    plant = run(jail, "/bin/sh", "-c", f"mv /tmp/a/uploads /tmp/a/old && "
                                       f"ln -s {host_dir} /tmp/a/uploads", sets=[NESTED])
    assert plant.returncode == 0, plant.stderr
    assert (jail / "state/data/uploads").is_symlink()
    before = mounted_sources()
    result = run(jail, "/bin/ls", "/tmp/b", sets=[NESTED])
    one_line_error(result, "data/uploads/incoming", "symlink")
    assert "host-marker" not in result.stdout
    incoming = (host_dir / "incoming").stat()
    assert (incoming.st_uid, incoming.st_gid) == (0, 0)  # not chowned to the jail's ids
    assert mounted_sources() == before


def test_planted_link_in_state_between_runs_is_refused_for_an_ordinary_user(
        jail, host_dir, world_readable_checkout):
    # the attacker (the jail, or whoever edits DIR/state) plants the link before the next run;
    # the jail is nobody's own (jailkit refuses to run a jail directory another user owns)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", jail], check=True)
    nested_state(jail, NOBODY)
    (jail / "state/data/uploads").rename(jail / "state/data/old")
    (jail / "state/data/uploads").symlink_to(host_dir)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": "/nonexistent"}
    result = subprocess.run(
        [sys.executable, "-m", "jailkit", "run", "shell", "--root", str(jail),
         "--set", NESTED, "--set", "cgroup.memory_max=null", "--set", "cgroup.pids_max=null",
         "--", "/bin/ls", "/tmp/b"],
        env=env, text=True, capture_output=True, preexec_fn=as_nobody, timeout=60, cwd="/")
    one_line_error(result, "data/uploads/incoming", "symlink")
    assert "host-marker" not in result.stdout


@pytest.mark.parametrize("entry", ["root", "launch.json"])
def test_symlinked_generation_entry_is_refused(jail, entry):
    generation = jail / os.readlink(jail / "current")
    real = generation / f"{entry}.real"
    (generation / entry).rename(real)
    (generation / entry).symlink_to(real)  # same content, reached through a link
    one_line_error(run(jail, "/bin/true"), entry, "symlink")


def test_symlinked_generation_is_refused(jail):
    generation = jail / os.readlink(jail / "current")
    generation.rename(jail / "elsewhere")
    generation.symlink_to(jail / "elsewhere")
    one_line_error(run(jail, "/bin/true"), "symlink")


# --- item 8: each jail its own id range, kept ----------------------------------------------


def test_two_jails_get_disjoint_ranges_and_keep_them(built, jail):
    other = jail.parent / "other"
    subprocess.run(["cp", "-a", built, other], check=True)
    first, count = uid_map(jail)
    second, _ = uid_map(other)
    assert count == 65536
    assert first + count <= second or second + count <= first
    assert uid_map(jail) == (first, count)  # the same jail, the same range
    assert uid_map(other)[0] == second


def test_state_owner_follows_the_jails_own_range(jail):
    (jail / "state/spool").mkdir(parents=True)
    result = run(jail, "/bin/sh", "-c", "touch /tmp/x",
                 sets=['writable=[{"path": "/tmp", "kind": "bind", "source": "spool"}]'])
    assert result.returncode == 0, result.stderr
    host_root = uid_map(jail)[0]  # the same jail, the same range
    assert (jail / "state/spool").stat().st_uid == host_root
    assert (jail / "state/spool/x").stat().st_uid == host_root


def test_concurrent_first_launches_get_disjoint_ranges(built, jail):
    jails = [jail]
    for n in range(3):
        jails.append(jail.parent / f"copy{n}")
        subprocess.run(["cp", "-a", built, jails[-1]], check=True)
    jails.append(jail)  # the same jail twice at once must still get one range
    results = [None] * len(jails)

    def launch(i):
        try:
            results[i] = uid_map(jails[i])
        except Exception:  # refused while the other instance runs: one per jail directory
            results[i] = None

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(len(jails))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, -1):
        if results[i] is None:
            results[i] = uid_map(jails[i])
    starts = []
    for first, _ in results:
        starts.append(first)
    assert starts[0] == starts[-1]
    distinct = sorted(set(starts))
    assert len(distinct) == 4
    assert all(b - a >= 65536 for a, b in zip(distinct, distinct[1:], strict=False))


def registry() -> str:
    """root's registry of allocations (jailkit/launch/allocate.py), or "" before the first"""
    try:
        with open("/var/lib/jailkit/.allocations") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_dry_run_shows_the_range_and_subnet_and_allocates_nothing(jail):
    result = run_jailkit("run", "shell", "--root", jail, "--dry-run", "--net", "veth")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ids = next(line for line in lines if line.startswith("ids"))
    net = next(line for line in lines if line.startswith("network"))
    assert "own range, allocated at its first run" in ids and "10.213." in net
    assert str(jail) not in registry()  # a dry run keeps nothing
    first = int(ids.split("-> ")[1].split("-")[0])
    assert uid_map(jail)[0] == first  # what the dry run showed is what a run gets
    assert str(jail) in registry()
    again = run_jailkit("run", "shell", "--root", jail, "--dry-run").stdout
    assert f"-> {first}-" in again and "allocated at its first run" not in again


# --- item 9: each jail its own veth subnet, kept ---------------------------------------------


def veth_addresses(netns_pid: int, proc) -> str:
    out = subprocess.run([*in_netns(netns_pid), "ip", "-o", "-4", "addr", "show", "dev",
                          f"jk{proc.pid}"], capture_output=True, text=True, check=True).stdout
    return out.split()[3]


def start_veth(jail: Path, netns_pid: int):
    proc = subprocess.Popen(
        [*in_netns(netns_pid), sys.executable, "-m", "jailkit", "run", "shell", "--root", jail,
         "--net", "veth", "--", "/bin/sleep", "30"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("jailkit-reaper"))
    wait_for(lambda: subprocess.run([*in_netns(netns_pid), "ip", "-o", "-4", "addr", "show",
                                     "dev", f"jk{proc.pid}"], capture_output=True,
                                    text=True).stdout)
    return proc


def test_two_veth_jails_get_different_subnets_kept_across_restarts(built, jail, netns):  # noqa: F811
    other = jail.parent / "other"
    subprocess.run(["cp", "-a", built, other], check=True)
    procs = []
    try:
        procs = [start_veth(jail, netns), start_veth(other, netns)]
        subnets = [veth_addresses(netns, p) for p in procs]
        assert subnets[0] != subnets[1]
        # a second instance of a running jail would share its /30
        twice = subprocess.run([*in_netns(netns), sys.executable, "-m", "jailkit", "run",
                                "shell", "--root", jail, "--net", "veth", "--", "/bin/true"],
                               env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                               text=True, timeout=60)
        # (refused before it reaches the subnet: one running instance per jail directory)
        one_line_error(twice, "is already running as")
        for p in procs:
            stop(p)
        again = start_veth(jail, netns)
        procs.append(again)
        assert veth_addresses(netns, again) == subnets[0]
    finally:
        for p in procs:
            stop(p)


# --- item 5: a jail's kernel counters are not host root's ------------------------------------


def test_jail_cannot_exhaust_host_roots_inotify_instances(jail):
    proc = subprocess.Popen([sys.executable, "-m", "jailkit", "run", "shell", "--root", jail,
                             "--", INOTIFY_PROBE], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        made = proc.stdout.readline()
        assert made.startswith("made "), proc.stderr.read() if proc.poll() is not None else made
        assert 0 < int(made.split()[1]) < 10000  # the jail hit a limit of its own
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_CLOEXEC)
        assert fd >= 0, f"host root's inotify_init failed: {os.strerror(ctypes.get_errno())}"
        os.close(fd)
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cgroup_directories_are_made_without_following_a_link(tmp_path):
    """A link where the jail's group is made (its parent, here a stand-in hierarchy) must not
    steer root's mkdir and writes elsewhere."""
    from jailkit.errors import JailkitError
    from jailkit.launch.cgroup import Group, create

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "hierarchy").mkdir()
    (tmp_path / "hierarchy" / "jailkit").symlink_to(elsewhere)
    with pytest.raises(JailkitError, match="cgroup"):
        create([Group(str(tmp_path / "hierarchy" / "jailkit" / "x"), [("pids.max", "5")])])
    assert list(elsewhere.iterdir()) == []


def test_a_host_whose_mounts_are_shared_runs_the_jail(jail):
    """systemd makes every mount shared: the jail's tree, cloned from them, is made private
    before pivot_root, which refuses a shared one (EINVAL: every root jail failed there)."""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "shared", sys.executable, "-m", "jailkit",
         "run", "shell", "--root", jail, "--", "/bin/sh", "-c",
         "grep -c shared: /proc/self/mountinfo || true"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0\n"  # nothing of the jail's propagates to or from the host
