"""Which Debian package each host file came from, read from dpkg's own database files.

`/var/lib/dpkg/status` (installed packages: name, version, architecture, source) and
`/var/lib/dpkg/info/*.list` (the paths each package installed) are read directly — never by running
dpkg, which would take a process per file. Two things make a path's owner differ from the lists:

- merged /usr: /lib, /bin, /sbin (...) are symlinks to usr/lib, usr/bin, usr/sbin, so a library the
  loader opens as /usr/lib/x86_64-linux-gnu/libc.so.6 is listed by libc6 as
  /lib/x86_64-linux-gnu/libc.so.6. Both spellings are compared in their /usr form.
- dpkg-divert (`/var/lib/dpkg/diversions`): a package P that diverts X to X.distrib owns what is at
  X, and the other packages listing X own X.distrib; a local diversion (by ":") leaves X to the
  administrator, owned by no package.
"""

import os
from typing import NamedTuple

from jailkit.errors import JailkitError

ADMINDIR = "/var/lib/dpkg"
MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# what scanners read from a status stanza (dpkg-query wants Package, Status, Version, Architecture
# and a Description, of which the first line is kept); dependencies are left out, because the jail
# does not hold the packages they name
STATUS_FIELDS = ("Package", "Status", "Priority", "Section", "Installed-Size", "Maintainer",
                 "Architecture", "Multi-Arch", "Source", "Version", "Description")
NO_FILES = ("not-installed", "config-files")  # status states in which a package has no files


class Package(NamedTuple):
    name: str
    version: str
    architecture: str

    @property
    def key(self) -> str:
        return f"{self.name}:{self.architecture}"


def parse_status(text: str) -> dict[str, dict[str, str]]:
    """Stanzas of a dpkg status file with files on disk, keyed by "name:arch"; only the first
    line of each field (multi-line fields like Description and Conffiles are not needed)."""
    packages = {}
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace():
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if "Package" not in fields or "Version" not in fields:
            continue
        if fields.get("Status", "").rpartition(" ")[2] in NO_FILES:
            continue
        packages[f"{fields['Package']}:{fields.get('Architecture', '')}"] = fields
    return packages


def format_status(stanzas) -> str:
    """A dpkg status file holding `stanzas` (field dicts), trimmed to STATUS_FIELDS."""
    return "".join("".join(f"{name}: {fields[name]}\n" for name in STATUS_FIELDS if name in fields)
                   + "\n" for fields in stanzas)


def package_of(fields: dict[str, str]) -> Package:
    return Package(fields["Package"], fields["Version"], fields.get("Architecture", ""))


