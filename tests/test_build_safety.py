"""Building is atomic and never harms the host: planted symlinks, foreign directories, mounts,
SIGKILL mid-build, concurrent builds and running launchers."""

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, build, jailkit_env, run_jailkit


def snapshot(directory):
    """Every path under a directory with its content or link target: to prove it was not touched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                out[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                out[path] = ("file", open(path, "rb").read(), os.stat(path).st_mode)
            else:
                out[path] = ("dir", os.stat(path).st_mode)
    return out


@pytest.fixture
def decoy(tmp_path):
    """Stands in for the host's /etc: a planted symlink points here, so a broken builder would
    write here instead of into the real /etc."""
    path = tmp_path / "decoy-etc"
    path.mkdir()
    (path / "passwd").write_text("decoy\n")
    (path / "group").write_text("decoy\n")
    return path


def test_symlink_planted_in_old_jail_is_not_followed(tmp_path, decoy):
    jail = tmp_path / "jail"
    build("shell", "--root", jail)
    root = jail / "gen-1/root"
    for name in os.listdir(root / "etc"):
        os.unlink(root / "etc" / name)
    os.rmdir(root / "etc")
    os.symlink(decoy, root / "etc")
    os.unlink(root / "usr/bin/cat")
    os.symlink(decoy / "passwd", root / "usr/bin/cat")
    before = snapshot(decoy)
    result = build("shell", "--root", jail)
    assert "gen-2" in result.stdout
    assert snapshot(decoy) == before
    new_root = jail / "current/root"
    assert not (new_root / "etc").is_symlink()
    assert (new_root / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert not (new_root / "usr/bin/cat").is_symlink()
    assert open(new_root / "usr/bin/cat", "rb").read() == open("/usr/bin/cat", "rb").read()
    assert not (jail / "gen-1").exists()


def test_planted_generation_and_state_symlinks_are_not_followed(tmp_path, decoy):
    profile = tmp_path / "stateful.toml"
    profile.write_text('extends = ["shell"]\n[writable."/var/lib/app"]\nkind = "state"\n')
    jail = tmp_path / "jail"
    build(profile, "--root", jail)
    os.symlink(decoy, jail / "gen-9")  # a "leftover generation" pointing at the host
    before = snapshot(decoy)
    build(profile, "--root", jail)
    assert not os.path.lexists(jail / "gen-9") and snapshot(decoy) == before
    (jail / "state/var/lib/app").rmdir()
    os.symlink(decoy, jail / "state/var/lib/app")
    result = build(profile, "--root", jail, check=False)
    assert result.returncode == 2 and "(a symlink?)" in result.stderr
    assert snapshot(decoy) == before


def test_refuses_root_and_foreign_directories(tmp_path, decoy):
    result = build("shell", "--root", "/", check=False)
    assert result.returncode == 2
    assert result.stderr == "jailkit: refusing to use / as a jail directory; pass --root DIR\n"
    before = snapshot(decoy)
    result = build("shell", "--root", decoy, check=False)
    assert result.returncode == 2
    assert "is not empty and is not a jailkit jail (it holds group, passwd)" in result.stderr
    assert snapshot(decoy) == before
    jail = tmp_path / "jail"
    jail.mkdir()
    os.symlink("../decoy-etc", jail / "current")
    result = build("shell", "--root", jail, check=False)
    assert result.returncode == 2 and "not to gen-N" in result.stderr


@pytest.mark.usefixtures("as_root")
def test_directory_copy_never_crosses_into_another_filesystem_or_mount(tmp_path):
    source = tmp_path / "data"
    (source / "mnt").mkdir(parents=True)
    (source / "loop").mkdir()
    (source / "kept.txt").write_text("kept\n")
    profile = tmp_path / "data.toml"
    profile.write_text(f'extends = ["shell"]\nfiles = ["{source}"]\n')
    jail = tmp_path / "jail"
    # the tmpfs lives in a private mount namespace that ends with the shell: nothing leaks
    # and a bind mount of the directory into itself: same filesystem, still not to be entered
    script = (f"mount -t tmpfs none {source}/mnt && echo secret > {source}/mnt/f && "
              f"mount --bind {source} {source}/loop && "
              f"exec {sys.executable} -m jailkit build {profile} --root {jail}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, env=jailkit_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("mnt", "loop"):
        assert f"note: skipped {source}/{name}: a mount point (not copied" in result.stderr
    copy = jail / f"current/root{source}"
    assert (copy / "kept.txt").read_text() == "kept\n"
    assert not (copy / "mnt").exists() and not (copy / "loop").exists()


def test_sigkill_mid_build_leaves_previous_jail_and_next_build_cleans_up(tmp_path):
    jail = tmp_path / "jail"
    build("shell", "--root", jail)
    proc = subprocess.Popen([sys.executable, "-m", "jailkit", "build", "python3", "--root", jail,
                             "--replace"],
                            env=jailkit_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = jail / "gen-2/root/usr/lib/python3.11"
    try:
        deadline = time.monotonic() + 60
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert os.readlink(jail / "current") == "gen-1"
    assert (jail / "gen-2").exists() and not (jail / "gen-2/manifest.json").exists()
    assert run_jailkit("check", "shell", "--root", jail).returncode == 0
    result = build("shell", "--root", jail)
    assert "up to date" in result.stdout and not (jail / "gen-2").exists()
    build("python3", "--root", jail, "--replace")
    assert os.listdir(jail / "current/root/usr/lib/python3.11")


def test_concurrent_builds_wait_for_the_lock(tmp_path):
    jail = tmp_path / "jail"
    build("shell", "--root", jail, "--dry-run")
    jail.mkdir()
    fd = os.open(jail / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = subprocess.Popen([sys.executable, "-m", "jailkit", "build", "shell", "--root", jail],
                            env=jailkit_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        assert os.listdir(jail) == ["lock"]
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert os.readlink(jail / "current") == "gen-1"


def built_variable_jail(tmp_path):
    """A shell jail built with /etc/v rendered from variable v (1): (profile, jail directory)."""
    profile = tmp_path / "v.toml"
    profile.write_text('extends = ["shell"]\n[variables]\nv = 1\n'
                       '[templates."/etc/v"]\ntext = "{{ v }}"\n')
    jail = tmp_path / "jail"
    build(profile, "--root", jail)
    return profile, jail


def test_generation_held_by_a_launcher_is_kept_until_released(tmp_path):
    profile, jail = built_variable_jail(tmp_path)
    # what `jailkit run` does (docs/contracts.md): a shared flock on the generation directory
    held = os.open(jail / "gen-1", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_SH)
    try:
        build(profile, "--root", jail, "--set", "v=2")
        assert os.readlink(jail / "current") == "gen-2"
        assert (jail / "gen-1/launch.json").exists()
    finally:
        os.close(held)
    build(profile, "--root", jail, "--set", "v=3")
    assert sorted(os.listdir(jail)) == ["current", "gen-3", "lock"]
    assert (jail / "current/root/etc/v").read_text() == "3"


def test_paths_that_leave_the_jail_are_refused(tmp_path):
    from jailkit.build.plan import PlanError, check_jail_path

    assert check_jail_path("//etc/./passwd") == "/etc/passwd"
    for path in ("/etc/../../x", "etc/passwd", "/a/..", "/x\0y"):
        with pytest.raises(PlanError):
            check_jail_path(path)
    for key in ('directories."/srv/../../etc"', 'writable."/var/../../tmp"',
                'templates."/../etc/passwd"'):
        profile = tmp_path / "escape.toml"
        profile.write_text(f'extends = ["shell"]\n[{key}]\n' + ('text = "x"\n' if "tem" in key
                                                                else ""))
        result = build(profile, "--root", tmp_path / "jail", check=False)
        assert result.returncode == 2 and "expected an absolute path without '..'" in result.stderr
        assert not (tmp_path / "jail").exists()


def test_generation_of_a_running_jailkit_run_is_kept(tmp_path):
    profile, jail = built_variable_jail(tmp_path)
    service = subprocess.Popen(
        [sys.executable, "-m", "jailkit", "run", "v", "--root", jail, "--", "/bin/sh", "-c",
         "cat /etc/v; echo; exec sleep 60"],
        env=jailkit_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert service.stdout.readline() == "1\n", service.stderr.read()
        build(profile, "--root", jail, "--set", "v=2")
        assert os.readlink(jail / "current") == "gen-2"
        assert (jail / "gen-1/launch.json").exists() and (jail / "gen-1/root/etc/v").exists()
    finally:
        service.kill()  # the launcher we started; its jail dies with it
        service.wait(timeout=30)
    released = os.open(jail / "gen-1", os.O_RDONLY | os.O_DIRECTORY)
    try:  # the jail's own processes go a moment after the launcher
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(released, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the jail outlived its launcher"
                time.sleep(0.05)
    finally:
        os.close(released)
    build(profile, "--root", jail, "--set", "v=3")
    assert sorted(os.listdir(jail)) == ["current", "gen-3", "lock"]


@pytest.mark.usefixtures("as_root")
def test_full_disk_is_one_line_and_keeps_the_previous_jail(tmp_path):
    jail = tmp_path / "jail"
    jail.mkdir()
    # a 16 MB tmpfs in a private mount namespace (gone with the shell): shell fits, python3 not
    script = (f"mount -t tmpfs -o size=16m,mode=0700 none {jail} && "
              f"{sys.executable} -m jailkit build shell --root {jail} >/dev/null && "
              f"{sys.executable} -m jailkit build python3 --root {jail} --replace; echo rc=$?; "
              f"readlink {jail}/current; {sys.executable} -m jailkit check shell --root {jail}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, env=jailkit_env(), timeout=120)
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"jailkit: building {jail}/gen-2 failed: [Errno 28] No space left")
    assert result.stdout.splitlines()[:2] == ["rc=2", "gen-1"]
    assert result.returncode == 0, result.stderr  # check: the shell jail is as it was built


@pytest.mark.usefixtures("as_root")
def test_mount_points_with_spaces_and_non_ascii_names_are_read_as_named(tmp_path):
    # mountinfo escapes space, tab, newline and backslash as octal and nothing else: a UTF-8 name
    # must come back as itself (unicode_escape decoding turned /mnt/é into mojibake)
    point = tmp_path / "mnt é\tx\\y"
    point.mkdir()
    script = ("import sys; from jailkit.build.jaildir import mount_points; "
              "print(sys.argv[1] in mount_points())")
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs none "$1" && exec "$2" -c "$3" "$1"', "sh", point, sys.executable,
         script], capture_output=True, text=True, env=jailkit_env(), timeout=60)
    assert result.stdout == "True\n", result.stderr
