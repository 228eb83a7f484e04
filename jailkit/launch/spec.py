"""The launch spec (`launch.json`, docs/contracts.md): parsed and validated before anything runs.

Plain classes rather than dataclasses: this module is on the `jailkit run` path, where every
import costs start-up time.
"""

from jailkit import vocabulary
from jailkit.errors import JailkitError
from jailkit.launch.cgroup import LIMIT_KEYS
from jailkit.launch.dangerous import unaccepted
from jailkit.launch.seccomp import ALLOWABLE
from jailkit.vocabulary import CAPABILITIES, DEVICES, NETWORKS, RLIMITS, SIGNALS

# key -> default when launch.json leaves it out: the most restrictive choice
DEFAULTS = {
    "workdir": "/",
    "env": {},
    "user": {"uid": 0, "gid": 0, "groups": []},
    "uid_count": None,
    "hostname": None,
    "stop_signal": "SIGTERM",
    "capabilities": [],
    "dangerous_capabilities": [],
    "rlimits": {},
    "cgroup": {"memory_max": None, "pids_max": None},  # and cgroup.LIMIT_KEYS' others
    "ready": None,  # {"tcp": PORT, "timeout": SECONDS}: when `run --detach` may return
    "network": "none",
    "ports": {"bind": [], "connect": []},
    "require_landlock": False,
    "writable": [],
    "binds": [],
    "devices": list(DEVICES),
    "mount_proc": True,
    "mount_sys": False,
    "seccomp_allow": [],
}
REQUIRED = ("name", "command")


def _fail(key: str, problem: str):
    raise JailkitError(f"launch spec: {key} {problem}")


