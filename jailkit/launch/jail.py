"""Finding a built jail (layout in docs/contracts.md) and holding it while it runs.

Deliberately separate from jailkit.build.jaildir (the builder's side), which imports pathlib, re and
shutil: `jailkit run` only needs a readlink, one flock and one JSON file.

Everything under DIR is reached from one descriptor of DIR with openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS): a running jail can rename and link entries of its own state directories
(they are mounted writable in it), so no path string under DIR is ever handed to the kernel by
root — a link planted there would have root chown or mount a host directory of its choosing.
"""

import errno
import fcntl
import os

from jailkit.errors import JailkitError
from jailkit.launch import syscalls as sc
from jailkit.launch.jsonload import loads
from jailkit.launch.trust import MissingJailDir, check_jail_dir, open_jail_dir

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
BENEATH = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS


def open_beneath(dir_fd: int, path: str, flags: int, shown: str, fix: str) -> int:
    """`path` under `dir_fd`, never through a symlink nor out of it; a refusal names `shown`
    (the full path) and `fix`."""
    try:
        return sc.openat2(dir_fd, path, flags, BENEATH)
    except OSError as e:
        if e.errno == errno.ELOOP:
            why = "a symlink is on its way, and nothing under a jail directory is followed"
        elif e.errno == errno.EXDEV:
            why = "it leads out of the jail directory"
        else:
            why = os.strerror(e.errno)
        raise JailkitError(f"{shown}: {why}: {fix}") from None


def open_host_dir(source: str, flags: int) -> int:
    """A profile's `binds` source, a host directory: resolved from / with no symlink in any
    component (a link swapped in by whoever can write a directory on the way could otherwise
    mount /etc, or another jail's state, into the jail), and held by descriptor from then on."""
    try:
        return sc.openat2(-100, source, flags | os.O_DIRECTORY, sc.RESOLVE_NO_SYMLINKS)  # AT_FDCWD
    except OSError as e:
        why = ("a symlink is on its way; name the real directory" if e.errno == errno.ELOOP
               else f"{os.strerror(e.errno)}; make it a directory or change the profile's source")
        raise JailkitError(f"binds source {source}: {why}") from None


