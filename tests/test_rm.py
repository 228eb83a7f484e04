"""`jailkit rm`: a jail whose service wrote its state as a jail user is removed completely, as
root and as an ordinary user (nobody, with subordinate ids), through descriptors: links the
jail planted to host files are removed as links. Refused: a running jail, what is no jail, a
mount inside; root's allocation for the jail is freed.

Each jail runs detached a service that, as the jail's user svc (uid 1000: a host id of the
jail's range, not the caller's), writes a tree into its state directory (a directory it makes
read-only for itself among it) and plants symlinks there to a host decoy file and directory.
"""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NOBODY, nobody_with_subids, run_jailkit, traversable_dir, wait_for

PREFIX = "rm"
ALLOCATIONS = Path("/var/lib/jailkit/.allocations")
# The state directory is svc's own and 0700: svc writes there as root's jail and as an ordinary
# user's (chowned from inside that jail's user namespace).
PROFILE = """\
extends = ["shell"]

[users.svc]
uid = 1000
gid = 1000
home = "/nonexistent"

[groups.svc]
gid = 1000

[writable."/var/data"]
kind = "state"
owner = "svc"
group = "svc"
mode = "0700"

[service]
user = "svc"
group = "svc"
command = ["/bin/sh", "-c", '''
mkdir -p /var/data/sub/deep && echo written > /var/data/sub/deep/file &&
ln -s {decoy}/dir /var/data/sub/deep/to-dir && ln -s {decoy}/file /var/data/to-file &&
ln -s {decoy} /var/data/sub/to-decoy && chmod 500 /var/data/sub &&
touch /var/data/ready && exec sleep 600''']
"""


