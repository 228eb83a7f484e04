"""`jailkit sbom` and `jailkit outdated`: what a built jail holds, by Debian package."""

import json
import os
import sys

import click

from jailkit.cli.build import _one_line_errors, _root, json_option, root_option
from jailkit.errors import JailkitError


def _jail_root(profile: str, root: str | None) -> str:
    if root is not None:
        return root
    from jailkit.profile.model import locate

    return _root(None, os.path.basename(locate(profile)).removesuffix(".toml"))


@click.command()
@click.argument("profile")
@root_option
@click.option("--format", "kind", default="cyclonedx", show_default=True,
              help="cyclonedx (CycloneDX 1.5 JSON) or spdx (SPDX 2.3 JSON).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the document to this file instead of standard output.")
@_one_line_errors
def sbom(profile, root, kind, output):
    """Print the software bill of materials of the jail built for PROFILE."""
    from jailkit.provenance.sbom import document

    jail = _jail_root(profile, root)
    text = json.dumps(document(jail, kind), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise JailkitError(f"-o {output}: {e.strerror}") from None
    label = "SPDX 2.3" if kind == "spdx" else "CycloneDX 1.5"
    click.echo(f"{output}: the {label} SBOM of {jail}")


def _shown(text: str) -> str:
    """A package name or version for the terminal: control characters escaped (a manifest or a
    status file may hold anything)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@click.command()
@click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False),
              help="A jail directory to look at (repeatable; default: every jail in "
                   "/var/lib/jailkit as root, else $XDG_DATA_HOME/jailkit).")
@click.option("--admindir", default="/var/lib/dpkg", show_default=True,
              type=click.Path(file_okay=False), help="dpkg's database directory.")
@json_option
@_one_line_errors
def outdated(roots, admindir, as_json):
    """List built jails holding files of packages the host has upgraded since, and jails
    whose packages are unknown (imported); exit 1 if any."""
    from jailkit.provenance.outdated import outdated as find_outdated

    found, read = find_outdated(list(roots), admindir)
    if as_json:
        click.echo(json.dumps([{"root": jail.root, "profile": jail.profile,
                                "packages": [s._asdict() for s in jail.packages],
                                "unknown": jail.unknown, "fix": jail.fix} for jail in found],
                               indent=2))
    else:
        for jail in found:
            if jail.unknown:
                click.echo(f"{jail.root}: its packages are unknown (an imported jail records "
                           "none)")
            for stale in jail.packages:
                click.echo(f"{jail.root}: {_shown(stale.package)} {_shown(stale.jail_version)} "
                           f"in the jail, {_shown(stale.host_version)} on the host "
                           f"({stale.entries} entries)")
            click.echo(f"  fix: {jail.fix}")
        unknown = sum(jail.unknown for jail in found)
        click.echo(f"{len(found) - unknown} of {read} jail(s) hold older package versions than "
                   f"the host" + (f", {unknown} unknown" if unknown else ""), err=True)
    sys.exit(1 if found else 0)
