"""Profiles: TOML files describing one service's jail, composed with `extends`.

Loading is pure: it reads the profile files (and nothing else) and returns a frozen `Profile`.
Each file is checked by `jailkit.profile.schema` (errors with file and line); cross references are
checked here after composition (errors with the key path).
"""

import os
import re
from collections import namedtuple
from typing import NamedTuple

from jailkit.profile.schema import (  # noqa: F401  (DEFAULT_*: re-exported for the builder)
    DEFAULT_MEMORY_MAX,
    DEFAULT_PIDS_MAX,
    DEFAULT_RLIMITS,
    DEFAULT_TMPFS_SIZE,
    DEFAULTS,
    NAME_RE,
    TREE,
    VARIABLE_RE,
    ProfileError,
    Required,
    entry_defaults,
    read_file,
)
from jailkit.vocabulary import jail_name

# package data: jailkit/profiles/ (this file is jailkit/profile/model.py)
BUNDLED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiles")


def _record(type_name: str, doc: str, table: str, key: str, extra: dict | None = None):
    """The record of one entry of a table of named entries: its `key`, then the table's keys with
    the defaults of SETTINGS (required keys first), then `extra` fields."""
    fields = {**entry_defaults(table), **(extra or {})}
    record = namedtuple(type_name, [key, *fields], module=__name__,
                        defaults=[d for d in fields.values() if not isinstance(d, Required)])
    record.__doc__ = doc
    return record


User = _record("User", "A user of the jail's /etc/passwd.", "users.<user>", "name")
Group = _record("Group", "A group of the jail's /etc/group.", "groups.<group>", "name")
Directory = _record("Directory", "An empty directory created in the (read-only) tree, with its "
                    "owner and mode.", "directories.<path>", "path")
Writable = _record("Writable", "A directory mounted writable at run time: `tmpfs` (empty each "
                   "start) or `state` (kept).", "writable.<path>", "path")
Bind = _record("Bind", "A host directory mounted at `path` at run time: read-only, nosuid, nodev "
               "and noexec unless `rw`/`exec`.", "binds.<path>", "path")
Template = _record("Template", "A jinja2 template: `source`, a path beneath `base` (the directory "
                   "of the profile file that names it), or inline `text`.", "templates.<path>",
                   "dest", {"base": None})
Generated = _record("Generated", "A file made once per jail at build time by a built-in generator "
                    "(a private key and its certificate, an ssh host key), kept in DIR/generated "
                    "and reused by every later build.", "generated.<path>", "dest")

# [service]: its plain keys as they are; env as (name, value) pairs; ports as (low, high) ranges;
# limits as rlimits pairs, and the cgroup's memory_max and pids_max (None: DEFAULT_MEMORY_MAX and
# DEFAULT_PIDS_MAX when built by root)
_SERVICE_KEYS = {key: s.default for key, s in TREE["service"].items() if not isinstance(s, dict)}
# and the cgroup's other limits (no default), and ready as (port, timeout) or None
CGROUP_LIMITS = ("memory_high", "swap_max", "cpu_weight", "cpu_quota", "io_weight")
Service = namedtuple("Service", [*_SERVICE_KEYS, "env", "bind_ports", "connect_ports", "rlimits",
                                 "memory_max", "pids_max", *CGROUP_LIMITS, "ready"],
                     module=__name__, defaults=[
    *_SERVICE_KEYS.values(), tuple(DEFAULTS["service.env.<env>"].items()), (), (),
    tuple(DEFAULT_RLIMITS.items()), None, None, *(None for _ in CGROUP_LIMITS), None])


class Profile(NamedTuple):
    name: str
    variables: dict
    users: dict[str, User]
    groups: dict[str, Group]
    directories: dict[str, Directory]
    writable: dict[str, Writable]
    binds: dict[str, Bind]
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
    private_files: tuple[str, ...] = ()  # host files others may not read, copied all the same
    keep_file_caps: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    multiline_variables: tuple[str, ...] = ()  # string variables that may hold newlines
    path_variables: tuple[str, ...] = ()  # string variables naming a path that must exist
    overrides: dict = {}  # the --set values applied (remembered ones included), as given
    runnable: bool = True  # False for a base: no file of its composition sets service.command


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


