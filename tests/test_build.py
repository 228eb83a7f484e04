"""`jailkit build`: real jails built from real host files, run with chroot, checked on disk."""

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys

import pytest
from conftest import SETS_NEEDED, build, jailkit_env, run_jailkit

from jailkit.build.plan import make_plan
from jailkit.launch.spec import LaunchSpec
from jailkit.profile.model import bundled_profiles, load

CAPS_XATTR = "security.capability"


def in_jail(root, script: str) -> subprocess.CompletedProcess:
    """Run a shell script inside the built tree (chroot: enough to prove the tree is complete)."""
    return subprocess.run(["/usr/sbin/chroot", str(root), "/bin/sh", "-c", script],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)


def manifest_of(jail):
    data = json.loads((jail / "current/manifest.json").read_text())
    return {e["path"]: e for e in data["entries"]}


@pytest.fixture(scope="module")
def shell_jail(tmp_path_factory):
    jail = tmp_path_factory.mktemp("shell") / "jail"
    build("shell", "--root", jail)
    return jail


@pytest.mark.usefixtures("as_root")
def test_shell_jail_runs_its_shell_and_utilities(shell_jail):
    result = in_jail(shell_jail / "current/root",
                     "echo hi | sha256sum; ls / | tr '\\n' ' '; echo; id -un; "
                     "grep nobody /etc/passwd")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(hashlib.sha256(b"hi\n").hexdigest())
    assert lines[1].split() == ["bin", "dev", "etc", "lib", "lib64", "proc", "root", "tmp", "usr",
                                "var"]  # var/lib/dpkg/status: the packages it holds files of
    assert lines[2:] == ["root", "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin"]


def test_symlinks_stay_symlinks_with_host_targets(shell_jail):
    root = shell_jail / "current/root"
    for path in ("bin", "lib", "lib64", "usr/bin/sh", "usr/lib64/ld-linux-x86-64.so.2"):
        assert (root / path).is_symlink(), path
        assert os.readlink(root / path) == os.readlink(f"/{path}")
    assert (root / "usr/lib/x86_64-linux-gnu/libc.so.6").is_file()
    assert not (root / "usr/lib/x86_64-linux-gnu/libc.so.6").is_symlink()


def test_only_the_closure_and_profile_are_in_the_tree(shell_jail):
    entries = manifest_of(shell_jail)
    libs = {p.rsplit("/", 1)[1].split(".so")[0] for p in entries
            if p.startswith("/usr/lib/x86_64-linux-gnu/")}
    # dash + coreutils + grep/sed/find need these and nothing else
    assert libs <= {"libc", "libselinux", "libpcre2-8", "ld-linux-x86-64", "libacl", "libattr",
                    "libcrypto", "libgmp", "libm"}
    assert "/etc/shadow" not in entries
    assert {p for p in entries if p.startswith("/etc/")} == {
        "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"}
    assert (shell_jail / "current/root/etc/nsswitch.conf").read_text().count("files") >= 4


@pytest.mark.usefixtures("as_root")
def test_manifest_records_every_entry_with_owner_and_hash(shell_jail):
    root = shell_jail / "current/root"
    entries = manifest_of(shell_jail)
    on_disk = {"/" + str(p.relative_to(root)) for p in root.rglob("*")} | {"/"}
    assert on_disk == set(entries)
    for path, entry in entries.items():
        st = os.lstat(root / path.lstrip("/"))
        assert (st.st_uid, st.st_gid, st.st_ino) == (entry["uid"], entry["gid"], entry["ino"]), path
        if entry["type"] == "file":
            data = (root / path.lstrip("/")).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert stat.S_IMODE(st.st_mode) == entry["mode"]
            assert entry["mode"] & 0o7022 == 0, path  # no setuid/sticky, no group/other write
    assert entries["/usr/bin/dash"]["source"] == "/usr/bin/dash"
    assert entries["/usr/bin/dash"]["host"]["ino"] == os.stat("/usr/bin/dash").st_ino


