"""The profile file format: one TOML file parsed and checked key by key, before composition.

Every error names the file and the line that holds the key (or the key path) and what was expected.
"""

import glob
import os
import re
import tomllib

from jailkit.errors import JailkitError

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
NETWORKS = ("host", "none", "veth")
RLIMITS = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue",
    "nice", "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
SIGNALS = (
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGKILL", "SIGPWR",
)  # fmt: skip
# always fullmatch: `$` after match() also accepts a trailing newline ("ftpuser\n")
NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
SIZE_RE = re.compile(r"([0-9]+)([kmg]?)")
# a TCP port, or a range LOW-HIGH; each a number or one {{ variable }} (resolved after --set)
PORT_RE = re.compile(r"\s*(\d+|\{\{\s*\w+\s*\}\})\s*(?:-\s*(\d+|\{\{\s*\w+\s*\}\}))?\s*")
VARIABLE_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# built-in generators of files made once per jail (jailkit.build.generate), never a command
GENERATORS = ("tls-cert", "ssh-host-key-ed25519", "ssh-host-key-ecdsa", "ssh-host-key-rsa")


class ProfileError(JailkitError):
    """A profile that cannot be used as written."""


class _Source:
    """One profile file's text, to point errors at the line that holds a key."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, encoding="utf-8") as f:
                self.text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ProfileError(f"cannot read profile {path}: {e}") from None

    def fail(self, keypath: tuple, expected: str):
        # a key with a newline must not break the one-line error
        dotted = ".".join(str(k) if str(k).isprintable() else repr(k) for k in keypath)
        line = _line_of(self.text, keypath)
        where = f"{self.path}:{line}" if line else str(self.path)
        raise ProfileError(f"{where}: {dotted}: {expected}")


_KEY_TOKEN = re.compile(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)')
_HEADER = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.\s-])+?)\s*=")


def _split_key(text: str) -> list[str]:
    return [m.group(1) or m.group(2) or m.group(3) for m in _KEY_TOKEN.finditer(text)]


def _line_of(text: str, keypath: tuple) -> int | None:
    """Line of the key (or of its nearest enclosing key) in TOML text, best effort."""
    want = [str(k) for k in keypath if not isinstance(k, int)]
    best, best_len, table = None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            key = table
        else:
            assign = _ASSIGN.match(line)
            if not assign:
                continue
            key = table + _split_key(assign.group(1))
        common = 0
        while common < min(len(key), len(want)) and key[common] == want[common]:
            common += 1
        if common == len(key) and common > best_len:
            best, best_len = number, common
    return best


def _mode(src, keypath, value) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        value = int(value, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        src.fail(keypath, f"expected an octal mode such as \"0755\", got {value!r}")
    return value


def _typed(src, keypath, value, kind):
    names = {str: "a string", bool: "true or false", int: "an integer", list: "a list",
             dict: "a table"}
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        src.fail(keypath, f"expected {names[kind]}, got {type(value).__name__} {value!r}")
    return value


def _strings(src, keypath, value) -> tuple[str, ...]:
    _typed(src, keypath, value, list)
    for i, item in enumerate(value):
        _typed(src, (*keypath, i), item, str)
    return tuple(value)


def is_glob(pattern: str) -> bool:
    """Whether a profile path is a pattern: glob's own test (*, ? or [), used everywhere."""
    return glob.has_magic(pattern)


def _abs_path(src, keypath, value, allow_glob=False) -> str:
    _typed(src, keypath, value, str)
    if not value.startswith("/") or ".." in value.split("/") or "\0" in value:
        src.fail(keypath, f"expected an absolute path without '..', got {value!r}")
    if not allow_glob and is_glob(value):
        src.fail(keypath, f"expected a path without glob characters, got {value!r}")
    return "/" + "/".join(p for p in value.split("/") if p not in ("", "."))


def _name(src, keypath, value) -> str:
    _typed(src, keypath, value, str)
    if not NAME_RE.fullmatch(value):
        src.fail(keypath, "expected a user/group name (lower case, digits, '_', '-'), "
                          f"got {value!r}")
    return value


def _id(src, keypath, value) -> int:
    _typed(src, keypath, value, int)
    if not 0 <= value < 65536:
        src.fail(keypath, f"expected an id from 0 to 65535, got {value}")
    return value


def _int_range(src, keypath, value, low, high) -> int:
    _typed(src, keypath, value, int)
    if not low <= value <= high:
        src.fail(keypath, f"expected an integer from {low} to {high}, got {value}")
    return value


