"""The build plan: what the jail tree will hold, as data. Reads the host (metadata and ELF headers),
writes nothing; `--dry-run` prints it and `jailkit.build.apply` materialises it."""

import fnmatch
import glob
import hashlib
import os
import stat
from typing import NamedTuple

from jailkit.build.identity import HostStat, identity_of
from jailkit.errors import JailkitError
from jailkit.profile.model import Profile
from jailkit.profile.schema import is_glob
from jailkit.provenance.dpkg import Package

NSSWITCH = (
    "# written by jailkit: names come only from the jail's own files\n"
    "passwd: files\ngroup: files\nshadow: files\ngshadow: files\n"
    "hosts: files\nnetworks: files\nprotocols: files\nservices: files\n"
)


class PlanError(JailkitError):
    """The profile asks for something the host cannot provide or that contradicts itself."""


class Entry(NamedTuple):
    path: str  # absolute path inside the jail
    type: str  # "dir" | "file" | "symlink"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    source: str | None = None  # host file copied into the jail
    host: HostStat | None = None
    target: str | None = None  # symlink target, as written on the host
    content: bytes | None = None  # generated file (passwd, templates, ...)
    file_caps: bool = False  # copy the security.capability xattr
    package: Package | None = None  # the Debian package the host file came from

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.content).hexdigest() if self.content is not None else None


class Plan:
    """What to build: entries depth-first (each directory, then what it holds), launch.json,
    DIR/state subdirectories (-> mode), notes for the user, and the closure cache record."""

    def __init__(self, name: str, entries: dict[str, Entry], launch: dict,
                 state_dirs: dict[str, int], notes: list[str], closure: dict,
                 to_generate: list | None = None, sets: dict | None = None):
        self.name = name
        self.entries = entries
        self.launch = launch
        self.state_dirs = state_dirs
        self.notes = notes
        self.closure = closure
        # [generated] items (Generated, subject) not made yet: their entries hold empty content
        # until jailkit.build.apply makes them (the plan itself makes nothing)
        self.to_generate = to_generate or []
        self.sets = sets or {}  # the --set values it was made with (kept in DIR/gen-N/sets.json)

    def with_entries(self, entries: dict[str, Entry]) -> "Plan":
        return Plan(self.name, entries, self.launch, self.state_dirs, self.notes, self.closure,
                    sets=self.sets)

    def counts(self) -> tuple[int, int, int]:
        """Directories, files and symlinks."""
        counts = {"dir": 0, "file": 0, "symlink": 0}
        for entry in self.entries.values():
            counts[entry.type] += 1
        return counts["dir"], counts["file"], counts["symlink"]

    def summary(self) -> dict:
        directories, files, symlinks = self.counts()
        size = sum(e.host.size for e in self.entries.values() if e.host and e.type == "file")
        size += sum(len(e.content) for e in self.entries.values() if e.content is not None)
        return {"name": self.name, "directories": directories, "files": files,
                "symlinks": symlinks, "bytes": size, "notes": self.notes}


def check_jail_path(path: str) -> str:
    """A normalised absolute path that cannot leave the jail."""
    parts = path.split("/")
    if not path.startswith("/") or ".." in parts or "\0" in path:
        raise PlanError(f"refusing jail path {path!r}: it must be absolute and contain no '..'")
    return "/" + "/".join(p for p in parts if p not in ("", "."))


