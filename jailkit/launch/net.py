"""The jail's network: `host` (shared), `none` (own namespace, loopback only) or `veth`.

`veth` (root only) links the jail's own namespace to the host with a veth pair named
`jk<launcher pid>`: the host end gets HOST/30, the jail's `eth0` JAIL/30 with a default route
to the host, in 10.213.0.0/16: the jail's own /30, allocated once and kept (allocate.py; two
jails on one /30 would answer each other's traffic). The pair disappears with the jail's
namespace. In its own namespace the jail may bind ports below 1024.
"""

import ctypes
import os

from jailkit.errors import JailkitError
from jailkit.launch import syscalls as sc

IP = "/sbin/ip"
SUBNET = (10, 213)
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def privileged_binds(network: str, ports: list[int]) -> tuple[list[int], int]:
    """The ports of `ports` a jail on the host's network cannot bind, with the first port it
    can: below the host's net.ipv4.ip_unprivileged_port_start (1024 unless lowered), a bind
    needs CAP_NET_BIND_SERVICE in the host's own user namespace, which no jail holds (its root
    is not the host's, also when root runs it). In a namespace of its own (none, veth), every
    port is the jail's (setup_inside)."""
    if network != "host":
        return [], 0
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            start = int(f.read())
    except (OSError, ValueError):
        start = 1024
    return [port for port in ports if port < start], start


def _address(subnet: int, host: int) -> str:
    """Address `host` (0-3) of the jail's /30 number `subnet` (0 <= subnet < allocate.SUBNETS)."""
    slot = subnet * 4
    return f"{SUBNET[0]}.{SUBNET[1]}.{slot >> 8}.{(slot & 255) + host}"


def subnet_text(subnet: int) -> str:
    return f"{_address(subnet, 0)}/30"


class Veth:
    __slots__ = ("host_name", "host_addr", "jail_addr")

    def __init__(self, subnet: int, launcher_pid: int):
        self.host_name = f"jk{launcher_pid}"
        self.host_addr = _address(subnet, 1)
        self.jail_addr = _address(subnet, 2)


def clone_flags(network: str) -> int:
    return 0 if network == "host" else sc.CLONE_NEWNET


def _run_ip(args: list[str], stdin: bytes | None = None) -> None:
    read_end = None
    actions = []
    if stdin is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, stdin)  # a few lines: far below the pipe buffer
        os.close(write_end)
        actions.append((os.POSIX_SPAWN_DUP2, read_end, 0))
    try:
        pid = os.posix_spawn(IP, [IP, *args], {"PATH": "/usr/sbin:/usr/bin"}, file_actions=actions)
    except OSError as e:
        raise JailkitError(
            f"cannot run {IP} for the veth network ({e.strerror}): install iproute2"
        ) from None
    finally:
        if read_end is not None:
            os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise JailkitError(f"'ip {' '.join(args)}' failed setting up the jail's veth network")


def create_veth(veth: Veth, jail_pid: int) -> None:
    """Host side, as root: the pair, with its jail end moved into the jail's namespace."""
    _run_ip(["link", "add", veth.host_name, "type", "veth", "peer", "name", "eth0", "netns",
             str(jail_pid)])
    _run_ip(["addr", "add", f"{veth.host_addr}/30", "dev", veth.host_name])
    _run_ip(["link", "set", veth.host_name, "up"])


def loopback_up() -> None:
    """Bring up `lo` in this (new) network namespace with two ioctls."""
    libc = ctypes.CDLL(None, use_errno=True)
    sock = libc.socket(2, 2 | 0o2000000, 0)  # AF_INET, SOCK_DGRAM | SOCK_CLOEXEC
    if sock < 0:
        raise OSError(ctypes.get_errno(), "socket")
    try:
        ifreq = ctypes.create_string_buffer(b"lo", 40)
        for request in (SIOCGIFFLAGS, SIOCSIFFLAGS):
            if request == SIOCSIFFLAGS:
                flags = int.from_bytes(ifreq.raw[16:18], "little") | IFF_UP
                ctypes.memmove(ctypes.addressof(ifreq) + 16, flags.to_bytes(2, "little"), 2)
            if libc.ioctl(sock, ctypes.c_ulong(request), ifreq) < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bring up lo: {os.strerror(err)}")
    finally:
        os.close(sock)


def setup_inside(network: str, veth: Veth | None) -> None:
    """Jail side, before pivot_root (the host's `ip` is still reachable)."""
    if network == "host":
        return
    loopback_up()
    # Only this namespace's setting: the host keeps its 1024.
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as f:
        f.write("0")
    if veth is not None:
        _run_ip(["-b", "-"], stdin=(
            f"addr add {veth.jail_addr}/30 dev eth0\n"
            "link set eth0 up\n"
            f"route add default via {veth.host_addr}\n"
        ).encode())