class Jail:
    """The generation `DIR/current` points to, locked shared while `lock_fd` stays open (the
    waiter inherits it), so a rebuild does not delete a running generation. `dir_fd` is DIR,
    opened once; `root` and `state` are paths for messages and plans only."""

    __slots__ = ("dir", "dir_fd", "gen_name", "generation", "root", "state", "raw_spec",
                 "lock_fd")

    def __init__(self, directory: str, profile: str):
        build_hint = f"build it first: jailkit build {profile} --root {directory}"
        try:
            # no one else's to swap: checked, then opened and checked again by its descriptor
            self.dir = check_jail_dir(os.path.abspath(directory), must_exist=True)
            self.dir_fd = open_jail_dir(self.dir, directory)
        except (FileNotFoundError, MissingJailDir):
            raise JailkitError(f"no jail is built in {directory}: {build_hint}") from None
        except OSError as e:
            raise JailkitError(f"{directory}: {e.strerror}: {build_hint}") from None
        try:
            self._open_generation(build_hint, f"remove it and rebuild: jailkit build {profile} "
                                              f"--root {directory}")
        except BaseException:
            os.close(self.dir_fd)
            raise

    def _open_generation(self, build_hint: str, rebuild: str) -> None:
        try:
            target = os.readlink("current", dir_fd=self.dir_fd)
        except FileNotFoundError:
            raise JailkitError(f"no jail is built in {self.dir}: {build_hint}") from None
        except OSError as e:
            raise JailkitError(f"{self.dir}/current: {e.strerror}: {build_hint}") from None
        if not target.startswith("gen-") or not target[4:].isdigit():
            raise JailkitError(f"{self.dir}/current points to {target!r}, not gen-N: rebuild")
        self.gen_name = target
        self.generation = f"{self.dir}/{target}"
        self.root = f"{self.generation}/root"
        self.state = f"{self.dir}/state"
        self.lock_fd = open_beneath(self.dir_fd, target, DIR_FLAGS, self.generation, rebuild)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            # read only once locked: a build that removes a generation unlinks this first
            self.raw_spec = self._read_spec(build_hint, rebuild)
            os.close(open_beneath(self.lock_fd, "root", sc.O_PATH | os.O_DIRECTORY, self.root,
                                  rebuild))
        except BlockingIOError:
            os.close(self.lock_fd)
            raise JailkitError(f"{self.generation} is being removed: run again") from None
        except BaseException:
            os.close(self.lock_fd)
            raise

    def _read_spec(self, build_hint: str, rebuild: str):
        shown = f"{self.generation}/launch.json"
        try:
            fd = sc.openat2(self.lock_fd, "launch.json", os.O_RDONLY, BENEATH)
        except FileNotFoundError:
            raise JailkitError(f"{self.generation} has no launch.json: {build_hint}") from None
        except OSError:
            fd = open_beneath(self.lock_fd, "launch.json", os.O_RDONLY, shown, rebuild)
        with open(fd, "rb") as f:
            data = f.read()
        try:
            return loads(data.decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise JailkitError(f"{shown} is not valid JSON ({e})") from None

    def close(self) -> None:
        """Let go of DIR and the generation's lock (a jail checked, not run)."""
        os.close(self.lock_fd)
        os.close(self.dir_fd)

    def accounts(self) -> tuple[dict[int, str], dict[int, str]]:
        """uid -> name and gid -> name of the users and groups in the jail's /etc/passwd and
        /etc/group (userns.parse_accounts); a file it does not have names none."""
        texts = []
        for name in ("passwd", "group"):
            try:
                fd = sc.openat2(self.lock_fd, f"root/etc/{name}", os.O_RDONLY, BENEATH)
            except OSError:
                texts.append("")  # none (or not a plain file): the jail names no one there
                continue
            with open(fd, encoding="utf-8", errors="replace") as f:
                texts.append(f.read(1 << 20))
        from jailkit.launch.userns import parse_accounts

        return parse_accounts(*texts)

    def dirs_here(self) -> tuple[int, int]:
        """DIR and the locked generation, opened again in this process's mount namespace (a
        descriptor opened in another one cannot be cloned into a mount here), and checked to be
        the very directories opened at start."""
        fix = "the jail directory changed while starting: run again"
        try:
            dir_fd = os.open(self.dir, sc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise JailkitError(f"{self.dir}: {e.strerror}: {fix}") from None
        gen_fd = None
        try:
            gen_fd = open_beneath(dir_fd, self.gen_name, sc.O_PATH | os.O_DIRECTORY,
                                  self.generation, fix)
            for new, old, shown in ((dir_fd, self.dir_fd, self.dir),
                                    (gen_fd, self.lock_fd, self.generation)):
                a, b = os.fstat(new), os.fstat(old)
                if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                    raise JailkitError(f"{shown}: {fix}")
        except BaseException:
            os.close(dir_fd)
            if gen_fd is not None:
                os.close(gen_fd)
            raise
        return dir_fd, gen_fd

    def open_source(self, source: str, flags: int, dirs: tuple[int, int] | None = None) -> int:
        """A descriptor of a mount source of the plan (the tree, or a directory under
        DIR/state), resolved beneath DIR from `dirs` (default: those opened at start)."""
        dir_fd, gen_fd = dirs or (self.dir_fd, self.lock_fd)
        if source == self.root:
            return open_beneath(gen_fd, "root", flags | os.O_DIRECTORY, source,
                                "remove it and rebuild the jail")
        prefix = f"{self.state}/"
        if not source.startswith(prefix):
            raise JailkitError(f"{source} is not under {self.state}")
        return open_beneath(dir_fd, f"state/{source[len(prefix):]}", flags | os.O_DIRECTORY,
                            f"state directory {source}",
                            "remove what the jail planted there and rebuild the jail")