class _Planner:
    def __init__(self, profile: Profile):
        self.profile = profile
        self.entries: dict[str, Entry] = {}
        self.implicit: set[str] = set()  # parent directories nobody asked for by name
        self.notes: list[str] = []
        self.keep_setuid = set(profile.keep_setuid)
        self.keep_caps = set(profile.keep_file_caps)
        self.users = {u.name: u for u in profile.users.values()}
        self.groups = {g.name: g for g in profile.groups.values()}
        self.chained: set[str] = set()
        self.named: list[str] = []  # real paths of the profile's `files`: links may lead there

    def private(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.profile.private_files)

    # -- adding entries, with conflict checks --

    def add(self, entry: Entry, implicit: bool = False) -> None:
        path = check_jail_path(entry.path)
        if path != "/":
            self._parents(path)
        old = self.entries.get(path)
        if old is not None:
            if old == entry or implicit and old.type == "dir" == entry.type:
                return
            if not (path in self.implicit and entry.type == "dir"):
                raise PlanError(f"{path} is wanted twice, differently: {_describe(old)} and "
                                f"{_describe(entry)}")
        self.entries[path] = entry
        if implicit:
            self.implicit.add(path)
        else:
            self.implicit.discard(path)

    def _parents(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        entry = self.entries.get(parent)
        if entry is None:
            self.add(Entry(parent, "dir"), implicit=True)
        elif entry.type != "dir":
            raise PlanError(f"{path} would be created under {parent}, which is {_describe(entry)}")

    def add_host(self, entry: Entry) -> None:
        """An entry copied from the host at the same path. Its parents that nobody named get
        the host's modes (minus group/other write), not 0755: a 0700 parent stays closed."""
        missing, parent = [], entry.path.rsplit("/", 1)[0]
        while parent and parent not in self.entries:
            missing.append(parent)
            parent = parent.rsplit("/", 1)[0]
        for directory in reversed(missing):
            try:
                st = os.lstat(directory)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                self.add(Entry(directory, "dir", mode=st.st_mode & 0o755), implicit=True)
        self.add(entry)

    def owner(self, user: str, group: str) -> tuple[int, int]:
        return self.users[user].uid, self.groups[group].gid

    # -- host files --

    def host_path(self, path: str, walk: bool = False) -> None:
        """A host path with every symlink on the way; a directory's contents too when `walk`."""
        if path in self.chained:
            return
        self.chained.add(path)
        from jailkit.elf.closure import path_chain

        try:
            chain = path_chain(path)
            final = chain[-1][0]
            st = os.lstat(final)
        except OSError as e:
            raise PlanError(f"cannot read {path}: {e.strerror}") from None
        for hop, target in chain[:-1]:
            self.add_host(Entry(hop, "symlink", mode=0o777, target=target))
        if stat.S_ISDIR(st.st_mode):
            if walk:
                self.tree(final, st)
            else:
                self.add_host(Entry(final, "dir", mode=st.st_mode & 0o755))
        else:
            self.host_file(final, st, path)

    def host_file(self, path: str, st: os.stat_result, asked: str | None = None) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise PlanError(f"{path} is not a regular file, directory or symlink; devices come "
                            "from the profile's `devices` list, sockets and fifos cannot be copied")
        if not st.st_mode & stat.S_IROTH and not self.private(path):
            # a profile (perhaps shared) must not make root copy a secret into a jail that a
            # service and its clients read: the profile says so, file by file
            raise PlanError(f"{path} is not readable by every user on the host (a secret?): "
                            "copy it only on purpose, naming it in the profile's private_files")
        keep_special = path in self.keep_setuid or asked in self.keep_setuid
        mode = st.st_mode & (0o6755 if keep_special else 0o755)
        caps = path in self.keep_caps or asked in self.keep_caps
        self.add_host(Entry(path, "file", mode=mode, source=path, host=HostStat.of(st),
                            file_caps=caps))

    def tree(self, top: str, top_st: os.stat_result) -> None:
        """Copy a host directory: same filesystem only, symlinks kept, excludes honoured. A mount
        point below `top` is skipped even on the same filesystem: a bind mount of a parent
        directory would otherwise make the copy endless."""
        from jailkit.build.jaildir import mount_points

        mounts = mount_points()
        self.add_host(Entry(top, "dir", mode=top_st.st_mode & 0o755))
        pending = [top]
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as it:
                    items = sorted(it, key=lambda e: e.name)
            except OSError as e:
                raise PlanError(f"cannot list {directory}: {e.strerror}") from None
            for item in items:
                if self.excluded(item.path):
                    continue
                st = item.stat(follow_symlinks=False)
                if st.st_dev != top_st.st_dev or item.path in mounts:
                    self.notes.append(f"skipped {item.path}: a mount point (not copied from {top})")
                elif stat.S_ISDIR(st.st_mode):
                    self.add_host(Entry(item.path, "dir", mode=st.st_mode & 0o755))
                    pending.append(item.path)
                elif stat.S_ISLNK(st.st_mode):
                    self.tree_symlink(item.path)
                elif stat.S_ISREG(st.st_mode):
                    self.host_file(item.path, st)
                else:
                    self.notes.append(f"skipped {item.path}: not a file, directory or symlink")

    def tree_symlink(self, path: str) -> None:
        """A symlink met inside a copied directory: kept, and what it points to is copied too when
        that is a file within the profile's `files` (the /etc/ssl/certs hash links); a link to a
        directory or out of them is kept dangling."""
        target = os.readlink(path)
        self.add_host(Entry(path, "symlink", mode=0o777, target=target))
        try:
            st = os.stat(path)
        except OSError:
            return  # dangling on the host too
        if not stat.S_ISREG(st.st_mode):
            self.notes.append(f"{path} points to a directory, which is not copied")
        elif not self.is_named(os.path.realpath(path)):
            # whoever can write the tree could make root copy /etc/shadow: kept as a link only
            self.notes.append(f"{path} points outside the copied trees, to "
                              f"{os.path.realpath(path)}, which is not copied")
        else:
            # the link's own directory is a real one (walked), so the next hop starts there
            self.host_path(os.path.join(os.path.dirname(path), target))

    def is_named(self, real: str) -> bool:
        return any(real == top or real.startswith(top.rstrip("/") + "/") for top in self.named)

    def excluded(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.profile.exclude)

    # -- generated files --

    def generated(self, path: str, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0):
        self.add(Entry(path, "file", mode=mode, uid=uid, gid=gid, content=text.encode()))


def _describe(entry: Entry) -> str:
    if entry.type == "symlink":
        return f"a symlink to {entry.target}"
    if entry.content is not None:
        return "a generated file"
    if entry.type == "file":
        return f"a copy of {entry.source}"
    return "a directory"


def expand(patterns, what: str) -> list[str]:
    """Host paths that paths/globs name, in order; a pattern that matches nothing is an error."""
    out = []
    for pattern in patterns:
        if is_glob(pattern):
            matches = sorted(glob.glob(pattern))
        else:
            matches = [pattern] if os.path.lexists(pattern) else []
        if not matches:
            raise PlanError(f"{what}: {pattern} matches nothing on this host")
        out.extend(matches)
    return out


LD_CACHE = "/etc/ld.so.cache"


def _trusted(cache: dict | None, key: list) -> bool:
    """Whether the previous build's closure record still holds: same inputs, and a stat
    identity for exactly its files and ld.so.cache, each unchanged. (A record whose stats cover
    less, an empty one above all, would let whoever wrote it name any host file for root to
    copy into the jail.)"""
    if not isinstance(cache, dict) or cache.get("key") != key:
        return False
    files, stats = cache.get("files"), cache.get("stats")
    if not isinstance(files, list) or not isinstance(stats, dict):
        return False
    if set(stats) != {LD_CACHE, *files}:
        return False
    return all(isinstance(identity, (list, tuple)) and identity_of(path) == tuple(identity)
               for path, identity in stats.items())


def _closure_files(profile: Profile, cache: dict | None) -> tuple[list[str], dict]:
    """Host files the profile's binaries and libraries need, and the cache record to keep.

    The closure is reused from `cache` (the previous build's record) when the profile names the
    same inputs and no file it consulted (nor ld.so.cache) changed size, mtime or inode: a
    rebuild then parses no ELF file."""
    inputs = [*profile.binaries, *profile.libraries]
    key = [*inputs, *expand([p for p in inputs if is_glob(p)], "globs")]
    if _trusted(cache, key):
        return cache["files"], cache

    from jailkit.elf.closure import Resolver

    resolver = Resolver()  # one ld.so.cache parse and one ELF cache for the whole build
    inputs = expand(profile.binaries, "binaries")
    for name in profile.libraries:
        if "/" in name:
            inputs.extend(expand([name], "libraries"))
            continue
        found = resolver.find_library(name)
        if found is None:
            raise PlanError(f"libraries: the loader would not find {name} on this host")
        inputs.append(found)
    files = []
    for path in inputs:
        result = resolver.resolve(path)
        if result.error:
            raise PlanError(f"{path}: {result.error}")
        for name in result.missing:
            users = ", ".join(result.needed_by.get(name, [])) or path
            raise PlanError(f"{users} needs {name}: not found on this host")
        files.extend(result.files)
    files = list(dict.fromkeys(files))
    stats = {path: identity_of(path) for path in (LD_CACHE, *files)}
    return files, {"key": key, "files": files, "stats": stats}


def _password(user, profile: Profile, kept) -> str:
    """The shadow field for a user: as written, or rendered (`{{ local_password | crypt }}`),
    keeping the user's own previous hash while it still matches (never another user's)."""
    if "{{" not in user.password:
        return user.password
    from jailkit.profile.templates import render_jinja2

    value = render_jinja2(user.password, profile.variables, f"users.{user.name}.password",
                          kept.shadow.get(user.name, ()))
    if ":" in value or "\n" in value:
        raise PlanError(f"profile {profile.name}: users.{user.name}.password renders to something "
                        "that is not a password hash (use the `crypt` filter)")
    return value


def _account_files(planner: _Planner, profile: Profile, kept) -> None:
    users = sorted(profile.users.values(), key=lambda u: u.uid)
    planner.generated("/etc/passwd", "".join(
        f"{u.name}:x:{u.uid}:{u.gid}:{u.gecos}:{u.home}:{u.shell}\n" for u in users))
    planner.generated("/etc/group", "".join(
        f"{g.name}:x:{g.gid}:{','.join(g.members)}\n"
        for g in sorted(profile.groups.values(), key=lambda g: g.gid)))
    shadowed = [u for u in users if u.password is not None]
    if shadowed:
        # empty "last change" field: password ageing off, so nobody is forced to change it
        gid = profile.groups["shadow"].gid if "shadow" in profile.groups else 0
        planner.generated("/etc/shadow", "".join(
            f"{u.name}:{_password(u, profile, kept)}::0:99999:7:::\n" for u in shadowed),
            0o640, 0, gid)
    if "/etc/nsswitch.conf" not in profile.templates:
        planner.generated("/etc/nsswitch.conf", NSSWITCH)


def _port_list(ranges) -> list:
    return [low if low == high else [low, high] for low, high in ranges]


def _cgroup_limits(service, notes: list[str]) -> dict:
    """The profile's cgroup limits, jailkit's defaults filling in when built by root."""
    from jailkit.profile.model import DEFAULT_MEMORY_MAX, DEFAULT_PIDS_MAX

    others = {key: getattr(service, key) for key in ("memory_high", "swap_max", "cpu_weight",
                                                     "cpu_quota", "io_weight")
              if getattr(service, key) is not None}
    if os.geteuid() == 0:
        return {"memory_max": service.memory_max or DEFAULT_MEMORY_MAX,
                "pids_max": service.pids_max or DEFAULT_PIDS_MAX, **others}
    notes.append("built by an ordinary user: no default cgroup limits (memory_max, pids_max "
                 "need root here); the nproc, nofile and fsize rlimits still bound the jail")
    return {"memory_max": service.memory_max, "pids_max": service.pids_max, **others}


def _launch(profile: Profile, planner: _Planner) -> dict:
    service = profile.service
    user = profile.users[service.user]
    gid = profile.groups[service.group].gid if service.group else user.gid
    writable = []
    for w in sorted(profile.writable.values(), key=lambda w: w.path):
        uid, wgid = planner.owner(w.owner, w.group)
        writable.append({
            "path": w.path,
            "kind": "tmpfs" if w.kind == "tmpfs" else "bind",
            "source": None if w.kind == "tmpfs" else w.path.lstrip("/"),
            "uid": uid, "gid": wgid, "mode": w.mode, "size": w.size,
        })
    launch = {
        "name": profile.name,
        "command": list(service.command),
        "workdir": service.workdir,
        "env": dict(service.env),
        "user": {"uid": user.uid, "gid": gid,
                 "groups": [profile.groups[g].gid for g in service.groups]},
        "uid_count": service.uid_count,
        "hostname": service.hostname or profile.name,
        "stop_signal": service.stop_signal,
        "capabilities": list(service.capabilities),
        "dangerous_capabilities": list(service.dangerous_capabilities),
        "rlimits": {name: list(limit) for name, limit in service.rlimits},
        "cgroup": _cgroup_limits(service, planner.notes),
        **({"ready": {"tcp": service.ready[0], "timeout": service.ready[1]}}
           if service.ready else {}),
        "network": service.network,
        "ports": {"bind": _port_list(service.bind_ports),
                  "connect": _port_list(service.connect_ports)},
        "require_landlock": service.require_landlock,
        "writable": writable,
        "binds": [{"path": b.path, "source": b.source, "rw": b.rw, "exec": b.exec}
                  for b in sorted(profile.binds.values(), key=lambda b: b.path)],
        "devices": list(profile.devices),
        "mount_proc": service.mount_proc,
        "mount_sys": service.mount_sys,
        "seccomp_allow": list(service.seccomp_allow),
    }
    from jailkit.launch.spec import LaunchSpec

    try:  # the launcher's own check, now: a jail it would refuse is never built
        LaunchSpec.from_dict(launch)
    except JailkitError as e:
        raise PlanError(f"profile {profile.name}: the launcher would refuse this jail: "
                        f"{e}") from None
    return launch


def _lookup(entries: dict[str, Entry], path: str, hops: int = 40) -> Entry | None:
    """The entry `path` names inside the planned jail, following the jail's own symlinks."""
    current = "/"
    parts = [p for p in check_jail_path(path).split("/") if p]
    while parts:
        name = parts.pop(0)
        current = current.rstrip("/") + "/" + name
        entry = entries.get(current)
        if entry is None:
            return None
        if entry.type == "symlink":
            if hops == 0:
                return None
            base = entry.target if entry.target.startswith("/") else (
                current.rsplit("/", 1)[0] + "/" + entry.target)
            return _lookup(entries, os.path.normpath(base) + "/" + "/".join(parts), hops - 1)
    return entries.get(current)


def _bind_points(profile: Profile) -> list[str]:
    """The binds' mount points, each source checked now to be a host directory reached without
    a symlink (the launcher opens it so again at every start)."""
    if not profile.binds:
        return []
    from jailkit.launch.jail import open_host_dir
    from jailkit.launch.syscalls import O_PATH

    for bind in profile.binds.values():
        try:
            os.close(open_host_dir(bind.source, O_PATH))
        except JailkitError as e:
            raise PlanError(f"profile {profile.name}: binds.\"{bind.path}\": {e}") from None
    return list(profile.binds)


def _check_served_paths(profile: Profile, entries: dict[str, Entry]) -> None:
    """Each of the profile's path_variables names a path in the planned tree or a mount: a
    docroot that does not exist would only show as 404s (or a refused FTP login) at run time."""
    for variable in profile.path_variables:
        path = profile.variables[variable]
        if not path.startswith("/") or ".." in path.split("/"):
            raise PlanError(f"profile {profile.name}: {variable} = {path!r} must be an absolute "
                            f"path inside the jail without '..'; pass --set {variable}=/PATH")
        if _lookup(entries, path) is not None or any(
                path.startswith(bind.rstrip("/") + "/") for bind in profile.binds):
            continue
        raise PlanError(
            f"profile {profile.name}: {variable} = {path} does not exist in the jail; copy it "
            f"(files = [\"{path}\"] or [directories.\"{path}\"] in a profile that extends "
            f"{profile.name}), mount it live ([binds.\"{path}\"] source = \"/host/dir\"), or "
            f"pass another --set {variable}=")


def _depth_first(path: str) -> list[str]:
    # component-wise order: a directory, then everything under it, then its next sibling
    return path.split("/")


def _generated(planner: _Planner, profile: Profile, kept) -> list:
    """Keys and certificates made once per jail (jailkit.build.generate): what the jail directory
    keeps for the same kind and subject, else an empty placeholder that apply fills. Returns the
    (Generated, subject) pairs still to make."""
    from jailkit.build.generate import params_of, paths_of
    from jailkit.profile.templates import render_jinja2

    to_generate = []
    for item in profile.generated.values():
        uid, gid = planner.owner(item.owner, item.group)
        subject = render_jinja2(item.subject, profile.variables, f"generated.{item.dest}.subject")
        made = kept.generated.get(item.dest)
        if made is not None and made.params == params_of(item, subject):
            files = made.files
        else:
            planner.notes.append(f"{item.dest}: a {item.kind} made at build time, once per jail")
            to_generate.append((item, subject))
            files = dict.fromkeys(paths_of(item), b"")
        for path, content in files.items():
            mode = item.mode if path == item.dest else 0o644  # an ssh host key's .pub is public
            planner.add(Entry(path, "file", mode=mode, uid=uid, gid=gid, content=content))
    return to_generate


def make_plan(profile: Profile, kept=None) -> Plan:
    """Everything the jail for `profile` will hold, and how it will be launched: pure data, from
    the profile, the host and what the jail directory `kept` (jailkit.build.kept); it writes
    nothing and makes no key. The previous build's closure is reused when nothing it used
    changed."""
    if kept is None:  # no jail directory: nothing kept (imported late: a build path cost)
        from jailkit.build.kept import NOTHING

        kept = NOTHING
    from jailkit.profile.templates import render

    planner = _Planner(profile)
    planner.add(Entry("/", "dir"))
    closure_files, closure = _closure_files(profile,
                                            kept.manifest.closure if kept.manifest else None)
    for path in closure_files:
        planner.host_path(path)
    named = expand(profile.files, "files")
    planner.named = [os.path.realpath(path) for path in named]
    for path in named:
        planner.host_path(path, walk=True)
    _account_files(planner, profile, kept)
    for tpl in profile.templates.values():
        uid, gid = planner.owner(tpl.owner, tpl.group)
        planner.generated(tpl.dest, render(tpl, profile.variables), tpl.mode, uid, gid)
    for d in profile.directories.values():
        uid, gid = planner.owner(d.owner, d.group)
        planner.add(Entry(d.path, "dir", mode=d.mode, uid=uid, gid=gid))
    mount_points = [w.path for w in profile.writable.values()] + _bind_points(profile)
    # /dev in every jail, for its syslog socket /dev/log (launch/mounts.py)
    mount_points += ["/dev"] + ["/proc"] * profile.service.mount_proc
    mount_points += ["/sys"] * profile.service.mount_sys
    for path in mount_points:
        # an empty, root-owned directory for the launcher to mount on; what is planned below a
        # writable mount would be hidden at run time
        planner.add(Entry(path, "dir"), implicit=True)
        hidden = [p for p in planner.entries if p.startswith(path + "/")]
        if hidden:
            planner.notes.append(f"{len(hidden)} entries under {path} are hidden by its mount")
    for path, what in ((profile.service.command[0], "service.command[0]"),
                       (profile.service.workdir, "service.workdir")):
        if _lookup(planner.entries, path) is None:
            if not profile.runnable:
                raise PlanError(f"{profile.name} is a base profile (no service command): name it "
                                f"in `extends` of a profile with a [service] command, and build "
                                "that")
            raise PlanError(f"profile {profile.name}: {what} {path} would not exist in the jail; "
                            "add it to binaries, files or directories")
    _check_served_paths(profile, planner.entries)
    to_generate = _generated(planner, profile, kept)
    from jailkit.provenance.jail import record_packages

    closure = record_packages(planner, closure, kept.manifest)
    state_dirs = {w.path.lstrip("/"): w.mode
                  for w in profile.writable.values() if w.kind == "state"}
    entries = {path: planner.entries[path] for path in sorted(planner.entries, key=_depth_first)}
    return Plan(profile.name, entries, _launch(profile, planner), state_dirs, planner.notes,
                closure, to_generate, profile.overrides)
