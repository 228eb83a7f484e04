"""Capabilities that break the jail's model, and what each one opens: a profile must accept
each one by name (`dangerous_capabilities`), and build and run say what it opens.

The jail holds its capabilities in its own user namespace, so most of these reach only the
jail's own namespaces; each still hands the service a way around another layer (the seccomp
filter, file modes, the other processes of the jail) or a large part of the kernel to attack.
CAP_NET_ADMIN is among them: in a network namespace of its own it can re-address the jail's end
of a veth (spoofing towards the host) and reaches netfilter, a frequent source of kernel
exploits; with the host's network it grants nothing, and a service that needs it there is
better run outside a jail. CAP_NET_RAW is not: raw sockets on a namespace the jail owns see only
its own traffic, and AF_PACKET is refused by the filter unless asked for.
No imports: the build and the `jailkit run` path both read it.
"""

DANGEROUS_CAPABILITIES = {
    "CAP_SYS_ADMIN": "most administrative calls in the jail's namespaces (the filter stops mounts "
                     "and namespaces, not the rest) and much kernel code to attack",
    "CAP_SYS_PTRACE": "reading and writing the memory of every process in the jail, pid 1 "
                      "included (/proc/PID/mem)",
    "CAP_SYS_MODULE": "loading kernel code, should a kernel honour it in a user namespace",
    "CAP_DAC_READ_SEARCH": "reading every file in the jail whatever its mode, and file handles",
    "CAP_SYS_RAWIO": "raw device and I/O port access, where the kernel allows it",
    "CAP_SYS_BOOT": "rebooting (killing) the jail and kexec, where the filter is lifted",
    "CAP_MAC_ADMIN": "changing LSM policy (AppArmor, SELinux, Smack)",
    "CAP_MAC_OVERRIDE": "bypassing LSM policy (AppArmor, SELinux, Smack)",
    "CAP_BPF": "loading BPF programs, much kernel code to attack",
    "CAP_PERFMON": "watching processes and the kernel with perf events",
    "CAP_SYS_TIME": "setting the clock, where the filter is lifted",
    "CAP_SYSLOG": "the kernel log and kernel addresses in /proc",
    "CAP_NET_ADMIN": "configuring the jail's own network (re-addressing its veth end: spoofing "
                     "towards the host) and netfilter, much kernel code to attack",
}


def warnings(capabilities) -> list[str]:
    """One line per dangerous capability held, saying what it opens."""
    return [f"{cap} opens {DANGEROUS_CAPABILITIES[cap]}"
            for cap in capabilities if cap in DANGEROUS_CAPABILITIES]


def unaccepted(capabilities, accepted) -> list[str]:
    """The dangerous capabilities in `capabilities` that `accepted` does not name."""
    return [cap for cap in capabilities if cap in DANGEROUS_CAPABILITIES and cap not in accepted]
