"""Where an export is written: OUT must be new (or --force), and appears only when complete.

The export is made in a temporary sibling of OUT and renamed into place at the end, so an
interrupted export leaves no half-written OUT, and --force replaces an old one only then.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager

from jailkit.errors import JailkitError


def check_out(out: str, force: bool, jail_dir: str) -> str:
    """OUT made absolute, refused when it exists without --force or would hit the jail itself."""
    path = os.path.abspath(out)
    if path == "/" or os.path.dirname(path) == path:
        raise JailkitError(f"-o {out}: refusing to write to /")
    jail = os.path.realpath(jail_dir)
    real = os.path.realpath(path)
    if real == jail or real.startswith(jail + "/") or jail.startswith(real + "/"):
        raise JailkitError(f"-o {out}: inside (or above) the jail directory {jail_dir}; "
                           "choose another path")
    if os.path.lexists(path) and not force:
        raise JailkitError(f"-o {out}: exists; choose a new path or pass --force to replace it")
    if not os.path.isdir(os.path.dirname(path)):
        raise JailkitError(f"-o {out}: {os.path.dirname(path)} is not a directory")
    return path


@contextmanager
def staged(path: str, directory: bool):
    """A temporary path beside `path` to write into; moved to `path` when the block succeeds,
    removed when it fails."""
    parent, base = os.path.split(path)
    if directory:
        temp = tempfile.mkdtemp(prefix=f".{base}.", dir=parent)
    else:
        fd, temp = tempfile.mkstemp(prefix=f".{base}.", dir=parent)
        os.close(fd)
    try:
        yield temp
        _remove(path)
        os.rename(temp, path)
    except BaseException:
        _remove(temp)
        raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
