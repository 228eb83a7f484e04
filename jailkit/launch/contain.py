"""The order in which the jail confines itself, in one place.

This runs as pid 1 of the new pid namespace, cloned by the launcher into new user, mount, pid,
ipc, uts (and net) namespaces. It sets the jail up (mounts, pivot_root), then starts the service
in a user and mount namespace nested in its own: the kernel locks every mount a less privileged
user namespace inherits (flags and all), so the service cannot undo what pid 1 set up, even
holding CAP_SYS_ADMIN with the mount calls let through seccomp. pid 1 stays behind as the reaper.
Each step relies on the ones before it; read top to bottom (`confine`, then `confine_service`).
On any failure it prints one line on stderr and exits 2, as the launcher does for its own
errors (by then the launcher has become the waiter, which passes the status on and cleans up).
"""

import errno
import os

from jailkit.errors import JailkitError
from jailkit.launch import caps, landlock, mounts, net, rlimits, seccomp, userns
from jailkit.launch import syscalls as sc

SETUP_FAILED = JailkitError.exit_code
_step = "start"  # the step under way, named in the error line


def _at(step: str) -> None:
    global _step
    _step = step


def _wait_for_launcher(sync_fd: int, sign: bytes = b"1") -> None:
    """Until the launcher writes `sign`: "1" once our id maps are written, "2" once we are in
    our cgroups."""
    if os.read(sync_fd, 1) != sign:
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


