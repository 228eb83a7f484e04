"""Finding a built jail (layout in docs/contracts.md) and holding it while it runs.

Deliberately separate from jailkit.jaildir (the builder's side), which imports pathlib, re and
shutil: `jailkit run` only needs a readlink, one flock and one JSON file.
"""

import fcntl
import os

from jailkit.errors import JailkitError
from jailkit.launch.jsonload import loads
from jailkit.launch.trust import check_jail_dir

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def default_dir(name: str) -> str:
    """Same rule as jailkit.jaildir.default_root."""
    if os.geteuid() == 0:
        return f"/var/lib/jailkit/{name}"
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return f"{data}/jailkit/{name}"


class Jail:
    """The generation `DIR/current` points to, locked shared while `lock_fd` stays open (the
    waiter inherits it), so a rebuild does not delete a running generation."""

    __slots__ = ("dir", "generation", "root", "state", "raw_spec", "lock_fd")

    def __init__(self, directory: str, profile: str):
        self.dir = check_jail_dir(os.path.abspath(directory))  # no one else's to swap
        build_hint = f"build it first: jailkit build {profile} --root {directory}"
        try:
            target = os.readlink(f"{self.dir}/current")
        except FileNotFoundError:
            raise JailkitError(f"no jail is built in {directory}: {build_hint}") from None
        except OSError as e:
            raise JailkitError(f"{self.dir}/current: {e.strerror}: {build_hint}") from None
        if not target.startswith("gen-") or not target[4:].isdigit():
            raise JailkitError(f"{self.dir}/current points to {target!r}, not gen-N: rebuild")
        self.generation = f"{self.dir}/{target}"
        self.root = f"{self.generation}/root"
        self.state = f"{self.dir}/state"
        try:
            self.lock_fd = os.open(self.generation, DIR_FLAGS)
        except OSError as e:
            raise JailkitError(f"{self.generation}: {e.strerror}: {build_hint}") from None
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            # read only once locked: a build that removes a generation unlinks this first
            self.raw_spec = self._read_spec(build_hint)
            if not os.path.isdir(self.root) or os.path.islink(self.root):
                raise JailkitError(f"{self.root} is missing: {build_hint}")
        except BlockingIOError:
            os.close(self.lock_fd)
            raise JailkitError(f"{self.generation} is being removed: run again") from None
        except BaseException:
            os.close(self.lock_fd)
            raise

    def _read_spec(self, build_hint: str):
        try:
            fd = os.open("launch.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self.lock_fd)
        except FileNotFoundError:
            raise JailkitError(f"{self.generation} has no launch.json: {build_hint}") from None
        with open(fd, "rb") as f:
            data = f.read()
        try:
            return loads(data.decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise JailkitError(f"{self.generation}/launch.json is not valid JSON ({e})") from None