# --- composition --------------------------------------------------------------------------


LIST_KEYS = (
    "binaries", "libraries", "files", "exclude", "keep_setuid", "private_files",
    "keep_file_caps", "devices", "multiline_variables", "path_variables",
)  # fmt: skip
TABLE_KEYS = (
    "variables", "users", "groups", "directories", "writable", "binds", "templates", "generated",
)  # fmt: skip


def _merge(base: dict, top: dict) -> dict:
    """Lists: union, base first. Named tables: entry by entry, the extending profile wins.
    service: key by key (env, limits and ports key by key too). Scalars: the extending profile
    wins."""
    out = dict(base)
    for key, value in top.items():
        if key in LIST_KEYS:
            out[key] = tuple(dict.fromkeys((*base.get(key, ()), *value)))
        elif key in TABLE_KEYS:
            out[key] = {**base.get(key, {}), **value}
        elif key == "service":
            merged = {**base.get("service", {}), **value}
            for sub in ("env", "limits", "ports"):
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
    top = read_file(path)
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


def load(spec: str, overrides: dict[str, str] | None = None,
         remembered: dict[str, str] | None = None) -> Profile:
    """Load a bundled profile by name or a profile file by path, with its bases and --set values.
    `remembered`: the --set values the jail was built with (applied first, `overrides` win); one
    naming a variable the profile no longer has is dropped."""
    data, sources = _compose(locate(spec), ())
    known = data.get("variables", {})
    overrides = {**{k: v for k, v in (remembered or {}).items() if k in known},
                 **(overrides or {})}
    return _build(jail_name(spec), data, sources, overrides)


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
    elif text or not default:
        return text
    else:
        # an empty value where the profile has one renders `worker_processes ;`: the service
        # would fail at start, far from the cause
        # (the default is not shown: it may be a password)
        raise ProfileError(f"--set {name}=: an empty value, where the profile's default is not "
                           f"empty; give a value, or leave --set {name} out to keep the default")
    raise ProfileError(f"--set {name}={text}: expected {type(default).__name__} like {default!r}")


def _refuse_control_characters(value, multiline: bool, what: str) -> None:
    """Variables are pasted into line-based files (passwd, vsftpd.conf): a newline in a user
    name or a path would add lines of the caller's choosing there."""
    if not isinstance(value, str):
        return
    allowed = "\n\t" if multiline else ""
    for char in value:
        if (char < " " or char == "\x7f") and char not in allowed:
            fix = ("" if multiline else "; only variables listed in the profile's "
                   "multiline_variables may hold newlines")
            raise ProfileError(f"{what}: a control character ({char!r}) in the value is refused"
                               f"{fix}")


def _user_name(key: str, variables: dict, where: str) -> str:
    """A user's name: as written, or the value of the variable it names (`{{ local_user }}`)."""
    match = VARIABLE_RE.fullmatch(key)
    if not match:
        return key
    if match.group(1) not in variables:
        raise ProfileError(f"{where}: users.\"{key}\": no variable {match.group(1)!r}; define it "
                           "under [variables]")
    value = str(variables[match.group(1)])
    if not NAME_RE.fullmatch(value):
        raise ProfileError(f"{where}: {match.group(1)} = {value!r} is not a user name (lower case, "
                           "digits, '_', '-', at most 32); pass another with --set")
    return value


def _ports(items, variables: dict, where: str) -> tuple[tuple[int, int], ...]:
    """(low, high) ranges from ports, 'LOW-HIGH' and '{{ variable }}' (checked after --set)."""
    from jailkit.profile.schema import PORT_RE

    def number(text: str) -> int:
        text = text.strip()
        if text.startswith("{{"):
            name = text.strip("{} ")
            if name not in variables:
                raise ProfileError(f"{where}: {text} names no variable; add it under [variables]")
            text = str(variables[name])
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ProfileError(f"{where}: {text!r} is not a port (1-65535); pass another with "
                               "--set")
        return int(text)

    out = []
    for item in items:
        if isinstance(item, int):
            out.append((item, item))
            continue
        low, high = PORT_RE.fullmatch(item).groups()
        low = number(low)
        high = low if high is None else number(high)
        if high < low:
            raise ProfileError(f"{where}: {item!r} is the range {low}-{high}, which is empty")
        out.append((low, high))
    return tuple(out)


