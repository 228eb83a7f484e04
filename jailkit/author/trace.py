"""Run a service under Debian's `strace -f`, and read back what it touched from the log.

The log is strace's own text format (`-f -yy`: every descriptor printed with the path or socket it
refers to, so relative and *at() paths resolve without guessing). Only the calls that say what a
service needs from its file system, its accounts and its network are traced (TRACED_CALLS).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from jailkit.errors import JailkitError

TRACED_CALLS = ",".join([
    "%file",  # open*, stat*, access, exec*, chdir, mkdir, unlink, rename, chown, readlink, ...
    "getcwd",  # a service that asks where it runs uses that directory (http.server serves it)
    "clone", "clone3", "fork", "vfork",  # who inherits whose ids
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid",
    "fchown", "fchmod", "bind", "connect", "prlimit64", "setrlimit",
])
# The environment the service gets, here as in the jail: what it reads depends on it (a LANG
# makes glibc open locale files), so tracing it with the caller's environment would record
# files the jail never needs and miss what it does.
SERVICE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
STOP_GRACE = 5.0  # seconds the service gets to exit after SIGTERM, before SIGKILL
PR_SET_CHILD_SUBREAPER = 36

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^([a-z_0-9]+)\(")
# `= RESULT<what -yy decorates it with> /* PID in strace's PID NS */ ERRNO (text)`: the comment
# (--decode-pids=pidns, doctor) gives a process made in the jail's pid namespace its host pid
_RESULT = re.compile(r"^\s*=\s*(-?\d+|\?|0x[0-9a-f]+)(?:<(.*)>)?"
                     r"(?: /\* (\d+) in strace's PID NS \*/)?(?:\s+([A-Z][A-Z0-9_]+)\b.*)?$")
CREATING_CALLS = ("clone", "clone3", "fork", "vfork")
_BIND_RESULT = re.compile(r"^\d+ +bind\(.*\) += (0|-1 E[A-Z]+)\b", re.MULTILINE)
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_SUN_PATH = re.compile(r"sun_path=(@?)(\".*\")")
_LIMIT = re.compile(r"rlim_cur=([^,]+), rlim_max=([^}]+)\}")
_OCTAL = re.compile(r"\\([0-7]{1,3})")

WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
STAT_CALLS = {"stat", "lstat", "newfstatat", "fstatat64", "statx", "access", "faccessat",
              "faccessat2", "readlink", "readlinkat", "statfs", "getxattr", "lgetxattr"}
OPEN_CALLS = {"open": 0, "openat": 1, "openat2": 1, "creat": 0}  # name -> index of the path
ID_CALLS = {"setuid": "uid", "setreuid": "uid", "setresuid": "uid", "setfsuid": "uid",
            "setgid": "gid", "setregid": "gid", "setresgid": "gid", "setfsgid": "gid"}


@dataclass
class Call:
    """One finished system call from the log."""

    pid: int
    name: str
    args: list[str]
    result: str
    returned: str | None  # what the returned descriptor refers to (-yy)
    error: str | None  # errno name when it failed
    child: int | None = None  # the process a clone or fork made, by its pid in strace's namespace

    @property
    def ok(self) -> bool:
        return self.error is None and self.result not in ("-1", "?")


@dataclass
class Trace:
    """What a service did, by path, id and port, each with the first call that showed it."""

    command: list[str] = field(default_factory=list)  # argv of the first program run
    program: str | None = None  # its absolute path, as executed
    cwd: str | None = None
    used_start_dir: bool = False  # relative paths, getcwd, or files read below it
    paths: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> {how: seen as}
    executed: dict[str, str] = field(default_factory=dict)
    writer_uid: dict[str, int] = field(default_factory=dict)  # written path -> euid writing it
    uids: dict[int, str] = field(default_factory=dict)
    gids: dict[int, str] = field(default_factory=dict)
    capabilities: dict[str, str] = field(default_factory=dict)
    tcp_binds: dict[int, str] = field(default_factory=dict)
    udp_binds: dict[int, str] = field(default_factory=dict)
    tcp_connects: dict[int, str] = field(default_factory=dict)
    unix_binds: dict[str, str] = field(default_factory=dict)
    unix_connects: dict[str, str] = field(default_factory=dict)
    nofile: tuple[int, int] | None = None  # a limit the service raised itself
    daemonized: bool = False

    def saw(self, path: str, how: str, seen: str) -> None:
        self.paths.setdefault(path, {}).setdefault(how, seen)

    def how(self, path: str) -> dict[str, str]:
        return self.paths.get(path, {})


# -- reading the log -------------------------------------------------------------------------

def split_args(text: str) -> tuple[list[str], str]:
    """The top-level arguments of `text` (what follows `name(`), and what follows the `)`."""
    args, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "<" and i and (text[i - 1].isdigit() or text[i - 1] == "D"):
            # a descriptor's decoration, `3</path>` or `AT_FDCWD</cwd>`: a path, not syntax
            end = text.find(">", i)
            i = end if end >= 0 else len(text)
        elif c in "{[(":
            depth += 1
        elif c in "}]" or (c == ")" and depth):
            depth -= 1
        elif c == ")" and not depth:
            if text[start:i].strip():
                args.append(text[start:i].strip())
            return args, text[i + 1:]
        elif c == "," and not depth:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    return args, ""


def unquote(arg: str) -> str | None:
    """The C string strace printed, or None when the argument is not one."""
    if not arg.startswith('"'):
        return None
    out, i = bytearray(), 1
    escapes = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "\\": 92, '"': 34, "a": 7, "b": 8}
    while i < len(arg) and arg[i] != '"':
        if arg[i] == "\\" and i + 1 < len(arg):
            nxt = arg[i + 1]
            if nxt == "x":
                out.append(int(arg[i + 2:i + 4], 16))
                i += 4
                continue
            octal = _OCTAL.match(arg, i)
            if octal:
                out.append(int(octal.group(1), 8) & 0xFF)
                i = octal.end()
                continue
            out.append(escapes.get(nxt, ord(nxt)))
            i += 2
            continue
        out.extend(arg[i].encode())
        i += 1
    return out.decode("utf-8", "surrogateescape")


def decoration(arg: str) -> str | None:
    """`3</etc/x>` -> `/etc/x`; `AT_FDCWD</srv>` -> `/srv`."""
    at = arg.find("<")
    if at <= 0 or not arg.endswith(">"):
        return None
    return arg[at + 1:-1]


def parse_log(text: str) -> list[Call]:
    """Every finished call in a `strace -f -yy -o` log, with interrupted calls put back together."""
    calls, pending = [], {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        pid, body = int(match.group(1)), match.group(2)
        if body.startswith(("+++", "---")):
            continue
        if body.endswith("<unfinished ...>"):
            pending[pid] = body[: -len("<unfinished ...>")]
            continue
        if body.startswith("<... "):
            head = pending.pop(pid, None)
            if head is None:
                continue
            body = head + body.split("resumed>", 1)[1].lstrip()
        call = _CALL.match(body)
        if not call:
            continue
        args, rest = split_args(body[call.end():])
        result = _RESULT.match(rest)
        if not result:
            continue
        name, returned = call.group(1), result.group(1)
        child = None
        if name in CREATING_CALLS and returned.isdigit():
            child = int(result.group(3) or returned)
        calls.append(Call(pid, name, args, returned, result.group(2), result.group(4), child))
    return calls


def _join(base: str | None, path: str) -> str:
    if not path.startswith("/"):
        path = os.path.join(base or "/", path)
    return os.path.normpath(path).replace("//", "/")


def _path_at(call: Call, dirfd_index: int | None, path_index: int,
             cwd: str | None = None) -> tuple[str, bool] | None:
    """The absolute path a call named, and whether it was given relative to the working
    directory (`cwd` for calls without a directory descriptor); None for an empty or missing
    path (a call on a descriptor)."""
    if path_index >= len(call.args):
        return None
    name = unquote(call.args[path_index])
    if not name:
        return None
    base = decoration(call.args[dirfd_index]) if dirfd_index is not None else cwd
    relative = not name.startswith("/") and (
        dirfd_index is None or call.args[dirfd_index].startswith("AT_FDCWD"))
    return _join(base, name), relative


def _ids(args: list[str]) -> list[int]:
    return [int(a) for a in args if a.isdigit()]


def read_trace(text: str) -> Trace:
    """What the log shows the service did."""
    trace = Trace()
    euid: dict[int, int] = {}
    program: dict[int, str] = {}
    cwd: dict[int, str | None] = {}
    moved: set[int] = set()  # processes that changed directory: their relative paths are theirs
    first_pid = None
    for call in parse_log(text):
        pid = call.pid
        if first_pid is None:
            first_pid = pid
        me = program.get(pid, "the service")
        uid = euid.setdefault(pid, euid.get(first_pid, 0))
        name = call.name
        seen = f"{name} by {os.path.basename(me)}"

        if call.child:
            child = call.child
            euid[child], program[child] = uid, me
            if pid in moved:
                moved.add(child)
            continue
        if name in ("execve", "execveat"):
            at = _path_at(call, 0 if name == "execveat" else None, 1 if name == "execveat" else 0)
            if at and call.ok:
                path = at[0]
                program[pid] = path
                trace.executed.setdefault(path, seen)
                trace.saw(path, "exec", f"executed by {os.path.basename(me)}"
                          if me != "the service" else "executed")
                if trace.program is None:
                    trace.program = path
                    argv = call.args[1].strip() if len(call.args) > 1 else "[]"
                    trace.command = [unquote(a) or "" for a in split_args(argv[1:-1] + ")")[0]]
            elif at:
                trace.saw(at[0], "missing", seen)
            continue
        for arg in call.args:
            if arg.startswith("AT_FDCWD<"):
                cwd[pid] = decoration(arg)
                if trace.cwd is None:
                    trace.cwd = cwd[pid]
        here = cwd.get(pid, trace.cwd)

        if name in OPEN_CALLS:
            index = OPEN_CALLS[name]
            at = _path_at(call, 0 if index else None, index, here)
            if not at:
                continue
            path, relative = at
            trace.used_start_dir |= relative and pid not in moved
            flags = call.args[index + 1] if len(call.args) > index + 1 else ""
            writes = name == "creat" or any(f in flags for f in WRITE_FLAGS)
            if call.ok:
                how = "write" if writes else "list" if "O_DIRECTORY" in flags else "read"
                trace.saw(path, how, f"{'opened for writing' if writes else 'read'} by "
                                     f"{os.path.basename(me)}")
                if writes:
                    trace.writer_uid.setdefault(path, uid)
            elif call.error == "ENOENT":
                trace.saw(path, "missing", seen)
        elif name in STAT_CALLS:
            dirfd = 0 if name.endswith("at") or name in ("newfstatat", "statx", "faccessat2",
                                                         "fstatat64") else None
            at = _path_at(call, dirfd, 1 if dirfd is not None else 0, here)
            if at:
                trace.used_start_dir |= at[1] and pid not in moved
                trace.saw(at[0], "stat" if call.ok else "missing" if call.error == "ENOENT"
                          else "denied", seen)
        elif name == "getcwd":
            trace.used_start_dir |= call.ok and pid not in moved
        elif name in ("chdir", "chroot"):
            at = _path_at(call, None, 0, here)
            if at and call.ok:
                trace.saw(at[0], name, seen)
                if name == "chdir":
                    cwd[pid] = at[0]
                    moved.add(pid)
                if name == "chroot":
                    trace.capabilities.setdefault("CAP_SYS_CHROOT", seen)
        elif name in ("mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "rename", "renameat",
                      "renameat2", "link", "linkat", "symlink", "symlinkat", "truncate",
                      "chmod", "fchmodat", "mknod", "mknodat"):
            _wrote(trace, call, uid, seen, here, pid not in moved)
        elif name in ("chown", "lchown", "fchownat", "fchown"):
            owner_at = 2 if name == "fchownat" else 1
            owner, group = (call.args[owner_at:owner_at + 2] + ["-1", "-1"])[:2]
            if call.ok and owner.isdigit():
                trace.uids.setdefault(int(owner), f"files chowned to it ({seen})")
            if call.ok and group.isdigit():
                trace.gids.setdefault(int(group), f"files chowned to it ({seen})")
            if call.ok and uid == 0 and (owner not in ("-1", "0") or group not in ("-1", "0")):
                trace.capabilities.setdefault("CAP_CHOWN", seen)
            path = decoration(call.args[0]) if name == "fchown" and call.args else None
            if path and path.startswith("/") and call.ok:
                trace.saw(path, "write", seen)
            elif name != "fchown":
                _wrote(trace, call, uid, seen, here, pid not in moved)
        elif name == "fchmod":
            path = decoration(call.args[0]) if call.args else None
            if path and path.startswith("/") and call.ok:
                trace.saw(path, "write", seen)
        elif name in ID_CALLS and call.ok:
            kind = ID_CALLS[name]
            ids = _ids(call.args)
            table = trace.uids if kind == "uid" else trace.gids
            for i in ids:
                table.setdefault(i, f"{name}({', '.join(call.args)}) by {os.path.basename(me)}")
            if any(i != 0 for i in ids) or not ids:
                cap = "CAP_SETUID" if kind == "uid" else "CAP_SETGID"
                trace.capabilities.setdefault(cap, seen)
            if kind == "uid" and ids:
                # the effective uid: the second of setreuid/setresuid, the only one otherwise
                effective = call.args[1] if name in ("setreuid", "setresuid") else call.args[0]
                if effective.isdigit() and name != "setfsuid":
                    euid[pid] = int(effective)
        elif name == "setgroups" and call.ok:
            listed = call.args[1].strip("[]") if len(call.args) > 1 else ""
            for gid in _ids([g.strip() for g in listed.split(",")]):
                trace.gids.setdefault(gid, f"setgroups by {os.path.basename(me)}")
            trace.capabilities.setdefault("CAP_SETGID", seen)
        elif name in ("bind", "connect") and len(call.args) > 1:
            _socket(trace, call, seen, here)
        elif name in ("prlimit64", "setrlimit") and call.ok:
            args = call.args if name == "setrlimit" else call.args[1:]
            limit = _LIMIT.search(args[1]) if len(args) > 1 else None
            if args and args[0] == "RLIMIT_NOFILE" and limit:
                soft, hard = (_limit_value(v) for v in limit.groups())
                if hard > 4096:  # above the jail's default hard limit: the profile must say so
                    trace.nofile = (soft, hard)
    if trace.cwd and trace.cwd != "/":
        # files read or listed below the start directory by absolute path are using it too
        below = trace.cwd.rstrip("/") + "/"
        trace.used_start_dir |= any(
            path.startswith(below) and ("read" in how or "list" in how)
            for path, how in trace.paths.items())
    if first_pid is not None and trace.program:
        trace.daemonized = _first_exited_early(text, first_pid)
    return trace


def _limit_value(text: str) -> int:
    if "INFINITY" in text:
        return 1 << 20
    value = 1
    for factor in text.split("*"):
        value *= int(factor)
    return value


def _first_exited_early(text: str, first_pid: int) -> bool:
    """Whether the first process exited by itself while others it started went on: a daemon
    that forked into the background (a jail's service must stay in the foreground)."""
    exited = f"{first_pid} +++ exited with "
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(exited):
            return any(not other.startswith(f"{first_pid} ") and _LINE.match(other)
                       for other in lines[index + 1:])
    return False


def _wrote(trace: Trace, call: Call, uid: int, seen: str, cwd: str | None,
           in_start_dir: bool) -> None:
    """Record every path a modifying call named (both of a rename, the new one of a link)."""
    name = call.name
    if not call.ok:
        return
    at_calls = {"mkdirat": [(0, 1)], "unlinkat": [(0, 1)], "renameat": [(0, 1), (2, 3)],
                "renameat2": [(0, 1), (2, 3)], "linkat": [(2, 3)], "symlinkat": [(1, 2)],
                "fchmodat": [(0, 1)], "mknodat": [(0, 1)], "fchownat": [(0, 1)],
                "rename": [(None, 0), (None, 1)], "link": [(None, 1)], "symlink": [(None, 1)]}
    for dirfd, index in at_calls.get(name, [(None, 0)]):
        at = _path_at(call, dirfd, index, cwd)
        if at:
            trace.used_start_dir |= at[1] and in_start_dir
            trace.saw(at[0], "create" if name.startswith(("mkdir", "mknod")) else "write", seen)
            trace.writer_uid.setdefault(at[0], uid)


def _socket(trace: Trace, call: Call, seen: str, cwd: str | None) -> None:
    kind = decoration(call.args[0]) or ""
    address = call.args[1]
    succeeded = call.ok or call.error == "EINPROGRESS"
    port = _PORT.search(address)
    if port and succeeded:
        number = int(port.group(1))
        if call.name == "bind" and number:
            table = trace.udp_binds if kind.startswith("UDP") else trace.tcp_binds
            table.setdefault(number, seen)
            if number < 1024:
                trace.capabilities.setdefault("CAP_NET_BIND_SERVICE", seen)
        elif call.name == "connect" and kind.startswith("TCP"):
            trace.tcp_connects.setdefault(number, seen)
        return
    unix = _SUN_PATH.search(address)
    if unix and not unix.group(1):  # abstract sockets (@...) have no path in the file system
        path = _join(cwd, unquote(unix.group(2)) or "")
        if call.name == "bind" and succeeded:
            trace.unix_binds.setdefault(path, seen)
            trace.saw(path, "write", seen)
        elif call.name == "connect":
            trace.unix_connects.setdefault(path, seen if succeeded else f"{seen}: {call.error}")


# -- running the service ---------------------------------------------------------------------

@dataclass
class RunResult:
    log: str
    probe_ok: bool | None  # None: no probe given
    probe_output: str = ""
    exited_early: int | None = None  # the service's exit status if it ended before being stopped


def trace_service(command: list[str], probe: str | None, duration: float) -> RunResult:
    """Run `command` under `strace -f`, run `probe` against it until it succeeds (for at most
    `duration` seconds; without a probe, let it run that long), stop every process it started,
    and return the log. Nothing but the service itself runs on the host, with its own
    arguments; the log lives in a private temporary directory removed at the end."""
    strace = shutil.which("strace")
    if strace is None:
        raise JailkitError("strace is not installed: apt-get install strace")
    if not command:
        raise JailkitError("no command to trace: jailkit trace [OPTIONS] -- CMD ARGS...")
    program = command[0] if "/" in command[0] else shutil.which(command[0], path=SERVICE_PATH)
    if not program or not os.access(program, os.X_OK):
        raise JailkitError(f"{command[0]}: no such program (give its path, or one in "
                           f"{SERVICE_PATH})")
    probe_argv = shlex.split(probe) if probe else None
    # the one run that is not jailed: say so before the service starts
    print(f"jailkit: note: {program} runs on the host, unconfined, as {_user_name()}, "
          "while it is traced", file=sys.stderr, flush=True)
    from jailkit.launch import syscalls
    # Orphans (a service's forked children whose parent exited) come back to us rather than
    # to the host's init, so that every process the service started is found and stopped.
    syscalls.prctl(PR_SET_CHILD_SUBREAPER, 1)
    workdir = tempfile.mkdtemp(prefix="jailkit-trace-")
    log_path = os.path.join(workdir, "strace.log")
    result = RunResult(log="", probe_ok=None)
    with interruptible("the service and what it started were stopped"):
        tracer = None
        try:
            tracer = subprocess.Popen(
                [strace, "-f", "-qq", "-yy", "-s", "512", "-e", "signal=none", "-e",
                 f"trace={TRACED_CALLS}", "-o", log_path, "--", program, *command[1:]],
                stdin=subprocess.DEVNULL, env={"PATH": SERVICE_PATH}, start_new_session=True)
            deadline = time.monotonic() + duration
            _watch(tracer, probe_argv, deadline, result)
            if result.probe_ok:
                _settle(tracer, log_path, deadline)
            # none of its processes left: it ended by itself (a probe may have been answered
            # by another server on its port), and strace exits with its status
            ended = not [p for p in _descendants(os.getpid()) if p != tracer.pid and _alive(p)]
            _stop_tree(tracer)
            if ended:
                result.exited_early = tracer.returncode
            with open(log_path, encoding="utf-8", errors="surrogateescape") as f:
                result.log = f.read()
        finally:
            if tracer is not None and tracer.poll() is None:
                _stop_tree(tracer)
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _watch(tracer: subprocess.Popen, probe_argv: list[str] | None, deadline: float,
           result: RunResult) -> None:
    """Probe the service until it answers (or let it run) until `deadline`."""
    if probe_argv:
        result.probe_ok = False
        while time.monotonic() < deadline and tracer.poll() is None:
            ok, output = _probe(probe_argv, deadline)
            result.probe_output = output
            if ok:
                result.probe_ok = True
                break
            time.sleep(0.2)
    else:
        while time.monotonic() < deadline and tracer.poll() is None:
            time.sleep(0.1)


def _settle(tracer: subprocess.Popen, log_path: str, deadline: float) -> None:
    """A probe may be answered by another server on the service's port, even before the
    service tried to bind it: wait until the service has bound a socket, or was refused one
    (then until it ends, as a server usually does), so that a dying service is not taken for a
    serving one. A service that binds nothing is given until the deadline."""
    while tracer.poll() is None and time.monotonic() < deadline:
        with open(log_path, encoding="utf-8", errors="surrogateescape") as f:
            results = {match.group(1) for match in _BIND_RESULT.finditer(f.read())}
        if "-1 EADDRINUSE" in results or "-1 EACCES" in results:
            while tracer.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        elif "0" in results:
            return
        time.sleep(0.05)


@contextlib.contextmanager
def interruptible(stopped: str):
    """SIGTERM and SIGINT to this process (a service manager's stop, ^C) end the block by an
    exception, so that its `finally` stops what it started (a tracer runs in a session of its
    own: nothing else would) and removes its files; the command then ends with one line."""
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except KeyboardInterrupt:
        raise JailkitError(f"interrupted: {stopped}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _probe(argv: list[str], deadline: float) -> tuple[bool, str]:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=max(0.5, deadline - time.monotonic()))
    except FileNotFoundError:
        raise JailkitError(f"probe: {argv[0]}: no such program") from None
    except subprocess.TimeoutExpired:
        return False, "the probe timed out"
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, found in /proc (the tracer and what it runs are ours)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_tree(tracer: subprocess.Popen) -> None:
    """SIGTERM to the service (the tracer's child) and everything below it, SIGKILL to what is
    left after the grace period, then the tracer, which ends once its tracees are gone. Only
    processes this trace started are signalled (our own descendants: we are their subreaper)."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 2.0)):
        targets = [p for p in _descendants(os.getpid()) if p != tracer.pid]
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and [p for p in _descendants(os.getpid())
                                               if p != tracer.pid and _alive(p)]:
            _reap_orphans(tracer.pid)
            time.sleep(0.05)
    try:
        tracer.wait(timeout=5)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait()
    _reap_orphans(tracer.pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap_orphans(tracer_pid: int) -> None:
    """Collect orphans that died after being handed to us (never the tracer: Popen waits)."""
    for pid in _descendants(os.getpid()):
        if pid != tracer_pid and not _alive(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"
