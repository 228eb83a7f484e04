"""What a jail directory keeps from one build to the next, gathered before planning so that the
plan itself reads nothing of the jail and writes nothing anywhere: the current generation's
manifest (what can be reused), the password hashes in its /etc/shadow (a rebuild with the same
password keeps the same hash), and the keys and certificates made for it once (DIR/generated).
"""

import os
from typing import NamedTuple

from jailkit.build import generate
from jailkit.build.jaildir import JailDir
from jailkit.build.manifest import SETS, Manifest, read_current, read_json, remembered
from jailkit.launch.syscalls import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, openat2


class Kept(NamedTuple):
    manifest: Manifest | None = None
    shadow: dict[str, tuple[str, ...]] = {}  # user name -> its hash in the current jail
    generated: dict[str, generate.KeptFiles] = {}  # [generated] dest -> what was made for it


NOTHING = Kept()  # a jail built for the first time, or a plan for no jail directory


def gather(jail: JailDir, profile) -> Kept:
    """Read what `jail` keeps for `profile`, through the jail directory's descriptor."""
    shadow = {}
    number = jail.current()
    if number is not None:
        gen_fd = jail.open_generation(number)
        try:
            shadow = _shadow(gen_fd)
        finally:
            os.close(gen_fd)
    kept = {dest: files for dest, item in profile.generated.items()
            if (files := generate.read_kept(jail.fd, item)) is not None}
    return Kept(read_current(jail), shadow, kept)


def _shadow(gen_fd: int) -> dict[str, tuple[str, ...]]:
    try:
        # no symlink anywhere on the way: an imported tree's /etc may be a link to the host's
        fd = openat2(gen_fd, "root/etc/shadow", os.O_RDONLY,
                     RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    except OSError:
        return {}
    hashes: dict[str, tuple[str, ...]] = {}
    with open(fd, encoding="utf-8", errors="replace") as f:
        for fields in (line.split(":") for line in f):
            if len(fields) > 2:
                hashes[fields[0]] = (*hashes.get(fields[0], ()), fields[1])
    return hashes


def remembered_sets(jail: JailDir, name: str) -> dict[str, str]:
    """The --set values the current generation of jail `name` was built with ({} for a jail of
    another profile, or of a jailkit that did not record them)."""
    number = jail.current()
    if number is None:
        return {}
    try:
        gen_fd = jail.open_generation(number)
    except OSError:
        return {}
    try:
        record = read_json(gen_fd, SETS)
    finally:
        os.close(gen_fd)
    return remembered(record, name) or {}
