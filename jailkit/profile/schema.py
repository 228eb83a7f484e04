"""The profile file format: one TOML file parsed and checked key by key, before composition.

Every key is one row of SETTINGS (its checker, its default, what it means). Every error names the
file and the line that holds the key (or the key path) and what was expected.
"""

import glob
import os
import re
import tomllib
from collections.abc import Callable
from typing import NamedTuple

from jailkit.errors import JailkitError
from jailkit.vocabulary import CAPABILITIES, DEVICES, NETWORKS, RLIMITS, SIGNALS, parse_size

# always fullmatch: `$` after match() also accepts a trailing newline ("ftpuser\n")
NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
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
    """Bytes from an integer or "64m"-style string (jailkit.vocabulary.parse_size)."""
    size = parse_size(value)
    if size is not None:
        return size
    src.fail(keypath, f"expected a size such as 65536 or \"64m\", got {value!r}")


def _one_of(src, keypath, value, choices) -> str:
    _typed(src, keypath, value, str)
    if value not in choices:
        src.fail(keypath, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


# --- checkers: check(src, keypath, value) -> the value the profile holds ------------------------


def typed(kind):
    return lambda src, keypath, value: _typed(src, keypath, value, kind)


string, flag, strings, mode, name, size = typed(str), typed(bool), _strings, _mode, _name, _size


def abs_path(src, keypath, value) -> str:
    return _abs_path(src, keypath, value)


def abs_paths(allow_glob=False):
    def check(src, keypath, value) -> tuple[str, ...]:
        return tuple(_abs_path(src, (*keypath, i), path, allow_glob)
                     for i, path in enumerate(_strings(src, keypath, value)))
    return check


def ids(src, keypath, value) -> int:
    return _id(src, keypath, value)


def int_range(low, high):
    return lambda src, keypath, value: _int_range(src, keypath, value, low, high)


def one_of(choices):
    return lambda src, keypath, value: _one_of(src, keypath, value, tuple(choices))


def names(src, keypath, value) -> tuple[str, ...]:
    return tuple(_name(src, (*keypath, i), item)
                 for i, item in enumerate(_strings(src, keypath, value)))


def libraries(src, keypath, value) -> tuple[str, ...]:
    """Sonames, or absolute paths and patterns."""
    return tuple(item if "/" not in item else _abs_path(src, (*keypath, i), item, True)
                 for i, item in enumerate(_strings(src, keypath, value)))


def devices(src, keypath, value) -> tuple[str, ...]:
    return tuple(_one_of(src, (*keypath, i), item, DEVICES)
                 for i, item in enumerate(_strings(src, keypath, value)))


def variable(src, keypath, value):
    if not isinstance(value, str | int | float | bool):
        src.fail(keypath, f"expected a string, number or boolean, got {type(value).__name__}")
    return value


def command(src, keypath, value) -> tuple[str, ...]:
    return _strings(src, keypath, value) or src.fail(keypath, "expected a non-empty list")


def tmpfs_size(src, keypath, value) -> str:
    """Checked as a size, kept as written (lower case) for launch.json."""
    return _size(src, keypath, value) and str(value).lower()


def capabilities(src, keypath, value) -> tuple[str, ...]:
    out = []
    for i, cap in enumerate(_strings(src, keypath, value)):
        bare = cap.removeprefix("CAP_")
        if "CAP_" + bare not in CAPABILITIES:
            src.fail((*keypath, i), "expected a capability name such as CAP_NET_BIND_SERVICE, "
                                    f"got {cap!r}")
        out.append("CAP_" + bare)
    return tuple(out)


def port(src, keypath, value):
    """A TCP port, or a '{{ variable }}' (resolved after --set)."""
    if isinstance(value, str) and PORT_RE.fullmatch(value) and "-" not in value:
        return value
    if isinstance(value, str):
        src.fail(keypath, f"expected a port or '{{{{ port }}}}', got {value!r}")
    return _int_range(src, keypath, value, 1, 65535)


def ports(src, keypath, value) -> tuple:
    """Ports and 'LOW-HIGH' ranges, each a number or a '{{ variable }}' (resolved after --set)."""
    out = []
    for i, item in enumerate(_typed(src, keypath, value, list)):
        if isinstance(item, str) and PORT_RE.fullmatch(item):
            out.append(item)
        elif isinstance(item, str):
            src.fail((*keypath, i), "expected a port, a range such as '30000-30099' or "
                                    f"'{{{{ port }}}}', got {item!r}")
        else:
            out.append(_int_range(src, (*keypath, i), item, 1, 65535))
    return tuple(out)


def swap(src, keypath, value) -> int:
    """A swap limit: a size, or 0 for none."""
    return 0 if value == 0 else _size(src, keypath, value)


def cpu_quota(src, keypath, value) -> int:
    """CPU time as a percent of one CPU: 50, "50%", "200%" (two CPUs)."""
    text = value.strip().removesuffix("%") if isinstance(value, str) else None
    if text is not None:
        if text.isdigit() and int(text) >= 1:
            return int(text)
        src.fail(keypath, "expected a percentage of one CPU such as \"50%\" (200% is two CPUs), "
                          f"got {value!r}")
    return _int_range(src, keypath, value, 1, 100000)


def rlimit(src, keypath, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return (value, value)
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value)
            and value[0] <= value[1]):
        return tuple(value)
    src.fail(keypath, f"expected a limit N or [soft, hard] with soft <= hard, got {value!r}")