def one_line_refusal(result, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr


def make_decoy(base: Path, owner: int) -> Path:
    """A host file and a host directory with a file, which the jail's links point at; owned by
    the caller, so that a removal that followed a link could remove them."""
    decoy = base / "decoy"
    (decoy / "dir").mkdir(parents=True)
    (decoy / "file").write_text("host file\n")
    (decoy / "dir" / "kept").write_text("host file in a directory\n")
    for path in (decoy, decoy / "dir", decoy / "file", decoy / "dir" / "kept"):
        os.chown(path, owner, owner)
    return decoy


def decoy_intact(decoy: Path) -> bool:
    return ((decoy / "file").read_text() == "host file\n"
            and (decoy / "dir" / "kept").read_text() == "host file in a directory\n")


def service_wrote(jail: Path) -> None:
    data = jail / "state/var/data"
    wait_for(lambda: (data / "ready").exists(), seconds=20, what="the service's files")
    assert (data / "sub").stat().st_uid not in (0, NOBODY)  # a jail user's, not the caller's
    assert (data / "sub").stat().st_mode & 0o777 == 0o500
    assert os.readlink(data / "to-file").endswith("decoy/file")


def allocated(jail: Path) -> bool:
    return any(line.split(" ", 3)[3] == str(jail) for line in
               ALLOCATIONS.read_text().splitlines())


@pytest.fixture
def base():
    with traversable_dir("jailkit-rm-") as base:
        yield base


def write_profile(base: Path, decoy: Path) -> Path:
    profile = base / "svc.toml"
    profile.write_text(PROFILE.replace("{decoy}", str(decoy)))
    profile.chmod(0o644)
    return profile


# --- as root --------------------------------------------------------------------------------


@pytest.fixture
def root_jail(as_root, base, names):
    """A jail built and run detached by root, its service's files written; (dir, name, decoy)."""
    decoy = make_decoy(base, 0)
    profile = write_profile(base, decoy)
    jail = base / "svc"
    built = run_jailkit("build", profile, "--root", jail, timeout=120)
    assert built.returncode == 0, built.stderr
    name = names("svc")
    started = run_jailkit("run", profile, "--root", jail, "--name", name, "--detach", timeout=60)
    assert started.returncode == 0, started.stderr
    service_wrote(jail)
    return jail, name, decoy


def test_a_running_jail_is_refused_then_removed_with_its_allocation(root_jail):
    jail, name, decoy = root_jail
    refused = run_jailkit("rm", "--root", jail, timeout=30)
    one_line_refusal(refused, f"jailkit stop {name}")
    assert (jail / "current/root/bin/sh").exists() and (jail / "state/var/data/ready").exists()
    assert allocated(jail)

    stopped = run_jailkit("stop", name, timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    dry = run_jailkit("rm", "--root", jail, "--dry-run", timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"would remove {jail} (1 generation, ")
    assert "would free its ids" in dry.stdout
    assert (jail / "state/var/data/ready").exists() and allocated(jail)

    removed = run_jailkit("rm", "--root", jail, timeout=60)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"removed {jail} (1 generation, ")
    assert "freed its ids" in removed.stdout and len(removed.stdout.splitlines()) == 1
    assert not os.path.lexists(jail)
    assert decoy_intact(decoy)
    assert not allocated(jail)  # a later jail may be given its ids


def test_keep_state_removes_the_generations_only(root_jail):
    jail, name, decoy = root_jail
    assert run_jailkit("stop", name, timeout=30).returncode == 0
    kept = run_jailkit("rm", "--root", jail, "--keep-state", timeout=60)
    assert kept.returncode == 0, kept.stderr
    assert "kept state/" in kept.stdout
    assert kept.stdout.startswith(f"removed the generations of {jail} (")
    assert sorted(os.listdir(jail)) == ["lock", "state"]
    assert (jail / "state/var/data/sub/deep/file").read_text() == "written\n"
    assert allocated(jail)  # its ids still own what state/ holds
    assert decoy_intact(decoy)
    removed = run_jailkit("rm", "--root", jail, timeout=60)
    assert removed.returncode == 0, removed.stderr
    assert not os.path.lexists(jail) and not allocated(jail) and decoy_intact(decoy)


def test_a_mount_inside_is_refused(as_root, base):
    built = run_jailkit("build", "shell", "--root", base / "shell", timeout=120)
    assert built.returncode == 0, built.stderr
    (base / "shell/state/data").mkdir(parents=True)
    # mounted in a mount namespace of the test's own: nothing is left on the host
    script = (f'mount -t tmpfs test {base}/shell/state/data && exec "$@"')
    refused = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         sys.executable, "-m", "jailkit", "rm", "--root", str(base / "shell")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    one_line_refusal(refused, "is a mount point", "unmount it first")
    assert (base / "shell/current/root").is_dir()


def in_flock(pid: int) -> bool:
    """Whether process `pid` is blocked in flock(2) (x86_64 syscall 73)."""
    with open(f"/proc/{pid}/syscall") as f:
        return f.read().split()[0] == "73"


def test_it_waits_for_a_build_holding_the_lock(as_root, base):
    built = run_jailkit("build", "shell", "--root", base / "shell", timeout=120)
    assert built.returncode == 0, built.stderr
    lock = os.open(base / "shell/lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a build holds it
        remover = subprocess.Popen(
            [sys.executable, "-m", "jailkit", "rm", "--root", str(base / "shell")],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: in_flock(remover.pid), what="rm to wait for the lock")
        assert (base / "shell/current").exists()
    finally:
        os.close(lock)
    out, err = remover.communicate(timeout=60)
    assert remover.returncode == 0, err
    assert not os.path.lexists(base / "shell")


def test_what_is_not_a_jail_is_refused(as_root, base):
    (base / "notajail").mkdir()
    (base / "notajail/data.txt").write_text("mine\n")
    one_line_refusal(run_jailkit("rm", "--root", base / "notajail"), "is not a jailkit jail",
                     "data.txt")
    assert (base / "notajail/data.txt").read_text() == "mine\n"
    (base / "empty").mkdir()
    one_line_refusal(run_jailkit("rm", "--root", base / "empty"), "is empty")
    assert (base / "empty").is_dir()
    one_line_refusal(run_jailkit("rm", "--root", base / "missing"), "no jail at")
    (base / "file").write_text("x")
    result = run_jailkit("rm", "--root", base / "file")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    one_line_refusal(run_jailkit("rm", "--root", "/"), "refusing to use /")
    # a jail of another user's (nobody's): refused, as build and run refuse it
    (base / "others").mkdir()
    (base / "others/current").symlink_to("gen-1")
    os.chown(base / "others", NOBODY, NOBODY)
    one_line_refusal(run_jailkit("rm", "--root", base / "others"), "not by you")
    assert os.path.lexists(base / "others/current")


def test_bad_input_is_one_line(as_root):
    one_line_refusal(run_jailkit("rm"), "jailkit rm NAME", "--root DIR")
    for name in ("..", ".", "some/dir", "/tmp/x/"):
        # the fix names that very directory, never a default one of the same last name
        one_line_refusal(run_jailkit("rm", name), f"is a path, not a jail's name: jailkit rm "
                                                  f"--root {name}")
    one_line_refusal(run_jailkit("rm", ""), "jailkit rm NAME", "--root DIR")


# --- as an ordinary user ---------------------------------------------------------------------


def test_an_ordinary_users_jail_is_removed_from_a_user_namespace(
        world_readable_checkout, subid_file, base):
    """nobody, with subordinate ids (bound over /etc/subuid and /etc/subgid in the command's
    own mount namespace only), builds the jail in its default directory, runs it detached;
    what its service wrote as svc is owned by nobody's subordinate ids, which nobody itself
    cannot remove."""
    home = base / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    decoy = make_decoy(base, NOBODY)
    profile = write_profile(base, decoy)
    prefix = nobody_with_subids(subid_file("nobody:300000:65536\n"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}

    def jailkit(*args):
        return subprocess.run([*prefix, sys.executable, "-m", "jailkit", *map(str, args)],
                              env=env, cwd="/", capture_output=True, text=True, timeout=120)

    jail = home / ".local/share/jailkit/svc"
    name = f"{PREFIX}{os.getpid()}nobody"
    try:
        built = jailkit("build", profile)
        assert built.returncode == 0, built.stderr
        started = jailkit("run", profile, "--name", name, "--detach")
        assert started.returncode == 0, started.stderr
        service_wrote(jail)
        assert (jail / "state/var/data/sub").stat().st_uid == 300000 + 999  # svc's host id
        one_line_refusal(jailkit("rm", "svc"), f"jailkit stop {name}")
        assert jailkit("stop", name).returncode == 0

        # nobody as itself cannot remove what the jail's svc wrote
        plain = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                                "--clear-groups", "rm", "-rf", str(jail / "state/var/data/sub")],
                               capture_output=True, text=True)
        assert plain.returncode != 0 and "Permission denied" in plain.stderr

        removed = jailkit("rm", profile)  # by the profile as build and run took it
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.startswith(f"removed {jail} (1 generation, ")
        assert "freed" not in removed.stdout  # an ordinary user's ids are its own range
        assert not os.path.lexists(jail)
        assert decoy_intact(decoy)
    finally:
        jailkit("stop", name, "--timeout", "1")
