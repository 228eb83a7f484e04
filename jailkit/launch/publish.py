"""`run --publish [HOSTADDR:]HOSTPORT:JAILPORT`: a host port forwarded to a `veth` jail's own.

Planned here (parsed and checked, pure data); on the host side the launcher binds and listens on
every host port before the jail exists (`listen`: a port in use is one line, and nothing was
made yet), and the waiter's relay child (reaper.c, `wait --publish FD:JAILADDR:JAILPORT`)
accepts on them and relays each connection to the jail's veth address. The ports close when
the relay ends, with the jail or with its waiter.

A relay in user space rather than DNAT (nftables, iptables): no rule in the host's firewall to
leak if the waiter is killed, 127.0.0.1 published without the host's route_localnet, and
nothing outlives the jail. The price: the service sees the veth's host address as its peer, not
the client's.
"""

import errno
import os

from jailkit.errors import JailkitError

MAX = 64  # published ports per jail (reaper.c's PUBLISH_MAX)
BACKLOG = 511  # as nginx's default


class Publish:
    """One published port: `host_addr` ('0.0.0.0': every address) : `host_port` -> `jail_port`."""

    __slots__ = ("host_addr", "host_port", "jail_port")

    def __init__(self, host_addr: str, host_port: int, jail_port: int):
        self.host_addr, self.host_port, self.jail_port = host_addr, host_port, jail_port

    @property
    def host(self) -> str:
        """HOSTADDR:HOSTPORT, an IPv6 address in brackets."""
        addr = f"[{self.host_addr}]" if ":" in self.host_addr else self.host_addr
        return f"{addr}:{self.host_port}"

    def __str__(self) -> str:
        return f"{self.host}:{self.jail_port}"

    def describe(self) -> str:
        return f"{self.host}->{self.jail_port}/tcp"

    def as_dict(self) -> dict:
        return {"host_addr": self.host_addr, "host_port": self.host_port,
                "jail_port": self.jail_port}


def _family(addr: str) -> int | None:
    import _socket

    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, addr)
            return family
        except OSError:
            pass
    return None


def parse(text: str) -> Publish:
    """`[HOSTADDR:]HOSTPORT:JAILPORT` (an IPv6 HOSTADDR in brackets; `/tcp` may follow)."""
    def fail(why: str) -> JailkitError:
        return JailkitError(f"--publish {text!r}: {why}: give [HOSTADDR:]HOSTPORT:JAILPORT, "
                            "e.g. 8080:80 or 127.0.0.1:8080:80")

    spec, slash, proto = text.partition("/")
    if slash and proto != "tcp":
        raise JailkitError(f"--publish {text!r}: only TCP ports are published: drop /{proto}")
    if spec.startswith("["):
        addr, bracket, rest = spec[1:].partition("]")
        ports = rest[1:].split(":") if bracket and rest.startswith(":") else []
        if len(ports) != 2:
            raise fail("an IPv6 address in brackets must be followed by :HOSTPORT:JAILPORT")
    else:
        fields = spec.split(":")
        if len(fields) not in (2, 3):
            raise fail("not two or three fields separated by ':' (an IPv6 address goes in "
                       "brackets)")
        addr = fields[0] if len(fields) == 3 else "0.0.0.0"
        ports = fields[-2:]
    if _family(addr) is None:
        raise fail(f"{addr!r} is not an IPv4 or IPv6 address")
    numbers = []
    for which, port in zip(("HOSTPORT", "JAILPORT"), ports, strict=True):
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise fail(f"{which} {port!r} is not a port from 1 to 65535")
        numbers.append(int(port))
    return Publish(addr, *numbers)


def check(publishes: list[Publish], network: str) -> None:
    if not publishes:
        return
    if network != "veth":
        raise JailkitError(f"--publish forwards a host port to the jail's own address, and a "
                           f"jail with network {network!r} has none: add --net veth (root only)")
    if len(publishes) > MAX:
        raise JailkitError(f"--publish is given {len(publishes)} times: at most {MAX} ports "
                           "are published per jail")
    seen = set()
    for p in publishes:
        if p.host in seen:
            raise JailkitError(f"--publish: {p.host} is published twice: give each host port "
                               "once")
        seen.add(p.host)


def _bind_error(p: Publish, err: OSError) -> JailkitError:
    where = f"--publish {p}: cannot listen on {p.host}"
    if err.errno == errno.EADDRINUSE:
        return JailkitError(f"{where}: the port is in use (`ss -ltnp 'sport = :{p.host_port}'` "
                            "shows by what): stop that, or publish another host port")
    if err.errno == errno.EACCES:
        return JailkitError(f"{where}: ports below 1024 need root: run as root, or publish a "
                            "port from 1024 up")
    if err.errno == errno.EADDRNOTAVAIL:
        return JailkitError(f"{where}: this host has no address {p.host_addr}: give one of its "
                            "addresses, or leave HOSTADDR out for all of them")
    return JailkitError(f"{where}: {err.strerror}")


def listen(publishes: list[Publish]) -> list[int]:
    """Host side: a listening socket for each (close-on-exec: the launcher passes them to the
    waiter itself); all or none."""
    import _socket

    fds = []
    try:
        for p in publishes:
            family = _family(p.host_addr)
            sock = _socket.socket(family, _socket.SOCK_STREAM)
            try:
                # a port left in TIME_WAIT by the jail's last run does not block this one
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                if family == _socket.AF_INET6:  # [::] is IPv6 only: 0.0.0.0 is asked apart
                    sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
                sock.bind((p.host_addr, p.host_port))
                sock.listen(BACKLOG)
            except OSError as e:
                sock.close()
                raise _bind_error(p, e) from None
            fds.append(sock.detach())
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def reach(jail_addr: str, publishes: list[Publish]) -> str:
    """How a veth jail is reached, as its start message says it."""
    ports = ", ".join(p.describe() for p in publishes)
    return f"address {jail_addr}" + (f", published {ports}" if ports else "")


def waiter_args(publishes: list[Publish], fds: list[int], jail_addr: str) -> list[str]:
    """The waiter's --publish arguments; the descriptors made inheritable for its exec."""
    args = []
    for p, fd in zip(publishes, fds, strict=True):
        os.set_inheritable(fd, True)
        args += ["--publish", f"{fd}:{jail_addr}:{p.jail_port}"]
    return args
