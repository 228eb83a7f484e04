"""The system calls Python 3.11's os module lacks, through ctypes; every call's errno is checked.

Each wrapper raises OSError(errno, "<call> <what>") on failure; the layers above turn that into a
JailkitError that says what to do. x86_64 syscall numbers (the only architecture jailkit supports).
"""

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SIGCHLD = 17

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000

MFD_EXEC = 0x10  # 6.3+: executable even where vm.memfd_noexec makes memfds noexec by default
F_ADD_SEALS = 1033
F_SEAL_ALL = 0x1 | 0x2 | 0x4 | 0x8  # F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
SECBIT_NO_SETUID_FIXUP = 1 << 2
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
KEYCTL_JOIN_SESSION_KEYRING = 1

SYS_CLONE = 56
SYS_CAPSET = 126
SYS_PIVOT_ROOT = 155
SYS_KEYCTL = 250
SYS_EXECVEAT = 322
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _path(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def clone(flags: int) -> int:
    """fork(2) into new namespaces: 0 in the child, the child's pid in the parent.

    A raw clone with no new stack returns twice like fork; Python's own before/after-fork hooks
    are run around it so the child's interpreter state is as after os.fork().
    """
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _syscall(SYS_CLONE, ctypes.c_ulong(flags | SIGCHLD), None, None, None, None)
    err = ctypes.get_errno()
    if pid == 0:
        api.PyOS_AfterFork_Child()
    else:
        api.PyOS_AfterFork_Parent()
    if pid == -1:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    result = _libc.mount(
        _path(source), _path(target), _path(fstype), ctypes.c_ulong(flags), _path(data) or None
    )
    _check(result, f"mount {target}")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(SYS_PIVOT_ROOT, _path(new_root), _path(put_old)), "pivot_root")