def test_launch_json_is_a_valid_launch_spec(shell_jail):
    data = json.loads((shell_jail / "current/launch.json").read_text())
    LaunchSpec.from_dict(data)
    assert data["command"] == ["/bin/sh"] and data["hostname"] == "shell"
    assert data["writable"] == [{"path": "/tmp", "kind": "tmpfs", "source": None, "uid": 0,
                                 "gid": 0, "mode": 0o1777, "size": "16m"}]
    assert data["devices"] == ["null", "zero", "full", "random", "urandom", "tty"]
    assert (shell_jail / "current/root/tmp").is_dir()
    assert not any((shell_jail / "current/root/tmp").iterdir())


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    jail = tmp_path / "jail"
    result = build("shell", "--root", jail, "--dry-run")
    assert not jail.exists()
    assert "link  /bin -> usr/bin" in result.stdout
    assert "copy  0755 0:0 /usr/bin/dash <- /usr/bin/dash" in result.stdout
    assert "write 0644 0:0 /etc/passwd" in result.stdout
    summary = json.loads(build("shell", "--root", jail, "--dry-run", "--json").stdout)
    assert summary["files"] > 40 and summary["symlinks"] >= 4 and not jail.exists()


def test_json_summary_of_a_build(tmp_path):
    out = json.loads(build("shell", "--root", tmp_path / "j", "--json").stdout)
    assert out["changed"] and out["generation"] == 1 and out["copied"] == out["files"]


def write_profile(tmp_path, text, name="svc", binaries=("/bin/sh",)):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'extends = ["libc"]\nbinaries = {json.dumps(list(binaries))}\n' + text)
    return path


@pytest.mark.usefixtures("as_root")
def test_users_shadow_templates_writable_state_and_set(tmp_path):
    (tmp_path / "app.conf.j2").write_text("listen {{ port }};\nname {{ name }};\n")
    profile = write_profile(tmp_path, """
[variables]
port = 8080
name = "web"

[users.www-data]
uid = 33
gid = 33
home = "/var/www"
password = "!"

[groups.www-data]
gid = 33
members = ["www-data"]

[templates."/etc/app/app.conf"]
source = "app.conf.j2"
owner = "www-data"
mode = "0640"

[directories."/srv/ftp"]
mode = "0555"

[writable."/var/lib/app"]
owner = "www-data"
group = "www-data"
mode = "0750"
kind = "state"

[service]
command = ["/bin/sh", "-c", "true"]
user = "www-data"
capabilities = ["NET_BIND_SERVICE"]

[service.limits]
nofile = 512
memory_max = "64m"
""")
    jail = tmp_path / "jail"
    build(profile, "--root", jail, "--set", "port=81")
    root = jail / "current/root"
    assert (root / "etc/app/app.conf").read_text() == "listen 81;\nname web;\n"
    st = os.stat(root / "etc/app/app.conf")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (33, 0, 0o640)
    assert (root / "etc/shadow").read_text() == "www-data:!::0:99999:7:::\n"
    assert (root / "etc/group").read_text() == "root:x:0:\nwww-data:x:33:www-data\n"
    assert stat.S_IMODE(os.stat(root / "srv/ftp").st_mode) == 0o555
    state = jail / "state/var/lib/app"
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o750
    launch = json.loads((jail / "current/launch.json").read_text())
    LaunchSpec.from_dict(launch)
    assert launch["user"] == {"uid": 33, "gid": 33, "groups": []}
    assert launch["capabilities"] == ["CAP_NET_BIND_SERVICE"]
    # the profile's limits over jailkit's defaults (pids_max: the default, built by root)
    assert launch["rlimits"] == {"nofile": [512, 512], "nproc": [256, 256],
                                 "fsize": [256 << 20, 256 << 20]}
    assert launch["cgroup"] == {"memory_max": 64 << 20, "pids_max": 512}
    assert launch["writable"][0] | {} == {"path": "/var/lib/app", "kind": "bind",
                                          "source": "var/lib/app", "uid": 33, "gid": 33,
                                          "mode": 0o750, "size": None}


def test_template_with_undefined_variable_is_one_line_error(tmp_path):
    profile = write_profile(tmp_path, '[templates."/etc/x"]\ntext = "{{ nope }}"\n')
    result = build(profile, "--root", tmp_path / "j", check=False)
    assert result.returncode == 2
    assert result.stderr == ("jailkit: inline template for /etc/x: 'nope' is undefined; define it "
                             "under [variables] or pass --set\n")


def test_missing_host_file_and_missing_library_are_reported(tmp_path):
    profile = write_profile(tmp_path, 'files = ["/no/such/file*"]\n')
    result = build(profile, "--root", tmp_path / "j", check=False)
    assert result.stderr == "jailkit: files: /no/such/file* matches nothing on this host\n"
    profile = write_profile(tmp_path, 'libraries = ["libnosuch.so.9"]\n')
    result = build(profile, "--root", tmp_path / "j", check=False)
    assert "the loader would not find libnosuch.so.9" in result.stderr