def _check_dangerous(where: str, service: Service) -> None:
    """A capability that breaks the jail's model only by name, in both lists."""
    from jailkit.launch.dangerous import DANGEROUS_CAPABILITIES, unaccepted

    missing = unaccepted(service.capabilities, service.dangerous_capabilities)
    if missing:
        listed = ", ".join(f'"{cap}"' for cap in missing)
        raise ProfileError(
            f"{where}: service.capabilities: {', '.join(missing)} would let the service around the "
            f"jail ({DANGEROUS_CAPABILITIES[missing[0]]}); to accept that, add "
            f"dangerous_capabilities = [{listed}] to [service], or drop it")
    for cap in service.dangerous_capabilities:
        if cap not in service.capabilities:
            raise ProfileError(f"{where}: service.dangerous_capabilities: {cap} is not in "
                               "service.capabilities; list it there too, or drop it here")


def _variables(where: str, data: dict, overrides: dict) -> dict:
    """The profile's variables with the --set values, each of the variable's type."""
    variables = dict(data.get("variables", {}))
    multiline = data.get("multiline_variables", ())
    for list_key in ("multiline_variables", "path_variables"):
        for key in data.get(list_key, ()):
            if not isinstance(variables.get(key), str):
                raise ProfileError(f"{where}: {list_key} names {key!r}, which is not a "
                                   "string variable under [variables]")
    for key, value in variables.items():
        _refuse_control_characters(value, key in multiline, f"{where}: variables.{key}")
    for key, text in overrides.items():
        if key not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise ProfileError(f"--set {key}: {where} has no such variable (variables: {known})")
        _refuse_control_characters(text, key in multiline, f"--set {key}=")
        variables[key] = _coerce(key, text, variables[key])
    return variables


def _accounts(where: str, data: dict, variables: dict) -> tuple[dict, dict]:
    """(users, groups), each id used once, each user's group and each member defined."""
    groups = {g: Group(g, **e) for g, e in data.get("groups", {}).items()}
    users = {}
    for key, entry in data.get("users", {}).items():
        uname = _user_name(key, variables, where)
        if uname in users or uname != key and uname in data["users"]:
            raise ProfileError(f"{where}: users.\"{key}\" is {uname!r}, a user the profile "
                               "already has; pass another name with --set")
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
    return users, groups


def _files(where: str, data: dict, users: dict, groups: dict) -> dict:
    """directories, writable, templates and generated: owned by the profile's accounts; writable
    directories only where nothing privileged loads from."""

    def owned(section, key, entry):
        for field_, table in (("owner", users), ("group", groups)):
            if entry.get(field_, "root") not in table:
                raise ProfileError(f"{where}: {section}.\"{key}\".{field_}: no "
                                   f"{'user' if field_ == 'owner' else 'group'} "
                                   f"{entry.get(field_, 'root')!r} in the profile")
        return entry

    files = {section: {path: record(path, **owned(section, path, entry))
                       for path, entry in data.get(section, {}).items()}
             for section, record in (("directories", Directory), ("writable", Writable),
                                     ("templates", Template), ("generated", Generated))}
    files["writable"] = {p: w._replace(size=DEFAULT_TMPFS_SIZE)
                         if w.kind == "tmpfs" and not w.size else w
                         for p, w in files["writable"].items()}
    for path in files["generated"].keys() & files["templates"].keys():
        raise ProfileError(f"{where}: {path} is both a template and a generated file")
    files["binds"] = {path: Bind(path, **entry) for path, entry in data.get("binds", {}).items()}
    for path in files["binds"].keys() & files["writable"].keys():
        raise ProfileError(f"{where}: {path} is both a writable directory and a bind; keep one")
    if "/" in files["binds"]:
        raise ProfileError(f"{where}: binds.\"/\": the jail's root is its own tree; bind a "
                           "directory below it")
    writable = {**{p: "writable" for p in files["writable"]},
                **{p: "binds" for p, b in files["binds"].items() if b.rw}}
    for path, section in writable.items():
        if path == "/" or path.split("/")[1] in ("etc", "lib", "lib64", "usr", "bin", "sbin"):
            raise ProfileError(f"{where}: {section}.\"{path}\": a writable directory under /etc, "
                               "/usr or a library directory would let the service replace what "
                               "privileged steps load; use /var, /run, /srv, /tmp or /home")
    return files