def any_key(src, keypath, key) -> str:
    return key


def user_key(src, keypath, key) -> str:
    """A user name, or `{{ variable }}` naming one (checked after --set)."""
    return key if VARIABLE_RE.fullmatch(key) else _name(src, keypath, key)


# A key in angle brackets stands for any key of a table of named entries, checked so:
ENTRY_NAMES = {"<variable>": any_key, "<env>": any_key, "<user>": user_key, "<group>": _name,
               "<path>": abs_path}


class Required:
    """The default of a key every entry of its table must have."""

    def __init__(self, hint: str = ""):
        self.hint = hint

    def __repr__(self):
        return "Required()"


REQUIRED = Required()


class Setting(NamedTuple):
    """One profile key: its dotted path (see ENTRY_NAMES), its checker, the value a profile gets
    when no file sets it, and what it means."""

    key: str
    check: Callable
    default: object
    help: str


# What a jail gets when its profile says nothing (a profile may raise each): without them a
# default jail could fork thousands of processes, fill the RAM, write files without end and
# get half the RAM for a tmpfs. rlimits bind every jail (RLIMIT_NPROC counts per user namespace
# on this kernel); the cgroup limits only jails built by root, because an ordinary user cannot
# make cgroups on this cgroup-v1 host (the launcher would refuse to start the jail).
DEFAULT_RLIMITS = {"nofile": (1024, 4096), "nproc": (256, 256), "fsize": (256 << 20, 256 << 20)}
DEFAULT_MEMORY_MAX = 512 << 20
DEFAULT_PIDS_MAX = 512
DEFAULT_TMPFS_SIZE = "64m"

