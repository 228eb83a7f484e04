"""The registry of running jails: one entry per name, held by the jail's waiter.

The directory is /run/jailkit as root, else $XDG_RUNTIME_DIR/jailkit (or /tmp/jailkit-UID where
that is unset, as tmux does), made 0700 and used only while it is the caller's own with no access
for anyone else: someone who could write there could plant an entry naming another cgroup for
`ps` to remove, or a symlink for the waiter to write the log through. Every file in it is opened
from the directory's descriptor with O_NOFOLLOW, entries created with O_EXCL.

NAME.json is alive while its waiter holds flock(LOCK_EX) on it: the lock goes with the process,
so the entry of a killed waiter reads as dead whatever its pid is reused for, and the next
command (a run, `ps`, `stop`) removes its cgroups and then the entry. `.lock` serialises the
commands that add or clean entries. NAME.log (and NAME.log.1) hold a detached jail's output,
written by the waiter (jailkit-reaper wait --log) and kept after it ends. Format:
docs/contracts.md.
"""

import errno
import fcntl
import os

from jailkit.errors import JailkitError
from jailkit.vocabulary import default_name

ROOT_DIR = "/run/jailkit"
LOCK = ".lock"
LOG_CAP = 1 << 20  # bytes per log file; with the one rotated file, 2 MiB a jail at most
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def directory() -> str:
    if os.geteuid() == 0:
        return ROOT_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    # a relative one is ignored, as the XDG rules say (from /, it would be root's /run/jailkit)
    return f"{runtime}/jailkit" if runtime.startswith("/") else f"/tmp/jailkit-{os.geteuid()}"


def _unusable(path: str, why: str) -> JailkitError:
    fix = ("it must be root's alone: remove it" if os.geteuid() == 0 else
           "set XDG_RUNTIME_DIR to a directory of yours (or unset it: "
           f"/tmp/jailkit-{os.geteuid()})")
    return JailkitError(f"cannot use {path} as the registry of running jails: {why}: {fix}")


