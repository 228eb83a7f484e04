"""Attacks on the build side (issue 8): a jail directory another user can swap, a jail file
modified in place, symlinks and races in copied trees, templates read from anywhere, control
characters in --set values, and a jail without limits."""

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import nobody_jailkit, run_jailkit

NOBODY = 65534


def as_nobody():
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def one_line_error(result, *fragments):
    assert result.returncode != 0, result.stdout
    assert result.stderr.startswith("jailkit: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# --- 1: a jail directory someone else created ------------------------------------------------


@pytest.fixture
def sticky():
    """A directory as /tmp (sticky, world-writable) that nobody can reach (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="jailkit-sticky-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


@pytest.mark.usefixtures("as_root")
def test_directory_precreated_by_another_user_is_refused_for_build_and_run(sticky, tmp_path):
    planted = sticky / "x"
    subprocess.run(["mkdir", planted], preexec_fn=as_nobody, check=True)  # nobody got there first
    result = run_jailkit("build", "shell", "--root", planted)
    one_line_error(result, f"refusing jail directory {planted}", "owned by uid 65534",
                   "choose another --root")
    assert os.listdir(planted) == []
    # a jail root built, then handed to (or pre-created by) another user: run refuses it too
    own = tmp_path / "own"
    assert run_jailkit("build", "shell", "--root", own).returncode == 0
    os.chown(own, NOBODY, NOBODY)
    for command in (["run", "shell", "--root", own, "--", "/bin/true"],
                    ["check", "shell", "--root", own], ["update", "shell", "--root", own],
                    ["build", "shell", "--root", own]):
        one_line_error(run_jailkit(*command, timeout=60), "owned by uid 65534")


@pytest.mark.usefixtures("as_root")
def test_ordinary_user_keeps_its_own_jail_in_a_sticky_directory(sticky, home):  # noqa: F811
    result = nobody_jailkit(home, "build", "shell", "--root", sticky / "mine")
    assert result.returncode == 0, result.stderr
    assert (sticky / "mine").stat().st_uid == NOBODY
    assert nobody_jailkit(home, "check", "shell", "--root", sticky / "mine").returncode == 0


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("parent_mode", [0o777, 0o775, 0o757])
def test_directory_under_a_parent_others_can_write_is_refused(tmp_path, parent_mode):
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(parent_mode)  # world- or group-writable, not sticky: anyone there can rename
    result = run_jailkit("build", "shell", "--root", parent / "jail")
    one_line_error(result, f"{parent} is writable by group or others", f"chmod go-w {parent}")
    assert not (parent / "jail").exists()
    parent.chmod(0o755)
    assert run_jailkit("build", "shell", "--root", parent / "jail").returncode == 0
    parent.chmod(parent_mode)
    result = run_jailkit("run", "shell", "--root", parent / "jail", "--", "/bin/true", timeout=60)
    one_line_error(result, "is writable by group or others")


@pytest.mark.usefixtures("as_root")
def test_directory_under_a_parent_of_another_user_is_refused(tmp_path):
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, NOBODY, NOBODY)
    result = run_jailkit("build", "shell", "--root", parent / "jail")
    one_line_error(result, f"{parent} is owned by uid 65534")


@pytest.mark.usefixtures("as_root")
def test_own_directory_works_and_secrets_are_private(tmp_path):
    jail = tmp_path / "jail"
    assert run_jailkit("build", "shell", "--root", jail).returncode == 0
    assert stat.S_IMODE(jail.stat().st_mode) == 0o700
    gen = jail / "current"
    for name in ("launch.json", "manifest.json"):
        assert stat.S_IMODE((gen / name).stat().st_mode) == 0o600
    result = run_jailkit("run", "shell", "--root", jail, "--", "/bin/echo", "ran", timeout=60)
    assert result.stdout == "ran\n", result.stderr
    assert run_jailkit("check", "shell", "--root", jail).returncode == 0


# --- 13: --set values pasted raw into passwd and configuration files ---------------------------


@pytest.mark.parametrize("assignment", [
    "local_user=a\nroot::0:0::/:/bin/sh",
    "local_user=ftpuser\n",
    "anon_root=/srv/ftp\nlocal_root=/",
    "anon_root=/srv/ftp\r",
    "anon_root=/srv\tftp",
])
def test_control_characters_in_set_values_are_refused(tmp_path, assignment):
    result = run_jailkit("build", "vsftpd", "--root", tmp_path / "jail", "--set", assignment)
    name = assignment.split("=")[0]
    one_line_error(result, f"--set {name}=", "control character")
    assert not (tmp_path / "jail").exists()


def test_user_names_are_matched_whole(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('extends = ["shell"]\n[users."bob\\n"]\nuid = 7\ngid = 0\n')
    one_line_error(run_jailkit("show", profile), "expected a user/group name")
    profile.write_text('extends = ["shell"]\n[variables]\nwho = "bob"\n'
                       '[users."{{ who }}"]\nuid = 7\ngid = 0\n')
    assert run_jailkit("show", profile).returncode == 0
    one_line_error(run_jailkit("show", profile, "--set", "who=bob\n"), "control character")


def test_a_variable_declared_multiline_may_hold_newlines(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('extends = ["shell"]\nmultiline_variables = ["banner"]\n'
                       '[variables]\nbanner = "hello"\n'
                       '[templates."/etc/motd"]\ntext = "{{ banner }}\\n"\n')
    jail = tmp_path / "jail"
    result = run_jailkit("build", profile, "--root", jail, "--set", "banner=two\nlines")
    assert result.returncode == 0, result.stderr
    assert (jail / "current/root/etc/motd").read_text() == "two\nlines\n"
    one_line_error(run_jailkit("build", profile, "--root", jail, "--set", "banner=bell\a"),
                   "control character")
    profile.write_text('extends = ["shell"]\nmultiline_variables = ["nope"]\n')
    one_line_error(run_jailkit("show", profile), "multiline_variables", "nope")


# --- 12: template sources read from anywhere -------------------------------------------------


@pytest.mark.parametrize("source", ["../../../../../../etc/shadow", "/etc/shadow",
                                    "link-to-shadow", "sub/link-to-etc/shadow"])
def test_template_source_must_lie_beneath_the_profile(tmp_path, source):
    (tmp_path / "link-to-shadow").symlink_to("/etc/shadow")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/link-to-etc").symlink_to("/etc")
    profile = tmp_path / "p.toml"
    profile.write_text(f'extends = ["shell"]\n[templates."/etc/stolen"]\nsource = "{source}"\n')
    jail = tmp_path / "jail"
    one_line_error(run_jailkit("build", profile, "--root", jail), "source")
    assert not jail.exists()


def test_template_beneath_the_profile_and_its_base_render(tmp_path):
    (tmp_path / "base/tpl").mkdir(parents=True)
    (tmp_path / "base/tpl/motd.j2").write_text("base {{ greeting }}\n")
    (tmp_path / "base/base.toml").write_text(
        'extends = ["shell"]\n[variables]\ngreeting = "hi"\n'
        '[templates."/etc/motd"]\nsource = "tpl/motd.j2"\n')
    (tmp_path / "own.j2").write_text("own {{ greeting }}\n")
    profile = tmp_path / "p.toml"
    profile.write_text('extends = ["base/base.toml"]\n'
                       '[templates."/etc/issue"]\nsource = "./own.j2"\n')
    jail = tmp_path / "jail"
    result = run_jailkit("build", profile, "--root", jail)
    assert result.returncode == 0, result.stderr
    assert (jail / "current/root/etc/motd").read_text() == "base hi\n"
    assert (jail / "current/root/etc/issue").read_text() == "own hi\n"
    shown = tmp_path / "elsewhere/shown.toml"  # `show` inlines sources: it loads back anywhere
    shown.parent.mkdir()
    shown.write_text(run_jailkit("show", profile).stdout)
    assert run_jailkit("build", shown, "--root", tmp_path / "jail2").returncode == 0
    assert (tmp_path / "jail2/current/root/etc/motd").read_text() == "base hi\n"


@pytest.mark.parametrize("text", ['{% for i in range(20000) %}{{ "x" * 100 }}{% endfor %}',
                                  "{{ filler }}{{ filler }}"])
def test_rendered_file_size_is_capped(tmp_path, text):
    profile = tmp_path / "p.toml"
    profile.write_text(f'extends = ["shell"]\n[variables]\nfiller = "{"y" * 600_000}"\n'
                       f'[templates."/etc/big"]\ntext = \'{text}\'\n')
    one_line_error(run_jailkit("build", profile, "--root", tmp_path / "jail"), "/etc/big",
                   "1 MiB")


# --- 2: a file modified in place with its mtime put back ----------------------------------------


def rewrite_keeping_mtime(path, content: bytes):
    before = os.stat(path)
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)


def test_host_file_modified_in_place_with_mtime_put_back_is_copied_again(tmp_path):
    data = tmp_path / "data.txt"
    data.write_bytes(b"old content\n")
    profile = tmp_path / "p.toml"
    profile.write_text(f'extends = ["shell"]\nfiles = ["{data}"]\n')
    jail = tmp_path / "jail"
    assert run_jailkit("build", profile, "--root", jail).returncode == 0
    rewrite_keeping_mtime(data, b"NEW CONTENT\n")
    result = run_jailkit("build", profile, "--root", jail, "--json")
    assert result.returncode == 0, result.stderr
    updated = json.loads(result.stdout)["updated"]
    assert {"path": str(data), "reason": "host file changed"} in updated
    assert (jail / "current/root" / str(data).lstrip("/")).read_bytes() == b"NEW CONTENT\n"
    assert run_jailkit("check", profile, "--root", jail).returncode == 0


def test_jail_copy_modified_in_place_with_mtime_put_back_is_restored(tmp_path):
    jail = tmp_path / "jail"
    assert run_jailkit("build", "shell", "--root", jail).returncode == 0
    # a second generation of hard links first: the copy is shared by two generations
    profile = tmp_path / "shell2.toml"
    profile.write_text('extends = ["shell"]\nfiles = ["/etc/hostname"]\n')
    assert run_jailkit("build", profile, "--root", jail, "--replace").returncode == 0
    copy = jail / "current/root/usr/bin/dash"
    original = copy.read_bytes()
    rewrite_keeping_mtime(copy, b"\x7fELF-tampered")
    result = run_jailkit("build", profile, "--root", jail, "--json")
    assert result.returncode == 0, result.stderr
    updated = json.loads(result.stdout)["updated"]
    assert {"path": "/usr/bin/dash", "reason": "modified in the jail, restored"} in updated
    assert (jail / "current/root/usr/bin/dash").read_bytes() == original
    # and with nothing changed since, the next build is a no-op again: ctimes were settled
    result = run_jailkit("build", profile, "--root", jail, "--json")
    assert json.loads(result.stdout)["changed"] is False, result.stdout


# --- 4: copying a directory a user controls --------------------------------------------------


def test_link_leaving_the_copied_tree_is_kept_as_a_link_never_followed(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello\n")
    (site / "leak").symlink_to("/etc/shadow")
    (site / "leak-up").symlink_to("../../../../../../../../etc/shadow")
    (site / "inside").symlink_to("index.html")
    profile = tmp_path / "p.toml"
    profile.write_text(f'extends = ["shell"]\nfiles = ["{site}"]\n')
    jail = tmp_path / "jail"
    result = run_jailkit("build", profile, "--root", jail)
    assert result.returncode == 0, result.stderr
    assert f"note: {site}/leak points outside the copied trees" in result.stderr
    copy = jail / f"current/root{site}"
    assert os.readlink(copy / "leak") == "/etc/shadow"
    assert os.readlink(copy / "leak-up") == "../../../../../../../../etc/shadow"
    assert (copy / "inside").read_text() == "hello\n"  # a link within the tree still works
    entries = json.loads((jail / "current/manifest.json").read_text())["entries"]
    assert not [e for e in entries if e["source"] == "/etc/shadow"]
    assert not (jail / "current/root/etc/shadow").exists()


@pytest.mark.usefixtures("as_root")
def test_implicit_parents_keep_the_hosts_modes(tmp_path):
    private = tmp_path / "private"
    (private / "site").mkdir(parents=True)
    private.chmod(0o700)
    (private / "site/index.html").write_text("hello\n")
    shared = tmp_path / "shared"
    (shared / "data.txt").parent.mkdir()
    shared.chmod(0o775)
    (shared / "data.txt").write_text("data\n")
    profile = tmp_path / "p.toml"
    profile.write_text(f'extends = ["shell"]\nfiles = ["{private}/site", "{shared}/data.txt"]\n')
    jail = tmp_path / "jail"
    assert run_jailkit("build", profile, "--root", jail).returncode == 0
    root = jail / "current/root"
    assert stat.S_IMODE((root / str(private).lstrip("/")).stat().st_mode) == 0o700
    assert stat.S_IMODE((root / str(shared).lstrip("/")).stat().st_mode) == 0o755  # no g+w
    assert run_jailkit("check", profile, "--root", jail).returncode == 0


@pytest.mark.usefixtures("as_root")
def test_directory_swapped_for_a_symlink_between_plan_and_copy_is_refused(tmp_path):
    from jailkit.build.apply import ApplyError, apply
    from jailkit.build.jaildir import JailDir
    from jailkit.build.plan import make_plan
    from jailkit.profile.model import load

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub/file").write_text("the user's own, world-readable\n")
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "file").write_text("SECRET\n")
    (secret / "file").chmod(0o600)
    profile = tmp_path / "p.toml"
    profile.write_text(f'extends = ["shell"]\nfiles = ["{tree}"]\n')
    plan = make_plan(load(str(profile)))
    assert plan.entries[f"{tree}/sub/file"].mode == 0o644
    # the user swaps its directory for a link to a root-only one after planning
    os.rename(tree / "sub", tmp_path / "sub.old")
    os.symlink(secret, tree / "sub")
    with JailDir(tmp_path / "jail", create=True) as jail, pytest.raises(ApplyError) as failed:
        apply(plan, jail)
    assert f"{tree}/sub/file" in str(failed.value) and "build again" in str(failed.value)
    assert "\n" not in str(failed.value)
    copies = [p for p in (tmp_path / "jail").rglob("file") if p.is_file()]
    assert not [p for p in copies if p.read_text() == "SECRET\n"]


# --- 6: a jail without limits ------------------------------------------------------------------

# at most 1500 forks are ever tried, within the run's timeout, even if no limit held; dash
# stops at the first fork that fails ("Cannot fork"), and every sleeper dies with the jail's
# pid 1 when it exits; one line per fork made
FORK_FLOOD = "i=0; while [ $i -lt 1500 ]; do sleep 30 & echo f; i=$((i+1)); done"


def forks_made(result) -> int:
    assert "Cannot fork" in result.stderr, result.stderr
    return result.stdout.count("f\n")


@pytest.mark.usefixtures("as_root")
def test_default_jail_stops_a_fork_flood(tmp_path):
    jail = tmp_path / "jail"
    assert run_jailkit("build", "shell", "--root", jail).returncode == 0
    launch = json.loads((jail / "current/launch.json").read_text())
    assert launch["cgroup"] == {"memory_max": 512 << 20, "pids_max": 512}
    result = run_jailkit("run", "shell", "--root", jail, "--", "/bin/sh", "-c", FORK_FLOOD,
                         timeout=120)
    assert 0 < forks_made(result) < 256  # RLIMIT_NPROC (and pids.max) stopped it


@pytest.mark.usefixtures("as_root")
def test_ordinary_users_default_jail_stops_a_fork_flood_without_cgroups(home):  # noqa: F811
    result = nobody_jailkit(home, "build", "shell", "--dry-run")
    assert "no default cgroup limits" in result.stdout, result.stderr
    assert nobody_jailkit(home, "build", "shell").returncode == 0
    launch = json.loads((home / "home/.local/share/jailkit/shell/current/launch.json").read_text())
    assert launch["cgroup"] == {"memory_max": None, "pids_max": None}
    result = nobody_jailkit(home, "run", "shell", "--", "/bin/sh", "-c", FORK_FLOOD)
    assert 0 < forks_made(result) < 256


@pytest.mark.usefixtures("as_root")
def test_default_tmpfs_size_and_file_size_limit(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('extends = ["shell"]\n[writable."/var/spool"]\nmode = "0755"\n'
                       '[writable."/var/lib/app"]\nkind = "state"\n')
    jail = tmp_path / "jail"
    assert run_jailkit("build", profile, "--root", jail).returncode == 0
    script = ("grep ' /var/spool ' /proc/self/mountinfo; "
              "head -c 300000000 /dev/zero > /var/lib/app/big; echo status $?")
    result = run_jailkit("run", profile, "--root", jail, "--", "/bin/sh", "-c", script,
                         timeout=120)
    assert "size=65536k" in result.stdout, result.stdout
    assert "status 0" not in result.stdout  # stopped by RLIMIT_FSIZE (SIGXFSZ)
    assert (jail / "state/var/lib/app/big").stat().st_size == 256 << 20


def test_show_prints_the_default_limits():
    result = run_jailkit("show", "nginx")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for line in ("nofile = [1024, 4096]", "nproc = [256, 256]", "fsize = [268435456, 268435456]",
                 'size = "64m"', 'memory_max = "512m", pids_max = 512'):
        assert line in text, line


# --- the closure cache, the kept shadow, and the jail directory's path -------------------------


def test_closure_cache_with_stats_not_covering_its_files_is_not_trusted(tmp_path):
    """A manifest's closure cache (an imported one, or one rewritten) naming a root-only host
    file with no stats to contradict it: the build must resolve the closure afresh."""
    from jailkit.build.plan import LD_CACHE, _closure_files
    from jailkit.profile.model import load

    profile = load("shell")
    files, cache = _closure_files(profile, None)
    secret = str(tmp_path / "secret")
    forged = dict(cache, files=[*files, secret], stats={})
    assert secret not in _closure_files(profile, forged)[0]
    partial = dict(cache, files=[*files, secret], stats={p: cache["stats"][p] for p in files})
    assert secret not in _closure_files(profile, partial)[0]
    missing_ld_cache = dict(cache, stats={p: v for p, v in cache["stats"].items()
                                          if p != LD_CACHE})
    assert _closure_files(profile, missing_ld_cache)[1]["stats"].keys() == cache["stats"].keys()
    assert _closure_files(profile, cache)[0] == files  # an honest cache is still reused


def test_kept_shadow_is_never_read_through_a_symlinked_etc(tmp_path):
    """An imported generation whose /etc is a symlink (to the host's /etc, here to a stand-in):
    the build reads what the jail keeps from the generation only."""
    from jailkit.build.kept import _shadow

    elsewhere = tmp_path / "host-etc"
    elsewhere.mkdir()
    (elsewhere / "shadow").write_text("root:$6$hostroot:19000:0:99999:7:::\n")
    (tmp_path / "gen" / "root").mkdir(parents=True)
    (tmp_path / "gen" / "root" / "etc").symlink_to(elsewhere)
    gen_fd = os.open(tmp_path / "gen", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _shadow(gen_fd) == {}
    finally:
        os.close(gen_fd)


@pytest.mark.usefixtures("as_root")
def test_symlink_of_another_user_on_the_typed_path_is_refused(sticky, tmp_path):
    """nobody's symlink in a sticky directory leads to root's own jail directory: nobody can
    point it elsewhere at any time, so root must not follow it."""
    own = tmp_path / "jail"
    assert run_jailkit("build", "shell", "--root", own).returncode == 0
    link = sticky / "link"
    subprocess.run(["ln", "-s", str(own), str(link)], check=True, preexec_fn=as_nobody)
    for command in (("build", "shell", "--root", link), ("check", "shell", "--root", link),
                    ("run", "shell", "--root", link, "--", "/bin/true")):
        one_line_error(run_jailkit(*command, timeout=120), "symlink", "uid 65534")
    root_link = tmp_path / "root-link"
    root_link.symlink_to(own)
    assert run_jailkit("check", "shell", "--root", root_link).returncode == 0


@pytest.mark.usefixtures("as_root")
def test_jail_directory_renamed_in_after_the_check_is_not_opened(sticky, home):
    """nobody renames its own jail in and out of the path root runs: a path missing when checked
    but present when opened (or any directory not root's) must never be run from."""
    from jailkit.errors import JailkitError
    from jailkit.launch.jail import Jail

    parked, target = sticky / "parked", sticky / "swap"
    parked.mkdir()
    os.chown(parked, NOBODY, NOBODY)
    result = nobody_jailkit(home, "build", "shell", "--root", str(parked / "jail"))
    assert result.returncode == 0, result.stderr
    child = os.fork()
    if child == 0:  # nobody: flip the jail in and out, for at most 20 s
        try:
            as_nobody()
            import time

            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                os.rename(parked, target)
                os.rename(target, parked)
        finally:
            os._exit(0)
    opened = 0
    try:
        for _ in range(20000):
            try:
                jail = Jail(str(target / "jail"), "shell")
            except JailkitError:
                continue
            opened += 1
            os.close(jail.dir_fd)
            os.close(jail.lock_fd)
            break
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
    assert opened == 0, "root opened nobody's jail directory"



@pytest.mark.parametrize("named", ["file", "directory"])
def test_a_file_others_cannot_read_is_copied_only_when_the_profile_says_it_is_private(
        tmp_path, named):
    # a shared profile naming /etc/gshadow, or a directory holding a root-only key, must not
    # have root copy the secret into a jail that a service (and its clients) can read
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "key").write_text("root only\n")
    (secrets / "key").chmod(0o600)
    (secrets / "public").write_text("anyone\n")
    target = secrets / "key" if named == "file" else secrets
    profile = tmp_path / "p.toml"
    profile.write_text(f'extends = ["shell"]\nfiles = ["{target}"]\n')
    result = run_jailkit("build", profile, "--root", tmp_path / "jail")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{secrets}/key is not readable by every user on the host" in result.stderr
    assert "private_files" in result.stderr
    assert not (tmp_path / "jail").exists()
    profile.write_text(f'extends = ["shell"]\nfiles = ["{target}"]\n'
                       f'private_files = ["{secrets}/key"]\n')
    result = run_jailkit("build", profile, "--root", tmp_path / "jail")
    assert result.returncode == 0, result.stderr
    copy = tmp_path / f"jail/current/root{secrets}/key"
    assert copy.read_text() == "root only\n" and (copy.stat().st_mode & 0o777) == 0o600
