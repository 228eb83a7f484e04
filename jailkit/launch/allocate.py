"""What root gives each jail for itself, once, and keeps: a range of host ids and a veth subnet.

Sharing them between jails is an attack: with one id range, one jail's root is uid 0 to another
over SO_PERCRED and owns its state directories; with one /30, traffic for one jail is answered by
another. So each jail directory gets a slice of the id space (`uid_count` ids, first fit, never
overlapping another's) and, when it first asks for `veth`, a /30 of 10.213.0.0/16 of its own.

Kept in a registry of root's, REGISTRY in REGISTRY_DIR (/var/lib/jailkit): a jail directory is
not the place, because keeping slices apart needs every jail's in one view, under one lock (any
directory may be a jail with --root). The registry is rewritten whole (a new file renamed over
it) under flock(LOCK) and pruned of jail directories that no longer exist (`jailkit rm` gives
a jail's back at once). Its lines:
`OFFSET COUNT SUBNET PATH` (SUBNET `-` until the jail first asks for one; PATH to the end of the
line, the jail directory as opened).
"""

import contextlib
import fcntl
import os

from jailkit.errors import JailkitError
from jailkit.launch import userns

REGISTRY_DIR = "/var/lib/jailkit"
REGISTRY = ".allocations"
LOCK = ".allocations.lock"
VETH_LOCK = ".veth.lock"  # byte N locked while a jail runs on subnet N
SUBNETS = 16384  # /30s in 10.213.0.0/16
# Without a `jailkit` line in /etc/subuid and /etc/subgid: 16384 slices of 65536 ids from
# 1000000000, below 2^31 (some tools treat larger ids as negative)
DEFAULT_SPACE = (1_000_000_000, 1_000_000_000, 65536 * SUBNETS)


class Allocation:
    """`uid`/`gid`: the host ids of the jail's 0; `subnet`: its /30's index, or None."""

    __slots__ = ("uid", "gid", "count", "subnet", "new")

    def __init__(self, uid: int, gid: int, count: int, subnet: int | None, new: bool):
        self.uid, self.gid, self.count, self.subnet, self.new = uid, gid, count, subnet, new


def id_space() -> tuple[int, int, int]:
    """(first host uid, first host gid, how many) that jails' slices are cut from."""
    found = [userns.read_subid(path, (userns.SUBID_OWNER,))
             for path in ("/etc/subuid", "/etc/subgid")]
    if found[0] is None and found[1] is None:
        return DEFAULT_SPACE
    if found[0] is None or found[1] is None:
        missing = "/etc/subgid" if found[1] is None else "/etc/subuid"
        raise JailkitError(f"{missing} has no '{userns.SUBID_OWNER}' line while the other file "
                           "has one: give both the same count")
    return found[0][0], found[1][0], min(found[0][1], found[1][1])


def _parse(text: str) -> list[list]:
    entries = []
    # "\n" alone ends a line: str.splitlines also ends one at \r, \v, \f, U+001C-U+001E,
    # U+0085, U+2028 and U+2029, which a path may hold (one line read as two: a forged entry)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        fields = line.split(" ", 3)
        if (len(fields) != 4 or not fields[0].isdigit() or not fields[1].isdigit()
                or not (fields[2].isdigit() or fields[2] == "-")):
            raise JailkitError(f"{REGISTRY_DIR}/{REGISTRY}:{number}: not 'OFFSET COUNT SUBNET "
                               "PATH': repair or remove the line")
        subnet = None if fields[2] == "-" else int(fields[2])
        entries.append([int(fields[0]), int(fields[1]), subnet, fields[3]])
    return entries


def _first_fit(entries: list[list], count: int, space: int) -> int | None:
    offset = 0
    for start, size, _, _ in sorted(entries):
        if start - offset >= count:
            break
        offset = max(offset, start + size)
    return offset if offset + count <= space else None


