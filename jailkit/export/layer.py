"""The jail tree as one reproducible tar stream (an OCI layer, or the tree of a jailkit archive).

Reproducible: entries in the manifest's order (depth first, each directory before what it holds,
names sorted by the builder), every mtime the given epoch, owners and modes the manifest's
numbers (no user or group names, which differ between hosts), PAX format. The same jail and the
same SOURCE_DATE_EPOCH give the same bytes.
"""

import io
import tarfile

from jailkit.export.source import BuiltJail

TYPES = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}


def write_tree(jail: BuiltJail, out, mtime: int, prefix: str = "", include_root: bool = False,
               head: tuple[tuple[str, bytes, int], ...] = (),
               leave_out: frozenset[str] = frozenset()):
    """Write every entry of the jail's tree but the files `leave_out` into the binary stream
    `out` as a tar (with its end blocks), after the small files `head` (name, content, mode).
    Names are `prefix` + the jail path without its leading '/'."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for name, data, mode in head:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), mtime, mode
            tar.addfile(info, io.BytesIO(data))
        for record, reader in jail.entries(leave_out):
            if record.path == "/" and not include_root:
                continue
            info = tarfile.TarInfo(prefix + record.path.lstrip("/") if record.path != "/"
                                   else prefix.rstrip("/") or ".")
            info.type = TYPES[record.type]
            info.mode = 0o777 if record.type == "symlink" else record.mode
            info.uid, info.gid = record.uid, record.gid
            info.uname = info.gname = ""
            info.mtime = mtime
            if record.type == "symlink":
                info.linkname = record.target
            if reader is not None:
                info.size = record.size
                if reader.caps is not None:
                    # the capability set, as GNU tar and the OCI tools carry it (raw bytes)
                    info.pax_headers = {"SCHILY.xattr.security.capability":
                                        reader.caps.decode("utf-8", "surrogateescape")}
                tar.addfile(info, reader)
                reader.verify()
            else:
                tar.addfile(info)