def open_tree(path: str, flags: int) -> int:
    return _check(
        _syscall(SYS_OPEN_TREE, ctypes.c_int(-100), _path(path), ctypes.c_uint(flags)),
        f"open_tree {path}",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(fd: int, flags: int, attr_set: int, userns_fd: int = 0) -> None:
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    result = _syscall(
        SYS_MOUNT_SETATTR,
        ctypes.c_int(fd),
        b"",
        ctypes.c_uint(flags | AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(result, "mount_setattr")


def move_mount(fd: int, target: str) -> None:
    result = _syscall(
        SYS_MOVE_MOUNT,
        ctypes.c_int(fd),
        b"",
        ctypes.c_int(-100),
        _path(target),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(result, f"move_mount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    result = _libc.prctl(
        ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    return _check(result, f"prctl {option}")


def set_seccomp_filter(program: bytes) -> None:
    """Install a classic-BPF seccomp filter (struct sock_filter array, 8 bytes per insn)."""

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = SockFprog(len(program) // 8, program)
    result = _libc.prctl(
        ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog),
        ctypes.c_ulong(0), ctypes.c_ulong(0),
    )
    _check(result, "seccomp")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks; _LINUX_CAPABILITY_VERSION_3)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_syscall(SYS_CAPSET, ctypes.byref(header), data), "capset")


class _Rlimit(ctypes.Structure):
    _fields_ = [("soft", ctypes.c_ulong), ("hard", ctypes.c_ulong)]


RLIM_INFINITY = (1 << 64) - 1


def setrlimit(resource: int, soft: int, hard: int) -> None:
    # not the resource module: it is imported lazily nowhere on this path (after pivot_root
    # there is no Python library left to import from)
    _check(_libc.setrlimit(ctypes.c_int(resource), ctypes.byref(_Rlimit(soft, hard))),
           f"setrlimit {resource}")


def join_session_keyring() -> None:
    _check(_syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None), "keyctl")


def block_signals() -> None:
    """Block every signal in this thread; they stay pending across exec for the reaper to take."""
    sigset = ctypes.create_string_buffer(128)
    _check(_libc.sigfillset(sigset), "sigfillset")
    _check(_libc.sigprocmask(0, sigset, None), "sigprocmask")  # 0 = SIG_BLOCK


def unblock_signals() -> None:
    """Unblock every signal in this thread (a service must not start with them blocked)."""
    sigset = ctypes.create_string_buffer(128)
    _check(_libc.sigemptyset(sigset), "sigemptyset")
    _check(_libc.sigprocmask(2, sigset, None), "sigprocmask")  # 2 = SIG_SETMASK


def sealed_memfd(name: str) -> int:
    """A close-on-exec memory file, executable, that can be sealed (seal_all)."""
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        return os.memfd_create(name, flags | MFD_EXEC)
    except OSError as e:
        if e.errno != 22:  # EINVAL: a kernel before 6.3, whose memfds are all executable
            raise
    return os.memfd_create(name, flags)


def seal_all(fd: int) -> None:
    """No more writes, growth, shrinking or seal changes to the memfd at fd, by anyone."""
    _check(_libc.fcntl(ctypes.c_int(fd), ctypes.c_int(F_ADD_SEALS), ctypes.c_int(F_SEAL_ALL)),
           "fcntl F_ADD_SEALS")


def execveat(fd: int, argv: list[str], env: dict[str, str]) -> None:
    """Execute the program open at fd (which may lie outside the current root)."""
    c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
    items = [os.fsencode(f"{k}={v}") for k, v in env.items()]
    c_env = (ctypes.c_char_p * (len(items) + 1))(*items, None)
    _check(
        _syscall(SYS_EXECVEAT, ctypes.c_int(fd), b"", c_argv, c_env, ctypes.c_int(AT_EMPTY_PATH)),
        f"execveat {argv[0]}",
    )


SYS_OPENAT2 = 437
RESOLVE_NO_SYMLINKS = 0x04  # no symlink in any component (magic links included)
RESOLVE_BENEATH = 0x08  # no component may lead outside dirfd ("..", absolute paths)
O_PATH = 0o10000000


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """open `path` relative to `dirfd` with the kernel's own resolution limits (no race between
    a check and the open: the walk itself refuses)."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    return _check(
        _syscall(SYS_OPENAT2, ctypes.c_int(dirfd), _path(path), ctypes.byref(how),
                 ctypes.c_size_t(ctypes.sizeof(how))),
        f"openat2 {path}",
    )


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """chown of the file open at `fd` itself, an O_PATH descriptor too (no path is walked)."""
    _check(_libc.fchownat(ctypes.c_int(fd), b"", ctypes.c_uint(uid), ctypes.c_uint(gid),
                          ctypes.c_int(AT_EMPTY_PATH)), "fchownat")


def open_tree_fd(fd: int, flags: int) -> int:
    """open_tree of the directory open at `fd` itself (no path is walked)."""
    return _check(
        _syscall(SYS_OPEN_TREE, ctypes.c_int(fd), b"", ctypes.c_uint(flags | AT_EMPTY_PATH)),
        "open_tree",
    )


# --- Landlock (jailkit/launch/landlock.py) ---------------------------------------------------

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_NET_PORT = 2
_ENOSYS, _EOPNOTSUPP = 38, 95


class _LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _LandlockNetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (not built, or disabled at boot)."""
    result = _syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                      ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if result == -1 and ctypes.get_errno() in (_ENOSYS, _EOPNOTSUPP):
        return 0
    return _check(result, "landlock_create_ruleset (version)")


def landlock_create_ruleset(handled_net: int, scoped: int) -> int:
    """A ruleset fd handling no filesystem access (the mount namespace does that). `scoped`
    must be 0 below ABI 6: the kernel refuses a non-zero field it does not know."""
    attr = _LandlockRulesetAttr(0, handled_net, scoped)
    size = ctypes.sizeof(attr) if scoped else 16  # without `scoped`: the ABI 4 struct
    return _check(_syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0)), "landlock_create_ruleset")


def landlock_add_net_port(ruleset_fd: int, access: int, port: int) -> None:
    attr = _LandlockNetPortAttr(access, port)
    _check(_syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset_fd),
                    ctypes.c_int(LANDLOCK_RULE_NET_PORT), ctypes.byref(attr), ctypes.c_uint32(0)),
           f"landlock_add_rule port {port}")


def landlock_restrict_self(ruleset_fd: int) -> None:
    """Confine this thread and its future children; needs no_new_privs (or CAP_SYS_ADMIN)."""
    _check(_syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)),
           "landlock_restrict_self")


def setns(fd: int, flags: int) -> None:
    """Join the namespaces `flags` names of the process a pidfd `fd` refers to, all at once
    (Linux 5.8: the kernel checks each against the user namespace joined with them)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(flags)), "setns")
