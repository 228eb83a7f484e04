"""`--format bundle`: an OCI runtime bundle (config.json + rootfs/) confined as `jailkit run`
confines the jail, for runc and other OCI runtimes.

The same confinement, item by item: user, mount, pid, ipc and uts namespaces (network too unless
the jail shares the host's); the jail's ids mapped as the launcher maps them (as root: the
`jailkit` range of /etc/subuid and /etc/subgid or 1000000000.., the rootfs owned by those host
ids, since runc 1.1 has no idmapped root; otherwise the caller's own id as 0, for
`runc --rootless`); a read-only root; /proc with sys, irq, bus, fs read-only; a minimal /dev; the
writable directories as tmpfs or binds of DIR/state; the profile's capabilities in the bounding,
effective and permitted sets (and inheritable/ambient for a non-root user); noNewPrivileges;
rlimits; the cgroup limits (limits.py: memory, swap, pids, CPU weight and quota, I/O weight);
the live host binds, with their flags; the hostname; seccomp from jailkit.launch.seccomp's own
deny list.

What a bundle cannot say: the launcher's `max_user_namespaces` 0 (runc refuses user.* sysctls),
so the filter refuses clone() with CLONE_NEWUSER and clone3 (ENOSYS: glibc falls back to clone)
instead; Landlock rules; a veth (the jail gets an empty network namespace); the launcher's
refusal of a bind source reached through a symlink (the runtime resolves the source path as it
finds it). The state directories are binds of the bundle's own, empty, state/: a note says how
to carry the jail's files over; one names the secrets in rootfs/, or those left out of it.
"""

import json
import os
import shlex
import stat

from jailkit.export import limits
from jailkit.export.source import BuiltJail
from jailkit.launch import allocate, seccomp
from jailkit.launch.rlimits import RLIMITS
from jailkit.vocabulary import SIGNAL_NAMES

OCI_VERSION = "1.0.2"
RLIM_INFINITY = (1 << 64) - 1
CLONE_NEWUSER = 0x10000000
ENOSYS = 38
EAFNOSUPPORT = 97
RLIMIT_NAMES = {number: f"RLIMIT_{name.upper()}" for name, number in RLIMITS.items()}
PROC_READ_ONLY = ("/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs")


def id_maps(uid_count: int, jail_dir: str) -> tuple[list[dict], list[dict]]:
    """(uidMappings, gidMappings): as root, the jail's own id range, the one `jailkit run` gives
    it (jailkit.launch.allocate); the caller's own id otherwise."""
    if os.geteuid() != 0:
        return ([{"containerID": 0, "hostID": os.geteuid(), "size": 1}],
                [{"containerID": 0, "hostID": os.getegid(), "size": 1}])
    ids = allocate.for_jail(os.path.realpath(jail_dir), uid_count, subnet=False)
    return ([{"containerID": 0, "hostID": ids.uid, "size": uid_count}],
            [{"containerID": 0, "hostID": ids.gid, "size": uid_count}])


def _host_id(maps: list[dict], n: int) -> int:
    for m in maps:
        if m["containerID"] <= n < m["containerID"] + m["size"]:
            return m["hostID"] + n - m["containerID"]
    return maps[0]["hostID"]  # an id the map lacks (only when not root): the caller's own


