"""A resolved profile printed back in the profile file format (`jailkit show`)."""

import json
import re

from jailkit.profile.model import (
    DEFAULT_MEMORY_MAX,
    DEFAULT_PIDS_MAX,
    LIST_KEYS,
    Generated,
    Profile,
    Template,
    User,
)
from jailkit.profile.templates import _source


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
        # a source is read beneath its profile's directory only: inlined, the output loads
        # back from anywhere
        text = _source(t)[0] if t.source else t.text
        return {"text": text, "mode": octal(t.mode), "owner": t.owner, "group": t.group}

    s = profile.service
    service = {
        "command": list(s.command), "workdir": s.workdir, "env": dict(s.env), "user": s.user,
        **({"group": s.group} if s.group else {}), "groups": list(s.groups),
        **({"hostname": s.hostname} if s.hostname else {}), "stop_signal": s.stop_signal,
        "capabilities": list(s.capabilities),
        "dangerous_capabilities": list(s.dangerous_capabilities), "network": s.network,
        "require_landlock": s.require_landlock,
        "ports": {key: [low if low == high else f"{low}-{high}" for low, high in ranges]
                  for key, ranges in (("bind", s.bind_ports), ("connect", s.connect_ports))},
        "mount_proc": s.mount_proc,
        "mount_sys": s.mount_sys, "seccomp_allow": list(s.seccomp_allow), "uid_count": s.uid_count,
        "limits": {**{k: list(v) for k, v in s.rlimits},
                   **({"memory_max": s.memory_max} if s.memory_max else {}),
                   **({"pids_max": s.pids_max} if s.pids_max else {}),
                   **{key: getattr(s, key) for key in ("memory_high", "swap_max", "cpu_weight",
                                                       "io_weight") if getattr(s, key) is not None},
                   **({"cpu_quota": f"{s.cpu_quota}%"} if s.cpu_quota else {})},
        **({"ready": {"tcp": s.ready[0], "timeout": s.ready[1]}} if s.ready else {}),
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
    s = profile.service
    if s.memory_max is None or s.pids_max is None:
        defaults = [f"memory_max = \"{DEFAULT_MEMORY_MAX >> 20}m\"" * (s.memory_max is None),
                    f"pids_max = {DEFAULT_PIDS_MAX}" * (s.pids_max is None)]
        out.append(f"# when built by root, also: {', '.join(filter(None, defaults))} "
                   "(cgroup limits: root only here)")
    return "\n".join(out) + "\n"
