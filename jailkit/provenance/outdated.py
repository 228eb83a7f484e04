"""`jailkit outdated`: built jails still holding files of packages the host has since upgraded.

A host upgrade replaces /usr/lib/.../libssl.so.3 on the host, never in a jail: each jail keeps the
old copy (and its vulnerabilities) until `jailkit update` rebuilds it. The manifest records the
package version of every entry at build time; this compares those with dpkg's status now.
"""

import os
from typing import NamedTuple

from jailkit.build import manifest
from jailkit.build.jaildir import JailDir
from jailkit.errors import JailkitError
from jailkit.provenance.dpkg import ADMINDIR, compare_versions, parse_status
from jailkit.vocabulary import jails_base


class Stale(NamedTuple):
    package: str  # name:arch
    jail_version: str
    host_version: str
    entries: int  # files and symlinks of it in the jail


class OutdatedJail(NamedTuple):
    root: str
    profile: str
    packages: list[Stale]
    unknown: bool = False  # it records no package at all (an imported jail): cannot be judged

    @property
    def fix(self) -> str:
        from jailkit.profile.model import bundled_profiles

        # the manifest keeps a profile file's name, not its path: `update NAME` would look for
        # a bundled profile of that name
        profile = (self.profile if self.profile in bundled_profiles()
                   else f"<path of {self.profile}.toml>")
        once = " (once, to record its packages)" if self.unknown else ""
        return f"jailkit update {profile} --root {self.root}{once}"


def default_jail_dirs() -> list[str]:
    """Every jail under the default base (/var/lib/jailkit as root, else the XDG data dir)."""
    base = jails_base()
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise JailkitError(f"cannot list {base}: {e.strerror}; name jails with --root") from None
    return [os.path.join(base, n) for n in names if os.path.isdir(os.path.join(base, n))]


def host_versions(admindir: str = ADMINDIR) -> dict[str, str]:
    """name:arch -> installed version, from dpkg's status file in `admindir`."""
    path = os.path.join(admindir, "status")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return {key: fields["Version"] for key, fields in parse_status(f.read()).items()}
    except OSError as e:
        raise JailkitError(f"cannot read {path}: {e.strerror}; pass --admindir with dpkg's "
                           "database directory") from None


def read_manifest(path: str) -> manifest.Manifest:
    with JailDir(path) as jail:
        number = jail.current()
        if number is None:
            raise JailkitError(f"no jail is built in {jail.path}: run `jailkit build` first")
        gen_fd = jail.open_generation(number)
        try:
            return manifest.read(gen_fd, f"{jail.path}/gen-{number}")
        finally:
            os.close(gen_fd)


def stale_packages(built: manifest.Manifest, host: dict[str, str]) -> list[Stale]:
    counts = {}
    for record in built.records.values():
        if record.package is not None:
            counts[record.package] = counts.get(record.package, 0) + 1
    return [Stale(package.key, package.version, host[package.key], count)
            for package, count in sorted(counts.items())
            if package.key in host and compare_versions(package.version, host[package.key]) < 0]


def outdated(roots: list[str], admindir: str = ADMINDIR) -> tuple[list[OutdatedJail], int]:
    """(the jails that hold older package versions than the host's or record none, how many
    jails were read).
    `roots` empty: every jail in the default directory (one that is not a jail is passed over)."""
    host = host_versions(admindir)
    named = bool(roots)
    found, read = [], 0
    for root in roots or default_jail_dirs():
        try:
            built = read_manifest(root)
        except JailkitError:
            if named:
                raise
            continue
        read += 1
        if all(record.package is None for record in built.records.values()):
            # import drops what an archive claims about packages: nothing says it is current
            found.append(OutdatedJail(os.path.abspath(root), built.profile, [], unknown=True))
            continue
        stale = stale_packages(built, host)
        if stale:
            found.append(OutdatedJail(os.path.abspath(root), built.profile, stale))
    return found, read