def _identity(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class Database:
    """dpkg's database in `admindir`, read lazily: the file lists only when paths are looked up."""

    def __init__(self, admindir: str = ADMINDIR, root: str = "/"):
        self.admindir = admindir
        # /D -> /usr/D for the merged directories of this host
        self.merged = {f"/{d}/": f"/usr/{d}/" for d in MERGED_DIRS
                       if _readlink(os.path.join(root, d)) in (f"usr/{d}", f"/usr/{d}")}
        self._text: str | None = None
        self._status: dict[str, dict[str, str]] | None = None
        self._by_name: dict[str, dict[str, str]] = {}  # plain package name -> its stanza
        self._diverted_from: dict[str, tuple[str, str]] | None = None  # X -> (X.distrib, by)
        self._diverted_to: dict[str, tuple[str, str]] = {}  # X.distrib -> (X, by)

    def identity(self) -> list:
        """Changes whenever dpkg installs, removes or upgrades anything (it rewrites status by
        rename) or a diversion changes: the key under which a build may reuse earlier answers."""
        return [_identity(os.path.join(self.admindir, name)) for name in ("status", "diversions")]

    def _status_text(self) -> str:
        if self._text is None:
            path = os.path.join(self.admindir, "status")
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    self._text = f.read()
            except OSError as e:
                raise JailkitError(f"cannot read dpkg's database {path}: {e.strerror}") from None
        return self._text

    def status(self) -> dict[str, dict[str, str]]:
        if self._status is None:
            self._status = parse_status(self._status_text())
            self._by_name = {f["Package"]: f for f in self._status.values()}
        return self._status

    def canonical(self, path: str) -> str:
        for short, long in self.merged.items():
            if path.startswith(short):
                return long + path[len(short):]
        return path

    def short(self, path: str) -> str:
        """The spelling without /usr (/usr/lib/x -> /lib/x), as packages that predate merged /usr
        list their files."""
        for short, long in self.merged.items():
            if path.startswith(long):
                return short + path[len(long):]
        return path

    def _diversions(self) -> None:
        if self._diverted_from is not None:
            return
        self._diverted_from, self._diverted_to = {}, {}
        try:
            with open(os.path.join(self.admindir, "diversions"), "rb") as f:
                lines = os.fsdecode(f.read()).split("\n")
        except OSError:
            lines = []
        for i in range(0, len(lines) - 2, 3):
            source, target, by = (self.canonical(lines[i]), self.canonical(lines[i + 1]),
                                  lines[i + 2])
            self._diverted_from[source] = (target, by)
            self._diverted_to[target] = (source, by)

    def _listed(self, paths: set[str]) -> dict[str, list[str]]:
        """For each path (in its /usr form), the .list names that list it in either spelling.
        Only the asked paths are matched (a set intersection per file list, not an index of all
        ~100,000 lines: 2-3x faster)."""
        spellings = {}
        for path in paths:
            spellings[os.fsencode(path)] = spellings[os.fsencode(self.short(path))] = path
        wanted = set(spellings)
        listed: dict[str, list[str]] = {}
        info = os.path.join(self.admindir, "info")
        try:
            names = sorted(n for n in os.listdir(info) if n.endswith(".list"))
        except OSError:
            names = []
        for name in names:
            try:
                with open(os.path.join(info, name), "rb") as f:
                    hits = wanted.intersection(f.read().split(b"\n"))
            except OSError:
                continue  # removed while we read: the status file no longer names it either
            for hit in hits:
                owners = listed.setdefault(spellings[hit], [])
                if name[:-5] not in owners:
                    owners.append(name[:-5])
        return listed

    def owners(self, paths) -> dict[str, Package | None]:
        """The installed package each host file or symlink in `paths` came from (or None),
        reading every file list once for all of them."""
        self._diversions()
        lookups = {}  # path -> (its /usr form, the path the packages list it as)
        for path in paths:
            canonical = self.canonical(path)
            original = self._diverted_to.get(canonical, (canonical,))[0]
            lookups[path] = (canonical, original)
        listed = self._listed({original for _, original in lookups.values()})
        out = {}
        for path, (canonical, original) in lookups.items():
            names = listed.get(original, [])
            if canonical in self._diverted_to:  # X.distrib: the packages' own X, moved aside
                by = self._diverted_to[canonical][1]
                names = [n for n in names if n.partition(":")[0] != by]
            elif canonical in self._diverted_from:  # X: the diverting package's, or the admin's
                by = self._diverted_from[canonical][1]
                names = [n for n in names if n.partition(":")[0] == by]
            out[path] = next((package_of(fields) for fields in map(self._fields, names)
                              if fields is not None), None)
        return out

    def owner(self, path: str) -> Package | None:
        return self.owners([path])[path]

    def stanza(self, package: Package) -> dict[str, str] | None:
        """The status stanza of an installed package. Found by a text search when the status file
        has not been parsed whole: a rebuild that reuses every answer parses only these."""
        if self._status is not None:
            return self._status.get(package.key)
        text = self._status_text()
        needle = f"Package: {package.name}\n"
        start = text.find(needle)
        while start != -1:
            if start == 0 or text[start - 1] == "\n":
                end = text.find("\n\n", start)
                found = parse_status(text[start:end if end != -1 else len(text)])
                if package.key in found:
                    return found[package.key]
            start = text.find(needle, start + 1)
        return None

    def _fields(self, list_name: str) -> dict[str, str] | None:
        """The status stanza of the package whose file list is `list_name`.list: "name:arch" for
        Multi-Arch: same packages, plain "name" for the others (one instance at most)."""
        status = self.status()
        return status.get(list_name) if ":" in list_name else self._by_name.get(list_name)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def compare_versions(a: str, b: str) -> int:
    """Debian version order (dpkg --compare-versions): < 0, 0 or > 0 as a is older, equal, newer.
    Digits are ASCII digits only (str.isdigit takes '²' too, which int() refuses), and numbers
    compare by their digits, never through int() (which refuses more than 4300 of them)."""
    epoch_a, upstream_a, revision_a = _split_version(a)
    epoch_b, upstream_b, revision_b = _split_version(b)
    return (_compare_numbers(epoch_a, epoch_b) or _compare_part(upstream_a, upstream_b)
            or _compare_part(revision_a, revision_b))


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9" and len(c) == 1


def _split_version(version: str) -> tuple[str, str, str]:
    epoch, colon, rest = version.partition(":")
    if not colon or not epoch or not all(map(_is_digit, epoch)):
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    return (epoch, upstream, revision) if dash else (epoch, rest, "")


def _compare_numbers(a: str, b: str) -> int:
    """Two runs of ASCII digits by value (either may be empty: 0)."""
    a, b = a.lstrip("0"), b.lstrip("0")
    if len(a) != len(b):
        return len(a) - len(b)
    return (a > b) - (a < b)


def _order(c: str) -> int:
    # dpkg's order(): end and digits 0, '~' before everything, letters before other characters
    if not c or _is_digit(c):
        return 0
    if c == "~":
        return -1
    return ord(c) if c.isascii() and c.isalpha() else ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternating runs of non-digits (by _order) and numbers (by value)."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not _is_digit(a[i])) or (j < len(b) and not _is_digit(b[j])):
            ac, bc = _order(a[i:i + 1]), _order(b[j:j + 1])
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        start_a, start_b = i, j
        while i < len(a) and _is_digit(a[i]):
            i += 1
        while j < len(b) and _is_digit(b[j]):
            j += 1
        difference = _compare_numbers(a[start_a:i], b[start_b:j])
        if difference:
            return difference
    return 0