def _open_registry_dir(create: bool) -> int | None:
    """REGISTRY_DIR, which must be root's alone: whoever can write it can hand jails ranges."""
    try:
        fd = os.open(REGISTRY_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            return None
        os.makedirs(REGISTRY_DIR, 0o755, exist_ok=True)
        fd = os.open(REGISTRY_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise JailkitError(f"{REGISTRY_DIR}: {e.strerror}: it must be a directory of "
                           "root's") from None
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        raise JailkitError(f"{REGISTRY_DIR} must be owned by root and writable by root only "
                           "(it holds every jail's id range): chown root and chmod go-w it")
    return fd


def _read(dir_fd: int) -> list[list]:
    try:
        fd = os.open(REGISTRY, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    with open(fd) as f:
        return _parse(f.read())


def _write(dir_fd: int, entries: list[list]) -> None:
    text = "".join(f"{o} {c} {'-' if s is None else s} {p}\n" for o, c, s, p in sorted(entries))
    temporary = f"{REGISTRY}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=dir_fd)
    with open(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(fd)
    os.rename(temporary, REGISTRY, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


@contextlib.contextmanager
def _registry(create: bool):
    """REGISTRY_DIR's descriptor (None when it is not there and not `create`d); an error of the
    registry's is one line."""
    dir_fd = _open_registry_dir(create)
    try:
        yield dir_fd
    except OSError as e:
        raise JailkitError(f"{REGISTRY_DIR}/{REGISTRY}: {e.strerror}") from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


@contextlib.contextmanager
def _locked(dir_fd: int):
    """The registry's lock held: concurrent launches and removals, one change at a time."""
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                   dir_fd=dir_fd)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def for_jail(path: str, count: int, subnet: bool, dry_run: bool = False) -> Allocation:
    """The jail at `path`'s slice of `count` ids (and subnet if asked), made and recorded under
    the registry's lock on first use; with `dry_run`, what would be given, and nothing written."""
    if not path.isprintable():  # a line of the registry: no character may end or hide one
        raise JailkitError(f"{path!r}: a jail directory's path cannot hold a control character "
                           "(nor a line separator, nor bytes that are not UTF-8): rename it")
    first_uid, first_gid, space = id_space()
    with _registry(create=not dry_run) as dir_fd:
        if dry_run:  # nothing locked nor written
            entries = _read(dir_fd) if dir_fd is not None else []
            return _allocate(entries, path, count, subnet, first_uid, first_gid, space)
        with _locked(dir_fd):
            entries = _read(dir_fd)
            allocation = _allocate(entries, path, count, subnet, first_uid, first_gid, space)
            if allocation.new:
                _write(dir_fd, entries)
            return allocation


def release(path: str, dry_run: bool = False) -> Allocation | None:
    """Give back the slice and subnet of the jail directory `path` (as for_jail got it), which
    is gone (`jailkit rm`): a later jail may get them. What it had, or None if nothing; with
    `dry_run`, what it has, and nothing written."""
    first_uid, first_gid, _ = id_space()
    with _registry(create=False) as dir_fd:
        if dir_fd is None:
            return None
        with _locked(dir_fd):
            entries = _read(dir_fd)
            mine = next((e for e in entries if e[3] == path), None)
            if mine is None:
                return None
            if not dry_run:
                entries.remove(mine)
                _write(dir_fd, entries)
    offset, count, subnet, _ = mine
    return Allocation(first_uid + offset, first_gid + offset, count, subnet, False)


def _allocate(entries: list[list], path: str, count: int, subnet: bool, first_uid: int,
              first_gid: int, space: int) -> Allocation:
    """Find (or make, changing `entries`) the jail's entry."""
    mine = next((e for e in entries if e[3] == path), None)
    new = False
    if mine is not None and (mine[1] < count or mine[0] + mine[1] > space):
        entries.remove(mine)  # it needs more ids than it was given, or the space shrank
        mine = [None, None, mine[2], path]
    elif mine is None:
        # jail directories that are gone free their slices (checked only when one is needed)
        entries[:] = [e for e in entries if os.path.lexists(e[3])]
        mine = [None, None, None, path]
    if mine[0] is None:
        offset = _first_fit(entries, count, space)
        if offset is None:
            raise JailkitError(
                f"no {count} free ids are left for this jail in "
                f"{first_uid}..{first_uid + space - 1} (/etc/subuid and /etc/subgid, "
                f"'{userns.SUBID_OWNER}'): give that range more ids, or remove jails you no "
                "longer use"
            )
        mine[0], mine[1] = offset, count
        entries.append(mine)
        new = True
    if subnet and mine[2] is None:
        used = {e[2] for e in entries}
        mine[2] = next((n for n in range(SUBNETS) if n not in used), None)
        if mine[2] is None:
            raise JailkitError(f"all {SUBNETS} veth subnets are taken: remove jails you no "
                               "longer use")
        new = True
    return Allocation(first_uid + mine[0], first_gid + mine[0], count, mine[2], new)


def hold_subnet(subnet: int) -> int:
    """Lock the jail's /30 for this launch: two instances of one jail on one subnet would answer
    each other's traffic. A record lock, kept across the exec of the waiter (whose exit, or any
    close of the file in this process, releases it); returns its descriptor, inheritable."""
    dir_fd = _open_registry_dir(create=True)
    try:
        fd = os.open(VETH_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, subnet)
    except OSError:
        os.close(fd)
        raise JailkitError("this jail already runs with network veth on its own subnet: stop "
                           "it first, or run this one with --net none or --net host") from None
    os.set_inheritable(fd, True)
    return fd
