"""The launcher's pure parts: launch.json validation, `run`'s argument parser, the JSON reader,
subordinate id files; and the seccomp program, installed in a real process."""

import json
import struct
import subprocess
import sys

import pytest
from conftest import REPO, jailkit_env

from jailkit.cli.run import UsageError, apply_sets, parse
from jailkit.errors import JailkitError
from jailkit.launch import landlock, seccomp
from jailkit.launch import syscalls as sc
from jailkit.launch.jsonload import loads
from jailkit.launch.spec import LaunchSpec, parse_size
from jailkit.launch.userns import read_subid

CONTRACT_EXAMPLE = {
    "name": "nginx",
    "command": ["/usr/sbin/nginx", "-g", "daemon off;"],
    "workdir": "/",
    "env": {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    "user": {"uid": 0, "gid": 0, "groups": []},
    "uid_count": 65536,
    "hostname": "nginx",
    "stop_signal": "SIGTERM",
    "capabilities": ["CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN"],
    "rlimits": {"nofile": [1024, 1024]},
    "cgroup": {"memory_max": None, "pids_max": None},
    "network": "host",
    "writable": [{"path": "/var/log/nginx", "kind": "tmpfs", "source": None,
                  "uid": 0, "gid": 0, "mode": 493, "size": "16m"}],
    "devices": ["null", "zero", "full", "random", "urandom", "tty"],
    "mount_proc": True,
    "mount_sys": False,
    "seccomp_allow": [],
}


def test_contract_example_is_accepted():
    spec = LaunchSpec.from_dict(CONTRACT_EXAMPLE)
    assert spec.command == ["/usr/sbin/nginx", "-g", "daemon off;"]
    assert spec.stop_signal == 15 and spec.uid_count == 65536
    assert spec.rlimits == {"nofile": (1024, 1024)}
    assert spec.writable[0].size == 16 << 20 and spec.writable[0].mode == 0o755


def test_missing_keys_default_to_the_most_restrictive():
    spec = LaunchSpec.from_dict({"name": "x", "command": ["/bin/true"]})
    assert spec.network == "none" and spec.capabilities == [] and spec.env == {}
    assert spec.ports == {"bind": [], "connect": []} and spec.require_landlock is False
    ranges = LaunchSpec.from_dict({**CONTRACT_EXAMPLE, "ports": {"bind": [[3, 5], 1, 4]}})
    assert ranges.ports == {"bind": [1, 3, 4, 5], "connect": []}
    assert spec.hostname == "x" and spec.uid_count == 1


@pytest.mark.parametrize("change, message", [
    ({"command": []}, "command is empty"),
    ({"colour": "red"}, "colour is not a launch spec key"),
    ({"network": "wifi"}, "network must be one of host, none, veth"),
    ({"workdir": "srv"}, "workdir must be an absolute path"),
    ({"writable": [{"path": "/a/../etc"}]}, "writable[0].path must be an absolute path"),
    ({"writable": [{"path": "/a", "kind": "bind", "source": "../../etc"}]},
     "writable[0].source must be a directory below DIR/state"),
    ({"writable": [{"path": "/a", "kind": "bind", "source": "./"}]},
     "writable[0].source must be a directory below DIR/state"),
    ({"writable": [{"path": "/"}]}, "writable[0].path cannot be /"),
    ({"user": {"uid": 33, "gid": 33}, "uid_count": 10}, "uid_count must be at least 34"),
    ({"capabilities": ["CAP_FLY"]}, "unknown capability 'CAP_FLY'"),
    ({"rlimits": {"nofile": [2048, 1024]}}, "soft limit must not exceed the hard limit"),
    ({"rlimits": {"files": [1, 1]}}, "rlimits.files is not one of"),
    ({"stop_signal": "SIGSTOP"}, "stop_signal must be one of"),
    ({"seccomp_allow": ["read"]}, "not in the default deny list"),
    ({"devices": ["sda"]}, "devices may only name"),
    ({"cgroup": {"memory_max": "lots"}}, "cgroup.memory_max must be a size"),
    ({"mount_proc": "yes"}, "mount_proc must be true or false"),
    ({"capabilities": ["CAP_BPF"]}, "accept it with --set 'dangerous_capabilities=[\"CAP_BPF\"]'"),
    ({"ports": {"bind": [0]}}, "ports.bind must hold ports 1-65535 or [low, high] ranges"),
    ({"ports": {"connect": [[90, 80, 70]]}}, "ports.connect must hold ports 1-65535"),
    ({"ports": {"bind": [[1, 5000]]}}, "ports.bind holds 5000 ports, more than 4096"),
    ({"ports": {"listen": [80]}}, "ports has unknown keys ['listen']"),
    ({"require_landlock": 1}, "require_landlock must be true or false"),
    ({"seccomp_allow": ["AF_VSOCK"]}, "not in the default deny list (nor AF_PACKET)"),
])
def test_bad_specs_are_one_line_errors(change, message):
    with pytest.raises(JailkitError) as err:
        LaunchSpec.from_dict({**CONTRACT_EXAMPLE, **change})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sizes():
    assert parse_size("64M", "k") == 64 << 20
    assert parse_size("16m", "k") == 16 << 20
    assert parse_size("1GiB", "k") == 1 << 30
    assert parse_size(4096, "k") == 4096
    assert parse_size(None, "k") is None
    with pytest.raises(JailkitError):
        parse_size("-1k", "k")


def test_run_arguments():
    opts = parse(["--root=/j", "--net", "none", "--set", "user.uid=33", "--pass-fd", "5",
                  "--dry-run", "-i", "shell", "--", "/bin/sh", "-c", "--root"])
    assert opts.profile == "shell" and opts.root == "/j" and opts.dry_run and opts.interactive
    assert not parse(["shell"]).interactive
    assert opts.sets == [("network", '"none"'), ("user.uid", "33")]
    assert opts.pass_fds == [5]
    assert opts.command == ["/bin/sh", "-c", "--root"]  # nothing after -- is an option


@pytest.mark.parametrize("argv, message", [
    ([], "Missing argument 'PROFILE'"),
    (["shell", "--net", "wifi"], "Invalid value for '--net'"),
    (["shell", "--root"], "Option '--root' requires an argument"),
    (["shell", "extra"], "Got unexpected extra argument (extra)"),
    (["shell", "--set", "novalue"], "is not KEY=VALUE"),
    (["shell", "--pass-fd", "1"], "not a descriptor number above 2"),
    (["--frobnicate", "shell"], "No such option: --frobnicate"),
    (["shell", "-d", "-i"], "jailkit exec -i NAME -- /bin/sh"),
])
def test_run_usage_errors(argv, message):
    with pytest.raises(UsageError) as err:
        parse(argv)
    assert message in str(err.value)


def test_sets_apply_json_or_strings_to_nested_keys():
    raw = {"user": {"uid": 0}, "hostname": "a"}
    apply_sets(raw, [("user.uid", "33"), ("hostname", "web"), ("cgroup.pids_max", "64"),
                     ("capabilities", '["CAP_CHOWN"]')])
    assert raw == {"user": {"uid": 33}, "hostname": "web", "cgroup": {"pids_max": 64},
                   "capabilities": ["CAP_CHOWN"]}


@pytest.mark.parametrize("text", [
    '{"a": [1, 2.5, -3e2, null, true, false, "\\u00e9\\n"], "b": {}}', ' [] ', '"x"', "0",
])
def test_json_reader_agrees_with_json(text):
    assert loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "[1,]", "{} {}", "NaN", '{"a": Infinity}', "[1"])