def check_usable() -> None:
    """Refuse, as a run would, a registry that cannot be made or used; make nothing (a dry
    run)."""
    path = directory()
    if os.path.lexists(path):
        Registry(create=False).close()  # refused there if it is not the caller's alone
        return
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise _unusable(path, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _unusable(path, f"{parent} is not writable by you")


def _json(value) -> str:
    """JSON text of plain data (the json package's encoder imports re: not on the run path)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return "".join(out) + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json(str(k))}: {_json(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(_json(v) for v in value) + "]"


class Registry:
    """The registry directory, opened (and made) once; `with` holds its lock."""

    def __init__(self, create: bool = True):
        self.path = directory()
        self.fd = self.lock_fd = None
        if create:
            try:
                os.mkdir(self.path, 0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise _unusable(self.path, f"it cannot be made ({e.strerror})") from None
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | FILE_FLAGS)
        except FileNotFoundError:
            return  # nothing ever ran: no entries
        except OSError as e:
            raise _unusable(self.path, f"{e.strerror} (remove it if it is yours)") from None
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(self.fd)
            raise _unusable(self.path, f"it is not yours alone (owner {st.st_uid}, mode "
                                       f"{st.st_mode & 0o7777:04o}; remove it if it is yours)")

    def __enter__(self) -> "Registry":
        if self.fd is not None:
            self.lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | FILE_FLAGS, 0o600,
                                   dir_fd=self.fd)
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def close(self) -> None:
        self.__exit__()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def names(self) -> list[str]:
        if self.fd is None:
            return []
        return sorted(f[:-5] for f in os.listdir(self.fd)
                      if f.endswith(".json") and not f.startswith("."))

    def read(self, name: str) -> tuple[dict | None, bool]:
        """(entry, alive); (None, False) when there is none."""
        try:
            fd = os.open(f"{name}.json", os.O_RDONLY | FILE_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            return None, False
        except OSError as e:
            if e.errno == errno.ELOOP:  # planted: nothing of ours
                return None, False
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                alive = False
            except BlockingIOError:
                alive = True
            with os.fdopen(os.dup(fd), "rb") as f:
                text = f.read()
        finally:
            os.close(fd)
        from jailkit.launch.jsonload import loads

        try:
            entry = loads(text.decode())
        except (ValueError, UnicodeDecodeError):
            entry = None  # being written (alive), or torn by a crash (dead: cleaned)
        return (entry if isinstance(entry, dict) else None), alive

    def running(self) -> list[dict]:
        """Live entries, by name; dead ones are cleaned on the way (needs the lock)."""
        out = []
        for name in self.names():
            entry, alive = self.read(name)
            if alive and entry:
                out.append(entry)
            elif not alive:
                self.forget(name, entry)
        return out

    def forget(self, name: str, entry: dict | None) -> None:
        """Remove a dead entry and what its waiter did not live to remove: its cgroups (any
        process still in them is a remnant of the dead jail) and veth."""
        from jailkit.launch import cgroup

        paths = [p for p in (entry or {}).get("cgroups", []) if isinstance(p, str)
                 and p.startswith(cgroup.CGROUP_ROOT + "/")
                 and p.endswith(f"/{cgroup.PARENT}/{name}")]
        if os.geteuid() == 0:  # only root's jails have cgroups; a torn entry names none
            paths += [p for p in cgroup.candidates(name) if p not in paths and os.path.isdir(p)]
        try:
            if any(cgroup.procs(p) for p in paths):
                cgroup.kill(paths)
            cgroup.remove(paths, seconds=5.0)
        except (OSError, JailkitError):
            return  # kept, to be cleaned by a later command
        try:
            os.unlink(f"{name}.json", dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def register(self, name: str, entry: dict) -> int:
        """Create NAME.json, locked; returns the descriptor the waiter must inherit."""
        fd = os.open(f"{name}.json", os.O_RDWR | os.O_CREAT | os.O_EXCL | FILE_FLAGS, 0o600,
                     dir_fd=self.fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, (_json(entry) + "\n").encode())
        except BaseException:
            os.close(fd)
            os.unlink(f"{name}.json", dir_fd=self.fd)
            raise
        return fd

    def unregister(self, name: str, fd: int) -> None:
        """A launch that failed after `register`: its entry goes with it."""
        try:
            os.unlink(f"{name}.json", dir_fd=self.fd)
        except FileNotFoundError:
            pass
        os.close(fd)


def pick_name(requested: str | None, jail, running: list[dict], existing: list[str]) -> str:
    """The jail's name: `requested`, or its directory's last component (with -2, -3, ... while
    another jail directory of that name runs). One instance per jail directory."""
    here = os.fstat(jail.dir_fd)
    for entry in running:
        if entry.get("dir_id") == [here.st_dev, here.st_ino]:
            raise JailkitError(f"{jail.dir} is already running as {entry.get('name')} (pid "
                               f"{entry.get('pid')}): stop it first: jailkit stop "
                               f"{entry.get('name')}")
    taken = {entry.get("name"): entry for entry in running}
    if requested:
        if requested in taken:
            raise JailkitError(f"the name {requested} is taken by the jail in "
                               f"{taken[requested].get('dir')} (pid "
                               f"{taken[requested].get('pid')}): pick another --name")
        if requested in existing:
            raise JailkitError(f"the registry entry of the stopped jail {requested} could not be "
                               "removed yet (its cgroup is busy): run again in a moment")
        return requested
    base = default_name(jail.dir)
    name, number = base, 1
    while name in existing:
        number += 1
        name = f"{base}-{number}"
    return name


def entry_for(plan, profile: str, restart_args: list[str]) -> dict:
    """What the registry says of a running jail (docs/contracts.md)."""
    import time

    jail, spec = plan.jail, plan.spec
    here = os.fstat(jail.dir_fd)
    veth = plan.veth
    return {
        "version": 1, "name": plan.name, "dir": jail.dir, "dir_id": [here.st_dev, here.st_ino],
        "profile": profile, "generation": jail.gen_name, "pid": os.getpid(),
        "started": round(time.time(), 3), "uid": os.geteuid(),
        "cgroups": [g.path for g in plan.cgroups], "limits": spec.limits,
        "network": spec.network,
        "veth": veth and {"host": veth.host_name, "host_addr": veth.host_addr,
                          "jail_addr": veth.jail_addr},
        "publish": [p.as_dict() for p in plan.publish],
        "stop_signal": spec.stop_signal, "ready": spec.ready,
        "log": f"{directory()}/{plan.name}.log" if plan.stdio.detached else None,
        "restart": restart_args,
    }
