"""DIR/gen-N/manifest.json: every entry of a jail tree as built, for `check`, `update`, export."""

import json
import os
from typing import NamedTuple

from jailkit.build.identity import HostStat
from jailkit.errors import JailkitError
from jailkit.provenance.dpkg import Package

VERSION = 1
NAME = "manifest.json"
# beside it (0600: a password may be among them): {"profile": NAME, "sets": {VARIABLE: VALUE}},
# the --set values the generation was built with, reused by `update` and a rebuild
SETS = "sets.json"


class ManifestError(JailkitError):
    """A manifest that cannot be read."""


class Record(NamedTuple):
    path: str
    type: str  # "dir" | "file" | "symlink"
    mode: int  # permission bits, as set in the tree
    uid: int
    gid: int
    size: int
    sha256: str | None  # files only
    source: str | None  # host file it was copied from
    target: str | None  # symlinks only
    mtime: int  # st_mtime_ns of the jail entry
    ino: int  # st_ino of the jail entry
    host: HostStat | None  # the host source's identity when it was copied
    file_caps: bool = False
    # st_ctime_ns of the jail entry once the build settled (jailkit.build.apply): a copy
    # rewritten in place with its mtime put back is caught by it. None in manifests of older builds.
    ctime: int | None = None
    package: Package | None = None  # the Debian package the host file came from


class Manifest:
    def __init__(self, profile: str, generation: int, records: dict[str, Record],
                 closure: dict | None = None):
        self.profile = profile
        self.generation = generation
        self.records = records
        self.closure = closure  # jailkit.build.plan's closure cache record

    def dumps(self) -> str:
        return json.dumps({
            "version": VERSION,
            "profile": self.profile,
            "generation": self.generation,
            "entries": [r._asdict() | {"host": r.host._asdict() if r.host else None,
                                       "package": r.package._asdict() if r.package else None}
                        for r in self.records.values()],
            "closure": self.closure,
        }, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str, origin: str) -> "Manifest":
        try:
            data = json.loads(text)
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            records = {}
            for item in data["entries"]:
                host = item.pop("host")
                package = item.pop("package", None)
                record = Record(**item, host=HostStat(**host) if host else None,
                                package=Package(**package) if package else None)
                _check_record(record)
                records[record.path] = record
            profile, generation = data["profile"], data["generation"]
            closure = data.get("closure")
            if not isinstance(profile, str) or not _whole(generation) or not isinstance(
                    closure, dict | None):
                raise ValueError("profile, generation or closure of the wrong type")
            return cls(profile, generation, records, closure)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ManifestError(f"{origin}: not a jailkit manifest ({e}); "
                                "rebuild the jail") from None


TYPES = ("dir", "file", "symlink")
MAX_TEXT = 4096  # a path, a link target, a package name or version: anything longer is forged


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value, optional: bool = False) -> bool:
    if value is None:
        return optional
    return isinstance(value, str) and len(value) <= MAX_TEXT and "\0" not in value


def _check_record(record: Record) -> None:
    """Every field of the type the code that reads it expects (a manifest may come from an
    imported archive): a wrong one is a one-line error, never a traceback later on."""
    if not (_text(record.path) and record.path.startswith("/") and record.type in TYPES
            and all(map(_whole, (record.mode, record.uid, record.gid, record.size, record.mtime,
                                 record.ino)))
            and _text(record.sha256, True) and _text(record.source, True)
            and _text(record.target, True) and isinstance(record.file_caps, bool)
            and (record.ctime is None or _whole(record.ctime))):
        raise ValueError(f"entry {str(record.path)[:200]!r} has a field of the wrong type")
    if record.host is not None and not (
            all(map(_whole, record.host[:4]))
            and (record.host.ctime_ns is None or _whole(record.host.ctime_ns))):
        raise ValueError(f"entry {record.path[:200]!r}: host identity of the wrong type")
    if record.package is not None and not all(
            _text(field) and len(field) <= 256 and field.isprintable()
            for field in record.package):
        raise ValueError(f"entry {record.path[:200]!r}: package name, version or "
                         "architecture is not a short printable string")


def read(gen_fd: int, origin: str) -> Manifest:
    try:
        fd = os.open(NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=gen_fd)
    except OSError as e:
        raise ManifestError(f"{origin}/{NAME}: {e.strerror}; rebuild the jail") from None
    with os.fdopen(fd) as f:
        return Manifest.loads(f.read(), f"{origin}/{NAME}")


def read_current(jail) -> Manifest | None:
    """The manifest of the generation the open JailDir `jail` holds now, read through its
    descriptor; None before the first build or when it is unusable (then everything is planned
    afresh)."""
    number = jail.current()
    if number is None:
        return None
    try:
        gen_fd = jail.open_generation(number)
        try:
            return read(gen_fd, f"{jail.path}/gen-{number}")
        finally:
            os.close(gen_fd)
    except (JailkitError, OSError):
        return None


def remembered(record, profile: str) -> dict[str, str] | None:
    """The --set values of a sets.json `record` of jail `profile`, or None when it is not one
    as build writes it (an object {"profile": NAME, "sets": {VARIABLE: VALUE}}, all strings)."""
    if not isinstance(record, dict) or record.get("profile") != profile:
        return None
    sets = record.get("sets")
    if not isinstance(sets, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sets.items()):
        return None
    return sets


def read_json(gen_fd: int, name: str) -> dict | None:
    """A small JSON file of a generation (launch.json), or None when it is missing or unreadable."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=gen_fd)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        try:
            return json.load(f)
        except ValueError:
            return None


def replace(gen_fd: int, name: str, text: str) -> None:
    """Replace a generation's file in one rename(2): a reader sees the old or the new one."""
    partial = f"{name}.new"
    try:
        os.unlink(partial, dir_fd=gen_fd)
    except FileNotFoundError:
        pass
    write_new(gen_fd, partial, text)
    os.replace(partial, name, src_dir_fd=gen_fd, dst_dir_fd=gen_fd)


def write_new(gen_fd: int, name: str, text: str) -> None:
    """Create a file in a fresh generation directory (never replacing or following anything),
    readable by its owner only: a profile's env (in launch.json) may hold secrets."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=gen_fd)
    with os.fdopen(fd, "w") as f:
        f.write(text)
