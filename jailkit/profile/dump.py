"""A resolved profile printed back in the profile file format (`jailkit show`)."""

import json
import re

from jailkit.profile.model import CGROUP_LIMITS, Profile, Template
from jailkit.profile.schema import (
    DEFAULT_MEMORY_MAX,
    DEFAULT_PIDS_MAX,
    ENTRY_NAMES,
    TREE,
    Setting,
    mode,
)
from jailkit.profile.templates import _source


def _template(t: Template) -> dict:
    # a source is read beneath its profile's directory only: inlined, the output loads back from
    # anywhere
    return {"text": _source(t)[0] if t.source else t.text, "mode": f"{t.mode:04o}",
            "owner": t.owner, "group": t.group}


def _ranges(ranges) -> list:
    return [low if low == high else f"{low}-{high}" for low, high in ranges]


# Keys whose form in a Profile differs from the file's: key -> its value from the object that
# holds it (None: not shown, `extends` is composed away)
VIEWS = {
    "extends": None,
    "templates.<path>": _template,
    "service.env": lambda s: dict(s.env),
    "service.ports": lambda s: {"bind": _ranges(s.bind_ports),
                                "connect": _ranges(s.connect_ports)},
    "service.limits": lambda s: {**{k: list(v) for k, v in s.rlimits},
                                 **({"memory_max": s.memory_max} if s.memory_max else {}),
                                 **({"pids_max": s.pids_max} if s.pids_max else {}),
                                 **{key: getattr(s, key) for key in CGROUP_LIMITS
                                    if getattr(s, key) is not None and key != "cpu_quota"},
                                 **({"cpu_quota": f"{s.cpu_quota}%"} if s.cpu_quota else {})},
    "service.ready": lambda s: {"tcp": s.ready[0], "timeout": s.ready[1]} if s.ready else None,
}


def _view(value, node, path: str):
    """`value` (a Profile, a record, a table of them, a value) as the file says it under `node`
    of the settings table; None-valued keys are left out."""
    if path in VIEWS:
        return VIEWS[path](value)
    if isinstance(node, Setting):
        if node.check is mode:
            return f"{value:04o}"
        return list(value) if isinstance(value, tuple) else value
    entries = next((key for key in node if key in ENTRY_NAMES), None)
    if entries is not None:
        return {name: _view(item, node[entries], f"{path}.{entries}")
                for name, item in value.items()}
    out = {}
    for key, child in node.items():
        dotted = f"{path}.{key}" if path else key
        if VIEWS.get(dotted, ...) is None:
            continue
        item = value if dotted in VIEWS else getattr(value, key)
        shown = None if item is None else _view(item, child, dotted)
        if shown is not None:
            out[key] = shown
    return out


def as_dict(profile: Profile) -> dict:
    """The resolved profile in the profile file schema (it loads back as an equivalent profile)."""
    return _view(profile, TREE, "")


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
    s = profile.service
    if s.memory_max is None or s.pids_max is None:
        defaults = [f"memory_max = \"{DEFAULT_MEMORY_MAX >> 20}m\"" * (s.memory_max is None),
                    f"pids_max = {DEFAULT_PIDS_MAX}" * (s.pids_max is None)]
        out.append(f"# when built by root, also: {', '.join(filter(None, defaults))} "
                   "(cgroup limits: root only here)")
    return "\n".join(out) + "\n"
