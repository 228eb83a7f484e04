"""A detached jail's log, as `jailkit logs` reads it: NAME.log.1 then NAME.log (registry.py).

The waiter writes them (reaper.c, `wait --log`): it renames NAME.log to NAME.log.1 at the cap
and begins a new NAME.log, so a reader that follows holds the file it is reading and, once
NAME.log names another file, reads what is left of its own before it opens the new one.
Both are opened from the registry directory's descriptor with O_NOFOLLOW, as the waiter does.
"""

import os
import time

from jailkit.launch.registry import FILE_FLAGS, Registry
from jailkit.launch.running import NotRunning
from jailkit.vocabulary import check_name

POLL_SECONDS = 0.2  # how often a follower looks for new lines


class Log:
    def __init__(self, name: str):
        check_name(name, "NAME")
        self.name = name
        self.registry = Registry(create=False)
        if self.registry.fd is None or not self._exists(f"{name}.log"):
            self.registry.close()
            raise NotRunning(f"no jail named {name!r} has a log (only a jail run with "
                             "--detach has one): see `jailkit ps`")

    def _exists(self, file: str) -> bool:
        try:
            os.stat(file, dir_fd=self.registry.fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def _open(self, file: str) -> int | None:
        try:
            return os.open(file, os.O_RDONLY | FILE_FLAGS, dir_fd=self.registry.fd)
        except FileNotFoundError:
            return None

    def running(self) -> bool:
        """Whether a jail of this name runs (its waiter holds its entry's lock)."""
        return self.registry.read(self.name)[1]

    def tail(self, lines: int | None) -> tuple[bytes, int | None]:
        """The last `lines` lines (all with None) of NAME.log.1 and NAME.log, and NAME.log open
        at its end (None if it went meanwhile)."""
        current = self._open(f"{self.name}.log")
        chunks = []
        rotated = self._open(f"{self.name}.log.1")
        if rotated is not None:
            chunks.append(_read_all(rotated))
            os.close(rotated)
        if current is not None:
            chunks.append(_read_all(current))
        text = b"".join(chunks)
        if lines is not None:
            kept = text.splitlines(keepends=True)
            text = b"".join(kept[-lines:]) if lines else b""
        return text, current

    def follow(self, fd: int | None, write, ended) -> None:
        """Write what the jail logs from here on, across rotations, until `ended()`."""
        while True:
            if fd is not None:
                data = _read_all(fd)
                if data:
                    write(data)
                    continue
            try:
                now = os.stat(f"{self.name}.log", dir_fd=self.registry.fd,
                              follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (fd is None or now.st_ino != os.fstat(fd).st_ino):
                if fd is not None:  # rotated: the rest of ours, then the new file
                    write(_read_all(fd))
                    self._missed_rotation(os.fstat(fd).st_ino, write)
                    os.close(fd)
                fd = self._open(f"{self.name}.log")
                continue
            if ended():
                if fd is not None:  # what it wrote between our last read and its end
                    write(_read_all(fd))
                return
            time.sleep(POLL_SECONDS)

    def _missed_rotation(self, ours: int, write) -> None:
        """NAME.log.1 is not the file we read: it was rotated twice between two looks, and
        .log.1 is one we never saw (what came before it is gone)."""
        rotated = self._open(f"{self.name}.log.1")
        if rotated is not None:
            if os.fstat(rotated).st_ino != ours:
                write(_read_all(rotated))
            os.close(rotated)

    def close(self) -> None:
        self.registry.close()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)