def test_json_reader_refuses_what_is_not_strict_json(text):
    with pytest.raises(ValueError):
        loads(text)


def test_subid_files(tmp_path):
    path = tmp_path / "subuid"
    path.write_text("alice:100000:65536\njailkit:2000000:65536\n1001:300000:1000\nbad line\n")
    assert read_subid(str(path), ("jailkit",)) == (2000000, 65536)
    assert read_subid(str(path), ("bob", "1001")) == (300000, 1000)
    assert read_subid(str(path), ("carol",)) is None
    assert read_subid(str(tmp_path / "missing"), ("jailkit",)) is None


SECCOMP_PROBE = """
import ctypes, sys
from jailkit.launch import seccomp, syscalls as sc
sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
seccomp.install(sys.argv[1:])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = []
for nr in (250, 165, 39):  # keyctl(GET_KEYRING_ID), mount(NULL...), getpid
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_long(-3), None, None, 0)
    results.append(ctypes.get_errno() if ret == -1 else 0)
print(*results)
"""


@pytest.mark.parametrize("allow, expected", [
    ([], "1 1 0"),  # keyctl and mount: EPERM; getpid allowed
    (["keyctl"], "0 1 0"),  # a profile takes keyctl out of the deny list
])
def test_seccomp_filter_in_a_real_process(allow, expected):
    result = subprocess.run([sys.executable, "-c", SECCOMP_PROBE, *allow], capture_output=True,
                            text=True, env=jailkit_env(REPO), timeout=30)
    assert result.stdout.split() == expected.split(), result.stderr


