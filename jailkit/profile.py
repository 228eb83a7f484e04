"""Profiles: TOML files describing one service's jail, composed with `extends`, strictly validated.

Loading is pure: it reads the profile files (and nothing else) and returns a frozen `Profile`.
Every structural error names the file and line (or the key path) and what was expected.
"""

import json
import os
import re
import tomllib
from typing import NamedTuple

from jailkit.errors import JailkitError

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
                           "profiles")

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
NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SIZE_RE = re.compile(r"^([0-9]+)([kmg]?)$")
VARIABLE_RE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")
# built-in generators of files made once per jail (jailkit.generate); never a profile's command
GENERATORS = ("tls-cert", "ssh-host-key-ed25519", "ssh-host-key-ecdsa", "ssh-host-key-rsa")


class ProfileError(JailkitError):
    """A profile that cannot be used as written."""


class User(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str = "/nonexistent"
    shell: str = "/usr/sbin/nologin"
    gecos: str = ""
    password: str | None = None  # a crypt(3) hash or "!"/"*"; only then an /etc/shadow line


class Group(NamedTuple):
    name: str
    gid: int
    members: tuple[str, ...] = ()


class Directory(NamedTuple):
    """An empty directory created in the (read-only) tree, with its owner and mode."""

    path: str
    owner: str = "root"
    group: str = "root"
    mode: int = 0o755


class Writable(NamedTuple):
    """A directory mounted writable at run time: `tmpfs` (empty each start) or `state` (kept)."""

    path: str
    owner: str = "root"
    group: str = "root"
    mode: int = 0o755
    kind: str = "tmpfs"
    size: str | None = None


class Template(NamedTuple):
    """A jinja2 template (`source`, relative to the profile that names it, or inline `text`)."""

    dest: str
    source: str | None = None
    text: str | None = None
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


class Generated(NamedTuple):
    """A file made once per jail at build time by a built-in generator (a private key and its
    certificate, an ssh host key), kept in DIR/generated and reused by every later build."""

    dest: str
    kind: str  # one of GENERATORS
    subject: str = "localhost"  # tls-cert: the certificate's name (may use {{ variables }})
    mode: int = 0o600
    owner: str = "root"
    group: str = "root"


class Service(NamedTuple):
    command: tuple[str, ...] = ("/bin/sh",)
    workdir: str = "/"
    env: tuple[tuple[str, str], ...] = (("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),)
    user: str = "root"
    group: str | None = None  # default: the user's primary group
    groups: tuple[str, ...] = ()
    hostname: str | None = None  # default: the profile name
    stop_signal: str = "SIGTERM"
    capabilities: tuple[str, ...] = ()
    network: str = "host"
    mount_proc: bool = True
    mount_sys: bool = False
    seccomp_allow: tuple[str, ...] = ()
    uid_count: int = 65536
    rlimits: tuple[tuple[str, tuple[int, int]], ...] = ()
    memory_max: int | None = None
    pids_max: int | None = None


class Profile(NamedTuple):
    name: str
    variables: dict
    users: dict[str, User]
    groups: dict[str, Group]
    directories: dict[str, Directory]
    writable: dict[str, Writable]
    templates: dict[str, Template]
    generated: dict[str, Generated]
    service: Service
    description: str = ""
    sources: tuple[str, ...] = ()  # profile files, bases first
    binaries: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_setuid: tuple[str, ...] = ()
    keep_file_caps: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


# --- locating ------------------------------------------------------------------------------


def bundled_profiles() -> dict[str, str]:
    """Bundled profile names -> files."""
    names = sorted(n.removesuffix(".toml") for n in os.listdir(BUNDLED_DIR) if n.endswith(".toml"))
    return {n: os.path.join(BUNDLED_DIR, f"{n}.toml") for n in names}


def locate(spec: str, relative_to: str | None = None) -> str:
    """A bundled name, or a path to a file (relative to the extending profile's directory)."""
    if "/" in spec or spec.endswith(".toml"):
        path = spec if relative_to is None else os.path.join(relative_to, spec)
        if not os.path.isfile(path):
            raise ProfileError(f"profile file {path} does not exist")
        return os.path.realpath(path)
    bundled = bundled_profiles()
    if spec not in bundled:
        names = ", ".join(bundled) or "none"
        raise ProfileError(f"no bundled profile named {spec!r} (bundled: {names}); "
                           "give a path to a .toml file instead")
    return bundled[spec]


# --- structural validation of one file ----------------------------------------------------


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
        dotted = ".".join(str(k) for k in keypath)
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


def _abs_path(src, keypath, value, allow_glob=False) -> str:
    _typed(src, keypath, value, str)
    if not value.startswith("/") or ".." in value.split("/") or "\0" in value:
        src.fail(keypath, f"expected an absolute path without '..', got {value!r}")
    if not allow_glob and any(c in value for c in "*?["):
        src.fail(keypath, f"expected a path without glob characters, got {value!r}")
    return "/" + "/".join(p for p in value.split("/") if p not in ("", "."))


def _name(src, keypath, value) -> str:
    _typed(src, keypath, value, str)
    if not NAME_RE.match(value):
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
    if isinstance(value, str) and SIZE_RE.match(value.lower()):
        number, unit = SIZE_RE.match(value.lower()).groups()
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


def _read_file(path: str) -> dict:
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
        return v if VARIABLE_RE.match(v) else name(k, v)

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
        return _table(src, k, v, fields)

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

    def service(k, v):
        return _table(src, k, v, {
            "command": lambda k, v: strings(k, v) or src.fail(k, "expected a non-empty list"),
            "workdir": lambda k, v: _abs_path(src, k, v),
            "env": env, "user": name, "group": name,
            "groups": lambda k, v: tuple(name((*k, i), g) for i, g in enumerate(strings(k, v))),
            "hostname": string,
            "stop_signal": lambda k, v: _one_of(src, k, v, SIGNALS),
            "capabilities": caps,
            "network": lambda k, v: _one_of(src, k, v, NETWORKS),
            "mount_proc": flag, "mount_sys": flag,
            "seccomp_allow": strings,
            "uid_count": lambda k, v: _int_range(src, k, v, 1, 65536),
            "limits": limits,
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
            tpl["source"] = os.path.realpath(os.path.join(os.path.dirname(path), tpl["source"]))
            if not os.path.isfile(tpl["source"]):
                src.fail(("templates", dest, "source"), f"template file {tpl['source']} not found")
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


# --- composition --------------------------------------------------------------------------


LIST_KEYS = (
    "binaries", "libraries", "files", "exclude", "keep_setuid", "keep_file_caps", "devices",
)  # fmt: skip
TABLE_KEYS = (
    "variables", "users", "groups", "directories", "writable", "templates", "generated",
)  # fmt: skip


def _merge(base: dict, top: dict) -> dict:
    """Lists: union, base first. Named tables: entry by entry, the extending profile wins.
    service: key by key (env and limits key by key too). Scalars: the extending profile wins."""
    out = dict(base)
    for key, value in top.items():
        if key in LIST_KEYS:
            out[key] = tuple(dict.fromkeys((*base.get(key, ()), *value)))
        elif key in TABLE_KEYS:
            out[key] = {**base.get(key, {}), **value}
        elif key == "service":
            merged = {**base.get("service", {}), **value}
            for sub in ("env", "limits"):
                if sub in value:
                    merged[sub] = {**base.get("service", {}).get(sub, {}), **value[sub]}
            out[key] = merged
        else:
            out[key] = value
    return out


def _compose(path: str, stack: tuple[str, ...]) -> tuple[dict, tuple[str, ...]]:
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ProfileError(f"profiles extend each other in a cycle: {chain}")
    top = _read_file(path)
    merged, sources = {}, ()
    for i, parent in enumerate(top.pop("extends", ())):
        try:
            parent_path = locate(parent, os.path.dirname(path))
        except ProfileError as e:
            raise ProfileError(f"{path}: extends[{i}]: {e}") from None
        data, parent_sources = _compose(parent_path, (*stack, path))
        data.pop("description", None)
        merged = _merge(merged, data)
        sources = (*sources, *(s for s in parent_sources if s not in sources))
    return _merge(merged, top), (*sources, str(path))


def load(spec: str, overrides: dict[str, str] | None = None) -> Profile:
    """Load a bundled profile by name or a profile file by path, with its bases and --set values."""
    path = locate(spec)
    data, sources = _compose(path, ())
    name = os.path.basename(path).removesuffix(".toml")
    return _build(name, data, sources, overrides or {})


def _coerce(name: str, text: str, default):
    """A `--set` value takes the type of the profile's default."""
    if isinstance(default, bool):
        if text.lower() in ("true", "yes", "1", "false", "no", "0"):
            return text.lower() in ("true", "yes", "1")
    elif isinstance(default, int):
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text)
    elif isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            pass
    else:
        return text
    raise ProfileError(f"--set {name}={text}: expected {type(default).__name__} like {default!r}")


def _user_name(key: str, variables: dict, where: str) -> str:
    """A user's name: as written, or the value of the variable it names (`{{ local_user }}`)."""
    match = VARIABLE_RE.match(key)
    if not match:
        return key
    if match.group(1) not in variables:
        raise ProfileError(f"{where}: users.\"{key}\": no variable {match.group(1)!r}; define it "
                           "under [variables]")
    value = str(variables[match.group(1)])
    if not NAME_RE.match(value):
        raise ProfileError(f"{where}: {match.group(1)} = {value!r} is not a user name (lower case, "
                           "digits, '_', '-', at most 32); pass another with --set")
    return value


def _build(name: str, data: dict, sources: tuple, overrides: dict) -> Profile:
    """Semantic checks on the composed profile (cross references), then the frozen Profile."""
    where = f"profile {name}"
    variables = dict(data.get("variables", {}))
    for key, text in overrides.items():
        if key not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise ProfileError(f"--set {key}: {where} has no such variable (variables: {known})")
        variables[key] = _coerce(key, text, variables[key])

    groups = {g: Group(g, e["gid"], tuple(e.get("members", ()))) for g, e in
              data.get("groups", {}).items()}
    users = {}
    for key, entry in data.get("users", {}).items():
        uname = _user_name(key, variables, where)
        users[uname] = User(uname, **entry)
    gids = {g.gid for g in groups.values()}
    for user in users.values():
        if user.gid not in gids:
            raise ProfileError(f"{where}: users.{user.name}.gid: no group has gid {user.gid}; "
                               f"add [groups.NAME] with gid = {user.gid}")
    for kind, ids in (("uid", [u.uid for u in users.values()]), ("gid", list(gids))):
        if len(ids) != len(set(ids)):
            plural = "users" if kind == "uid" else "groups"
            raise ProfileError(f"{where}: two {plural} share a {kind}")
    for group in groups.values():
        for member in group.members:
            if member not in users:
                raise ProfileError(f"{where}: groups.{group.name}.members: no user {member!r}")

    def owned(section, key, entry):
        for field_, table in (("owner", users), ("group", groups)):
            if entry.get(field_, "root") not in table:
                raise ProfileError(f"{where}: {section}.\"{key}\".{field_}: no "
                                   f"{'user' if field_ == 'owner' else 'group'} "
                                   f"{entry.get(field_, 'root')!r} in the profile")
        return entry

    directories = {p: Directory(p, **owned("directories", p, e))
                   for p, e in data.get("directories", {}).items()}
    writable = {p: Writable(p, **owned("writable", p, e))
                for p, e in data.get("writable", {}).items()}
    templates = {p: Template(p, **owned("templates", p, e))
                 for p, e in data.get("templates", {}).items()}
    generated = {p: Generated(p, **owned("generated", p, e))
                 for p, e in data.get("generated", {}).items()}
    for path in generated.keys() & templates.keys():
        raise ProfileError(f"{where}: {path} is both a template and a generated file")
    for path in writable:
        if path == "/" or path.split("/")[1] in ("etc", "lib", "lib64", "usr", "bin", "sbin"):
            raise ProfileError(f"{where}: writable.\"{path}\": a writable directory under /etc, "
                               "/usr or a library directory would let the service replace what "
                               "privileged steps load; use /var, /run, /srv, /tmp or /home")

    raw = dict(data.get("service", {}))
    limits = raw.pop("limits", {})
    memory_max, pids_max = limits.pop("memory_max", None), limits.pop("pids_max", None)
    env = raw.pop("env", None)
    service = Service(
        **raw,
        **({"env": tuple(env.items())} if env is not None else {}),
        rlimits=tuple(limits.items()), memory_max=memory_max, pids_max=pids_max,
    )
    for field_, value in (("user", service.user), *(("groups", g) for g in service.groups)):
        if value not in (users if field_ == "user" else groups):
            raise ProfileError(f"{where}: service.{field_}: no {field_.rstrip('s')} {value!r} "
                               "in the profile's users/groups")
    if service.group is not None and service.group not in groups:
        raise ProfileError(f"{where}: service.group: no group {service.group!r} in the profile")
    if len((service.hostname or name).encode()) > 64:
        raise ProfileError(f"{where}: service.hostname {service.hostname or name!r} is longer "
                           "than 64 bytes (the kernel's limit); set a shorter one")
    top_id = max([0, *(u.uid for u in users.values()), *gids])
    if top_id >= service.uid_count:
        raise ProfileError(f"{where}: service.uid_count {service.uid_count} does not cover id "
                           f"{top_id} used by the profile's users/groups")

    return Profile(
        name=name,
        description=data.get("description", ""),
        sources=sources,
        **{key: tuple(data.get(key, ())) for key in LIST_KEYS},
        variables=variables,
        users=users,
        groups=groups,
        directories=directories,
        writable=writable,
        templates=templates,
        generated=generated,
        service=service,
    )


# --- printing -------------------------------------------------------------------------------


def as_dict(profile: Profile) -> dict:
    """The resolved profile in the profile file schema (it loads back as an equivalent profile)."""

    def octal(mode):
        return f"{mode:04o}"

    def users(u: User):
        row = {"uid": u.uid, "gid": u.gid, "home": u.home, "shell": u.shell, "gecos": u.gecos}
        return row | ({"password": u.password} if u.password is not None else {})

    def generated(g: Generated):
        return {"kind": g.kind, "subject": g.subject, "mode": octal(g.mode), "owner": g.owner,
                "group": g.group}

    def template(t: Template):
        body = {"source": t.source} if t.source else {"text": t.text}
        return body | {"mode": octal(t.mode), "owner": t.owner, "group": t.group}

    s = profile.service
    service = {
        "command": list(s.command), "workdir": s.workdir, "env": dict(s.env), "user": s.user,
        **({"group": s.group} if s.group else {}), "groups": list(s.groups),
        **({"hostname": s.hostname} if s.hostname else {}), "stop_signal": s.stop_signal,
        "capabilities": list(s.capabilities), "network": s.network, "mount_proc": s.mount_proc,
        "mount_sys": s.mount_sys, "seccomp_allow": list(s.seccomp_allow), "uid_count": s.uid_count,
        "limits": {**{k: list(v) for k, v in s.rlimits},
                   **({"memory_max": s.memory_max} if s.memory_max else {}),
                   **({"pids_max": s.pids_max} if s.pids_max else {})},
    }
    return {
        "description": profile.description,
        **{key: list(getattr(profile, key)) for key in LIST_KEYS},
        "variables": dict(profile.variables),
        "users": {n: users(u) for n, u in profile.users.items()},
        "groups": {n: {"gid": g.gid, "members": list(g.members)}
                   for n, g in profile.groups.items()},
        "directories": {p: {"owner": d.owner, "group": d.group, "mode": octal(d.mode)}
                        for p, d in profile.directories.items()},
        "writable": {p: {"owner": w.owner, "group": w.group, "mode": octal(w.mode), "kind": w.kind}
                     | ({"size": w.size} if w.size else {}) for p, w in profile.writable.items()},
        "templates": {p: template(t) for p, t in profile.templates.items()},
        "generated": {p: generated(g) for p, g in profile.generated.items()},
        "service": service,
    }


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml_table(table: dict, prefix: list[str], out: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if prefix and (scalars or not table):
        out.append(f"\n[{'.'.join(map(_toml_key, prefix))}]")
    out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
    for key, value in table.items():
        if isinstance(value, dict) and value:
            _toml_table(value, [*prefix, key], out)


def as_toml(profile: Profile) -> str:
    out = [f"# profile {profile.name}, resolved from: {', '.join(profile.sources)}"]
    _toml_table(as_dict(profile), [], out)
    return "\n".join(out) + "\n"