def seccomp_profile(allow: list[str]) -> dict:
    """The deny list of jailkit.launch.seccomp as an OCI seccomp profile (EPERM, as there; other
    architectures are refused by the runtime's filter)."""
    denied = sorted(name for name in seccomp.DENIED if name not in allow)
    rules = [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
             {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
              "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                        "op": "SCMP_CMP_MASKED_EQ"}]},
             {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}]
    families = getattr(seccomp, "SOCKET_FAMILIES", None)  # the socket-family filter's data
    if families:
        allowed = {*families.values(), *(nr for name, nr in
                                          getattr(seccomp, "OPTIONAL_FAMILIES", {}).items()
                                          if name in allow)}
        highest = max(allowed)
        for call in ("socket", "socketpair"):
            rules.append({"names": [call], "action": "SCMP_ACT_ERRNO", "errnoRet": EAFNOSUPPORT,
                          "args": [{"index": 0, "value": highest, "op": "SCMP_CMP_GT"}]})
            rules += [{"names": [call], "action": "SCMP_ACT_ERRNO", "errnoRet": EAFNOSUPPORT,
                       "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}]}
                      for family in range(highest) if family not in allowed]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": rules}


def runtime_config(launch: dict, state_dir: str, jail_dir: str, root_fs: str = "rootfs") -> dict:
    """config.json for a validated launch.json (as a dict)."""
    from jailkit.launch.spec import LaunchSpec

    spec = LaunchSpec.from_dict(launch)
    uid_maps, gid_maps = id_maps(spec.uid_count, jail_dir)
    caps = sorted(spec.capabilities)
    capabilities = {"bounding": caps, "effective": caps, "permitted": caps}
    if spec.uid != 0:  # how a non-root service keeps a capability across exec, as caps.py does
        capabilities |= {"inheritable": caps, "ambient": caps}
    namespaces = [{"type": t} for t in ("user", "mount", "pid", "ipc", "uts")]
    if spec.network != "host":
        namespaces.append({"type": "network"})
    resources = limits.runtime_resources(spec.limits)
    rlimits = [{"type": RLIMIT_NAMES[RLIMITS[name]],
                "soft": RLIM_INFINITY if soft is None else soft,
                "hard": RLIM_INFINITY if hard is None else hard}
               for name, (soft, hard) in sorted(spec.rlimits.items())]
    pts_gid = ["gid=5"] if any(m["containerID"] <= 5 < m["containerID"] + m["size"]
                               for m in gid_maps) else []
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "nodev", "noexec"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "noexec", "strictatime", "mode=755", "size=64k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", *pts_gid]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]
    if not spec.mount_proc:
        mounts = mounts[1:]
    if spec.mount_sys:
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    for w in spec.writable:
        if w.kind == "tmpfs":
            options = ["nosuid", "nodev", f"mode={w.mode:o}", f"uid={w.uid}", f"gid={w.gid}"]
            mounts.append({"destination": w.path, "type": "tmpfs", "source": "tmpfs",
                           "options": options + ([f"size={w.size}"] if w.size else [])})
        else:
            mounts.append({"destination": w.path, "type": "bind",
                           "source": os.path.join(state_dir, w.source),
                           "options": ["rbind", "rw", "nosuid", "nodev"]})
    mounts += bind_mounts(spec.binds)
    linux = {
        "uidMappings": uid_maps, "gidMappings": gid_maps, "namespaces": namespaces,
        "readonlyPaths": list(PROC_READ_ONLY) if spec.mount_proc else [],
        "seccomp": seccomp_profile(spec.seccomp_allow),
    }
    if resources:
        linux["resources"] = resources
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.gid,
                     **({"additionalGids": spec.groups} if spec.groups else {})},
            "args": spec.command,
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "cwd": spec.workdir,
            "capabilities": capabilities,
            "rlimits": rlimits,
            "noNewPrivileges": True,
        },
        "root": {"path": root_fs, "readonly": True},
        "hostname": spec.hostname,
        "mounts": mounts,
        "annotations": {"org.jailkit.profile": spec.name,
                        "org.jailkit.stop-signal": SIGNAL_NAMES[spec.stop_signal]},
        "linux": linux,
    }


def bind_flags(bind) -> list[str]:
    """A live host bind's flags as jailkit's launcher sets them (mounts.HostBind): read-only
    unless rw, nosuid and nodev, noexec unless exec. Mount options, as `podman run -v` takes
    them too."""
    return ["rw" if bind.rw else "ro", "nosuid", "nodev", *([] if bind.exec else ["noexec"])]


def bind_mounts(binds) -> list[dict]:
    """The live host binds, not recursive (a mount below the source stays out, as open_tree
    without AT_RECURSIVE leaves it), shallower paths first, so that a bind inside another lands
    on top of it, as the launcher orders them."""
    return [{"destination": b.path, "type": "bind", "source": b.source,
             "options": ["bind", *bind_flags(b)]}
            for b in sorted(binds, key=lambda b: b.path.count("/"))]


def run_command(jail: BuiltJail, path: str) -> str:
    """How to run the bundle at `path`: the container is named as the jail (a jail name,
    vocabulary.check_name, is already one runc takes: letters, digits, '.', '_', '-')."""
    return f"runc run -b {shlex.quote(path)} {shlex.quote(jail.run_name)}"