def run_filter(program: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """Classic BPF as the kernel runs a seccomp filter, for the few opcodes the filter uses."""
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, accumulator = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.LD_W_ABS:
            accumulator = {0: nr, 4: arch, 16: arg0 & 0xFFFFFFFF}[k]
        elif code == seccomp.JEQ_K:
            pc += jt if accumulator == k else jf
        elif code == seccomp.JGT_K:
            pc += jt if accumulator > k else jf
        elif code == seccomp.JGE_K:
            pc += jt if accumulator >= k else jf
        elif code == seccomp.RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1


@pytest.mark.parametrize("allow", [[], ["keyctl", "ptrace", "mount"], list(seccomp.ALLOWABLE)])
def test_seccomp_filter_decides_every_syscall_number(allow):
    program = seccomp.build(allow)
    denied = {nr for name, nr in seccomp.DENIED.items() if name not in allow}
    eperm, allowed = seccomp.RET_ERRNO | seccomp.EPERM, seccomp.RET_ALLOW
    assert 467 in denied or "open_tree_attr" in allow  # open_tree_attr, new in Linux 6.15
    for nr in range(1024):
        if nr in seccomp.SOCKET_CALLS:
            continue
        expected = eperm if nr in denied or nr > seccomp.REVIEWED_MAX else allowed
        assert run_filter(program, seccomp.AUDIT_ARCH_X86_64, nr) == expected, nr
    for nr in (seccomp.X32_SYSCALL_BIT, seccomp.X32_SYSCALL_BIT + 250, 2**32 - 1):
        assert run_filter(program, seccomp.AUDIT_ARCH_X86_64, nr) == eperm
    i386 = 0x40000003
    assert run_filter(program, i386, 250) == seccomp.RET_KILL_PROCESS
    # socket and socketpair: decided by the address family in the first argument
    families = {*seccomp.SOCKET_FAMILIES.values(), *(nr for name, nr in
                seccomp.OPTIONAL_FAMILIES.items() if name in allow)}
    for nr in seccomp.SOCKET_CALLS:
        for family in [*range(64), 1 << 32 | 2, 0xFFFFFFFF]:
            expected = allowed if family & 0xFFFFFFFF in families else (
                seccomp.RET_ERRNO | seccomp.EAFNOSUPPORT)
            assert run_filter(program, seccomp.AUDIT_ARCH_X86_64, nr, family) == expected, family


LANDLOCK_PROBE = """
import os, signal, sys
from jailkit.launch import landlock, syscalls as sc
sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
landlock.restrict(landlock.Ruleset("none", [], [], int(sys.argv[1])))
try:
    os.kill(int(sys.argv[2]), signal.SIGTERM)
    print("signalled")
except PermissionError:
    print("refused")
"""


@pytest.mark.parametrize("abi, expected", [
    (sc.landlock_abi(), "refused"),  # scoped: no signal to a process outside the domain
    (5, "signalled"),  # what a kernel before scoping (ABI 6) allows: the check can tell them apart
])
def test_landlock_scope_stops_signals_outside_the_jail(abi, expected):
    assert sc.landlock_abi() >= landlock.SCOPE_ABI  # measured here: ABI 7
    # same uid, same pid namespace: only the scope can stop the signal
    victim = subprocess.Popen(["sleep", "60"])
    try:
        result = subprocess.run([sys.executable, "-c", LANDLOCK_PROBE, str(abi), str(victim.pid)],
                                capture_output=True, text=True, env=jailkit_env(REPO), timeout=30)
        assert result.stdout.strip() == expected, result.stderr
    finally:
        victim.kill()
        victim.wait()


def test_landlock_ruleset_describes_what_this_kernel_cannot_enforce():
    old = landlock.Ruleset("host", [8080, 30000, 30001, 30002], [], 3)
    assert old.handled_net == 0 and old.scoped == 0
    assert old.missing == ["TCP port limits (Landlock ABI 4, Linux 6.7)",
                           "abstract unix socket and signal scoping (Landlock ABI 6, Linux 6.12)"]
    new = landlock.Ruleset("host", [8080, 30000, 30001, 30002], [], 7)
    assert new.missing == []
    assert new.describe() == ("ABI 7: bind tcp 8080 30000-30002; connect tcp (none); no abstract "
                              "unix sockets or signals outside the jail")
    assert landlock.Ruleset("none", [80], [80], 7).describe().startswith("ABI 7: no abstract")


@pytest.mark.parametrize("name", ["../../../../tmp/x", "a/b", ".x", "-x", "x" * 65, "a b",
                                  "é"])
def test_name_that_is_not_plain_is_refused(name):
    """The launcher makes cgroup directories (as root) from the name."""
    with pytest.raises(JailkitError, match="name"):
        LaunchSpec.from_dict({**CONTRACT_EXAMPLE, "name": name})


def test_uid_count_above_one_slice_is_refused():
    """Each root jail owns a slice of 65536 host ids: more would map another jail's ids."""
    assert LaunchSpec.from_dict({**CONTRACT_EXAMPLE, "uid_count": 65536}).uid_count == 65536
    with pytest.raises(JailkitError, match="uid_count"):
        LaunchSpec.from_dict({**CONTRACT_EXAMPLE, "uid_count": 65537})