def confine(plan, sync_fd: int, root_sock, reaper_fd: int, report_fd: int | None) -> None:
    """`report_fd`: where pid 1 reports how the service ended (a detached jail's waiter)."""
    spec = plan.spec
    # 1. Wait until the launcher has written our id maps (our cgroups: step 8).
    #    Until then this process is still the host's uid 0: do nothing else before. If the
    #    launcher dies meanwhile, we get SIGKILL (or EOF, had it died before the prctl).
    _at("waiting for the id maps")
    sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    _wait_for_launcher(sync_fd)
    # 2. Become the jail's root at once, dropping the host ids (docs/kernel-notes.md, "Id maps").
    _at("switching to the jail's root")
    os.setresgid(0, 0, 0)
    if plan.maps.allow_setgroups:
        os.setgroups([])
    os.setresuid(0, 0, 0)
    # 3. Mounts in our private namespace: read-only root, writable dirs, /proc, /dev, /sys.
    _at("mounts")
    sources = None
    if plan.idmapped:
        sources = _receive_sources(root_sock, len(mounts.with_sources(plan.mounts)))
    mounts.apply(plan.mounts, sources, plan.jail)
    # 4. Hostname (uts namespace), network (host, or our own namespace's lo and eth0).
    _at("hostname and network")
    sc.sethostname(spec.hostname)
    net.setup_inside(spec.network, plan.veth)
    # 5. Into the jail for good: pivot_root and detach the host's tree (chroot can be escaped),
    #    keeping a proc of our pid namespace for step 10 (a descriptor: the jail may have none).
    _at("pivot_root")
    proc_fd = mounts.private_proc()
    mounts.pivot()
    # 6. A new session: no controlling terminal to push input into (TIOCSTI; the service may
    #    take the jail's own pty as one: step b of confine_service); a fresh keyring;
    #    resource limits; 0-2 a pty or /dev/null, never the caller's terminal (stdio.py). The
    #    service inherits them all.
    _at("new session, keyring, rlimits and stdio")
    os.setsid()
    sc.join_session_keyring()
    rlimits.apply(spec.rlimits)
    plan.stdio.attach()
    # 7. no_new_privs, then Landlock (TCP ports, no abstract unix sockets or signals outside
    #    the jail), here so that the service inherits our Landlock domain: a scoped signal only
    #    reaches the same domain or one below, and pid 1 must still signal the service.
    _at("no_new_privs and Landlock")
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    landlock.restrict(plan.landlock)
    # 9. The service's process, in its own user and mount namespaces: its copy of our mount
    #    table is locked by the kernel (read-only, nosuid, nodev, noexec, and the mounts over
    #    others). It waits for its id maps (step 10), then confines itself (confine_service).
    #    Dumpable first, which the child inherits: a process that changed ids (step 2) is not,
    #    and its /proc files then belong to the host's root, not to us who write its maps.
    #    Each exec sets it again by its own rules.
    # 8. Our cgroups, which the launcher joins us to while we set up (a first move into a cgroup
    #    waits for an RCU grace period, begun early by cgroup.prime): nothing may fork before,
    #    and then a cgroup namespace of our own, in which the jail sees its cgroup as the root.
    _at("joining the jail's cgroups")
    _wait_for_launcher(sync_fd, b"2")
    sc.unshare(sc.CLONE_NEWCGROUP)
    _at("starting the service")
    sc.prctl(sc.PR_SET_DUMPABLE, 1)
    maps_r, maps_w = os.pipe()
    service = sc.clone(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
    if service == 0:
        os.close(maps_w)
        run_service(plan, maps_r)
    os.close(maps_r)
    # 10. Its id maps (the same ids as ours; only we, with CAP_SETUID here, can write them),
    #     then no further user namespace anywhere in the jail. Only then may it go on.
    _at("the service's id maps")
    userns.write_nested(proc_fd, service, plan.maps)
    userns.forbid_nested(proc_fd)
    os.close(proc_fd)
    os.write(maps_w, b"1")
    os.close(maps_w)
    # 11. pid 1's own privileges: the bounding set first (needs CAP_SETPCAP), then the
    #     service's ids with CAP_KILL alone (to signal a service that switched user).
    _at("pid 1's capabilities and user")
    caps.drop_bounding(plan.reaper_cap_mask)
    caps.switch_user(
        spec.uid, spec.gid, spec.groups, plan.reaper_cap_mask, plan.maps.allow_setgroups
    )
    # 12. Die with the launcher. Set after the id change, which clears it; then make sure the
    #     launcher did not die in between.
    _at("parent-death signal")
    sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    if not _launcher_alive(sync_fd):
        os._exit(SETUP_FAILED)
    # 13. File descriptors: only the sync pipe and pid 1's program (both close-on-exec),
    #     /dev/log's socket, which pid 1 relays to its stderr (the log, or the caller's), and
    #     the pipe on which it reports the service's end to the waiter.
    _at("closing fds")
    syslog_fd = next((op.syslog_fd for op in plan.mounts if op.kind == "dev"), None)
    kept = {"--syslog": syslog_fd, "--report": report_fd}
    _close_fds({sync_fd, reaper_fd, *(fd for fd in kept.values() if fd is not None)})
    # 14. seccomp, last.
    _at("seccomp")
    seccomp.install(spec.seccomp_allow)
    # 15. Become the reaper, from the launcher's sealed memory copy (/proc/1/exe names no host
    #     file), which waits for the service, forwards signals to it and reaps orphans.
    _at("exec of the reaper")
    options = []
    for option, fd in kept.items():
        if fd is not None:
            os.set_inheritable(fd, True)
            options += [option, str(fd)]
    sc.execveat(reaper_fd, [*plan.reaper_args, str(service), *options], {})


def confine_service(plan, maps_fd: int) -> None:
    """The service's process (a child of pid 1, in its own user and mount namespaces, with
    pid 1's session, keyring, rlimits, stdio, no_new_privs and Landlock domain)."""
    spec = plan.spec
    # a. Wait for pid 1 to write our id maps; pid 1 exiting instead kills us with the jail.
    _at("waiting for the service's id maps")
    if os.read(maps_fd, 1) != b"1":
        os._exit(SETUP_FAILED)
    # b. On the caller's terminal, a session of our own with the jail's pty as its controlling
    #    terminal (stdio.py): ^C typed there signals our foreground group, not pid 1, which
    #    stays in the session of step 6, without a terminal.
    _at("the service's session and controlling terminal")
    plan.stdio.own_session()
    # c. Privileges: bounding set first (needs CAP_SETPCAP), then the service's ids and caps.
    _at("capabilities and user")
    caps.drop_bounding(plan.cap_mask)
    caps.switch_user(spec.uid, spec.gid, spec.groups, plan.cap_mask, plan.maps.allow_setgroups)
    # d. Working directory.
    _at("workdir")
    try:
        os.chdir(spec.workdir)
    except OSError as e:
        raise JailkitError(f"workdir {spec.workdir}: {e.strerror} in the jail") from None
    # e. File descriptors: only 0-2 and those passed on purpose reach the service.
    _at("closing fds")
    _close_fds(set(plan.pass_fds))
    for fd in plan.pass_fds:
        os.set_inheritable(fd, True)
    # f. Signals: the launcher blocked them all (for the reaper to take); the service gets none
    #    blocked.
    _at("signal mask")
    sc.unblock_signals()
    # g. seccomp, last (no_new_privs is pid 1's, inherited: setuid files grant nothing).
    _at("seccomp")
    seccomp.install(spec.seccomp_allow)
    # h. The service, with exactly the profile's environment.
    _at("exec of the service")
    exec_command(spec.command, spec.env)


def exec_command(command: list[str], env: dict[str, str]) -> None:
    """execvp(3) with `env`'s PATH (os.execvpe would import a module, from the jail by now); a
    failure is one line and the shell's status: 127 not found, else 126."""
    name, failure = command[0], None
    dirs = [""] if "/" in name else env.get("PATH", "/bin:/usr/bin").split(":")
    for directory in dirs:
        try:
            os.execve(os.path.join(directory, name), command, env)
        except OSError as e:
            if failure is None or e.errno == errno.EACCES:  # as execvp: EACCES over ENOENT
                failure = e
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                break
    if failure.errno == errno.ENOENT:
        message = (f"cannot run {name} in the jail: {name}: no such program in this jail (it "
                   "holds only what its profile lists")
        shell = name.rsplit("/", 1)[-1] in ("sh", "bash", "dash")
        message += "; a jail without a shell has none)" if shell else ")"
    elif failure.errno in (errno.EACCES, errno.ENOEXEC):
        message = f"cannot run {name} in the jail: {name} is not executable ({failure.strerror})"
    else:
        message = f"cannot run {name} in the jail: {failure.strerror}"
    os.write(2, f"jailkit: {message}\n".encode(errors="replace"))
    os._exit(127 if failure.errno == errno.ENOENT else 126)


def _receive_sources(sock, count: int) -> list[int]:
    """The launcher's `count` detached mounts (SCM_RIGHTS), in mounts.with_sources order."""
    _, ancillary, _, _ = sock.recvmsg(1, 4 * count + 64)
    sock.close()
    raw = b"".join(data for _, _, data in ancillary)
    if len(raw) != 4 * count:
        raise JailkitError("did not receive the jail's mounts from the launcher")
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]


def report_and_exit(setup, doing: str = "setting up the jail",
                    status: int = SETUP_FAILED) -> None:
    """Run `setup` (which ends in exec); on any failure, one line on stderr and exit `status`."""
    try:
        setup()
        message = "exec returned"
    except JailkitError as e:
        message = e.message
    except OSError as e:
        detail = e.args[1] if len(e.args) == 2 else e  # "what: strerror" from syscalls.py
        message = f"{doing} failed at {_step}: {detail}"
    except BaseException as e:  # a bug: still report it as one line through the launcher
        message = f"internal error while {doing} at {_step}: {e!r}"
    try:
        os.write(2, f"jailkit: {message}\n".encode(errors="replace"))
    finally:
        os._exit(status)


def run_child(plan, sync_fd: int, root_sock, reaper_fd: int, report_fd: int | None) -> None:
    """Entry point of the launcher's cloned child, the jail's pid 1: never returns."""
    report_and_exit(lambda: confine(plan, sync_fd, root_sock, reaper_fd, report_fd))


def run_service(plan, maps_fd: int) -> None:
    """Entry point of pid 1's cloned child, the service: never returns."""
    report_and_exit(lambda: confine_service(plan, maps_fd))