@pytest.mark.parametrize(("text", "refusal"), [
    ('[service]\nseccomp_allow = ["nonsense"]\n',
     "seccomp_allow names 'nonsense', which is not in the default deny list (nor AF_PACKET)"),
    ('[service.env]\n"A=B" = "1"\n', "env.A=B must be a NAME without '=' and a string value"),
    ('[service.ports]\nbind = ["1-5000"]\n', "ports.bind holds 5000 ports, more than 4096"),
])
def test_a_launch_spec_the_launcher_would_refuse_fails_the_build(tmp_path, text, refusal):
    # the profile's schema lets these through; the launcher's own check runs at build time, so
    # no jail is built that could never start
    profile = write_profile(tmp_path, text)
    for args in (["--dry-run"], []):
        result = build(profile, "--root", tmp_path / "j", *args, check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("jailkit: profile svc: the launcher would refuse this "
                                        f"jail: launch spec: {refusal}")
        assert result.stderr.count("\n") == 1
    assert not os.path.exists(tmp_path / "j")


@pytest.fixture
def special_host_files(tmp_path):
    """Host files with setuid bits and a file capability (CAP_NET_BIND_SERVICE, vfs caps v2)."""
    host = tmp_path / "host"
    host.mkdir()
    for name in ("su-true", "cap-true"):
        (host / name).write_bytes(open("/usr/bin/true", "rb").read())
    os.chmod(host / "su-true", 0o4755)
    os.chmod(host / "cap-true", 0o755)
    os.setxattr(host / "cap-true", CAPS_XATTR, struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0))
    return host


@pytest.mark.usefixtures("as_root")
def test_setuid_stripped_and_caps_dropped_unless_asked(tmp_path, special_host_files):
    host = special_host_files
    wanted = ["/bin/sh", f"{host}/su-true", f"{host}/cap-true"]
    plain = write_profile(tmp_path, "", "plain", wanted)
    build(plain, "--root", tmp_path / "plain")
    root = tmp_path / f"plain/current/root{host}"
    assert stat.S_IMODE(os.stat(root / "su-true").st_mode) == 0o755
    with pytest.raises(OSError):
        os.getxattr(root / "cap-true", CAPS_XATTR)
    asked = write_profile(tmp_path, f'keep_setuid = ["{host}/su-true"]\n'
                                    f'keep_file_caps = ["{host}/cap-true"]\n', "asked", wanted)
    build(asked, "--root", tmp_path / "asked")
    root = tmp_path / f"asked/current/root{host}"
    assert stat.S_IMODE(os.stat(root / "su-true").st_mode) == 0o4755
    assert os.getxattr(root / "cap-true", CAPS_XATTR) == os.getxattr(host / "cap-true", CAPS_XATTR)


@pytest.mark.usefixtures("as_root")
def test_tls_base_keeps_hash_links_and_copies_what_they_name(tmp_path):
    profile = tmp_path / "tlsuser.toml"
    profile.write_text('extends = ["tls"]\nbinaries = ["/bin/sh", "/bin/cat"]\n')
    build(profile, "--root", tmp_path / "j")
    root = tmp_path / "j/current/root"
    links = [p for p in (root / "etc/ssl/certs").iterdir() if p.name.endswith(".0")]
    assert len(links) > 50 and all(p.is_symlink() for p in links)
    name = sorted(links)[0].name
    result = in_jail(root, f"cat /etc/ssl/certs/{name} /usr/lib/ssl/openssl.cnf")
    assert result.returncode == 0, result.stderr
    host = open(f"/etc/ssl/certs/{name}").read() + open("/usr/lib/ssl/openssl.cnf").read()
    assert result.stdout == host