# Every key of the format, in the order errors list them and `show` prints them. Parsing
# (read_file), the defaults and the records of jailkit.profile.model, and `show`
# (jailkit.profile.dump) all derive from this table: a new key is one line here.
SETTINGS = (
    Setting("description", string, "", "what the profile is for (`jailkit profiles` lists it)"),
    Setting("extends", strings, (), "profiles this one builds on: bundled names or .toml paths"),
    Setting("binaries", abs_paths(), (), "programs copied with the libraries they load"),
    Setting("libraries", libraries, (), "more libraries: sonames, or paths and patterns"),
    Setting("files", abs_paths(allow_glob=True), (), "host files and directories, or patterns"),
    Setting("exclude", strings, (), "patterns of paths left out of directories named in files"),
    Setting("keep_setuid", abs_paths(), (), "files that keep their setuid/setgid bits"),
    Setting("private_files", abs_paths(allow_glob=True), (),
            "host files others may not read that are copied all the same (paths or patterns)"),
    Setting("keep_file_caps", abs_paths(), (), "files that keep their file capabilities"),
    Setting("devices", devices, (), "device nodes of /dev"),
    Setting("variables.<variable>", variable, {}, "values for templates, overridden by --set"),
    Setting("multiline_variables", strings, (), "string variables that may hold newlines"),
    Setting("path_variables", strings, (),
            "string variables naming an in-jail path the service serves: checked at build time "
            "to exist in the tree or a mount"),
    Setting("users.<user>.uid", ids, REQUIRED, "the user's id"),
    Setting("users.<user>.gid", ids, REQUIRED, "the id of the user's primary group"),
    Setting("users.<user>.home", abs_path, "/nonexistent", "home directory"),
    Setting("users.<user>.shell", abs_path, "/usr/sbin/nologin", "login shell"),
    Setting("users.<user>.gecos", string, "", "the passwd comment field"),
    Setting("users.<user>.password", string, None,
            "a crypt(3) hash or '!'/'*'; only then an /etc/shadow line"),
    Setting("groups.<group>.gid", ids, REQUIRED, "the group's id"),
    Setting("groups.<group>.members", names, (), "users in the group"),
    Setting("directories.<path>.owner", name, "root", "an empty directory's owner"),
    Setting("directories.<path>.group", name, "root", "its group"),
    Setting("directories.<path>.mode", mode, 0o755, "its mode"),
    Setting("writable.<path>.owner", name, "root", "a writable directory's owner"),
    Setting("writable.<path>.group", name, "root", "its group"),
    Setting("writable.<path>.mode", mode, 0o755, "its mode"),
    Setting("writable.<path>.kind", one_of(("tmpfs", "state")), "tmpfs",
            "tmpfs: empty at each start; state: kept in DIR/state"),
    Setting("writable.<path>.size", tmpfs_size, None, f"a tmpfs's size ({DEFAULT_TMPFS_SIZE})"),
    Setting("binds.<path>.source", abs_path, Required("the host directory to mount"),
            "a host directory mounted here at run time (live content: no rebuild)"),
    Setting("binds.<path>.rw", flag, False, "writable by the jail (default: read-only)"),
    Setting("binds.<path>.exec", flag, False, "files in it may be executed (default: noexec)"),
    Setting("templates.<path>.source", string, None,
            "a jinja2 template file, relative to the profile's directory"),
    Setting("templates.<path>.text", string, None, "or the template inline"),
    Setting("templates.<path>.mode", mode, 0o644, "the rendered file's mode"),
    Setting("templates.<path>.owner", name, "root", "its owner"),
    Setting("templates.<path>.group", name, "root", "its group"),
    Setting("generated.<path>.kind", one_of(GENERATORS),
            Required(f"one of {', '.join(GENERATORS)}"), "the built-in generator"),
    Setting("generated.<path>.subject", string, "localhost",
            "tls-cert: the certificate's name (may use {{ variables }})"),
    Setting("generated.<path>.mode", mode, 0o600, "the file's mode"),
    Setting("generated.<path>.owner", name, "root", "its owner"),
    Setting("generated.<path>.group", name, "root", "its group"),
    Setting("service.command", command, ("/bin/sh",), "the service's command line"),
    Setting("service.workdir", abs_path, "/", "its working directory"),
    Setting("service.env.<env>", string, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            "its environment (this default only when the profiles set none)"),
    Setting("service.user", name, "root", "the user it runs as"),
    Setting("service.group", name, None, "its group (default: the user's primary group)"),
    Setting("service.groups", names, (), "its supplementary groups"),
    Setting("service.hostname", string, None, "the jail's hostname (default: the profile name)"),
    Setting("service.stop_signal", one_of(SIGNALS), "SIGTERM", "the signal that stops it"),
    Setting("service.capabilities", capabilities, (), "capabilities it keeps"),
    Setting("service.dangerous_capabilities", capabilities, (),
            "capabilities that break the jail's model, accepted by name"),
    Setting("service.network", one_of(NETWORKS), "none", "host, none (loopback) or veth"),
    Setting("service.ports.bind", ports, (), "TCP ports it may bind (Landlock)"),
    Setting("service.ports.connect", ports, (), "TCP ports it may connect to (Landlock)"),
    Setting("service.require_landlock", flag, False, "refuse to start without Landlock"),
    Setting("service.mount_proc", flag, True, "a fresh /proc"),
    Setting("service.mount_sys", flag, False, "a read-only /sys"),
    Setting("service.seccomp_allow", strings, (), "system calls let through the default filter"),
    Setting("service.uid_count", int_range(1, 65536), 65536, "ids mapped into the jail"),
    *(Setting(f"service.limits.{limit}", rlimit, DEFAULT_RLIMITS.get(limit),
              f"RLIMIT_{limit.upper()}: N or [soft, hard]") for limit in sorted(RLIMITS)),
    Setting("service.limits.memory_max", size, None,
            f"cgroup memory limit (when built by root: {DEFAULT_MEMORY_MAX >> 20}m)"),
    Setting("service.limits.pids_max", int_range(1, 1 << 22), None,
            f"cgroup process limit (when built by root: {DEFAULT_PIDS_MAX})"),
    Setting("service.limits.memory_high", size, None, "cgroup memory level where it is slowed"),
    Setting("service.limits.swap_max", swap, None, "cgroup swap limit (0: no swap)"),
    Setting("service.limits.cpu_weight", int_range(1, 10000), None,
            "CPU share against other jails (100 is the kernel's default)"),
    Setting("service.limits.cpu_quota", cpu_quota, None, "CPU time cap, percent of one CPU"),
    Setting("service.limits.io_weight", int_range(1, 10000), None, "IO share (bfq scheduler)"),
    Setting("service.ready.tcp", port, None, "`run --detach` returns once this port answers"),
    Setting("service.ready.timeout", int_range(1, 600), 30, "seconds it waits for that"),
)
DEFAULTS = {setting.key: setting.default for setting in SETTINGS}


