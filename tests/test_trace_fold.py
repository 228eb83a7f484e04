"""`jailkit trace`, from a recorded strace log to a profile: parsing, folding, secrets.

The log (trace_logs/service.log) is strace's own `-f -yy` text; its paths below @TMP@ are made
real in a temporary directory, because folding looks at the host's files (a directory is taken
whole only when it is small and holds no secret)."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import run_jailkit

from jailkit.author.doctor import _path, service_calls
from jailkit.author.fold import fold, secret_reason
from jailkit.author.trace import parse_log, read_trace
from jailkit.author.write import render

LOG = Path(__file__).parent / "trace_logs" / "service.log"
PEM_KEY = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGmUW1Pst2bMP4Ah5vEeKxwvOtJ9vM0Z7\n"
           "-----END PRIVATE KEY-----\n")


@pytest.fixture
def recorded(tmp_path):
    """The recorded log with @TMP@ pointing at a tree holding the files it names."""
    files = {
        "etc/svc/main.conf": "port 11999\n", "etc/svc/extra.conf": "x\n",
        "etc/svc/server.key": "not even PEM: the name says it\n",
        "etc/other/ca, with comma.conf": "y\n", "etc/other/tls.pem": PEM_KEY,
        "etc/conf.d/a.conf": "a\n", "etc/conf.d/b.conf": "b\n",
        "etc/single/only.conf": "z\n", "etc/single/unused.conf": "never read\n",
        "work/relative.conf": "r\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "modules").mkdir()
    for module in ("mod_a.so", "mod_b.so"):  # real ELF objects: dlopen'd modules
        shutil.copy("/lib/x86_64-linux-gnu/libz.so.1", tmp_path / "modules" / module)
    for directory in ("run/svc", "data"):
        (tmp_path / directory).mkdir(parents=True)
    log = tmp_path / "strace.log"
    log.write_text(LOG.read_text().replace("@TMP@", str(tmp_path)))
    return tmp_path, log


def draft_of(log: Path):
    return fold(read_trace(log.read_text()), "svc")


def test_parse_joins_interrupted_calls_and_keeps_commas_in_paths(recorded):
    tmp, log = recorded
    calls = parse_log(log.read_text())
    opened = {c.returned for c in calls if c.name == "openat" and c.ok}
    assert f"{tmp}/modules/mod_a.so" in opened  # <unfinished ...> + <... resumed>
    assert f"{tmp}/etc/other/ca, with comma.conf" in opened
    failed = [c for c in calls if c.name == "openat" and c.returned is None]
    assert {c.error for c in failed} >= {"ENOENT", "EACCES", "EROFS"}


def test_trace_reads_ids_ports_and_relative_paths(recorded):
    tmp, log = recorded
    trace = read_trace(log.read_text())
    assert trace.program == "/usr/bin/memcached"
    assert trace.command == ["memcached", "-c", f"{tmp}/etc/svc/main.conf", "-p", "11999"]
    assert set(trace.uids) == {1} and set(trace.gids) == {1}
    assert set(trace.capabilities) == {"CAP_SETUID", "CAP_SETGID"}
    assert list(trace.tcp_binds) == [11999] and list(trace.udp_binds) == [11998]
    assert f"{tmp}/work/relative.conf" in trace.paths  # relative to the starting directory
    # the child that changed directory wrote relative to its own directory, as the user
    # it inherited from its parent
    assert trace.writer_uid[f"{tmp}/data/store.db"] == 1
    assert trace.used_start_dir


def test_folding(recorded):
    tmp, log = recorded
    draft = draft_of(log)
    files = [e.value for e in draft.files]
    # two files read in one config directory: the directory
    assert f"{tmp}/etc/conf.d" in files
    assert not [f for f in files if f.startswith(f"{tmp}/etc/conf.d/")]
    # one file read: that file only, not its neighbours
    assert f"{tmp}/etc/single/only.conf" in files and f"{tmp}/etc/single" not in files
    # two modules dlopen'd from one directory: a glob; the loader closure (libc, libevent)
    # and ld.so.cache are left to the build
    assert [e.value for e in draft.libraries] == [f"{tmp}/modules/*.so"]
    assert not [f for f in files if "/lib/x86_64-linux-gnu/" in f or f == "/etc/ld.so.cache"]
    # bases by what was read; what they bring is not listed again
    assert [e.value for e in draft.extends] == ["libc", "dns", "tzdata"]
    assert "/etc/resolv.conf" not in files and "/etc/localtime" not in files
    assert "/etc/passwd" not in files
    assert [e.value for e in draft.devices] == ["urandom"]
    assert any("/dev/kmsg" in note for note in draft.notes)
    # nothing under /proc, nothing that did not exist
    assert not [f for f in files if f.startswith("/proc") or f.endswith("missing.conf")]
    # writable: the socket and pid file's directory a tmpfs, the data directory kept state,
    # owned by the user that wrote there; /etc never
    assert draft.writable[f"{tmp}/run/svc"]["kind"] == "tmpfs"
    assert draft.writable[f"{tmp}/data"]["kind"] == "state"
    assert draft.writable[f"{tmp}/data"]["owner"] == "daemon"
    assert not [w for w in draft.writable if w.startswith("/etc")]
    assert any("in /etc, which cannot be writable" in note for note in draft.notes)
    # accounts as the host defines them
    assert draft.users["daemon"]["uid"] == 1 and draft.groups["daemon"]["gid"] == 1
    assert [e.value for e in draft.bind] == ["11999"] and draft.network == "host"
    assert draft.ready == 11999  # TCP; the UDP port it bound is no readiness check
    assert draft.workdir == f"{tmp}/work"


def test_secrets_are_left_out_and_listed(recorded):
    tmp, log = recorded
    draft = draft_of(log)
    secrets = {e.value for e in draft.secrets}
    assert secrets == {"/etc/shadow", "/etc/ssh/ssh_host_ed25519_key",
                       f"{tmp}/etc/svc/server.key", f"{tmp}/etc/other/tls.pem"}
    files = [e.value for e in draft.files]
    # a directory holding a secret is never folded, even where its other files qualify
    assert f"{tmp}/etc/svc" not in files and f"{tmp}/etc/other" not in files
    assert f"{tmp}/etc/svc/main.conf" in files and f"{tmp}/etc/other/ca, with comma.conf" in files
    assert "/etc/ssh/ssh_host_ed25519_key.pub" in files  # a public key is no secret
    assert "/etc/ssh" not in files
    # the file the service could not read is no entry either
    assert not [f for f in files if f.startswith("/etc/ssl")]


def test_secret_reasons(tmp_path):
    key = tmp_path / "innocent.txt"
    key.write_text("header\n" + PEM_KEY)
    assert secret_reason(str(key)) == "a private key (PEM)"
    assert secret_reason("/etc/ssl/private/anything") == "in /etc/ssl/private"
    assert secret_reason("/etc/ssh/ssh_host_rsa_key") == "an ssh host key"
    assert secret_reason("/etc/gshadow") == "password hashes"
    assert secret_reason("/etc/ssh/ssh_host_rsa_key.pub") is None
    assert secret_reason("/etc/hostname") is None


def test_cli_from_log_writes_a_profile_that_loads_and_names_the_secrets(recorded):
    tmp, log = recorded
    out = tmp / "svc.toml"
    result = run_jailkit("trace", "--from-log", log, "-o", out)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    entries = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for secret in ("/etc/shadow", "/etc/ssh/ssh_host_ed25519_key", f"{tmp}/etc/svc/server.key",
                   f"{tmp}/etc/other/tls.pem"):
        assert f"secret left out: {secret}: " in result.stderr
        assert not [line for line in entries if f'"{secret}"' in line.split("#")[0]]
    # every entry says what was seen
    listed = [line for line in entries if line.startswith("    \"")]
    assert listed and all("  # " in line for line in listed)
    shown = run_jailkit("show", out)
    assert shown.returncode == 0, shown.stderr
    assert "users.daemon" in shown.stdout.replace('"', "")


def test_written_profile_is_valid_toml_for_odd_paths(recorded):
    tmp, log = recorded
    text = render(draft_of(log), ["memcached", "-c", 'a "quoted"\nname'])
    import tomllib

    profile = tomllib.loads(text)
    assert profile["service"]["command"][0] == "/usr/bin/memcached"
    assert f"{tmp}/etc/other/ca, with comma.conf" in profile["files"]


def test_bad_input_is_one_line(tmp_path):
    result = run_jailkit("trace")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "jailkit trace [OPTIONS] -- CMD ARGS" in result.stderr
    result = run_jailkit("trace", "--", str(tmp_path / "nothing-here"))
    assert result.returncode == 2 and "no such program" in result.stderr
    assert result.stderr.count("\n") == 1
    empty = tmp_path / "empty.log"
    empty.write_text("garbage\n")
    result = run_jailkit("trace", "--from-log", empty)
    assert result.returncode == 2 and "no program started" in result.stderr
    assert not os.path.exists(tmp_path / "empty.toml")


def test_a_folded_file_others_cannot_read_is_listed_as_private(tmp_path):
    from jailkit.author.fold import Draft, Entry
    from jailkit.author.write import render

    config = tmp_path / "conf"
    config.mkdir()
    (config / "service.conf").write_text("port 1\n")
    (config / "password").write_text("secret\n")
    (config / "password").chmod(0o640)
    text = render(Draft("svc", files=[Entry(str(config), "read by svc")]), ["svc"])
    assert f'private_files = [\n    "{config}/password",' in text
    assert f'"{config}/service.conf"' not in text.split("private_files")[1]


DOCTOR_LOG = r"""100 clone(child_stack=NULL, flags=CLONE_NEWUSER|CLONE_NEWPID|SIGCHLD) = 101
101 clone(child_stack=NULL, flags=CLONE_NEWNS|CLONE_NEWUSER|SIGCHLD <unfinished ...>
101 <... clone resumed>) = 2 /* 102 in strace's PID NS */
102 openat(AT_FDCWD, "/etc/before exec", O_RDONLY) = -1 ENOENT (No such file or directory)
102 execve("/bin/svc", ["svc", "a, b"], 0x7ffd2 /* 3 vars */) = 0
102 linkat(AT_FDCWD, "/srv/in, out", AT_FDCWD, "/etc/new, \"link", 0) = -1 EROFS (Read-only)
102 symlinkat("/target, \"x", AT_FDCWD, "/data/link") = -1 ENOENT (No such file or directory)
102 vfork() = 3 /* 103 in strace's PID NS */
103 exit_group(0) = ?
102 exit_group(3) = ?
"""


def test_doctor_reads_the_same_strace_syntax_as_trace(tmp_path):
    """doctor's log (--decode-pids=pidns) through trace's parser: processes made in the jail are
    known by their host pids, only the service's calls from its execve on count, and a path
    argument after a string holding ', ' or a quote is read whole."""
    log = tmp_path / "trace.log"
    log.write_text(DOCTOR_LOG)
    calls, exits = service_calls(str(log))
    assert exits == {"service": 102, 103: 0, 102: 3}
    assert [(c.name, _path(c)) for c in calls if c.name.endswith("at")] == [
        ("linkat", '/etc/new, "link'), ("symlinkat", "/data/link")]
    assert [c.child for c in calls if c.child] == [103]
