"""The launcher: clone the jail, do the host-side steps for it, then become its waiter.

Host side, in order: published ports are bound (publish.py); pid 1's program is copied into
sealed memory and cgroups are made before the jail exists; the jail is cloned into its new
namespaces; its id maps are written (it waits, still host uid 0, until they are); it joins its
cgroups; as root, it is handed detached mounts of its tree (idmapped, read-only) and state, and
a veth end. Then, while the jail confines itself (contain.py, which reports its own errors),
this process execs the native waiter, which keeps nothing of Python resident, forwards
signals, relays the published ports, passes the jail's exit status on and cleans up after it."""

import errno
import os

from jailkit.errors import JailkitError
from jailkit.launch import cgroup, contain, mounts, net, publish, userns
from jailkit.launch import syscalls as sc
from jailkit.launch.plan import REAPER_NAME, LaunchPlan
from jailkit.launch.registry import LOG_CAP

SCM_RIGHTS = 1
SOL_SOCKET = 1


def _clone_error(err: OSError) -> JailkitError:
    if err.errno == errno.ENOSPC:
        hint = "the limit of user namespaces is reached: raise sysctl user.max_user_namespaces"
    elif os.geteuid() != 0:
        hint = ("user namespaces may be disabled for ordinary users (sysctl "
                "kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0), or run as root")
    else:
        hint = "the kernel needs user, mount, pid, ipc and uts namespaces"
    return JailkitError(f"cannot create the jail's namespaces ({os.strerror(err.errno)}): {hint}")


def _abort(pid: int, plan: LaunchPlan) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    cgroup.remove([g.path for g in plan.cgroups])


def _sealed_copy(reaper: str) -> int:
    """pid 1's program as a sealed memory file (runc's fix for CVE-2019-5736): the jail's
    /proc/1/exe then names no host file, which in an ordinary user's jail would be that user's
    own, for the jail to chmod or write."""
    try:
        source = os.open(reaper, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise JailkitError(
            f"jailkit's pid-1 helper {reaper} is missing ({e.strerror}): reinstall jailkit "
            "(`pip install .`, or `pip install -e .` in a checkout), whose build compiles it"
        ) from None
    try:
        size = os.fstat(source).st_size
        copy = sc.sealed_memfd(REAPER_NAME)
        try:
            done = 0
            while done < size:
                sent = os.sendfile(copy, source, done, size - done)
                if sent == 0:
                    raise OSError(errno.EIO, f"{reaper} shrank while being copied")
                done += sent
            sc.seal_all(copy)
        except BaseException:
            os.close(copy)
            raise
    except OSError as e:
        raise JailkitError(f"cannot copy {reaper} into memory for pid 1: {e}") from None
    finally:
        os.close(source)
    return copy


def launch(plan: LaunchPlan, lock_fd: int) -> None:
    """Start the jail and exec the waiter; returns only by raising JailkitError."""
    # First: a published port in use fails the run before anything is made for it.
    listeners = publish.listen(plan.publish)
    # From here on, signals stay pending until the waiter takes (and forwards) them: none can
    # kill this process between making host state (cgroups) and handing its cleanup over.
    sc.block_signals()
    reaper_fd = _sealed_copy(plan.reaper)
    plan.stdio.open()  # /dev/null, or a pty in place of the caller's terminal
    cgroup.create(plan.cgroups)
    sync_r, sync_w = os.pipe()  # launcher -> jail: "maps written"; EOF: launcher gone
    # pid 1 -> waiter: how the service ended, for a detached jail's last log line (reaper.c)
    report_r, report_w = os.pipe() if plan.stdio.detached else (None, None)
    socks = None
    if plan.idmapped:
        import _socket

        socks = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        if plan.allocation:  # its user namespace is its own uid's, not root's
            pid = userns.clone_owned_by(plan.allocation.uid, plan.allocation.gid,
                                        plan.clone_flags)
        else:
            pid = sc.clone(plan.clone_flags)
    except OSError as e:
        cgroup.remove([g.path for g in plan.cgroups])
        raise _clone_error(e) from None
    if pid == 0:
        # The launcher's ends: while the jail held them it could not see the launcher die.
        os.close(sync_w)
        if socks:
            socks[0].close()
        for fd in listeners:  # host sockets: the jail's own network has the ports
            os.close(fd)
        if report_r is not None:
            os.close(report_r)
        contain.run_child(plan, sync_r, socks and socks[1], reaper_fd, report_w)
    os.close(sync_r)
    os.close(reaper_fd)
    if report_w is not None:
        os.close(report_w)
    try:
        userns.write(pid, plan.maps)
        if plan.idmapped:
            fds = mounts.detached_sources(plan.mounts, plan.maps, pid, plan.jail)
            raw = b"".join(fd.to_bytes(4, "little") for fd in fds)
            socks[0].sendmsg([b"m"], [(SOL_SOCKET, SCM_RIGHTS, raw)])
            for fd in fds:
                os.close(fd)
            socks[0].close()
            socks[1].close()
        if plan.veth:
            net.create_veth(plan.veth, pid)
    except OSError as e:
        _abort(pid, plan)
        raise JailkitError(f"cannot set up the jail from the host: {e}") from None
    except BaseException:
        _abort(pid, plan)
        raise
    # The jail sets itself up while this process joins it to its cgroups (a first move waits
    # for an RCU grace period, which cgroup.prime began before planning) and becomes the waiter
    # (on the other core); from here the jail reports its own setup errors, and the waiter
    # cleans up after any exit.
    os.write(sync_w, b"1")
    try:
        cgroup.attach(plan.cgroups, pid)
    except OSError as e:
        _abort(pid, plan)
        raise JailkitError(f"cannot move the jail into its cgroups: {e}") from None
    try:
        os.write(sync_w, b"2")  # the jail may start processes now: they are born in its cgroups
    except BrokenPipeError:
        pass  # its setup failed and it exited, saying why: the waiter passes the status on
    argv = ["jailkit-wait", "wait", str(pid), *plan.stdio.waiter_args()]
    for group in plan.cgroups:
        argv += ["--cgroup", group.path]
    if plan.veth:
        argv += ["--veth", plan.veth.host_name]
        argv += publish.waiter_args(plan.publish, listeners, plan.veth.jail_addr)
    if plan.registration:  # the waiter holds the entry's lock, and removes it last
        registry_fd, entry_fd = plan.registration
        argv += ["--registry", str(registry_fd), "--entry", f"{plan.name}.json"]
        if plan.stdio.detached:
            argv += ["--log-name", f"{plan.name}.log", "--log-cap", str(LOG_CAP),
                     "--report", str(report_r)]
            os.set_inheritable(report_r, True)
        os.set_inheritable(registry_fd, True)
        os.set_inheritable(entry_fd, True)
    if plan.early_hint:
        argv += ["--early-hint", plan.early_hint]
    if plan.veth and not plan.stdio.detached:  # a detached start says it itself (detach.py)
        os.write(2, f"jailkit: {plan.name}: {publish.reach(plan.veth.jail_addr, plan.publish)}"
                    "\n".encode())
    if plan.stdio.detached:  # nothing of the caller's stays open in the waiter
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    os.set_inheritable(lock_fd, True)  # the waiter holds the generation's lock
    os.set_inheritable(sync_w, True)  # and the jail's sign that its launcher lives
    os.execv(plan.reaper, argv)