def _tree(settings) -> dict:
    """The settings as nested tables: key part -> subtable or Setting."""
    tree = {}
    for setting in settings:
        *parents, last = setting.key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = setting
    return tree


TREE = _tree(SETTINGS)


def entry_defaults(table: str) -> dict:
    """Key -> default of the entries of a table of named entries ("users.<user>"), Required
    keys first."""
    node = TREE
    for part in table.split("."):
        node = node[part]
    fields = {key: s.default for key, s in node.items()}
    return {**{k: d for k, d in fields.items() if isinstance(d, Required)},
            **{k: d for k, d in fields.items() if not isinstance(d, Required)}}


def _entry_key(node: dict) -> str | None:
    """"<user>" when `node` is a table of named entries, else None."""
    return next((key for key in node if key in ENTRY_NAMES), None)


def _check(src, keypath: tuple, value, node):
    """Check `value` against a Setting, a table of known keys, or a table of named entries."""
    if isinstance(node, Setting):
        return node.check(src, keypath, value)
    _typed(src, keypath, value, dict)
    entries = _entry_key(node)
    if entries is not None:
        return {ENTRY_NAMES[entries](src, (*keypath, key), key):
                _check(src, (*keypath, key), item, node[entries]) for key, item in value.items()}
    out = {}
    for key, item in value.items():
        if key not in node:
            src.fail((*keypath, key), f"unknown key; expected one of: {', '.join(node)}")
        out[key] = _check(src, (*keypath, key), item, node[key])
    return out


def _check_required(src, top: dict) -> None:
    """Entries that lack a key without a default (users.NAME.uid, generated.PATH.kind...)."""
    for table, node in TREE.items():
        entries = _entry_key(node) if isinstance(node, dict) else None
        if entries is None or not isinstance(node[entries], dict):
            continue
        required = {key: s.default for key, s in node[entries].items()
                    if isinstance(s.default, Required)}
        for entry_name, entry in top.get(table, {}).items():
            for key, need in required.items():
                if key not in entry:
                    hint = f" ({need.hint})" if need.hint else ""
                    src.fail((table, entry_name), f"missing `{key}`{hint}")


def _check_template_sources(src, path: str, templates: dict) -> None:
    for dest, tpl in templates.items():
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


def read_file(path: str) -> dict:
    """Parse and structurally validate one profile file; returns a dict of checked, typed values."""
    src = _Source(path)
    try:
        raw = tomllib.loads(src.text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: invalid TOML: {e}") from None
    top = _check(src, (), raw, TREE)
    _check_template_sources(src, path, top.get("templates", {}))
    _check_required(src, top)
    return top
