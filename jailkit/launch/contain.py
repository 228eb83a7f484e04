"""The order in which the jail's first process confines itself, in one place.

This runs as pid 1 of the new pid namespace, cloned by the launcher into new user, mount, pid,
ipc, uts (and net) namespaces. Each step relies on the ones before it; read top to bottom.
On any failure it prints one line on stderr and exits 2, as the launcher does for its own
errors (by then the launcher has become the waiter, which passes the status on and cleans up).
"""

import os

from jailkit.errors import JailkitError
from jailkit.launch import caps, landlock, mounts, net, rlimits, seccomp, userns
from jailkit.launch import syscalls as sc

SETUP_FAILED = JailkitError.exit_code
_step = "start"  # the step under way, named in the error line


def _at(step: str) -> None:
    global _step
    _step = step


def _wait_for_launcher(sync_fd: int) -> None:
    if os.read(sync_fd, 1) != b"1":
        os._exit(SETUP_FAILED)  # the launcher failed or died: it reports, not us


def _launcher_alive(sync_fd: int) -> bool:
    """Still open at the launcher's end (the waiter it becomes keeps it while the jail runs)."""
    os.set_blocking(sync_fd, False)
    try:
        return os.read(sync_fd, 1) != b""
    except BlockingIOError:
        return True


def _close_fds(keep: set[int]) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def confine(plan, sync_fd: int, root_sock, reaper_fd: int) -> None:
    spec = plan.spec
    # 1. Wait until the launcher has written our id maps (and moved us into our cgroups).
    #    Until then this process is still the host's uid 0: do nothing else before. If the
    #    launcher dies meanwhile, we get SIGKILL (or EOF, had it died before the prctl).
    _at("waiting for the id maps")
    sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    _wait_for_launcher(sync_fd)
    # 2. Become the jail's root at once, dropping the host ids (KERNEL-NOTES' trap).
    _at("switching to the jail's root")
    os.setresgid(0, 0, 0)
    if plan.maps.allow_setgroups:
        os.setgroups([])
    os.setresuid(0, 0, 0)
    # 3. Our own cgroup namespace: the jail sees its cgroup as the root.
    _at("cgroup namespace")
    sc.unshare(sc.CLONE_NEWCGROUP)
    # 4. Mounts in our private namespace: read-only root, writable dirs, /proc, /dev, /sys.
    _at("mounts")
    sources = {}
    if plan.idmapped:
        sources = _receive_sources(root_sock, [m.options["source"] for m in plan.mounts
                                               if m.options.get("source")])
    mounts.apply(plan.mounts, sources, plan.jail)
    # 5. Hostname (uts namespace), network (host, or our own namespace's lo and eth0), and no
    #    nested user namespaces (through the host's /proc, still writable for our namespace).
    _at("hostname and network")
    sc.sethostname(spec.hostname)
    net.setup_inside(spec.network, plan.veth)
    userns.forbid_nested()
    # 6. Into the jail for good: pivot_root and detach the host's tree (chroot can be escaped).
    _at("pivot_root")
    mounts.pivot()
    # 7. A new session: no controlling terminal to push input into (TIOCSTI); a fresh keyring.
    _at("new session and keyring")
    os.setsid()
    sc.join_session_keyring()
    # 8. Privileges: bounding set first (needs CAP_SETPCAP), then the service's ids and caps,
    #    with CAP_KILL and CAP_SETPCAP for pid 1 only (the reaper drops them for the service).
    _at("capabilities and user")
    caps.drop_bounding(plan.reaper_cap_mask)
    caps.switch_user(
        spec.uid, spec.gid, spec.groups, plan.reaper_cap_mask, plan.maps.allow_setgroups
    )
    # 9. Die with the launcher. Set after the id change, which clears it; then make sure the
    #    launcher did not die in between.
    _at("parent-death signal")
    sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    if not _launcher_alive(sync_fd):
        os._exit(SETUP_FAILED)
    # 10. Resource limits, working directory.
    _at("rlimits and workdir")
    rlimits.apply(spec.rlimits)
    try:
        os.chdir(spec.workdir)
    except OSError as e:
        raise JailkitError(f"workdir {spec.workdir}: {e.strerror} in the jail") from None
    # 11. File descriptors: only 0-2 and those passed on purpose reach the service (the sync
    #     pipe and the reaper are close-on-exec); 0-2 are a pty or /dev/null for a terminal.
    _at("closing fds")
    plan.stdio.attach()  # never the caller's terminal (stdio.py)
    _close_fds({sync_fd, reaper_fd, *plan.pass_fds})
    for fd in plan.pass_fds:
        os.set_inheritable(fd, True)
    # 12. no_new_privs (setuid files and file caps grant nothing), Landlock (TCP ports, no
    #     abstract unix sockets or signals outside the jail), then seccomp, last.
    _at("no_new_privs and seccomp")
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    landlock.restrict(plan.landlock)
    seccomp.install(spec.seccomp_allow)
    # 13. Become the reaper (pid 1), which starts the service with exactly the profile's env.
    _at("exec of the reaper")
    sc.execveat(reaper_fd, plan.command, spec.env)


def _receive_sources(sock, paths: list[str]) -> dict[str, int]:
    """The launcher's detached mounts (SCM_RIGHTS), one per source path, in order."""
    _, ancillary, _, _ = sock.recvmsg(1, 4 * len(paths) + 64)
    sock.close()
    raw = b"".join(data for _, _, data in ancillary)
    if len(raw) != 4 * len(paths):
        raise JailkitError("did not receive the jail's mounts from the launcher")
    fds = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]
    return dict(zip(paths, fds, strict=True))


def run_child(plan, sync_fd: int, root_sock, reaper_fd: int) -> None:
    """Entry point of the cloned child: never returns."""
    try:
        confine(plan, sync_fd, root_sock, reaper_fd)
        message = "exec of the reaper returned"
    except JailkitError as e:
        message = e.message
    except OSError as e:
        detail = e.args[1] if len(e.args) == 2 else e  # "what: strerror" from syscalls.py
        message = f"setting up the jail failed at {_step}: {detail}"
    except BaseException as e:  # a bug: still report it as one line through the launcher
        message = f"internal error while setting up the jail at {_step}: {e!r}"
    try:
        os.write(2, f"jailkit: {message}\n".encode(errors="replace"))
    finally:
        os._exit(SETUP_FAILED)
