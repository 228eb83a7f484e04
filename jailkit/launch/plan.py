"""Everything `jailkit run` will do, computed before anything is done (`--dry-run` prints it)."""

import os

from jailkit.errors import JailkitError
from jailkit.launch import allocate, caps, cgroup, dangerous, landlock, mounts, net, seccomp, userns
from jailkit.launch import syscalls as sc
from jailkit.launch.publish import check as check_publishes
from jailkit.launch.spec import LaunchSpec
from jailkit.launch.stdio import Stdio

BASE_NAMESPACES = sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWIPC
REAPER_NAME = "jailkit-reaper"


def reaper_path() -> str:
    """The compiled reaper (jailkit/launch/reaper.c), beside this module, where the package
    build puts it (setup.py; into the checkout for an editable install)."""
    return os.path.join(os.path.dirname(__file__), REAPER_NAME)


class LaunchPlan:
    __slots__ = (
        "spec", "jail", "root", "allocation", "idmapped", "maps", "clone_flags", "mounts",
        "cgroups", "veth", "veth_lock", "cap_mask", "reaper_cap_mask", "reaper_args", "reaper",
        "pass_fds", "landlock", "stdio", "name", "registration", "publish", "early_hint",
    )

    def __init__(self, spec: LaunchSpec, jail, launcher_pid: int, pass_fds: list[int] = (),
                 dry_run: bool = False, interactive: bool = False, name: str | None = None,
                 detached: bool = False, publishes: list = (), typed_limits: tuple = ()):
        """`jail`: the jail.Jail to run; `dry_run`: allocate nothing for a new jail, only say
        what it would get; `interactive`: the caller's terminal input reaches the jail; `name`:
        its name among running jails (registry.py), which names its cgroups; `detached`: its
        output goes to a log file (the waiter writes it), not to the caller; `publishes`: host
        ports forwarded to the jail's veth address (publish.Publish); `typed_limits`: the
        cgroup.LIMIT_KEYS given as `run` options (--memory), named so in a refusal."""
        self.spec = spec
        self.name = name or spec.name
        self.registration = None  # (registry dir fd, entry fd), once registered
        # the command that explains a service failing at once, said by the waiter if it does
        self.early_hint = None
        self.stdio = Stdio(interactive, detached)
        self.jail = jail
        self.root = jail.root
        if spec.network == "veth" and os.geteuid() != 0:
            raise JailkitError("network 'veth' needs root: use --net none or --net host")
        check_publishes(list(publishes), spec.network)
        self.publish = list(publishes)
        self.allocation = None
        root_range = None
        if os.geteuid() == 0:  # root's jails each get ids (and a subnet) of their own
            self.allocation = allocate.for_jail(
                os.readlink(f"/proc/self/fd/{jail.dir_fd}"), spec.uid_count,
                spec.network == "veth", dry_run)
            root_range = (self.allocation.uid, self.allocation.gid)
        # an ordinary user maps few ids: those the service may switch to must be among them
        switches = root_range is None and any(c in userns.SWITCHING for c in spec.capabilities)
        needed = userns.Needed(spec, jail.accounts() if switches else None)
        self.maps = userns.plan(needed, spec.uid_count, root_range)
        # Only real root can idmap a filesystem; an ordinary user's jail reads the tree as is.
        self.idmapped = os.geteuid() == 0
        self.clone_flags = (
            BASE_NAMESPACES | sc.CLONE_NEWUTS | net.clone_flags(spec.network)
        )
        pts_gid = 5 if self.maps.host_gid(5) is not None else None  # tty, when it is mapped
        self.mounts = mounts.plan(spec, jail.root, jail.state, pts_gid)
        self.cgroups = []
        if os.geteuid() == 0:  # for its limits, and to count and stop all of it
            self.cgroups = cgroup.plan(self.name, spec.limits)
        else:
            asked = [key for key in cgroup.LIMIT_KEYS if spec.limits[key] is not None]
            if asked:
                raise cgroup.needs_root(asked, typed_limits)
        if spec.ready and spec.network == "none":
            raise JailkitError("ready.tcp: a jail with network 'none' has only its own "
                               "loopback, which the readiness check cannot reach: use --net "
                               "host or veth, or drop [service] ready")
        self.veth = self.veth_lock = None
        if spec.network == "veth":
            self.veth = net.Veth(self.allocation.subnet, launcher_pid)
            if not dry_run:
                self.veth_lock = allocate.hold_subnet(self.allocation.subnet)
        self.landlock = landlock.Ruleset(spec.network, spec.ports["bind"], spec.ports["connect"],
                                         sc.landlock_abi())
        if self.landlock.missing and spec.require_landlock:
            raise JailkitError(
                f"this kernel cannot enforce {' nor '.join(self.landlock.missing)}, which the "
                "profile requires (require_landlock): run on a newer kernel, or "
                "--set require_landlock=false to run without"
            )
        self.cap_mask = caps.mask(spec.capabilities)
        last_cap = caps.last_cap()  # read (and kept) here: after pivot_root, /proc may be gone
        unknown = [c for c in spec.capabilities if caps.CAPABILITIES[c] > last_cap]
        if unknown:
            raise JailkitError(
                f"this kernel has no {', '.join(unknown)} (its last capability is number "
                f"{last_cap}): take it out of the profile's capabilities"
            )
        self.reaper = reaper_path()
        for fd in pass_fds:
            try:
                os.fstat(fd)
            except OSError:
                raise JailkitError(f"--pass-fd {fd}: descriptor {fd} is not open") from None
        self.pass_fds = list(pass_fds)
        # pid 1 keeps CAP_KILL alone, to signal a service that switched user; the service gets
        # it only if it asks. pid 1 runs the reaper, adopting the service (its child, in the
        # nested user namespace) whose pid follows these arguments.
        self.reaper_cap_mask = caps.mask(["CAP_KILL"])
        self.reaper_args = [REAPER_NAME, "adopt", str(spec.stop_signal)]

    def describe(self) -> str:
        s = self.spec
        lines = [
            f"jail      {self.name}: {self.root}",
            f"ids       {self.maps.describe()}" + (", root idmapped" if self.idmapped else "")
            + (" (this jail's own range" + (", allocated at its first run)"
                                            if self.allocation.new else ")")
               if self.allocation else ""),
            f"user      uid {s.uid} gid {s.gid} groups {s.groups}",
            "namespaces user mount pid ipc uts" + ("" if s.network == "host" else " net")
            + "; the service in a user and mount namespace nested in pid 1's",
            "locked    every mount and its read-only/nosuid/nodev/noexec flags, by the kernel, for"
            " the service; no further user namespaces",
            f"network   {s.network}"
            + (f" {self.veth.host_name} {self.veth.host_addr} <-> eth0 {self.veth.jail_addr}"
               if self.veth else ""),
            *(f"publish   {p.describe()} (to {self.veth.jail_addr}:{p.jail_port})"
              for p in self.publish),
            f"landlock  {self.landlock.describe()}",
            *(f"landlock  not enforced on this kernel: {what}" for what in self.landlock.missing),
            *(f"mount     {m!r}" for m in self.mounts),
            *(f"cgroup    {g!r}" for g in self.cgroups),
            f"hostname  {s.hostname}",
            f"caps      {' '.join(s.capabilities) or '(none)'}",
            *(f"danger    {line}" for line in dangerous.warnings(s.capabilities)),
            f"rlimits   {s.rlimits or '(inherited)'}",
            f"seccomp   default deny list, syscalls above {seccomp.REVIEWED_MAX}, socket "
            "families but AF_UNIX/INET/INET6/NETLINK"
            + (f" minus {', '.join(s.seccomp_allow)}" if s.seccomp_allow else ""),
            f"env       {s.env}",
            f"workdir   {s.workdir}",
            f"fds       0 1 2 {' '.join(map(str, self.pass_fds))}".rstrip(),
            f"stdio     {self.stdio.describe()}",
            f"command   {s.command}",
            f"pid 1     {self.reaper} run from a sealed memory copy, keeping CAP_KILL only; "
            f"stop signal {s.stop_signal}",
        ]
        return "\n".join(lines)