def notes(jail: BuiltJail, path: str, leave_out: frozenset[str] = frozenset()) -> list[str]:
    """What the bundle at `path` carries in a way some runtime refuses, what it starts empty,
    and the secrets in its rootfs or left out of it (one line each)."""
    from jailkit.export.notes import secret_notes
    from jailkit.launch.spec import LaunchSpec

    lines = limits.runtime_notes(LaunchSpec.from_dict(jail.launch).limits)
    for w in jail.state_dirs():
        kept = os.path.join(jail.dir, "state", w.source)
        own = os.path.join(path, "state", w.source)
        lines.append(f"state directory {w.path}: the bundle binds its own {own}, empty; to keep "
                     f"the jail's files: cp -a {shlex.quote(kept + '/.')} {shlex.quote(own + '/')}"
                     f" (or make that mount's source {kept} in config.json, never while the "
                     "jail runs)")
    records = jail.manifest.records
    lines += secret_notes(
        jail, leave_out, f"{path}/rootfs", "keep the bundle private",
        lambda paths: "put each back before `runc run`: " + ", ".join(
            f"{shlex.quote(path + '/rootfs' + p)} (owner {records[p].uid}:{records[p].gid} in "
            f"the container, as config.json maps ids; mode {records[p].mode:04o})"
            for p in paths))
    return lines


def write_bundle(jail: BuiltJail, directory: str, final_path: str,
                 leave_out: frozenset[str] = frozenset()) -> None:
    """Fill `directory` (to become `final_path`): config.json, and rootfs/ written from the
    checked tree but the files `leave_out`, owned by the host ids the jail's ids map to."""
    config = runtime_config(jail.launch, os.path.join(final_path, "state"), jail.dir)
    owner_uids = config["linux"]["uidMappings"]
    owner_gids = config["linux"]["gidMappings"]
    # traversable only: the runtime enters rootfs/ as the jail's mapped root, not as root
    os.chmod(directory, 0o711)
    root_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.mkdir("rootfs", 0o700, dir_fd=root_fd)
        stack = [("/", os.open("rootfs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                               dir_fd=root_fd))]
        try:
            for record, reader in jail.entries(leave_out):
                uid, gid = _host_id(owner_uids, record.uid), _host_id(owner_gids, record.gid)
                if record.path == "/":
                    _own(stack[0][1], uid, gid, record.mode)
                    continue
                parent, name = record.path.rsplit("/", 1)
                while stack[-1][0] != (parent or "/"):
                    os.close(stack.pop()[1])
                parent_fd = stack[-1][1]
                if record.type == "dir":
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 dir_fd=parent_fd)
                    _own(fd, uid, gid, record.mode)
                    stack.append((record.path, fd))
                elif record.type == "symlink":
                    os.symlink(record.target, name, dir_fd=parent_fd)
                    if os.geteuid() == 0:
                        os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
                else:
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                 0o600, dir_fd=parent_fd)
                    with os.fdopen(fd, "wb") as f:
                        while chunk := reader.read(1 << 20):
                            f.write(chunk)
                        reader.verify()
                        f.flush()
                        _own(fd, uid, gid, record.mode)
                        if reader.caps is not None:
                            os.setxattr(fd, "security.capability", reader.caps)
        finally:
            for _, fd in stack:
                os.close(fd)
        _state_dirs(root_fd, jail.launch, owner_uids, owner_gids)
        data = json.dumps(config, indent=2).encode() + b"\n"
        fd = os.open("config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=root_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    finally:
        os.close(root_fd)


def _state_dirs(bundle_fd: int, launch: dict, uid_maps: list[dict], gid_maps: list[dict]):
    """state/SOURCE for each bind-mounted writable directory, its top owned as the jail sees fit."""
    from jailkit.launch.spec import LaunchSpec

    for w in LaunchSpec.from_dict(launch).writable:
        if w.kind != "bind":
            continue
        fd = bundle_fd
        for part in ["state", *w.source.split("/")]:
            os.mkdir(part, 0o755, dir_fd=fd)  # a fresh bundle: nothing here to follow
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            if fd != bundle_fd:
                os.close(fd)
            fd = child
        _own(fd, _host_id(uid_maps, w.uid), _host_id(gid_maps, w.gid), w.mode)
        os.close(fd)


def _own(fd: int, uid: int, gid: int, mode: int) -> None:
    if os.geteuid() == 0:
        os.fchown(fd, uid, gid)  # before chmod: chown clears setuid bits
    os.fchmod(fd, stat.S_IMODE(mode))