@pytest.mark.usefixtures("as_root")
def test_python3_jail_runs_the_standard_library(tmp_path):
    build("python3", "--root", tmp_path / "py")
    root = tmp_path / "py/current/root"
    script = ("import ssl, sqlite3, json, ctypes, hashlib, zlib, lzma, bz2, decimal; "
              "ssl.create_default_context(); print(sqlite3.connect(':memory:')"
              ".execute('select 6*7').fetchone()[0])")
    result = subprocess.run(["/usr/sbin/chroot", str(root), "/usr/bin/python3", "-c", script],
                            capture_output=True, text=True, env={}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "42\n"
    assert not (root / "usr/lib/python3/dist-packages").exists()


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("base", ["libc", "dns", "tzdata", "tls", "pam", "python3"])
def test_every_bundled_base_builds_on_this_host_and_checks_clean(tmp_path, base):
    profile = tmp_path / f"with-{base}.toml"
    profile.write_text(f'extends = ["{base}", "shell"]\n')
    jail = tmp_path / "jail"
    build(profile, "--root", jail)
    result = run_jailkit("check", profile, "--root", jail)
    assert result.returncode == 0, result.stdout
    result = in_jail(jail / "current/root", "cat /etc/nsswitch.conf /etc/passwd >/dev/null && "
                                            "ls /etc")
    assert result.returncode == 0, result.stderr
    if base == "pam":
        assert {"pam.d", "login.defs"} <= set(result.stdout.split())
        assert (jail / "current/root/etc/pam.d/common-password").is_file()
    if base == "dns":
        assert "hosts: files dns" in (jail / "current/root/etc/nsswitch.conf").read_text()


def test_progress_bar_on_a_terminal_only(tmp_path):
    jail = tmp_path / "jail"
    command = f"{sys.executable} -m jailkit build shell --root {jail}"
    on_tty = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                            text=True, env=jailkit_env(), timeout=120)
    assert on_tty.returncode == 0, on_tty.stdout
    assert "building shell  [####################################]  100%" in on_tty.stdout
    assert "building" not in build("shell", "--root", tmp_path / "other").stdout


@pytest.mark.parametrize("name", sorted(bundled_profiles()))
def test_every_bundled_profile_plans_a_valid_launch_spec(tmp_path, name):
    # on top of shell, so that bases (which name no command of their own) are runnable too
    profile = tmp_path / f"{name}-on-shell.toml"
    profile.write_text(f'extends = ["shell", "{name}"]\n')
    plan = make_plan(load(str(profile), SETS_NEEDED.get(name)))
    LaunchSpec.from_dict(plan.launch)
    assert plan.launch["command"] == list(load(name).service.command)
    assert plan.entries["/etc/passwd"].content.startswith(b"root:x:0:0:")


def test_directory_copy_keeps_links_and_honours_excludes(tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub/__pycache__").mkdir(parents=True)
    (tree / "sub/__pycache__/x.pyc").write_bytes(b"pyc")
    (tree / "sub/keep.txt").write_text("keep\n")
    (tree / "outside.txt").write_text("reached through a link\n")
    os.symlink("../outside.txt", tree / "sub/to-file")
    os.symlink("/no/such/target", tree / "sub/dangling")
    os.symlink("/usr/share", tree / "sub/to-dir")
    profile = write_profile(tmp_path, f'files = ["{tree}/sub"]\nexclude = ["*/__pycache__"]\n')
    result = build(profile, "--root", tmp_path / "j")
    assert f"note: {tree}/sub/to-dir points to a directory, which is not copied" in result.stderr
    copy = tmp_path / f"j/current/root{tree}"
    assert (copy / "sub/keep.txt").read_text() == "keep\n"
    assert not (copy / "sub/__pycache__").exists()
    # a link out of the copied tree is kept, its target not copied (tests/test_build_attacks.py)
    assert os.readlink(copy / "sub/to-file") == "../outside.txt"
    assert f"note: {tree}/sub/to-file points outside the copied trees" in result.stderr
    assert not (copy / "outside.txt").exists()
    assert os.readlink(copy / "sub/dangling") == "/no/such/target"
    assert os.readlink(copy / "sub/to-dir") == "/usr/share"
    assert not (tmp_path / "j/current/root/usr/share").exists()


def test_planning_writes_nothing_and_makes_no_key(tmp_path):
    from jailkit.build.jaildir import JailDir
    from jailkit.build.kept import gather

    jail_dir = tmp_path / "jail"
    jail_dir.mkdir(mode=0o700)
    profile = load("nginx-tls")
    with JailDir(jail_dir) as jail:
        plan = make_plan(profile, gather(jail, profile))
    assert os.listdir(jail_dir) == []  # no key, no lock, no generation
    assert [item.dest for item, _ in plan.to_generate] == list(profile.generated)
    # the build makes the key (in apply); the next plan takes it as kept, and makes nothing
    build("nginx-tls", "--root", jail_dir)
    with JailDir(jail_dir) as jail:
        again = make_plan(profile, gather(jail, profile))
    assert again.to_generate == []
    key = next(iter(profile.generated))
    assert again.entries[key].content == (jail_dir / f"current/root{key}").read_bytes()
    assert b"PRIVATE KEY" in again.entries[key].content
