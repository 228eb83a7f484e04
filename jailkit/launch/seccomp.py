"""The seccomp filter: a hand-built classic BPF program, installed last, just before exec.

Calls a service never needs fail with EPERM (not a kill: a probing library falls back cleanly).
Other architectures' syscall tables (i386 via int 0x80) kill the process, and x32 numbers are
refused, so a denied call cannot be reached under another number. A profile can take names out
of the deny list with `seccomp_allow`.
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
    # the caller's keys: a fresh session keyring alone does not hide them (KERNEL-NOTES)
    "keyctl": 250, "add_key": 248, "request_key": 249,
    # file handles bypass the mount namespace (the "shocker" escape)
    "open_by_handle_at": 304, "name_to_handle_at": 303,
    # the mount table is fixed once the jail is set up
    "mount": 165, "umount2": 166, "pivot_root": 155, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    # new namespaces (a nested user namespace grants a fresh set of capabilities) and joining
    "unshare": 272, "setns": 308,
    # other processes' memory
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
}

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
RET_K = 0x06
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
EPERM = 1


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def build(allow: list[str]) -> bytes:
    """The BPF program (struct sock_filter[]) denying DENIED minus `allow`."""
    numbers = sorted(nr for name, nr in DENIED.items() if name not in allow)
    deny_at = 5 + len(numbers) + 1  # index of the EPERM return
    prog = [
        _insn(LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(RET_K, 0, 0, RET_KILL_PROCESS),
        _insn(LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _insn(JGE_K, deny_at - 5, 0, X32_SYSCALL_BIT),
    ]
    for nr in numbers:
        prog.append(_insn(JEQ_K, deny_at - len(prog) - 1, 0, nr))
    prog.append(_insn(RET_K, 0, 0, RET_ALLOW))
    prog.append(_insn(RET_K, 0, 0, RET_ERRNO | EPERM))
    return b"".join(prog)


def install(allow: list[str]) -> None:
    """Install the filter; no_new_privs must already be set."""
    sc.set_seccomp_filter(build(allow))
