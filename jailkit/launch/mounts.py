"""The jail's mount table: planned as data in the launcher, applied by the jail's pid 1.

Everything happens inside the jail's own mount namespace, made private first, so nothing here
can appear on the host; the host's root is detached after pivot_root. The jail's pid 1 runs
as the jail's (unprivileged) root and may not be allowed to walk the host path to the jail, so
a root launcher hands it detached mounts of the tree and the state directories
(`detached_sources`); it attaches the tree on a staging tmpfs and works from inside it (its
cwd). Every mount target is checked component by component for symlinks, so a link inside the
jail can never point a mount at a host path. The service runs in a mount namespace copied from
this one into a nested user namespace (contain.py), where the kernel locks every mount and its
flags: nothing made read-only, nosuid, nodev or noexec here can be undone by the service.
"""

import os

from jailkit.errors import JailkitError
from jailkit.launch import syscalls as sc

# /proc entries that write to the kernel, not to the jail's own processes
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
TMPFS_FLAGS = sc.MS_NOSUID | sc.MS_NODEV


class Mount:
    """One step of the jail's mount table, planned in the launcher and done by the jail's pid 1:
    `apply(detached)`, from the new root as cwd. A step with a `source` (a path under the jail
    directory) also has `detach(fd, maps, userns_pid)`, by which the host side turns the source,
    opened beneath the jail directory, into the detached mount handed over (`maps`: the id maps
    when root launches, which may idmap and chown; None for an ordinary user's own ids)."""

    __slots__ = ("path", "source")
    kind = ""

    def __init__(self, path: str, source: str | None = None):
        self.path, self.source = path, source

    def details(self) -> str:
        return f"source={self.source}" if self.source else ""

    def __repr__(self) -> str:
        return f"{self.kind:6} {self.path} {self.details()}".rstrip()

    def open(self, jail, flags: int, dirs=None) -> int:
        """A descriptor of the source, resolved beneath the jail directory."""
        return jail.open_source(self.source, flags, dirs)


