"""`jailkit doctor`: run a built jail's service under strace and say what the jail kept from it.

The tracer wraps `jailkit run` on the host and follows every process into the jail (ptrace
attachment is inherited across clone, namespaces included), so it sees the paths the service
asked for as the service named them: in-jail paths. Only the service's own processes are judged:
the process the jail's pid 1 clones into its nested user namespace, from its execve of the
command on (before it, it is jailkit confining itself), and everything it forks. Each finding
names the profile line that fixes it; the profile is never changed. A file the service looked
for and went on without (it listened afterwards and still ran when stopped) is a probe, marked
`went_on`, not a failure.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

from jailkit.author.fold import base_for
from jailkit.author.trace import Call, interruptible, parse_log, unquote
from jailkit.author.write import quote
from jailkit.errors import JailkitError
from jailkit.launch.seccomp import DENIED
from jailkit.vocabulary import DEVICES

PORT_RE = re.compile(r"sin6?_port=htons\((\d+)\)")
PATH_CALLS = {  # syscall -> index of the path argument
    "open": 0, "openat": 1, "openat2": 1, "stat": 0, "lstat": 0, "newfstatat": 1, "statx": 1,
    "access": 0, "faccessat": 1, "faccessat2": 1, "execve": 0, "execveat": 1, "readlink": 0,
    "readlinkat": 1, "mkdir": 0, "mkdirat": 1, "unlink": 0, "unlinkat": 1, "rename": 0,
    "renameat": 1, "renameat2": 1, "creat": 0, "chdir": 0, "chroot": 0, "truncate": 0,
    "chmod": 0, "fchmodat": 1, "symlink": 1, "symlinkat": 2, "link": 1, "linkat": 3,
    "utimensat": 1, "chown": 0, "lchown": 0, "fchownat": 1,
}
CREATES = {"mkdir", "mkdirat", "creat", "rename", "renameat", "renameat2", "symlink",
           "symlinkat", "link", "linkat"}
CAPABILITY_CALLS = {
    "setuid": "CAP_SETUID", "setreuid": "CAP_SETUID", "setresuid": "CAP_SETUID",
    "setfsuid": "CAP_SETUID", "setgid": "CAP_SETGID", "setregid": "CAP_SETGID",
    "setresgid": "CAP_SETGID", "setfsgid": "CAP_SETGID", "setgroups": "CAP_SETGID",
    "chown": "CAP_CHOWN", "fchown": "CAP_CHOWN", "lchown": "CAP_CHOWN", "fchownat": "CAP_CHOWN",
    "chroot": "CAP_SYS_CHROOT", "kill": "CAP_KILL", "setpriority": "CAP_SYS_NICE",
    "sched_setscheduler": "CAP_SYS_NICE", "chmod": "CAP_FOWNER", "fchmod": "CAP_FOWNER",
    "fchmodat": "CAP_FOWNER", "setrlimit": "CAP_SYS_RESOURCE", "prlimit64": "CAP_SYS_RESOURCE",
}
# what services print when a user or group they were configured with is not in /etc/passwd
USER_ERRORS = re.compile(
    r"(?:getpw\w*|getgr\w*)\(\s*\"?([a-z_][a-z0-9_-]*)\"?\s*\)"
    r"|(?:can't find|cannot find|unknown|no such|invalid|bad) (?:user ?name|user|group ?name|group)"
    r"[\s:=\"']*([a-z_][a-z0-9_-]*)", re.IGNORECASE)
SKIPPED_TOPS = ("/proc/", "/sys/", "/dev/")
# probes every program makes that a jail answers on purpose: jailkit resolves libraries itself
NOT_NEEDED = {"/etc/ld.so.cache", "/etc/ld.so.preload"}


class Finding(NamedTuple):
    kind: str  # missing-file, read-only, seccomp, capability, user, daemon, port
    detail: str  # what the service did, in its own terms
    fix: str  # the profile line (or command) that fixes it
    went_on: bool = False  # a probe: a file it looked for before it listened, and still ran


def service_calls(log: str) -> tuple[list[Call], dict[int, int]]:
    """The calls made by the service's processes, and pid -> exit status of those that exited
    (with "service": the service's pid)."""
    with open(log, errors="replace") as f:
        calls = parse_log(f.read())
    jail_pid1 = next((c.child for c in calls if c.child and _flag(c, "CLONE_NEWPID")), None)
    service = next((c.child for c in calls if c.pid == jail_pid1 and c.child
                    and _flag(c, "CLONE_NEWUSER")), None)
    active: set[int] = set()
    started = False
    out = []
    for call in calls:
        if call.pid == service and not started:
            started = call.name in ("execve", "execveat") and call.result == "0"
            if started:
                active.add(service)
            continue
        if call.pid in active:
            out.append(call)
            if call.child:
                active.add(call.child)
    # -qq leaves out strace's own "exited" lines: a process's exit_group says it
    exits: dict = {"service": service}
    for call in out:
        if call.name == "exit_group" and call.args and call.args[0].lstrip("-").isdigit():
            exits[call.pid] = int(call.args[0])
    return out, exits


def _flag(call: Call, flag: str) -> bool:
    return any(flag in arg for arg in call.args)


def _path(call: Call) -> str | None:
    index = PATH_CALLS.get(call.name)
    if index is None or index >= len(call.args):
        return None
    return unquote(call.args[index])


class Jail:
    """What the built jail holds (its manifest) and mounts (its launch.json)."""

    def __init__(self, root: str, profile: str, network: str | None = None):
        from jailkit.build.jaildir import JailDir
        from jailkit.build.manifest import read, read_json

        with JailDir(root) as jail:
            number = jail.current()
            if number is None:
                raise JailkitError(f"no jail is built in {root}: build it first")
            gen_fd = jail.open_generation(number)
            try:
                self.records = read(gen_fd, f"{root}/gen-{number}").records
                launch = read_json(gen_fd, "launch.json") or {}
            finally:
                os.close(gen_fd)
        self.rebuild = f"jailkit build {profile} --root {root}"  # for a fix line
        self.mounts = [w["path"] for w in launch.get("writable", [])]
        self.mounts += ["/dev"]  # every jail's, with its /dev/log
        self.devices = launch.get("devices", [])
        self.mounts += [b["path"] for b in launch.get("binds", [])]
        self.command = launch.get("command")
        self.capabilities = launch.get("capabilities", [])
        self.seccomp_allow = launch.get("seccomp_allow", [])
        self.bind_ports = launch.get("ports", {}).get("bind", [])
        self.network = network or launch.get("network", "none")
        self.users = set()
        passwd = self.records.get("/etc/passwd")
        if passwd is not None:
            with open(os.path.join(root, "current/root/etc/passwd"), errors="replace") as f:
                self.users = {line.split(":")[0] for line in f}

    def has(self, path: str) -> bool:
        from jailkit.build.plan import _lookup

        try:
            return _lookup(self.records, path) is not None
        except JailkitError:
            return False

    def mounted(self, path: str) -> bool:
        return any(path == m or path.startswith(m.rstrip("/") + "/") for m in self.mounts)


def _writable_fix(path: str) -> str:
    parent = os.path.dirname(path.rstrip("/")) or "/"
    return f"[writable.{quote(parent)}]"


def diagnose(calls: list[Call], exits: dict, output: str, jail: Jail, ran: float,
             status: int | None, timeout: float) -> list[Finding]:
    findings: dict[tuple, Finding] = {}
    # a service that listens has started: what it looked for before and went on without (a
    # time zone, a default openssl.cnf) was a probe, unless it looks for it again once serving
    listened = next((i for i, c in enumerate(calls) if c.name == "listen" and c.ok), len(calls))
    met_serving: set[tuple] = set()
    serving = False  # whether the call being judged came after the first listen()

    def add(kind, detail, fix):
        findings.setdefault((kind, fix), Finding(kind, detail, fix))
        if serving:
            met_serving.add((kind, fix))

    for index, call in enumerate(calls):
        serving = index > listened
        path = _path(call)
        # the service chose the name: quoted, it is one TOML string and one line, whatever it holds
        shown = quote(path) if path else ""
        if call.error == "ENOENT" and path and path.startswith("/"):
            if path.startswith("/dev/") and path[5:] in DEVICES and path[5:] not in jail.devices:
                add("missing-file", f"{call.name} {shown}: the jail has no {shown}",
                    f"devices = [{quote(path[5:])}]")
                continue
            if path.startswith(SKIPPED_TOPS) or path in NOT_NEEDED or jail.mounted(path):
                continue
            creating = call.name in CREATES or _flag(call, "O_CREAT")
            parent = os.path.dirname(path)
            if creating and not jail.has(parent):
                add("read-only", f"{call.name} {shown}: its directory {quote(parent)} is not in "
                    f"the jail (a directory the service only reads: [directories.{quote(parent)}])",
                    _writable_fix(path))
            elif not creating and os.path.lexists(path) and not jail.has(path):
                key = "libraries" if re.search(r"\.so(\.[0-9.]+)?$", path) else "files"
                base = base_for(path)
                fix = f'extends = ["{base}"]' if base else f"{key} = [{shown}]"
                add("missing-file", f"{call.name} {shown}: not in the jail (it is on the host)",
                    fix)
        elif call.error == "EROFS" and path:
            add("read-only", f"{call.name} {shown}: the jail's tree is read-only",
                _writable_fix(path) if call.name not in ("mkdir", "mkdirat")
                else f"[writable.{quote(os.path.dirname(path) or path)}]")
        elif call.error == "EPERM" and call.name in DENIED \
                and call.name not in jail.seccomp_allow:
            add("seccomp", f"{call.name}: refused by the jail's seccomp filter",
                f'[service] seccomp_allow = ["{call.name}"]')
        elif call.error == "EPERM" and call.name in CAPABILITY_CALLS:
            cap = CAPABILITY_CALLS[call.name]
            if cap not in jail.capabilities:
                add("capability", f"{call.name}({', '.join(call.args)[:60]}): refused without "
                    f"{cap}",
                    f'[service] capabilities = {_with(jail.capabilities, cap)}')
        elif call.name == "bind" and call.error in ("EADDRINUSE", "EACCES"):
            port = PORT_RE.search(", ".join(call.args))
            if port is None:
                continue
            number = int(port.group(1))
            if call.error == "EADDRINUSE" and jail.network == "host":
                add("port", f"bind to port {number}: already in use on the host",
                    "stop what listens there, or rebuild with another port: "
                    f"{jail.rebuild} --set port=N")
            elif call.error == "EADDRINUSE":
                add("port", f"bind to port {number}: already in use in the jail's own network, "
                    "by the service itself",
                    "give each of its listeners a port (or address) of its own, e.g. "
                    f"{jail.rebuild} --set port=N")
            elif jail.network != "host":
                # a network of its own lets the jail bind any port, and Landlock limits only
                # its connects there: the refusal is not the jail's
                continue
            elif number < 1024:
                # no capability helps: the host's network belongs to the host's user namespace
                add("port", f"bind to port {number}: below 1024, refused in the host's network",
                    f"rebuild with a port of 1024 or more ({jail.rebuild} --set port=N), or give "
                    'it a network of its own, where any port may be bound: [service] network = '
                    '"veth" (`jailkit run --publish` forwards a host port to it)')
            else:
                add("port", f"bind to port {number}: not in the ports the jail may bind",
                    f"[service.ports] bind = {_with(jail.bind_ports, number)}")
    serving = True  # what follows is judged from the whole run, never a probe
    opened_passwd = any(_path(c) in ("/etc/passwd", "/etc/group") for c in calls)
    for match in USER_ERRORS.finditer(output):
        name = match.group(1) or match.group(2)
        if opened_passwd and name not in jail.users:
            add("user", f"the service looked up the user or group {name!r}: not in the jail",
                _account_fix(name))
    service = exits.get("service")
    # the daemon's way: fork, the child makes a session of its own, the parent exits 0; under
    # the jail's pid 1 that parent's exit ends the jail
    children = {c.child for c in calls if c.pid == service and c.child}
    detached = any(c.name == "setsid" and c.pid in children for c in calls)
    if detached and status == 0 and exits.get(service) == 0 and ran < timeout:
        add("daemon", "the service forked into the background and its main process exited 0, "
                      "which ends the jail",
            "run it in the foreground (nginx: `daemon off;`, redis: `daemonize no`, or the "
            "service's -D/--foreground option in [service] command)")
    ordered = list(findings.values())
    if status not in (0, None):
        ordered.reverse()  # it failed: what it met last is the likeliest cause
    elif status is None and listened < len(calls):  # it was serving when doctor stopped it
        ordered = [f._replace(went_on=f.kind == "missing-file"
                              and (f.kind, f.fix) not in met_serving) for f in ordered]
    return ordered


def _with(items: list, item) -> str:
    import json

    return json.dumps([*items, item])


def _account_fix(name: str) -> str:
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(name)
        group = grp.getgrgid(entry.pw_gid).gr_name
        return (f'[users.{name}] uid = {entry.pw_uid}, gid = {entry.pw_gid}; '
                f'[groups.{group}] gid = {entry.pw_gid}')
    except KeyError:
        try:
            return f"[groups.{name}] gid = {grp.getgrnam(name).gr_gid}"
        except KeyError:
            return f"[users.{name}] uid = N, gid = N; [groups.{name}] gid = N"


def trace(profile: str, root: str, command: list[str], timeout: float, log_dir: str,
          network: str | None = None):
    """Run the jail's service (or `command`) under strace for at most `timeout` seconds, in
    `network` (None: the profile's): (strace log path, the service's output, seconds it ran,
    exit status or None if stopped)."""
    strace = shutil.which("strace")
    if strace is None:
        raise JailkitError("doctor needs strace on the host: apt-get install strace")
    log = os.path.join(log_dir, "trace.log")
    out_path = os.path.join(log_dir, "output")
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": package_parent}
    run = [sys.executable, "-m", "jailkit", "run", profile, "--root", root]
    if network:
        run += ["--net", network]
    if command:
        run += ["--", *command]
    started = time.monotonic()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([strace, "-f", "-qq", "--decode-pids=pidns", "-s", "256", "-o",
                                 log, "--", *run], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    status = None
    try:
        status = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:  # also when doctor itself is stopped (interruptible)
        if proc.poll() is None:
            _stop(proc, log)
    ran = time.monotonic() - started
    with open(out_path, errors="replace") as f:
        output = f.read()
    return log, output, ran, status


def _stop(proc: subprocess.Popen, log: str) -> None:
    """SIGTERM to the `jailkit run` strace started (the first pid of its log: our own
    grandchild), which stops the jail as the service's stop signal; then strace ends too."""
    try:
        with open(log) as f:
            launcher = int(f.readline().split()[0])
        os.kill(launcher, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        # not started yet: strace and the launcher are the process group doctor made
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        # strace and the launcher; the jail dies with its launcher (parent-death signal)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)


def doctor(profile: str, root: str, command: list[str], timeout: float,
           network: str | None = None) -> dict:
    from jailkit.cli.run import check

    # what `run` would refuse before starting, refused here with doctor's own fix lines
    check([profile, "--root", root, *(["--net", network] if network else [])], asking="doctor")
    jail = Jail(root, profile, network)
    own = jail.command
    if not command and isinstance(own, list) and own and all(isinstance(a, str) for a in own):
        # the service's own command, given as CMD: `run` then keeps its hint to run doctor
        # (for a service failing at once) out of the output doctor reads
        command = own
    with interruptible("doctor stopped the jail and strace"), \
            tempfile.TemporaryDirectory(prefix="jailkit-doctor-") as log_dir:
        log, output, ran, status = trace(profile, root, command, timeout, log_dir, network)
        calls, exits = service_calls(log)
    if exits.get("service") is None:
        # the service never started: jailkit refused to start the jail, and its line says why
        refusal = next((line for line in output.splitlines() if line.startswith("jailkit:")),
                       "the jail did not start under the tracer")
        raise JailkitError(refusal.removeprefix("jailkit: "))
    findings = diagnose(calls, exits, output, jail, ran, status, timeout)
    return {"root": root, "status": status, "seconds": round(ran, 1),
            "stopped": status is None, "output": output[-4000:],
            "findings": [f._asdict() for f in findings]}
