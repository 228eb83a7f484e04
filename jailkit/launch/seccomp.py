"""The seccomp filter: a hand-built classic BPF program, installed last, just before exec.

Calls a service never needs fail with EPERM (not a kill: a probing library falls back cleanly).
Other architectures' syscall tables (i386 via int 0x80) kill the process, and x32 numbers are
refused, so a denied call cannot be reached under another number. A profile can take names out
of the deny list with `seccomp_allow`.

A deny list plus a ceiling, rather than an allow-list: every x86_64 syscall up to REVIEWED_MAX
was reviewed (DENIED are the ones a service must not have), and every number above it is refused.
A new kernel's new call (open_tree_attr, 467, came with 6.15 and escaped a list written before it)
is then EPERM until someone reviews it and raises the ceiling. An allow-list of the ~300 calls
that shells, interpreters and servers use would give no more than that and break services in
ways a profile cannot foresee.

socket(2) and socketpair(2) are also checked on their first argument, the address family: only
AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (glibc's getaddrinfo and `ip` use it) are allowed.
The others fail with EAFNOSUPPORT, as on a kernel without them: AF_VSOCK reaches the hypervisor
and its other guests whatever the network namespace, and the other families are kernel code no
service needs. AF_PACKET (raw frames, e.g. a DHCP server) only when `seccomp_allow` names it.
"""

import struct

from jailkit.launch import syscalls as sc

# name -> x86_64 number
DENIED = {
    # kernel modules, kexec, reboot, swap, accounting, clocks, port I/O
    "init_module": 175, "finit_module": 313, "delete_module": 176, "create_module": 174,
    "kexec_load": 246, "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168,
    "acct": 163, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
    "adjtimex": 159, "iopl": 172, "ioperm": 173, "quotactl": 179, "quotactl_fd": 443,
    "syslog": 103, "uselib": 134, "_sysctl": 156, "nfsservctl": 180, "lookup_dcookie": 212,
    "vhangup": 153, "sethostname": 170, "setdomainname": 171,
    # large kernel attack surface a service does not use
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "fanotify_init": 300,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    # the caller's keys: a fresh session keyring alone does not hide them (docs/kernel-notes.md)
    "keyctl": 250, "add_key": 248, "request_key": 249,
    # file handles bypass the mount namespace (the "shocker" escape)
    "open_by_handle_at": 304, "name_to_handle_at": 303,
    # the mount table is fixed once the jail is set up
    "mount": 165, "umount2": 166, "pivot_root": 155, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "open_tree_attr": 467,
    # new namespaces (a nested user namespace grants a fresh set of capabilities) and joining
    "unshare": 272, "setns": 308,
    # other processes' memory
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
}
# The highest syscall number reviewed (Linux 6.17's file_setattr); newer ones are refused.
REVIEWED_MAX = 469
SOCKET_CALLS = (41, 53)  # socket, socketpair
# address family -> number: the families any service may use
SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
OPTIONAL_FAMILIES = {"AF_PACKET": 17}  # only when seccomp_allow names it
ALLOWABLE = (*DENIED, *OPTIONAL_FAMILIES)  # what seccomp_allow may name

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
LD_W_ABS = 0x20
JEQ_K = 0x15
JGT_K = 0x25
JGE_K = 0x35
RET_K = 0x06
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
EPERM = 1
EAFNOSUPPORT = 97
ARCH_OFFSET, NR_OFFSET, ARG0_OFFSET = 4, 0, 16  # in struct seccomp_data (arg 0's low word)


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def build(allow: list[str]) -> bytes:
    """The BPF program (struct sock_filter[]): DENIED minus `allow`, every number above
    REVIEWED_MAX and x32's refused; socket families checked."""
    numbers = sorted(nr for name, nr in DENIED.items() if name not in allow)
    families = sorted([*SOCKET_FAMILIES.values(),
                       *(nr for name, nr in OPTIONAL_FAMILIES.items() if name in allow)])
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to relative offsets
    prog = [
        (LD_W_ABS, None, None, ARCH_OFFSET),
        (JEQ_K, "syscall", "kill", AUDIT_ARCH_X86_64),
        ("kill", RET_K, RET_KILL_PROCESS),
        ("syscall", LD_W_ABS, NR_OFFSET),
        (JGE_K, "deny", None, X32_SYSCALL_BIT),
        (JGT_K, "deny", None, REVIEWED_MAX),
        *((JEQ_K, "socket", None, nr) for nr in SOCKET_CALLS),
        *((JEQ_K, "deny", None, nr) for nr in numbers),
        (RET_K, None, None, RET_ALLOW),
        ("deny", RET_K, RET_ERRNO | EPERM),
        ("socket", LD_W_ABS, ARG0_OFFSET),
        *((JEQ_K, "family_allowed", None, family) for family in families),
        (RET_K, None, None, RET_ERRNO | EAFNOSUPPORT),
        ("family_allowed", RET_K, RET_ALLOW),
    ]
    labels = {}
    insns = []
    for entry in prog:
        if isinstance(entry[0], str):  # a labelled statement: (label, code, k)
            labels[entry[0]] = len(insns)
            entry = (entry[1], None, None, entry[2])
        insns.append(entry)

    def offset(label, at: int) -> int:
        jump = 0 if label is None else labels[label] - at - 1
        assert 0 <= jump < 256, "BPF jumps are forward and 8 bits long"
        return jump

    return b"".join(_insn(code, offset(jt, i), offset(jf, i), k)
                    for i, (code, jt, jf, k) in enumerate(insns))


def install(allow: list[str]) -> None:
    """Install the filter; no_new_privs must already be set."""
    sc.set_seccomp_filter(build(allow))