def _int(value, key: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(key, f"must be an integer >= {low}, got {value!r}")
    return value


def _str(value, key: str) -> str:
    if not isinstance(value, str) or not value:
        _fail(key, f"must be a non-empty string, got {value!r}")
    return value


def _abs_path(value, key: str) -> str:
    path = _str(value, key)
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        _fail(key, f"must be an absolute path without '..', got {value!r}")
    return path


def _list(value, key: str) -> list:
    if not isinstance(value, list):
        _fail(key, f"must be a list, got {value!r}")
    return value


def _dict(value, key: str) -> dict:
    if not isinstance(value, dict):
        _fail(key, f"must be an object, got {value!r}")
    return value


MAX_PORTS = 4096  # per list: one Landlock rule each


def _ports(value, key: str) -> list[int]:
    """Sorted distinct TCP ports from a list of ports and [low, high] ranges."""
    ports = set()
    for item in _list(value, key):
        low, high = item if isinstance(item, list) and len(item) == 2 else (item, item)
        for bound in (low, high):
            if isinstance(bound, bool) or not isinstance(bound, int) or not 0 < bound < 65536:
                _fail(key, f"must hold ports 1-65535 or [low, high] ranges, got {item!r}")
        ports.update(range(low, high + 1))
    if len(ports) > MAX_PORTS:
        _fail(key, f"holds {len(ports)} ports, more than {MAX_PORTS}")
    return sorted(ports)


def parse_size(value, key: str) -> int | None:
    """Bytes from an integer or a string like '64M' (jailkit.vocabulary.parse_size); None stays
    None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return _int(value, key, 1)
    size = vocabulary.parse_size(value)
    if size is None:
        _fail(key, f"must be a size such as 67108864 or '64M', got {value!r}")
    return size


def cpu_quota(value, key: str) -> int | None:
    """Percent of one CPU from 50, "50%" or "150%" (1.5 CPUs); None stays None."""
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if value is None or (isinstance(text, int) and not isinstance(text, bool) and text >= 1):
        return text
    _fail(key, f"must be a percentage of one CPU such as '50%' (200% is two CPUs), got {value!r}")


def cgroup_limits(raw: dict) -> dict:
    """cgroup.LIMIT_KEYS -> bytes, a count, a weight (1-10000, 100 the default) or a percent."""
    unknown = set(raw) - set(LIMIT_KEYS)
    if unknown:
        _fail("cgroup", f"has unknown keys {sorted(unknown)} (known: {', '.join(LIMIT_KEYS)})")
    out = {key: parse_size(raw.get(key), f"cgroup.{key}")
           for key in ("memory_max", "memory_high")}
    swap = raw.get("swap_max")
    out["swap_max"] = 0 if swap in (0, "0") else parse_size(swap, "cgroup.swap_max")
    pids = raw.get("pids_max")
    out["pids_max"] = None if pids is None else _int(pids, "cgroup.pids_max", 1)
    for key in ("cpu_weight", "io_weight"):
        value = raw.get(key)
        if value is not None and _int(value, f"cgroup.{key}", 1) > 10000:
            _fail(f"cgroup.{key}", f"must be a weight from 1 to 10000 (100 is the default), "
                                   f"got {value}")
        out[key] = value
    out["cpu_quota"] = cpu_quota(raw.get("cpu_quota"), "cgroup.cpu_quota")
    return out


def _ready(raw) -> dict:
    raw = _dict(raw, "ready")
    unknown = set(raw) - {"tcp", "timeout"}
    if unknown or "tcp" not in raw:
        _fail("ready", f"must be {{\"tcp\": PORT, \"timeout\": SECONDS}}, got {raw!r}")
    port = _int(raw["tcp"], "ready.tcp", 1)
    if port > 65535:
        _fail("ready.tcp", f"must be a TCP port, got {port}")
    timeout = _int(raw.get("timeout", 30), "ready.timeout", 1)
    return {"tcp": port, "timeout": min(timeout, 600)}


class Writable:
    __slots__ = ("path", "kind", "source", "uid", "gid", "mode", "size")

    def __init__(self, raw: dict, key: str):
        raw = _dict(raw, key)
        unknown = set(raw) - set(self.__slots__)
        if unknown:
            _fail(key, f"has unknown keys {sorted(unknown)}")
        self.path = _abs_path(raw.get("path"), f"{key}.path")
        if self.path == "/":
            _fail(f"{key}.path", "cannot be / (the root is always read-only)")
        self.kind = raw.get("kind", "tmpfs")
        if self.kind not in ("tmpfs", "bind"):
            _fail(f"{key}.kind", f"must be 'tmpfs' or 'bind', got {self.kind!r}")
        self.source = raw.get("source")
        if self.kind == "bind":
            source = _str(self.source, f"{key}.source")
            parts = [p for p in source.split("/") if p not in ("", ".")]
            if source.startswith("/") or ".." in parts or not parts:  # not all of DIR/state
                _fail(f"{key}.source", f"must be a directory below DIR/state, got {source!r}")
        self.uid = _int(raw.get("uid", 0), f"{key}.uid")
        self.gid = _int(raw.get("gid", 0), f"{key}.gid")
        self.mode = _int(raw.get("mode", 0o755), f"{key}.mode")
        if self.mode > 0o7777:
            _fail(f"{key}.mode", f"must be a permission mode, got {oct(self.mode)}")
        self.size = parse_size(raw.get("size"), f"{key}.size")


class Bind:
    """A host directory mounted into the jail (`binds`): read-only and noexec unless asked."""

    __slots__ = ("path", "source", "rw", "exec")

    def __init__(self, raw: dict, key: str):
        raw = _dict(raw, key)
        unknown = set(raw) - set(self.__slots__)
        if unknown:
            _fail(key, f"has unknown keys {sorted(unknown)}")
        self.path = _abs_path(raw.get("path"), f"{key}.path")
        if self.path == "/":
            _fail(f"{key}.path", "cannot be / (the root is the jail's tree)")
        self.source = _abs_path(raw.get("source"), f"{key}.source")
        self.rw, self.exec = raw.get("rw", False), raw.get("exec", False)
        if not isinstance(self.rw, bool) or not isinstance(self.exec, bool):
            _fail(key, "rw and exec must be true or false")


class LaunchSpec:
    """A validated launch.json. Attribute names are the contract's keys."""

    __slots__ = (
        "name", "command", "workdir", "env", "uid", "gid", "groups", "uid_count", "hostname",
        "stop_signal", "capabilities", "dangerous_capabilities", "rlimits", "memory_max",
        "pids_max", "network", "ports", "require_landlock", "writable", "binds", "devices",
        "mount_proc", "mount_sys", "seccomp_allow", "limits", "ready",
    )

    @classmethod
    def from_dict(cls, raw) -> "LaunchSpec":
        raw = _dict(raw, "(top level)")
        for key in REQUIRED:
            if key not in raw:
                _fail(key, "is missing")
        unknown = set(raw) - set(REQUIRED) - set(DEFAULTS)
        if unknown:
            _fail(", ".join(sorted(unknown)), "is not a launch spec key (see docs/contracts.md)")
        data = {**DEFAULTS, **raw}
        self = cls()
        self._read_process(data)
        self._read_identity(data)
        self._read_capabilities(data)
        self._read_limits(data)
        self._read_network(data)
        self._read_filesystem(data)
        self._read_seccomp(data)
        return self

    def _read_process(self, data: dict) -> None:
        """name, command, workdir, env."""
        self.name = vocabulary.check_name(data["name"], "launch spec: name")
        command = _list(data["command"], "command")
        if not command:
            _fail("command", "is empty")
        self.command = [_str(arg, "command[]") for arg in command]
        self.workdir = _abs_path(data["workdir"], "workdir")
        env = _dict(data["env"], "env")
        for k, v in env.items():
            if not k or "=" in k or not isinstance(v, str):
                _fail(f"env.{k}", f"must be a NAME without '=' and a string value, got {v!r}")
        self.env = dict(env)

    def _read_identity(self, data: dict) -> None:
        """user, uid_count, hostname, stop_signal."""
        user = _dict(data["user"], "user")
        self.uid = _int(user.get("uid", 0), "user.uid")
        self.gid = _int(user.get("gid", 0), "user.gid")
        self.groups = [_int(g, "user.groups[]") for g in _list(user.get("groups", []), "groups")]
        highest = max([self.uid, self.gid, *self.groups]) + 1
        count = data["uid_count"]
        self.uid_count = highest if count is None else _int(count, "uid_count", 1)
        if self.uid_count > vocabulary.MAX_UID_COUNT:
            _fail("uid_count", f"must be at most {vocabulary.MAX_UID_COUNT} (one jail's slice of "
                               f"host ids), got {self.uid_count}")
        if self.uid_count < highest:
            _fail("uid_count", f"must be at least {highest} to map the user's ids")
        self.hostname = _str(data["hostname"] or self.name, "hostname")
        if len(self.hostname.encode()) > 64:
            _fail("hostname", "must be at most 64 bytes")
        stop = data["stop_signal"]
        if stop not in SIGNALS:
            _fail("stop_signal", f"must be one of {', '.join(sorted(SIGNALS, key=SIGNALS.get))}, "
                                 f"got {stop!r}")
        self.stop_signal = SIGNALS[stop]

    def _read_capabilities(self, data: dict) -> None:
        """capabilities, and the dangerous ones accepted by name."""
        caps = _list(data["capabilities"], "capabilities")
        for cap in caps:
            if cap not in CAPABILITIES:
                _fail("capabilities", f"names an unknown capability {cap!r}")
        self.capabilities = list(caps)
        accepted = _list(data["dangerous_capabilities"], "dangerous_capabilities")
        missing = unaccepted(caps, accepted)
        if missing:
            listed = ", ".join(f'"{cap}"' for cap in missing)
            _fail("capabilities", f"holds {', '.join(missing)}, which would let the service "
                                  "around the jail: accept it with "
                                  f"--set 'dangerous_capabilities=[{listed}]' (or in the "
                                  "profile), or drop it")
        self.dangerous_capabilities = list(accepted)

    def _read_limits(self, data: dict) -> None:
        """rlimits, the cgroup's limits, and when a detached run counts as started."""
        self.rlimits = {}
        for name, pair in _dict(data["rlimits"], "rlimits").items():
            if name not in RLIMITS:
                _fail(f"rlimits.{name}", f"is not one of {', '.join(sorted(RLIMITS))}")
            if not isinstance(pair, list) or len(pair) != 2:
                _fail(f"rlimits.{name}", f"must be [soft, hard], got {pair!r}")
            soft, hard = (None if v is None else _int(v, f"rlimits.{name}") for v in pair)
            if hard is not None and (soft is None or soft > hard):
                _fail(f"rlimits.{name}", f"soft limit must not exceed the hard limit: {pair!r}")
            self.rlimits[name] = (soft, hard)
        self.limits = cgroup_limits(_dict(data["cgroup"], "cgroup"))
        self.memory_max, self.pids_max = self.limits["memory_max"], self.limits["pids_max"]
        self.ready = None if data["ready"] is None else _ready(data["ready"])

    def _read_network(self, data: dict) -> None:
        """network, ports, require_landlock."""
        if data["network"] not in NETWORKS:
            _fail("network", f"must be one of {', '.join(NETWORKS)}, got {data['network']!r}")
        self.network = data["network"]
        ports = _dict(data["ports"], "ports")
        unknown = set(ports) - {"bind", "connect"}
        if unknown:
            _fail("ports", f"has unknown keys {sorted(unknown)} (bind, connect)")
        self.ports = {key: _ports(ports.get(key, []), f"ports.{key}")
                      for key in ("bind", "connect")}
        if not isinstance(data["require_landlock"], bool):
            _fail("require_landlock", f"must be true or false, got {data['require_landlock']!r}")
        self.require_landlock = data["require_landlock"]

    def _read_filesystem(self, data: dict) -> None:
        """writable directories, devices, /proc and /sys."""
        writable = _list(data["writable"], "writable")
        self.writable = [Writable(w, f"writable[{i}]") for i, w in enumerate(writable)]
        binds = _list(data["binds"], "binds")
        self.binds = [Bind(b, f"binds[{i}]") for i, b in enumerate(binds)]
        for dev in _list(data["devices"], "devices"):
            if dev not in DEVICES:
                _fail("devices", f"may only name {', '.join(DEVICES)}, got {dev!r}")
        self.devices = list(data["devices"])
        for key in ("mount_proc", "mount_sys"):
            if not isinstance(data[key], bool):
                _fail(key, f"must be true or false, got {data[key]!r}")
        self.mount_proc = data["mount_proc"]
        self.mount_sys = data["mount_sys"]

    def _read_seccomp(self, data: dict) -> None:
        allow = _list(data["seccomp_allow"], "seccomp_allow")
        for name in allow:
            if name not in ALLOWABLE:
                _fail("seccomp_allow", f"names {name!r}, which is not in the default deny list "
                                       "(nor AF_PACKET)")
        self.seccomp_allow = list(allow)