def _size(src, keypath, value) -> int:
    """Bytes from an integer or "64m"-style string."""
    if isinstance(value, str) and SIZE_RE.fullmatch(value.lower()):
        number, unit = SIZE_RE.fullmatch(value.lower()).groups()
        return int(number) << {"": 0, "k": 10, "m": 20, "g": 30}[unit]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    src.fail(keypath, f"expected a size such as 65536 or \"64m\", got {value!r}")


def _one_of(src, keypath, value, choices) -> str:
    _typed(src, keypath, value, str)
    if value not in choices:
        src.fail(keypath, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _table(src, keypath, value, fields: dict) -> dict:
    """Check a table's keys against `fields` (key -> checker(keypath, value)); returns values."""
    _typed(src, keypath, value, dict)
    out = {}
    for key, item in value.items():
        if key not in fields:
            src.fail((*keypath, key), f"unknown key; expected one of: {', '.join(fields)}")
        out[key] = fields[key]((*keypath, key), item)
    return out


def read_file(path: str) -> dict:
    """Parse and structurally validate one profile file; returns a dict of checked, typed values."""
    src = _Source(path)
    try:
        raw = tomllib.loads(src.text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: invalid TOML: {e}") from None

    def strings(k, v):
        return _strings(src, k, v)

    def abs_paths(k, v, glob=False):
        return tuple(_abs_path(src, (*k, i), p, glob) for i, p in enumerate(strings(k, v)))

    def string(k, v):
        return _typed(src, k, v, str)

    def flag(k, v):
        return _typed(src, k, v, bool)

    def mode(k, v):
        return _mode(src, k, v)

    def name(k, v):
        return _name(src, k, v)

    def user_name(k, v):
        return v if VARIABLE_RE.fullmatch(v) else name(k, v)

    def user(k, v):
        return _table(src, k, v, {
            "uid": lambda k, v: _id(src, k, v), "gid": lambda k, v: _id(src, k, v),
            "home": lambda k, v: _abs_path(src, k, v), "shell": lambda k, v: _abs_path(src, k, v),
            "gecos": string, "password": string,
        })

    def group(k, v):
        return _table(src, k, v, {
            "gid": lambda k, v: _id(src, k, v),
            "members": lambda k, v: tuple(name((*k, i), m) for i, m in enumerate(strings(k, v))),
        })

    def directory(k, v):
        return _table(src, k, v, {"owner": name, "group": name, "mode": mode})

    def writable(k, v):
        return _table(src, k, v, {
            "owner": name, "group": name, "mode": mode,
            "kind": lambda k, v: _one_of(src, k, v, ("tmpfs", "state")),
            "size": lambda k, v: _size(src, k, v) and str(v).lower(),
        })

    def template(k, v):
        return _table(src, k, v, {"source": string, "text": string, "mode": mode,
                                  "owner": name, "group": name})

    def generated(k, v):
        return _table(src, k, v, {"kind": lambda k, v: _one_of(src, k, v, GENERATORS),
                                  "subject": string, "mode": mode, "owner": name, "group": name})

    def keyed(check_key, check_value):
        def run(k, v):
            _typed(src, k, v, dict)
            return {check_key((*k, key), key): check_value((*k, key), item)
                    for key, item in v.items()}
        return run

    def variable(k, v):
        if not isinstance(v, str | int | float | bool):
            src.fail(k, f"expected a string, number or boolean, got {type(v).__name__}")
        return v

    def rlimit(k, v):
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return (v, v)
        if (isinstance(v, list) and len(v) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
                and v[0] <= v[1]):
            return tuple(v)
        src.fail(k, f"expected a limit N or [soft, hard] with soft <= hard, got {v!r}")

    def limits(k, v):
        fields = dict.fromkeys(RLIMITS, rlimit)
        fields["memory_max"] = lambda k, v: _size(src, k, v)
        fields["pids_max"] = lambda k, v: _int_range(src, k, v, 1, 1 << 22)
        fields["memory_high"] = lambda k, v: _size(src, k, v)
        fields["swap_max"] = lambda k, v: 0 if v == 0 else _size(src, k, v)
        fields["cpu_weight"] = fields["io_weight"] = lambda k, v: _int_range(src, k, v, 1, 10000)
        fields["cpu_quota"] = cpu_quota
        return _table(src, k, v, fields)

    def cpu_quota(k, v):  # percent of one CPU: 50, "50%", "200%" (two CPUs)
        text = v.strip().removesuffix("%") if isinstance(v, str) else None
        if text and text.isdigit() and int(text) >= 1:
            return int(text)
        return _int_range(src, k, v, 1, 100000) if not isinstance(v, str) else src.fail(
            k, f"expected a percentage of one CPU such as \"50%\" (200% is two CPUs), got {v!r}")

    def caps(k, v):
        out = []
        for i, cap in enumerate(strings(k, v)):
            bare = cap.removeprefix("CAP_")
            if bare not in CAPABILITIES:
                src.fail((*k, i), "expected a capability name such as CAP_NET_BIND_SERVICE, "
                                  f"got {cap!r}")
            out.append("CAP_" + bare)
        return tuple(out)

    def env(k, v):
        _typed(src, k, v, dict)
        return {key: string((*k, key), item) for key, item in v.items()}

    def port(k, v):
        if isinstance(v, str) and PORT_RE.fullmatch(v):
            return v
        if isinstance(v, str):
            src.fail(k, f"expected a port, a range such as '30000-30099' or '{{{{ port }}}}', "
                        f"got {v!r}")
        return _int_range(src, k, v, 1, 65535)

    def ports(k, v):
        return tuple(port((*k, i), item) for i, item in enumerate(_typed(src, k, v, list)))

    def service(k, v):
        return _table(src, k, v, {
            "command": lambda k, v: strings(k, v) or src.fail(k, "expected a non-empty list"),
            "workdir": lambda k, v: _abs_path(src, k, v),
            "env": env, "user": name, "group": name,
            "groups": lambda k, v: tuple(name((*k, i), g) for i, g in enumerate(strings(k, v))),
            "hostname": string,
            "stop_signal": lambda k, v: _one_of(src, k, v, SIGNALS),
            "capabilities": caps,
            "dangerous_capabilities": caps,
            "network": lambda k, v: _one_of(src, k, v, NETWORKS),
            "ports": lambda k, v: _table(src, k, v, {"bind": ports, "connect": ports}),
            "require_landlock": flag,
            "mount_proc": flag, "mount_sys": flag,
            "seccomp_allow": strings,
            "uid_count": lambda k, v: _int_range(src, k, v, 1, 65536),
            "limits": limits,
            "ready": lambda k, v: _table(src, k, v, {
                "tcp": port, "timeout": lambda k, v: _int_range(src, k, v, 1, 600)}),
        })

    def devices(k, v):
        return tuple(_one_of(src, (*k, i), d, DEVICES) for i, d in enumerate(strings(k, v)))

    top = _table(src, (), raw, {
        "description": string,
        "extends": strings,
        "binaries": abs_paths,
        "libraries": lambda k, v: tuple(
            p if "/" not in p else _abs_path(src, (*k, i), p, True)
            for i, p in enumerate(strings(k, v))),
        "files": lambda k, v: abs_paths(k, v, True),
        "exclude": strings,
        "keep_setuid": abs_paths,
        "keep_file_caps": abs_paths,
        "devices": devices,
        "variables": keyed(lambda k, key: key, variable),
        "multiline_variables": strings,
        "users": keyed(user_name, user),
        "groups": keyed(name, group),
        "directories": keyed(lambda k, p: _abs_path(src, k, p), directory),
        "writable": keyed(lambda k, p: _abs_path(src, k, p), writable),
        "templates": keyed(lambda k, p: _abs_path(src, k, p), template),
        "generated": keyed(lambda k, p: _abs_path(src, k, p), generated),
        "service": service,
    })
    for dest, tpl in top.get("templates", {}).items():
        if ("source" in tpl) == ("text" in tpl):
            src.fail(("templates", dest), "expected exactly one of `source` or `text`")
        if "source" in tpl:
            # read beneath this file's directory only (jailkit.profile.templates opens it so):
            # a shared profile must not copy /etc/shadow into the tree
            source = tpl["source"]
            parts = [p for p in source.split("/") if p not in ("", ".")]
            if source.startswith("/") or ".." in parts or not parts or "\0" in source:
                src.fail(("templates", dest, "source"), "expected a path relative to the "
                         f"profile's directory, without '..', got {source!r}")
            tpl["source"], tpl["base"] = "/".join(parts), os.path.dirname(path)
            if not os.path.isfile(os.path.join(tpl["base"], tpl["source"])):
                src.fail(("templates", dest, "source"),
                         f"template file {os.path.join(tpl['base'], tpl['source'])} not found")
    for dest, entry in top.get("generated", {}).items():
        if "kind" not in entry:
            src.fail(("generated", dest), f"missing `kind` (one of {', '.join(GENERATORS)})")
    for uname, entry in top.get("users", {}).items():
        for key in ("uid", "gid"):
            if key not in entry:
                src.fail(("users", uname), f"missing `{key}`")
    for gname, entry in top.get("groups", {}).items():
        if "gid" not in entry:
            src.fail(("groups", gname), "missing `gid`")
    return top
