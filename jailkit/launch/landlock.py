"""Landlock: which TCP ports the jail may use on the host's network, and no reaching out of it
through abstract unix sockets or signals.

A `host`-network jail shares the host's network namespace: without this it could bind any port
and connect to every service on the host's 127.0.0.1, and reach the host's abstract unix sockets
(which belong to the network namespace, not to the filesystem). So a `host` jail may bind only
the profile's `ports.bind` and connect only to its `ports.connect` (TCP; Landlock has no UDP
rules yet), and a `veth` jail may connect only to `ports.connect` (its address reaches the
host's services bound to every address). Every jail is scoped: no connecting to an abstract
unix socket made outside it, no signal to a process outside it (its pid namespace already hides
the host's pids; the scope also covers what a passed descriptor could reach).

Filesystem rights are not handled: the mount namespace decides what the jail sees.
Applied in the jail after no_new_privs and before seccomp (contain.py); it cannot be loosened
later, and the service inherits it. Kernel facts in docs/kernel-notes.md ("Landlock").
"""

import os

from jailkit.launch import syscalls as sc

ACCESS_NET_BIND_TCP = 1
ACCESS_NET_CONNECT_TCP = 2
SCOPE_ABSTRACT_UNIX_SOCKET = 1
SCOPE_SIGNAL = 2
NET_ABI = 4  # TCP port rules: Linux 6.7
SCOPE_ABI = 6  # scoping: Linux 6.12


class Ruleset:
    """What restrict() will ask of the kernel, and what this kernel cannot enforce."""

    __slots__ = ("abi", "handled_net", "scoped", "bind", "connect", "missing")

    def __init__(self, network: str, bind: list[int], connect: list[int], abi: int):
        self.abi = abi
        wanted = {"host": ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP,
                  "veth": ACCESS_NET_CONNECT_TCP}.get(network, 0)
        self.missing = []
        self.handled_net = wanted if abi >= NET_ABI else 0
        if wanted and not self.handled_net:
            self.missing.append("TCP port limits (Landlock ABI 4, Linux 6.7)")
        self.bind = bind if self.handled_net & ACCESS_NET_BIND_TCP else []
        self.connect = connect if self.handled_net & ACCESS_NET_CONNECT_TCP else []
        self.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= SCOPE_ABI else 0
        if not self.scoped:
            self.missing.append("abstract unix socket and signal scoping (Landlock ABI 6, "
                                "Linux 6.12)")

    def describe(self) -> str:
        if not (self.handled_net or self.scoped):
            return "none"
        parts = []
        if self.handled_net & ACCESS_NET_BIND_TCP:
            parts.append(f"bind tcp {_ports(self.bind)}")
        if self.handled_net & ACCESS_NET_CONNECT_TCP:
            parts.append(f"connect tcp {_ports(self.connect)}")
        if self.scoped:
            parts.append("no abstract unix sockets or signals outside the jail")
        return f"ABI {self.abi}: " + "; ".join(parts)


def _ports(ports: list[int]) -> str:
    """Sorted ports as runs: `80 30000-30099`."""
    runs = []
    for port in ports:
        if runs and runs[-1][1] == port - 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    return " ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "(none)"


def restrict(ruleset: Ruleset) -> None:
    """Confine this process and its future children (no_new_privs must be set)."""
    if not (ruleset.handled_net or ruleset.scoped):
        return  # nothing this kernel can enforce (said by --dry-run and warned by run)
    fd = sc.landlock_create_ruleset(ruleset.handled_net, ruleset.scoped)
    try:
        for access, ports in ((ACCESS_NET_BIND_TCP, ruleset.bind),
                              (ACCESS_NET_CONNECT_TCP, ruleset.connect)):
            for port in ports:
                sc.landlock_add_net_port(fd, access, port)
        sc.landlock_restrict_self(fd)
    finally:
        os.close(fd)
