"""Everything `jailkit run` will do, computed before anything is done (`--dry-run` prints it)."""

import os
import sys

from jailkit.errors import JailkitError
from jailkit.launch import caps, cgroup, mounts, net, userns
from jailkit.launch import syscalls as sc
from jailkit.launch.spec import LaunchSpec

BASE_NAMESPACES = sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWIPC
REAPER_NAME = "jailkit-reaper"


def reaper_path() -> str:
    """The compiled reaper (jailkit/launch/reaper.c): beside this module, where the package build
    puts it (setup.py); else the one .ci/setup installs beside the venv's bin/, for a source tree
    used without being built (a checkout on PYTHONPATH). The venv is found from the interpreter's
    path: sys.prefix is only the venv's once site has run."""
    beside = os.path.join(os.path.dirname(__file__), REAPER_NAME)
    if os.path.exists(beside):
        return beside
    prefix = os.path.dirname(os.path.dirname(sys.executable))
    return os.path.join(prefix, "libexec", "jailkit", REAPER_NAME)


class LaunchPlan:
    __slots__ = (
        "spec", "root", "idmapped", "maps", "clone_flags", "mounts", "cgroups", "veth",
        "cap_mask", "reaper_cap_mask", "command", "reaper", "pass_fds",
    )

    def __init__(self, spec: LaunchSpec, root: str, state: str, launcher_pid: int,
                 pass_fds: list[int] = ()):
        self.spec = spec
        self.root = root
        self.maps = userns.plan(spec.uid, spec.gid, spec.groups, spec.uid_count)
        # Only real root can idmap a filesystem; an ordinary user's jail reads the tree as is.
        self.idmapped = os.geteuid() == 0
        if spec.network == "veth" and os.geteuid() != 0:
            raise JailkitError("network 'veth' needs root: use --net none or --net host")
        self.clone_flags = (
            BASE_NAMESPACES | sc.CLONE_NEWUTS | net.clone_flags(spec.network)
        )
        pts_gid = 5 if self.maps.host_gid(5) is not None else None  # tty, when it is mapped
        self.mounts = mounts.plan(spec, root, state, pts_gid)
        self.cgroups = cgroup.plan(spec.name, launcher_pid, spec.memory_max, spec.pids_max)
        if self.cgroups and os.geteuid() != 0:
            raise JailkitError(
                "cgroup limits (memory_max, pids_max) need root here (cgroup v1): run as root "
                "or --set cgroup.memory_max=null --set cgroup.pids_max=null"
            )
        self.veth = net.Veth(launcher_pid) if spec.network == "veth" else None
        self.cap_mask = caps.mask(spec.capabilities)
        unknown = [c for c in spec.capabilities if caps.CAPABILITIES[c] > caps.last_cap()]
        if unknown:
            raise JailkitError(
                f"this kernel has no {', '.join(unknown)} (its last capability is number "
                f"{caps.last_cap()}): take it out of the profile's capabilities"
            )
        self.reaper = reaper_path()
        for fd in pass_fds:
            try:
                os.fstat(fd)
            except OSError:
                raise JailkitError(f"--pass-fd {fd}: descriptor {fd} is not open") from None
        self.pass_fds = list(pass_fds)
        # pid 1 keeps CAP_KILL to signal a service that switched user, and CAP_SETPCAP to take
        # both out of the service's bounding set; the service gets neither unless it asks.
        self.reaper_cap_mask = self.cap_mask | caps.mask(["CAP_KILL", "CAP_SETPCAP"])
        reaper_only = self.reaper_cap_mask & ~self.cap_mask
        self.command = [REAPER_NAME, "init", str(spec.stop_signal), str(reaper_only),
                        *spec.command]

    def describe(self) -> str:
        s = self.spec
        lines = [
            f"jail      {s.name}: {self.root}",
            f"ids       {self.maps.describe()}" + (", root idmapped" if self.idmapped else ""),
            f"user      uid {s.uid} gid {s.gid} groups {s.groups}",
            "namespaces user mount pid ipc uts" + ("" if s.network == "host" else " net"),
            f"network   {s.network}"
            + (f" {self.veth.host_name} {self.veth.host_addr} <-> eth0 {self.veth.jail_addr}"
               if self.veth else ""),
            *(f"mount     {m!r}" for m in self.mounts),
            *(f"cgroup    {g!r}" for g in self.cgroups),
            f"hostname  {s.hostname}",
            f"caps      {' '.join(s.capabilities) or '(none)'}",
            f"rlimits   {s.rlimits or '(inherited)'}",
            "seccomp   default deny list"
            + (f" minus {', '.join(s.seccomp_allow)}" if s.seccomp_allow else ""),
            f"env       {s.env}",
            f"workdir   {s.workdir}",
            f"fds       0 1 2 {' '.join(map(str, self.pass_fds))}".rstrip(),
            f"command   {s.command} (pid 1: {self.reaper}, stop signal {s.stop_signal})",
        ]
        return "\n".join(lines)
