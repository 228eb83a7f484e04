"""The Debian packages a jail holds files of: recorded on each manifest entry at build time, and
written as the jail's own dpkg status file, so that image scanners reading JAIL/var/lib/dpkg/status
see the jail's libraries and their versions (and not the host's whole system)."""

import os

from jailkit.provenance.dpkg import Database, format_status

STATUS_PATH = "/var/lib/dpkg/status"


def record_packages(planner, cache: dict, previous=None, database: Database | None = None) -> dict:
    """Set `package` on every planned host file and symlink that a package installed, and plan
    the jail's status file listing exactly those packages. dpkg's file lists are read once per
    build, and not at all when `previous` (the last build's manifest) was made against the same
    dpkg database and the host file is unchanged. Returns `cache` (the build's cache record) with
    the database identity its answers hold for."""
    database = database or Database()
    if not os.path.exists(os.path.join(database.admindir, "status")):
        return cache  # not a dpkg system: no provenance to record
    identity = database.identity()
    reusable = previous is not None and (previous.closure or {}).get("dpkg") == identity
    before = previous.records if reusable else {}
    held = {}
    unknown = {}  # jail path -> host path, for what cannot be reused
    for path, entry in planner.entries.items():
        if entry.type == "file" and entry.source is not None:
            host_path = entry.source
        elif entry.type == "symlink" and not os.path.isdir(path):
            # a host symlink, kept at its own path; one standing for a directory (merged /usr's
            # /lib -> usr/lib) is no package's file: dpkg lists the directory for every package
            host_path = path
        else:
            continue
        old = before.get(path)
        if old is not None and (old.source, old.host, old.target) == (
                entry.source, entry.host, entry.target):
            if old.package is not None:
                planner.entries[path] = entry._replace(package=old.package)
                held[old.package.key] = old.package
        else:
            unknown[path] = host_path
    if unknown:
        found = database.owners(set(unknown.values()))
        for path, host_path in unknown.items():
            package = found[host_path]
            if package is not None:
                planner.entries[path] = planner.entries[path]._replace(package=package)
                held[package.key] = package
    stanzas = [database.stanza(held[key]) for key in sorted(held)]
    planner.generated(STATUS_PATH, format_status(s for s in stanzas if s is not None))
    return {**cache, "dpkg": identity}
