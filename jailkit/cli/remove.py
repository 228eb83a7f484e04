"""`jailkit rm`: remove a jail directory (jailkit/build/remove.py)."""

import os
import shlex

import click

from jailkit.cli.build import _one_line_errors, root_option
from jailkit.errors import JailkitError


@click.command("rm")
@click.argument("name", required=False)
@root_option
@click.option("--keep-state", is_flag=True,
              help="Remove the generations only: keep DIR/state (what the service wrote) and "
                   "DIR/generated (keys made for the jail), for its next build.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed and freed; remove "
                                              "nothing.")
@_one_line_errors
def rm(name, root, keep_state, dry_run):
    """Remove the jail NAME (the one `jailkit build NAME` made, in its default directory) or
    the jail in --root DIR: its generations, its state and the directory itself, with what its
    service wrote as the jail's other users. As root, its ids and veth subnet are freed for
    later jails. A running jail is refused (jailkit stop NAME first), and so is a directory
    that is not a jail."""
    from jailkit.build.remove import remove

    removal = remove(_directory(name, root), keep_state, dry_run)
    click.echo(_summary(removal, keep_state, dry_run))


def _directory(name: str | None, root: str | None) -> str:
    """--root DIR, else NAME's default directory (as build and run find it, never made here)."""
    from jailkit.vocabulary import jail_name, jails_base

    if root:
        return root
    if not name:
        raise JailkitError("which jail? jailkit rm NAME (its default directory), or jailkit "
                           "rm --root DIR")
    base = jail_name(name)
    if base in ("", ".", "..") or ("/" in name and not name.endswith(".toml")):
        raise JailkitError(f"{name!r} is a path, not a jail's name: jailkit rm --root "
                           f"{shlex.quote(name)}")
    return f"{jails_base()}/{base}"


def _summary(removal, keep_state: bool, dry_run: bool) -> str:
    from jailkit.launch.cgroup import human_bytes
    from jailkit.launch.net import subnet_text

    verb = "would remove" if dry_run else "removed"
    count = f"{removal.generations} generation{'' if removal.generations == 1 else 's'}"
    held = f"{removal.entries} entries, {human_bytes(removal.bytes)} on disk"
    if keep_state:
        kept = " and ".join(f"{name}/" for name in removal.kept) or "nothing (it has no state)"
        line = f"{verb} the generations of {removal.path} ({count}, {held}); kept {kept}"
        if os.geteuid() == 0:
            line += " and the jail's ids, which own its files"
        return line
    line = f"{verb} {removal.path} ({count}, {held})"
    freed = removal.freed
    if freed:
        line += (f"; {'would free' if dry_run else 'freed'} its ids {freed.uid}-"
                 f"{freed.uid + freed.count - 1}")
        if freed.gid != freed.uid:
            line += f" (gids {freed.gid}-{freed.gid + freed.count - 1})"
        if freed.subnet is not None:
            line += f" and its subnet {subnet_text(freed.subnet)}"
    return line