class Tree(Mount):
    """The jail tree, read-only, nosuid, nodev, attached on a staging tmpfs and made the cwd:
    pivot_root needs the new root to be a mount point. As root it is idmapped (its on-disk ids
    read as the jail's); an ordinary user's jail reads it as it is."""

    __slots__ = ()
    kind = "root"

    def detach(self, fd, as_root, userns_pid):
        if as_root is None:
            return _clone(fd, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
        return idmapped_root(fd, userns_pid)

    def apply(self, detached):
        staging = os.path.dirname(STAGING)
        sc.mount("tmpfs", staging, "tmpfs", TMPFS_FLAGS | sc.MS_NOEXEC, "mode=700,size=16k")
        os.mkdir(STAGING, 0o700)
        sc.move_mount(detached, STAGING)
        os.close(detached)
        os.chdir(STAGING)


class Tmpfs(Mount):
    """A writable directory that lives as long as the jail."""

    __slots__ = ("data", "create")
    kind = "tmpfs"

    def __init__(self, path: str, data: str, create: bool):
        super().__init__(path)
        self.data, self.create = data, create

    def details(self):
        return f"data={self.data} create={self.create}"

    def apply(self, detached):
        sc.mount("tmpfs", _target(self.path, self.create), "tmpfs", TMPFS_FLAGS, self.data)


class StateBind(Mount):
    """A writable directory kept across runs, DIR/state/...: never idmapped (the jail's root
    could create setuid-root files through it) but owned by the jail's mapped ids instead."""

    __slots__ = ("uid", "gid", "create")
    kind = "bind"

    def __init__(self, path: str, source: str, uid: int, gid: int, create: bool):
        super().__init__(path, source)
        self.uid, self.gid, self.create = uid, gid, create

    def details(self):
        return f"source={self.source} create={self.create} uid={self.uid} gid={self.gid}"

    def detach(self, fd, as_root, userns_pid):
        if as_root is not None:
            os.fchown(fd, as_root.host_uid(self.uid), as_root.host_gid(self.gid))
        else:  # an ordinary user's jail, from inside its user namespace: the jail's own ids
            sc.fchown_empty(fd, self.uid, self.gid)
        return _clone(fd, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)

    def apply(self, detached):
        sc.move_mount(detached, _target(self.path, self.create))
        os.close(detached)


class HostBind(Mount):
    """A host directory mounted live (`binds`): read-only unless `rw`, always nosuid and nodev,
    noexec unless `exec`. Opened from / with no symlink on its path, never idmapped (through a
    writable idmapped mount the jail's root would create files owned by the host's root) and
    never chowned: it is the administrator's, and the jail's ids read its owners as they are."""

    __slots__ = ("rw", "exec", "create")
    kind = "host"

    def __init__(self, path: str, source: str, rw: bool, exec_: bool, create: bool):
        super().__init__(path, source)
        self.rw, self.exec, self.create = rw, exec_, create

    def details(self):
        return f"source={self.source} rw={self.rw} exec={self.exec} create={self.create}"

    def open(self, jail, flags: int, dirs=None) -> int:
        from jailkit.launch.jail import open_host_dir

        return open_host_dir(self.source, flags)

    def detach(self, fd, as_root, userns_pid):
        attrs = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
        attrs |= 0 if self.rw else sc.MOUNT_ATTR_RDONLY
        attrs |= 0 if self.exec else sc.MOUNT_ATTR_NOEXEC
        return _clone(fd, attrs)

    def apply(self, detached):
        sc.move_mount(detached, _target(self.path, self.create))
        os.close(detached)


class Proc(Mount):
    """A proc of the jail's own pid namespace, with the entries that write to the kernel (not
    to the jail's own processes) read-only."""

    __slots__ = ()
    kind = "proc"

    def apply(self, detached):
        target = _target(self.path)
        _mount_proc(target)
        for name in PROC_READ_ONLY:
            path = f"{target}/{name}"
            if os.path.exists(path):
                sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
                _remount(path, sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


class Dev(Mount):
    """A tmpfs /dev, read-only once made, in every jail: /dev/log, and for a profile that
    names devices, binds of the host's nodes (mknod is refused in a user namespace), a devpts
    of its own, /dev/shm. A jail that names none gets no shm: it would be a writable, exec-able
    place in a jail that asked for none."""

    __slots__ = ("devices", "pts_gid", "syslog_fd")
    kind = "dev"

    def __init__(self, path: str, devices, pts_gid: int | None):
        super().__init__(path)
        self.devices, self.pts_gid = devices, pts_gid
        self.syslog_fd = None  # /dev/log, bound by apply; pid 1 relays it (reaper.c)

    def details(self):
        return f"devices={self.devices} pts_gid={self.pts_gid}"

    def apply(self, detached):
        if not os.path.lexists(f".{self.path}") and not self.devices:
            # built by an older jailkit, which made /dev only for devices: it runs as it did
            os.write(2, f"jailkit: warning: the jail has no {self.path}, so no {self.path}/log "
                        "for syslog (built by an older jailkit): rebuild it to get one\n".encode())
            return
        target = _target(self.path)
        sc.mount("tmpfs", target, "tmpfs", TMPFS_FLAGS | sc.MS_NOEXEC, "mode=755,size=64k")
        if self.devices:
            self._devices(target)
        self.syslog_fd = _bind_syslog(f"{target}/log")
        _remount(target, sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NOEXEC)

    def _devices(self, target: str) -> None:
        for name in self.devices:
            node = f"{target}/{name}"
            os.close(os.open(node, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            sc.mount(f"/dev/{name}", node, None, sc.MS_BIND)
        os.mkdir(f"{target}/pts", 0o755)
        data = "newinstance,ptmxmode=0666,mode=620"
        if self.pts_gid is not None:
            data += f",gid={self.pts_gid}"
        sc.mount("devpts", f"{target}/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, data)
        os.symlink("pts/ptmx", f"{target}/ptmx")
        os.mkdir(f"{target}/shm")
        sc.mount("tmpfs", f"{target}/shm", "tmpfs", TMPFS_FLAGS, "mode=1777,size=64m")
        for name, link in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                           ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(link, f"{target}/{name}")


def _bind_syslog(path: str) -> int:
    """/dev/log, a datagram socket any user of the jail may send to: sshd, vsftpd and PAM
    report failed logins only through syslog. Bound before /dev is made read-only."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
    except OSError:
        sock.close()
        raise
    return sock.detach()


class Sys(Mount):
    """The host's /sys, read-only all the way down (a fresh sysfs would need our own netns)."""

    __slots__ = ()
    kind = "sys"

    def apply(self, detached):
        target = _target(self.path)
        fd = sc.open_tree("/sys", sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE | os.O_CLOEXEC)
        try:
            attrs = sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
            sc.mount_setattr(fd, sc.AT_RECURSIVE, attrs | sc.MOUNT_ATTR_NOEXEC)
            sc.move_mount(fd, target)
        finally:
            os.close(fd)


def plan(spec, host_root: str, state_dir: str, pts_gid: int | None) -> list[Mount]:
    """The ordered mounts for `spec`, the jail tree being `host_root`."""
    ops = [Tree("/", host_root)]
    made = []  # tmpfs writable paths: nested writable paths are created inside them
    for w in sorted(spec.writable, key=lambda w: w.path.count("/")):
        create = any(w.path.startswith(p + "/") for p in made)
        if w.kind == "tmpfs":
            data = f"mode={w.mode:o},uid={w.uid},gid={w.gid}"
            if w.size:
                data += f",size={w.size}"
            ops.append(Tmpfs(w.path, data, create))
            made.append(w.path)
        else:
            ops.append(StateBind(w.path, os.path.join(state_dir, w.source), w.uid, w.gid, create))
    for b in sorted(spec.binds, key=lambda b: b.path.count("/")):
        create = any(b.path.startswith(p + "/") for p in made)
        ops.append(HostBind(b.path, b.source, b.rw, b.exec, create))
    if spec.mount_proc:
        ops.append(Proc("/proc"))
    ops.append(Dev("/dev", spec.devices, pts_gid))  # every jail: its /dev/log
    if spec.mount_sys:
        ops.append(Sys("/sys"))
    return ops


def with_sources(ops: list[Mount]) -> list[Mount]:
    """The steps that need a detached mount from the host side, in the one order both sides use
    to pair the descriptors handed over (SCM_RIGHTS) with their steps."""
    return [op for op in ops if op.source is not None]


def detached_sources(ops: list[Mount], maps, userns_pid: int, jail) -> list[int]:
    """As root, in the launcher: a detached mount for each of `with_sources(ops)`, in order.

    The jail's pid 1 attaches them in its own namespace; it runs as the jail's unprivileged root
    and may not be allowed to walk the host path to the jail. Sources are opened beneath
    `jail`'s directory descriptor (jail.Jail.open_source), and chowned and cloned through that
    descriptor: the jail can plant links in its state.
    """
    fds = []
    try:
        for op in with_sources(ops):
            fd = op.open(jail, os.O_RDONLY)
            try:
                fds.append(op.detach(fd, maps, userns_pid))
            finally:
                os.close(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _clone(fd: int, attrs: int) -> int:
    """A detached copy of the mount at directory descriptor `fd`, with `attrs` set on it."""
    clone = sc.open_tree_fd(fd, sc.OPEN_TREE_CLONE | os.O_CLOEXEC)
    try:
        sc.mount_setattr(clone, 0, attrs)
    except BaseException:
        os.close(clone)
        raise
    return clone


def _clone_sources(ops: list[Mount], jail) -> list[int]:
    """In an ordinary user's jail (their own ids, so their own paths are reachable): the same
    detached mounts as detached_sources, without idmapping or chown, made before the staging
    tmpfs covers /tmp, where the jail directory may lie. The sources are resolved from `jail`'s
    directory opened again here: open_tree clones only mounts of the caller's namespace."""
    fds = []
    dirs = jail.dirs_here()
    try:
        for op in with_sources(ops):
            fd = op.open(jail, sc.O_PATH, dirs)
            try:
                fds.append(op.detach(fd, None, None))
            finally:
                os.close(fd)
    finally:
        for fd in dirs:
            os.close(fd)
    return fds


STAGING = "/tmp/.jailkit-root"  # in the jail's own namespace, on a private tmpfs


def _target(path: str, create: bool = False) -> str:
    """Jail `path` relative to the new root (the cwd), refusing any symlink on the way: it
    could lead out of the jail."""
    current = "."
    for part in path.strip("/").split("/"):
        current = f"{current}/{part}"
        try:
            is_link = os.path.islink(current)
            exists = os.path.isdir(current)
        except OSError:
            is_link = exists = False
        if is_link:
            raise JailkitError(
                f"{path}: {current[1:]} is a symlink in the jail; mount points must be "
                "real directories (name the link's target in the profile instead)"
            )
        if not exists:
            if not create:
                raise JailkitError(
                    f"the jail has no directory {path} to mount on: add it to the profile's "
                    "directories and rebuild"
                )
            os.mkdir(current, 0o755)
    return current


def _remount(target: str, flags: int) -> None:
    """Remount a bind with `flags`, keeping the flags a user namespace may not clear (locked)."""
    st = os.statvfs(target)
    keep = st.f_flag & (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | flags | keep)


def idmapped_root(tree_fd: int, userns_pid: int) -> int:
    """A detached, read-only, nosuid, nodev clone of the tree open at `tree_fd` whose on-disk
    ids are read through the user namespace of `userns_pid` (so on-disk uid 0 is the jail's 0).

    Needs real root. Only ever read-only: through a writable idmapped mount the jail's root
    could create setuid files owned by the host's uid 0 (docs/kernel-notes.md, "Idmapped
    mounts").
    """
    fd = sc.open_tree_fd(tree_fd, sc.OPEN_TREE_CLONE | os.O_CLOEXEC)
    try:
        userns = os.open(f"/proc/{userns_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            attrs = sc.MOUNT_ATTR_IDMAP | sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID
            sc.mount_setattr(fd, 0, attrs | sc.MOUNT_ATTR_NODEV, userns)
        finally:
            os.close(userns)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mount_proc(target: str) -> None:
    try:
        sc.mount("proc", target, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    except PermissionError:
        # the kernel refuses a new proc while the host's has mounts over parts of it
        raise JailkitError(
            "cannot mount a proc of the jail's own: the host's /proc has mounts over parts of "
            "it (in a container?); run jailkit on the host"
        ) from None


def private_proc() -> int:
    """A descriptor of a fresh proc of the jail's pid namespace, on the staging tmpfs: pid 1
    writes the service's id maps through it after pivot_root, which detaches it with the host's
    tree (so it works whether or not the jail has a /proc, and the service never sees it)."""
    path = os.path.join(os.path.dirname(STAGING), ".jailkit-proc")
    os.mkdir(path, 0o700)
    _mount_proc(path)
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def apply(ops: list[Mount], fds: list[int] | None, jail) -> None:
    """Set up the jail in this (new, private) mount namespace; leaves the cwd at its root.
    `fds`: the launcher's detached_sources, in `with_sources` order (None: an ordinary user's
    jail, which makes its own)."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing propagates back to the host
    if fds is None:
        try:
            fds = _clone_sources(ops, jail)
        except OSError as e:
            raise JailkitError(f"cannot open the jail's tree or state: {e}") from None
    detached = dict(zip(map(id, with_sources(ops)), fds, strict=True))
    for op in ops:
        try:
            op.apply(detached.get(id(op)))
        except OSError as e:
            raise JailkitError(f"cannot mount {op.kind} on {op.path} in the jail: {e}") from None


def pivot() -> None:
    """Make the cwd (the jail's root mount) the root and detach the host's: unlike chroot,
    there is no way back up.

    Private first, the tree and all below it: the detached clones the launcher made of the
    host's mounts (open_tree) are peers of those, and on a host where they are shared (systemd
    makes every mount shared) pivot_root refuses a shared mount (EINVAL), and mounts would
    propagate between the jail and the host."""
    sc.mount(None, ".", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