def _service(where: str, name: str, data: dict, variables: dict, users: dict,
             groups: dict) -> Service:
    """[service], its ports resolved, run by accounts of the profile, its ids all mapped."""
    raw = dict(data.get("service", {}))
    limits = raw.pop("limits", {})
    memory_max, pids_max = limits.pop("memory_max", None), limits.pop("pids_max", None)
    cgroup_limits = {key: limits.pop(key) for key in CGROUP_LIMITS if key in limits}
    ready = raw.pop("ready", None)
    if ready is not None:
        if "tcp" not in ready:
            raise ProfileError(f"{where}: service.ready: missing `tcp` (the port that answers "
                               "once the service is up)")
        ready = (_ports([ready["tcp"]], variables, f"{where}: service.ready.tcp")[0][0],
                 ready.get("timeout", DEFAULTS["service.ready.timeout"]))
    env = raw.pop("env", None)
    ports = raw.pop("ports", {})
    service = Service(
        **raw,
        bind_ports=_ports(ports.get("bind", ()), variables, f"{where}: service.ports.bind"),
        connect_ports=_ports(ports.get("connect", ()), variables,
                             f"{where}: service.ports.connect"),
        **({"env": tuple(env.items())} if env is not None else {}),
        rlimits=tuple({**DEFAULT_RLIMITS, **limits}.items()), memory_max=memory_max,
        pids_max=pids_max, ready=ready, **cgroup_limits,
    )
    for field_, value in (("user", service.user), *(("groups", g) for g in service.groups)):
        if value not in (users if field_ == "user" else groups):
            table = "users" if field_ == "user" else "groups"
            fix = (f'add extends = ["libc"] (its root user and group), or define '
                   f"[{table}.{value}]" if value == "root" else f"define [{table}.{value}]")
            raise ProfileError(f"{where}: service.{field_}: no {field_.rstrip('s')} {value!r} "
                               f"in the profile's users/groups: {fix}")
    if service.group is not None and service.group not in groups:
        raise ProfileError(f"{where}: service.group: no group {service.group!r} in the profile")
    if len((service.hostname or name).encode()) > 64:
        raise ProfileError(f"{where}: service.hostname {service.hostname or name!r} is longer "
                           "than 64 bytes (the kernel's limit); set a shorter one")
    _check_dangerous(where, service)
    top_id = max([0, *(u.uid for u in users.values()), *(g.gid for g in groups.values())])
    if top_id >= service.uid_count:
        raise ProfileError(f"{where}: service.uid_count {service.uid_count} does not cover id "
                           f"{top_id} used by the profile's users/groups")
    return service


def _build(name: str, data: dict, sources: tuple, overrides: dict) -> Profile:
    """Semantic checks on the composed profile (cross references), then the frozen Profile."""
    where = f"profile {name}"
    variables = _variables(where, data, overrides)
    users, groups = _accounts(where, data, variables)
    files = _files(where, data, users, groups)
    return Profile(
        name=name,
        description=data.get("description", DEFAULTS["description"]),
        sources=sources,
        **{key: tuple(data.get(key, DEFAULTS[key])) for key in LIST_KEYS},
        variables=variables,
        users=users,
        groups=groups,
        **files,
        service=_service(where, name, data, variables, users, groups),
        overrides=dict(overrides),
        runnable="command" in data.get("service", {}),
    )
