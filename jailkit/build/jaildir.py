"""The jail directory (docs/contracts.md): DIR/current -> gen-N, DIR/gen-N/{root,manifest.json,
launch.json}, DIR/state, DIR/lock. Every operation goes through a descriptor of DIR, and never
follows a symlink that a jail (or whoever wrote into DIR) may have planted.
"""

import fcntl
import os
import re
import stat
from contextlib import contextmanager

from jailkit.errors import JailkitError
from jailkit.launch.trust import check_jail_dir, open_jail_dir

GEN_RE = re.compile(r"gen-([0-9]+)")
OWN_NAMES = {"current", "current.tmp", "lock", "state", "generated"}
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class JailDirError(JailkitError):
    """A jail directory that cannot be used."""


class NotAJail(JailDirError):
    """A directory that holds what no jail does (`strays`, by name)."""

    def __init__(self, message: str, strays: list[str]):
        super().__init__(message)
        self.strays = strays


def open_dir(name: str, dir_fd: int) -> int:
    """A directory descriptor for `name` under `dir_fd`; refuses symlinks."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def is_jail_listing(names) -> bool:
    return all(n in OWN_NAMES or GEN_RE.fullmatch(n) for n in names)


class JailDir:
    """An open jail directory. Use as a context manager to close its descriptor."""

    def __init__(self, path, create: bool = False):
        self.path = os.path.abspath(path)
        self._lock_fd: int | None = None  # DIR/lock while this process holds the build lock
        if self.path == "/" or (os.path.exists(self.path) and os.path.samefile(self.path, "/")):
            raise JailDirError("refusing to use / as a jail directory; pass --root DIR")
        real = check_jail_dir(self.path)
        if create:
            try:
                # 0700: launch.json and the manifest may hold secrets (a profile's env)
                os.makedirs(real, mode=0o700, exist_ok=True)
            except OSError as e:
                raise JailDirError(f"cannot create jail directory {self.path}: "
                                   f"{e.strerror}") from None
            check_jail_dir(self.path)  # the parents it made are ours, and no one else's
        try:
            self.fd = open_jail_dir(real, self.path)  # replaced since the check: refused
        except FileNotFoundError:
            raise JailDirError(f"no jail at {self.path}; build it first with "
                               "`jailkit build`") from None
        except OSError as e:
            raise JailDirError(f"cannot open jail directory {self.path}: {e.strerror}") from None
        st = os.fstat(self.fd)
        if create and st.st_mode & 0o077:
            os.fchmod(self.fd, 0o700)  # a jail of an older jailkit, or an empty directory
        names = os.listdir(self.fd)
        if not is_jail_listing(names):
            os.close(self.fd)
            strays = sorted(n for n in names if not is_jail_listing([n]))
            raise NotAJail(f"{self.path} is not empty and is not a jailkit jail (it holds "
                           f"{', '.join(strays)[:200]}); choose an empty or new directory",
                           strays)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    @contextmanager
    def locked(self):
        """Exclusive build lock on DIR/lock: concurrent builds of one jail run one after another.
        Re-entrant: a build holds it from reading what the jail keeps to the swap, and apply
        takes it again (a second flock of the same file by this process would wait forever)."""
        if self._lock_fd is not None:
            yield
            return
        fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink == 0:  # `jailkit rm` held it, and removed the jail
                raise JailDirError(f"{self.path} was removed while this waited for it")
            self._lock_fd = fd
            yield
        finally:
            self._lock_fd = None
            os.close(fd)

    def generations(self) -> list[int]:
        return sorted(int(m.group(1)) for n in os.listdir(self.fd) if (m := GEN_RE.fullmatch(n)))

    def current(self) -> int | None:
        """The generation DIR/current points to, or None before the first build."""
        try:
            target = os.readlink("current", dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise JailDirError(f"{self.path}/current is not a symlink to a generation: "
                               f"{e.strerror}") from None
        match = GEN_RE.fullmatch(target)
        if not match:
            raise JailDirError(f"{self.path}/current points to {target!r}, not to gen-N; "
                               "remove it and rebuild")
        return int(match.group(1))

    def open_generation(self, number: int) -> int:
        return open_dir(f"gen-{number}", self.fd)

    def new_generation(self) -> tuple[int, int]:
        """A fresh, empty DIR/gen-N (N above every existing one) and its descriptor."""
        number = max([0, *self.generations()]) + 1
        os.mkdir(f"gen-{number}", 0o755, dir_fd=self.fd)
        return number, self.open_generation(number)

    def swap(self, number: int) -> None:
        """Point DIR/current at gen-N in one rename(2): a reader sees the old or the new jail."""
        try:
            os.unlink("current.tmp", dir_fd=self.fd)
        except FileNotFoundError:
            pass
        os.symlink(f"gen-{number}", "current.tmp", dir_fd=self.fd)
        os.replace("current.tmp", "current", src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)

    def state_dir(self, relative: str, mode: int) -> None:
        """Create DIR/state/RELATIVE (and parents) without following symlinks; keep what exists."""
        fd = self._mkdir_at(self.fd, "state", 0o700)
        try:
            for i, part in enumerate(parts := relative.split("/")):
                child = self._mkdir_at(fd, part, mode if i == len(parts) - 1 else 0o755)
                os.close(fd)
                fd = child
        finally:
            os.close(fd)

    @staticmethod
    def _mkdir_at(dir_fd: int, name: str, mode: int) -> int:
        try:
            os.mkdir(name, mode, dir_fd=dir_fd)
            created = True
        except FileExistsError:
            created = False
        try:
            fd = open_dir(name, dir_fd)
        except OSError as e:
            raise JailDirError(f"state path component {name!r} is not a directory (a symlink?): "
                               f"{e.strerror}") from None
        if created:
            os.fchmod(fd, mode)  # the umask must not take group write from a shared upload dir
        return fd

    def _has_mounts(self, name: str) -> bool:
        inside = os.path.realpath(os.path.join(self.path, name)) + "/"
        return any(point.startswith(inside) for point in mount_points())

    def remove_stale(self, keep: set[int]) -> list[int]:
        """Delete generations not in `keep` that no launcher holds (see docs/contracts.md)."""
        removed = []
        try:
            os.unlink("current.tmp", dir_fd=self.fd)
        except FileNotFoundError:
            pass
        for number in self.generations():
            if number in keep:
                continue
            if self._has_mounts(f"gen-{number}"):
                continue  # a launcher's mounts are still there: never delete through them
            try:
                fd = self.open_generation(number)
            except OSError:
                # not a directory: a leftover file of a broken run, never a launcher's
                os.unlink(f"gen-{number}", dir_fd=self.fd)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a running service holds it; the next build retries
                # launch.json first: a launcher that locked this generation late sees it gone
                try:
                    os.unlink("launch.json", dir_fd=fd)
                except FileNotFoundError:
                    pass
                import shutil  # only when there is something to delete

                shutil.rmtree(f"gen-{number}", dir_fd=self.fd)
                removed.append(number)
            finally:
                os.close(fd)
        return removed


def mount_points() -> set[str]:
    """Every mount point this process sees."""
    with open("/proc/self/mountinfo", "rb") as f:
        return {unescape_mount_path(line.split()[4]) for line in f}


def unescape_mount_path(field: bytes) -> str:
    """A mountinfo path field as the path it names. The kernel escapes only space, tab, newline
    and backslash, as \\ooo octal; every other byte (UTF-8 names included) is written as is."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


def walk_tree(root_fd: int) -> dict[str, os.stat_result]:
    """lstat of everything under a directory descriptor, by jail path, never following symlinks
    and never leaving the directory's filesystem."""
    out = {"/": os.fstat(root_fd)}
    pending = [("", os.dup(root_fd))]
    while pending:
        prefix, fd = pending.pop()
        try:
            with os.scandir(fd) as it:
                for item in it:
                    path = f"{prefix}/{item.name}"
                    st = item.stat(follow_symlinks=False)
                    out[path] = st
                    if stat.S_ISDIR(st.st_mode) and st.st_dev == out["/"].st_dev:
                        try:
                            pending.append((path, open_dir(item.name, fd)))
                        except OSError:
                            pass  # replaced under us; what it held is reported missing
        finally:
            os.close(fd)
    return out
