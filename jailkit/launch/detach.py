"""`jailkit run --detach`: start the jail in the background, return once it is started.

The caller's process forks; the child leaves the caller's session, registers and launches the
jail as a foreground run does (its output going to a log file, launch/stdio.py) and becomes its
waiter. This process watches: the child reports the jail's name once registered, then execs the
waiter (the report pipe closes); the jail's pid 1 is the waiter's child, and it is started once
it runs the reaper (only then is the service confined and running). With `ready` (the profile's
`[service] ready = {tcp = PORT}`), it is started once PORT answers on the jail's address
(127.0.0.1 on the host's network, its own on veth), within `timeout` seconds. Every wait is
bounded; a jail that exits meanwhile is reported with the end of its log.
"""

import os
import sys
import time

from jailkit.errors import JailkitError
from jailkit.launch.running import jail_pid

START_SECONDS = 30  # for the jail to confine itself and start the service


def start(launch_child, ready: dict | None, network: str, doctor: str) -> int:
    """Start the jail (`launch_child(report fd)`, which execs its waiter) and return once it is
    started; `doctor`: the command that explains a jail that exits meanwhile."""
    if ready and network == "host" and _answers("127.0.0.1", ready["tcp"]):
        # the readiness check could not tell the jail's service from what answers already
        raise JailkitError(f"port {ready['tcp']} on 127.0.0.1 already answers (another service, "
                           "or this jail running under another name?): free it, or build the "
                           "jail with another port (`jailkit build PROFILE --set port=N`)")
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.setsid()  # the caller's terminal and its signals are not the jail's
        try:
            code = launch_child(report_w)  # execs the waiter on success
        except JailkitError as e:
            sys.stderr.write(f"jailkit: {e}\n")
            code = e.exit_code
        except BaseException:
            code = 2
        sys.stderr.flush()
        os._exit(code)
    os.close(report_w)
    with open(report_r, "rb") as f:
        # EOF: the waiter was exec'd, or the child failed. Logs are appended across runs: the
        # child says how long the log was before this run (and which file it was), so a
        # failure shows this run's lines
        words = f.read().decode().split()
    name = words[0] if words else ""
    log_start, log_file = (int(words[1]), int(words[2])) if len(words) == 3 else (0, 0)
    deadline = time.monotonic() + START_SECONDS
    code = _exited(pid)
    while code is None and _comm(pid) != "jailkit-reaper" and time.monotonic() < deadline:
        time.sleep(0.005)
        code = _exited(pid)
    if not name:
        return code if code else 2  # the child said why
    from jailkit.launch.registry import Registry, directory

    # the entry is gone already when the jail failed at once: its log is still there
    log = f"{directory()}/{name}.log"
    if code is not None:
        if _written(log, log_start, log_file):  # the waiter ran and ended with the jail
            return _failed(name, code, log, log_start, "while starting")
        return code if code else 2  # its launch failed: the child said why
    registry = Registry(create=False)
    entry, _ = registry.read(name)
    registry.close()
    pid_1 = None
    while time.monotonic() < deadline:
        code = _exited(pid)
        if code is not None:
            return _failed(name, code, log, log_start, "while starting", doctor)
        pid_1 = pid_1 or jail_pid(pid)
        if pid_1 and _comm(pid_1) == "jailkit-reaper":
            break
        time.sleep(0.005)
    else:
        sys.stderr.write(f"jailkit: {name} did not start within {START_SECONDS} s: it keeps "
                         f"trying; see {log}, or stop it: jailkit stop {name}\n")
        return 1
    how = ""
    if ready:
        veth = (entry or {}).get("veth")
        address = veth["jail_addr"] if veth else "127.0.0.1"
        limit = time.monotonic() + ready["timeout"]
        while not _answers(address, ready["tcp"]):
            code = _exited(pid)
            if code is not None:
                return _failed(name, code, log, log_start, "before it answered", doctor)
            if time.monotonic() > limit:
                sys.stderr.write(f"jailkit: {name} did not answer on {address}:{ready['tcp']} "
                                 f"within {ready['timeout']} s; it keeps running: see {log}, or "
                                 f"stop it: jailkit stop {name}\n")
                return 1
            time.sleep(0.05)
        how = f", answering on {address}:{ready['tcp']}"
    veth = (entry or {}).get("veth")
    if veth:
        from jailkit.launch.publish import Publish, reach

        how += "; " + reach(veth["jail_addr"], [Publish(**p) for p in entry.get("publish", [])])
    print(f"{name} started (pid {pid}){how}; its output: {log} (the newest lines last); "
          f"stop it with: jailkit stop {name}")
    return 0


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _written(log: str, start: int, file: int) -> bool:
    """Whether this run wrote to the log (the waiter ends it with a line): it is longer than
    before, or another file (made by this run, or rotated since)."""
    try:
        now = os.stat(log)
    except OSError:
        return False
    return now.st_size > start or now.st_ino != file


def _exited(pid: int) -> int | None:
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _answers(address: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _failed(name: str, code: int, log: str, start: int, when: str, doctor: str) -> int:
    """Say that the jail exited, with the last lines it wrote in this run (from `start`), and
    last how to see why (`doctor`)."""
    tail = ""
    try:
        with open(log, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(start if size >= start else 0, size - 2000))
            tail = "".join(f"  {line}\n" for line in
                           f.read().decode(errors="replace").splitlines()[-10:])
    except OSError:
        pass
    sys.stderr.write(f"jailkit: {name} exited with status {code} {when}; the end of its log "
                     f"{log}:\n{tail}jailkit: to see why: {doctor}\n")
    return code if code else 1
