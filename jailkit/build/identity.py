"""The identity of a host file, one type for everything that asks "did it change since?": the
copies the manifest records, and the files the loader closure consulted (its cache)."""

import os
from typing import NamedTuple


class HostStat(NamedTuple):
    """Identity of a host file when it was planned: if all match later, it did not change.
    ctime because no process can set it: a file rewritten in place with its mtime put back
    (os.utime) keeps size, mtime and inode, not ctime. None in manifests of older builds."""

    size: int
    mtime_ns: int
    ino: int
    dev: int
    ctime_ns: int | None = None

    @classmethod
    def of(cls, st: os.stat_result) -> "HostStat":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


def identity_of(path: str) -> HostStat | None:
    """The identity of the file `path` leads to now, or None when there is none."""
    try:
        return HostStat.of(os.stat(path))
    except OSError:
        return None
