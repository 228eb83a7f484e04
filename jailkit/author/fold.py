"""Turn what a traced service touched into profile entries, each with the reason it is there.

What the jail gets anyway is left out: the loader closure of every program run (jailkit's own
resolver, as `build` computes it), what the chosen bases bring, /proc and the devices jailkit
mounts. Secrets are never copied: they are listed for the user to decide (Draft.secrets).
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import stat
from dataclasses import dataclass, field

from jailkit.author.trace import Trace

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
MULTIARCH = "x86_64-linux-gnu"
# Directories never folded into a whole-directory entry: they hold far more than one service's
# files (a service reading two libraries does not need all of /usr/lib).
NO_FOLD = {
    "/usr/lib", "/usr/lib64", f"/usr/lib/{MULTIARCH}", "/lib", "/lib64", f"/lib/{MULTIARCH}",
    "/usr/share", "/usr/local/lib", "/usr/local/share", "/usr/local/bin", "/usr/bin", "/usr/sbin",
    "/var/lib", "/var/cache", "/var/log", "/var/spool", "/var/www", "/usr/lib/python3",
    "/usr/lib/python3/dist-packages", "/etc/ssl", "/etc/alternatives", "/usr/share/zoneinfo",
    "/usr/include", "/usr/libexec", f"/usr/lib/{MULTIARCH}/security", "/etc/default",
    "/etc/init.d", "/etc/systemd",
}
NO_FOLD_PATTERNS = ("/home/*", "/usr/local/lib/python3*", "/usr/local/lib/python3*/*-packages",
                    "/usr/lib/python3*/site-packages")
FOLD_MAX_ENTRIES = 1000  # a folded directory is copied whole: keep that bounded
FOLD_MAX_BYTES = 64 << 20
SECRET_SNIFF_MAX = 1 << 20  # files up to this size are read for a private key's header
# The jail cannot have these writable (the builder refuses them): a service writing there must
# be pointed elsewhere.
NOT_WRITABLE = {"/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/usr/lib", "/usr/bin",
                "/usr/sbin", "/usr/lib64", "/usr/local", "/var", "/boot", "/proc", "/sys", "/dev"}
TMPFS_DIRS = ("/run", "/var/run", "/tmp", "/var/tmp")  # and what is below /run
# Files whose names say they live only as long as the process: their directory is a tmpfs.
RUNTIME_NAMES = ("*.pid", "*.sock", "*.socket", "*.lock", "*.lck", "*.ctl")

# What each base brings (jailkit/profiles/*.toml), as host paths a trace can show.
BASE_PATHS = {
    "libc": ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/nsswitch.conf"],
    "dns": ["/etc/resolv.conf", "/etc/host.conf", "/etc/services", "/etc/protocols",
            "/etc/hosts", "/etc/gai.conf"],
    "tls": ["/etc/ssl/certs", "/etc/ssl/certs/*", "/usr/lib/ssl/*", "/usr/lib/ssl/certs/*",
            "/usr/share/ca-certificates/*", "/usr/local/share/ca-certificates/*",
            "/etc/ssl/openssl.cnf", f"/usr/lib/{MULTIARCH}/libssl.so*"],
    "tzdata": ["/etc/localtime", "/etc/timezone"],
    "pam": [f"/usr/lib/{MULTIARCH}/security/pam_{m}.so"
            for m in ("unix", "deny", "permit", "listfile", "shells", "nologin")]
           + ["/etc/pam.d/other", "/etc/pam.d/common-*", "/etc/login.defs",
              f"/usr/lib/{MULTIARCH}/libpam.so*"],
    "python3": ["/usr/lib/python3.*", "/usr/lib/python3.*/*", "/etc/python3.*",
                "/etc/python3.*/*", "/usr/bin/python3*"],
}
# Paths jailkit provides or that make no sense to copy.
IGNORED = ["/proc/*", "/proc", "/dev/shm/*", "/etc/ld.so.cache", "/etc/ld.so.preload",
           "/etc/ld.so.conf", "/etc/ld.so.conf.d/*", "/", "/usr/lib/locale/*",
           "/usr/share/locale/locale.alias"]


@dataclass
class Entry:
    value: str
    why: str


@dataclass
class Draft:
    """A profile to write: every entry with a comment saying what was seen."""

    name: str
    extends: list[Entry] = field(default_factory=list)
    binaries: list[Entry] = field(default_factory=list)
    libraries: list[Entry] = field(default_factory=list)
    files: list[Entry] = field(default_factory=list)
    devices: list[Entry] = field(default_factory=list)
    users: dict[str, dict] = field(default_factory=dict)  # name -> {uid, gid, home, shell, why}
    groups: dict[str, dict] = field(default_factory=dict)
    directories: dict[str, dict] = field(default_factory=dict)
    writable: dict[str, dict] = field(default_factory=dict)  # path -> {kind, owner, mode, why}
    command: list[str] = field(default_factory=list)
    workdir: str | None = None
    capabilities: list[Entry] = field(default_factory=list)
    network: str | None = None
    bind: list[Entry] = field(default_factory=list)
    ready: int | None = None  # the first TCP port it bound: answering there means started
    connect: list[Entry] = field(default_factory=list)
    nofile: tuple[int, int] | None = None
    secrets: list[Entry] = field(default_factory=list)  # left out, for the user to decide
    notes: list[str] = field(default_factory=list)  # what the jail will not give it

    def summary(self) -> dict:
        def values(entries):
            return [e.value for e in entries]
        return {
            "name": self.name, "extends": values(self.extends), "binaries": values(self.binaries),
            "libraries": values(self.libraries), "files": values(self.files),
            "devices": values(self.devices), "users": sorted(self.users),
            "groups": sorted(self.groups), "directories": sorted(self.directories),
            "writable": {p: w["kind"] for p, w in self.writable.items()},
            "command": self.command, "capabilities": values(self.capabilities),
            "network": self.network, "bind": values(self.bind), "connect": values(self.connect),
            "secrets": [{"path": e.value, "why": e.why} for e in self.secrets],
            "notes": self.notes,
        }


def matches(path: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def secret_reason(path: str) -> str | None:
    """Why a host path holds a secret that must not be copied silently, or None."""
    name = os.path.basename(path)
    if path in ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-",
                "/etc/security/opasswd"):
        return "password hashes"
    if path == "/etc/ssl/private" or path.startswith("/etc/ssl/private/"):
        return "in /etc/ssl/private"
    if fnmatch.fnmatchcase(path, "/etc/ssh/ssh_host_*_key"):
        return "an ssh host key"
    if name in ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519") or name.endswith(".key"):
        return "a private key (by its name)"
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode) and info.st_size <= SECRET_SNIFF_MAX:
            with open(path, "rb") as f:
                if b"PRIVATE KEY-----" in f.read():
                    return "a private key (PEM)"
    except OSError:
        pass
    return None


def _tree_secret(directory: str) -> str | None:
    """A secret somewhere below `directory` (bounded walk), or None."""
    seen = 0
    for top, dirs, files in os.walk(directory):
        for name in dirs + files:
            seen += 1
            path = os.path.join(top, name)
            if seen > FOLD_MAX_ENTRIES or secret_reason(path):
                return path
    return None


def _small_tree(directory: str) -> bool:
    entries = size = 0
    for top, dirs, files in os.walk(directory):
        entries += len(dirs) + len(files)
        for name in files:
            try:
                size += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
        if entries > FOLD_MAX_ENTRIES or size > FOLD_MAX_BYTES:
            return False
    return True


def _can_fold(directory: str) -> bool:
    return (directory.count("/") >= 2 and directory not in NO_FOLD
            and not matches(directory, NO_FOLD_PATTERNS) and os.path.isdir(directory)
            and not os.path.islink(directory) and _small_tree(directory)
            and _tree_secret(directory) is None)


def python_package(path: str) -> str | None:
    """The top package directory of a module below a dist-packages or site-packages directory
    (python stats a module's source and reads its cached bytecode: the package is taken whole,
    sources included), or None."""
    parts = path.split("/")
    for index, part in enumerate(parts[:-2]):
        if part in ("dist-packages", "site-packages"):
            top = "/".join(parts[:index + 2])
            return top if os.path.isdir(top) else None
    return None


def _is_elf_object(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _names(paths, limit=3) -> str:
    names = sorted(os.path.basename(p) for p in paths)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def fold(trace: Trace, name: str, command: list[str] | None = None) -> Draft:
    """The profile entries for what `trace` shows (see the module's docstring)."""
    from jailkit.elf.closure import Resolver

    draft = Draft(name=name)
    resolver = Resolver()
    closure: set[str] = set()

    def add_closure(path: str) -> None:
        for file in resolver.resolve(path).files:
            closure.add(file)
            closure.add(os.path.realpath(file))

    in_closure = lambda p: p in closure or os.path.realpath(p) in closure  # noqa: E731

    # programs run: binaries, with their closures
    for path in trace.executed:
        if os.path.isfile(path):
            add_closure(path)

    bases = _bases(trace)
    draft.extends = [Entry(base, why) for base, why in bases.items()]
    covered = [p for base in bases for p in BASE_PATHS.get(base, [])]

    # what a base's own modules load (python's extension modules) comes with them
    for path, how in trace.paths.items():
        if "read" in how and matches(path, covered) and ".so" in path and _is_elf_object(path):
            add_closure(path)
    for path, why in trace.executed.items():
        if os.path.isfile(path) and not matches(path, covered):
            draft.binaries.append(Entry(path, why))

    written = {p: how for p, how in trace.paths.items() if {"write", "create"} & set(how)}
    _writable(trace, draft, written)
    writable_dirs = list(draft.writable)

    def under_writable(path: str) -> bool:
        real = os.path.realpath(path)
        return any(p == w or p.startswith(w + "/") for w in writable_dirs for p in (path, real))

    libraries: dict[str, str] = {}
    read_files: dict[str, str] = {}
    listed_dirs: dict[str, str] = {}
    sys_reads = []
    for path, how in sorted(trace.paths.items()):
        used = {h: w for h, w in how.items() if h in ("read", "list", "exec", "write")}
        if not used:
            continue
        why = next(iter(used.values()))
        if path.startswith("/sys/") or path == "/sys":
            sys_reads.append(path)
            continue
        if path in written and not path.startswith("/dev/") and "read" not in used:
            continue
        if path.startswith("/dev/"):
            device = path[len("/dev/"):]
            if device in DEVICES:
                draft.devices.append(Entry(device, why))
            elif not path.startswith("/dev/shm/"):
                draft.notes.append(f"it opened {path}, which the jail does not have "
                                   f"(devices: {', '.join(DEVICES)})")
            continue
        if matches(path, IGNORED) or in_closure(path) or "exec" in used:
            continue
        reason = secret_reason(path)  # before the bases: libc's /etc/shadow is the jail's own
        if reason:
            draft.secrets.append(Entry(path, f"{reason}; {why}"))
            continue
        if matches(path, covered):
            continue
        if under_writable(path) or not os.path.exists(path):
            continue
        if os.path.isdir(path):
            if "list" in used:
                listed_dirs[path] = f"listed by {why.split(' by ', 1)[-1]}"
            continue
        if os.path.basename(path).startswith("libnss_"):
            draft.notes.append(f"it loaded {path}: the jail resolves names from its own files "
                               "(nsswitch.conf `files`), so it is left out")
            continue
        if _is_elf_object(path) and ".so" in os.path.basename(path):
            libraries[path] = f"dlopen'd ({why})"
            add_closure(path)
            continue
        read_files[path] = why
        package = python_package(path)
        if package:
            listed_dirs.setdefault(package, f"a python package it imported ({why})")
    # a dlopen'd library another dlopen'd library needs comes with that one's closure
    libraries = {p: w for p, w in libraries.items()
                 if not any(p != q and p in resolver.resolve(q).files for q in libraries)}
    draft.libraries = _fold_libraries(libraries)
    draft.files = _fold_files(read_files, listed_dirs)
    if sys_reads:
        draft.notes.append(f"it read {len(sys_reads)} files under /sys ({_names(sys_reads)}); "
                           "the jail has no /sys unless `mount_sys = true`")
    for path, why in sorted(trace.unix_connects.items()):
        # a failed connect: absent here too; /dev/log: every jail has one (jailkit relays it)
        if not under_writable(path) and ":" not in why and path != "/dev/log":
            draft.notes.append(f"it connected to the unix socket {path} ({why}), which is not "
                               "in the jail")
    _accounts(trace, draft)
    _service(trace, draft, command)
    if trace.daemonized:
        draft.notes.append("its first process exited while its children went on: it forked into "
                           "the background; give it its foreground option (the jail's service "
                           "must stay in the foreground)")
    return draft


# the bundled bases a service needs, by a path it read (trace) or missed (doctor)
BASE_PATTERNS = [
    ("dns", ["/etc/resolv.conf"]),
    ("tls", ["/etc/ssl/certs/*", "/usr/lib/ssl/certs/*", "/usr/share/ca-certificates/*",
             "/etc/ssl/certs", "/usr/lib/ssl/openssl.cnf", "/etc/ssl/openssl.cnf"]),
    ("tzdata", ["/etc/localtime", "/usr/share/zoneinfo/*"]),
    ("pam", [f"/usr/lib/{MULTIARCH}/security/pam_*.so", "/etc/pam.d/*"]),
]


def base_for(path: str) -> str | None:
    """The bundled base that brings `path`, if one does."""
    return next((base for base, patterns in BASE_PATTERNS if matches(path, patterns)), None)


def _bases(trace: Trace) -> dict[str, str]:
    def seen(patterns) -> str | None:
        for path, how in trace.paths.items():
            if ("read" in how or "list" in how) and matches(path, patterns):
                return f"{path}: {next(iter(how.values()))}"
        return None

    bases = {"libc": "always: the root user and group, NSS from the jail's own files"}
    for base, patterns in BASE_PATTERNS:
        why = seen(patterns)
        if why:
            bases[base] = why
    for path in trace.executed:
        if fnmatch.fnmatchcase(os.path.basename(path), "python3*"):
            bases["python3"] = f"it runs {path}: the interpreter and its standard library"
    return bases


def _fold_libraries(libraries: dict[str, str]) -> list[Entry]:
    """Libraries by path; two or more from one module directory become `DIR/*.so`."""
    by_dir: dict[str, list[str]] = {}
    for path in libraries:
        by_dir.setdefault(os.path.dirname(path), []).append(path)
    entries = []
    for directory, paths in sorted(by_dir.items()):
        if len(paths) >= 2 and directory not in NO_FOLD:
            entries.append(Entry(f"{directory}/*.so", f"modules dlopen'd from this directory: "
                                                      f"{_names(paths)}"))
        else:
            entries.extend(Entry(p, libraries[p]) for p in sorted(paths))
    return entries


def _fold_files(read_files: dict[str, str], listed: dict[str, str]) -> list[Entry]:
    """Files read, with a directory taken whole where the service listed it or read two or more
    files in it (its config or module directory), repeated upwards while the parent qualifies;
    never a system-wide directory, a large one or one holding a secret."""
    groups: dict[str, list[str]] = {}
    for path in read_files:
        groups.setdefault(os.path.dirname(path), []).append(path)
    for directory in listed:
        groups.setdefault(directory, [])
    folded: dict[str, str] = {}
    for directory, paths in groups.items():
        if (directory in listed or len(paths) >= 2) and _can_fold(directory):
            what = f"{len(paths)} files read ({_names(paths)})" if paths else ""
            folded[directory] = ", ".join(w for w in (listed.get(directory), what) if w)
    changed = True
    while changed:  # fold upwards: a package directory whose subdirectories were used
        changed = False
        parents: dict[str, list[str]] = {}
        for directory in folded:
            parents.setdefault(os.path.dirname(directory), []).append(directory)
        for parent, children in parents.items():
            direct = groups.get(parent, [])
            if len(children) + len(direct) >= 2 and parent not in folded and _can_fold(parent):
                folded[parent] = f"its subdirectories {_names(children)} were used"
                changed = True
    # keep the outermost folded directories only
    tops = {d: w for d, w in folded.items()
            if not any(d != o and d.startswith(o + "/") for o in folded)}
    entries = [Entry(d, w) for d, w in sorted(tops.items())]
    for path, why in sorted(read_files.items()):
        if not any(path.startswith(d + "/") for d in tops):
            entries.append(Entry(path, why))
    entries.sort(key=lambda e: e.value)
    return entries


def _writable(trace: Trace, draft: Draft, written: dict[str, dict[str, str]]) -> None:
    """The directories the service wrote in: tmpfs for runtime files (pid files, sockets, /run,
    /tmp), state (kept in DIR/state) for data."""
    dirs: dict[str, list[str]] = {}
    for path in written:
        if path.startswith(("/proc/", "/dev/", "/sys/")):
            continue
        directory = os.path.dirname(path)
        if os.path.isdir(path) and not os.path.islink(path) and "create" not in written[path]:
            directory = path  # chmod/chown of a directory it already had
        if os.path.isdir(directory):
            directory = os.path.realpath(directory)  # a mount point must not be a symlink
        dirs.setdefault(directory, []).append(path)
    for directory in sorted(dirs):
        paths = dirs[directory]
        if any(directory.startswith(d + "/") for d in draft.writable):
            draft.writable[next(d for d in draft.writable
                                if directory.startswith(d + "/"))]["paths"] += paths
            continue
        if directory in NOT_WRITABLE or directory.startswith(("/etc/", "/usr/")):
            draft.notes.append(f"it wrote {_names(paths)} in {directory}, which cannot be "
                               "writable in the jail: point it at another directory")
            continue
        runtime = (directory in TMPFS_DIRS or directory.startswith(("/run/", "/var/run/"))
                   or all(matches(os.path.basename(p), RUNTIME_NAMES) or p in trace.unix_binds
                          for p in paths))
        entry = {"kind": "tmpfs" if runtime else "state", "paths": list(paths)}
        try:
            entry["mode"] = f"0{os.stat(directory).st_mode & 0o775:o}"
        except OSError:
            entry["mode"] = "0755"
        uids = {trace.writer_uid.get(p, 0) for p in paths} - {0}
        if len(uids) == 1:
            entry["owner_uid"] = uids.pop()
        elif not uids and os.path.isdir(directory):
            # written as root: keep the host owner if it is one of the service's users, who
            # may have to remove what root made there (a pid file, after dropping privileges)
            entry["owner_uid"] = os.stat(directory).st_uid
        draft.writable[directory] = entry
    for entry in draft.writable.values():
        paths = entry.pop("paths")
        made = "sockets and runtime files" if entry["kind"] == "tmpfs" else "data"
        entry["why"] = f"written: {_names(paths)} ({made}; starts empty)"


def _accounts(trace: Trace, draft: Draft) -> None:
    """The users and groups it switched to or chowned to, as the host defines them."""
    gids = dict(trace.gids)
    for uid, why in sorted(trace.uids.items()):
        if uid == 0:
            continue
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            draft.notes.append(f"uid {uid} ({why}) has no user on the host: add it to `users`")
            continue
        draft.users[entry.pw_name] = {"uid": uid, "gid": entry.pw_gid, "home": entry.pw_dir,
                                      "shell": entry.pw_shell, "why": why}
        gids.setdefault(entry.pw_gid, f"the primary group of {entry.pw_name}")
    for gid, why in sorted(gids.items()):
        if gid == 0:
            continue
        try:
            entry = grp.getgrgid(gid)
        except KeyError:
            draft.notes.append(f"gid {gid} ({why}) has no group on the host: add it to `groups`")
            for user in [u for u, e in draft.users.items() if e["gid"] == gid]:
                del draft.users[user]
            continue
        draft.groups[entry.gr_name] = {"gid": gid, "why": why}
    names = {e["uid"]: n for n, e in draft.users.items()}
    for entry in draft.writable.values():
        uid = entry.pop("owner_uid", None)
        if uid in names:
            entry["owner"] = names[uid]


def _service(trace: Trace, draft: Draft, command: list[str] | None) -> None:
    argv = list(command or trace.command)
    draft.command = [trace.program or argv[0], *argv[1:]] if argv else []
    if trace.used_start_dir and trace.cwd and trace.cwd != "/":
        draft.workdir = trace.cwd
        copied = any(e.value == trace.cwd for e in draft.files)  # taken whole already
        if trace.cwd not in draft.writable and not copied:
            draft.directories[trace.cwd] = {"why": "the working directory it was traced in "
                                                   "(it used it)"}
    draft.capabilities = [Entry(c, w) for c, w in sorted(trace.capabilities.items())]
    if trace.tcp_binds or trace.udp_binds or trace.tcp_connects:
        draft.network = "host"
    draft.bind = [Entry(str(p), f"TCP: {w}") for p, w in sorted(trace.tcp_binds.items())]
    draft.ready = next(iter(trace.tcp_binds), None)
    draft.connect = [Entry(str(p), w) for p, w in sorted(trace.tcp_connects.items())]
    for port, why in sorted(trace.udp_binds.items()):
        draft.notes.append(f"it bound UDP port {port} ({why}): UDP is not limited by ports")
    draft.nofile = trace.nofile
