"""`jailkit export` and `jailkit import`: a built jail out as an image, bundle, Pod or archive,
and a jailkit archive back in as a jail."""

import os

import click

from jailkit.cli.build import _one_line_errors, _overrides, root_option, set_option
from jailkit.errors import JailkitError

FORMATS = ("oci", "bundle", "kube", "tar")


def _ports(jail, profile, sets) -> list[int]:
    """The service's TCP ports: launch.json's `ports.bind`, else the profile's `port` variable
    (with the --set values the jail was built with)."""
    from jailkit.export.source import bind_ports

    ports = bind_ports(jail.launch)
    if ports or "ports" in jail.launch:
        return ports
    from jailkit.profile.model import load

    port = load(profile, _overrides(sets), jail.sets).variables.get("port")
    return [port] if isinstance(port, int) and not isinstance(port, bool) else []


def _notes(lines: list[str]) -> None:
    """What the format could not carry, one line each, on stderr."""
    for line in lines:
        click.echo(f"jailkit: note: {line}", err=True)


@click.command("export")
@click.argument("profile")
@root_option
@click.option("--format", "fmt", required=True, metavar="|".join(FORMATS),
              help="oci: image layout (oci-archive if OUT ends in .tar); bundle: OCI runtime "
                   "bundle; kube: Pod manifest; tar: jailkit archive for `jailkit import`.")
@click.option("-o", "--output", "out", required=True, metavar="OUT", help="Where to write it.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--without-secrets", is_flag=True,
              help="oci, bundle: leave out the jail's private keys and password hashes (the "
                   "service then needs them given at run time).")
@set_option
@_one_line_errors
def export(profile, root, fmt, out, force, without_secrets, sets):
    """Export the jail built for PROFILE (DIR/current) in another format."""
    if fmt not in FORMATS:
        raise JailkitError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if without_secrets and fmt not in ("oci", "bundle"):
        raise JailkitError("--without-secrets: only for --format oci or bundle (a Pod holds no "
                           "files: export its image with --format oci --without-secrets; a tar "
                           "archive is the whole jail)")
    from jailkit.export.out import check_out, staged
    from jailkit.export.source import BuiltJail, default_dir

    directory = root or default_dir(profile)
    with BuiltJail(directory, profile) as jail:
        path = check_out(out, force, directory)
        leave_out = frozenset(jail.secrets()) if without_secrets else frozenset()
        if fmt == "oci":
            from jailkit.export import oci

            ports = _ports(jail, profile, sets)
            if path.endswith(".tar"):
                import tempfile

                with staged(path, directory=False) as temp, tempfile.TemporaryDirectory(
                        dir=os.path.dirname(path), prefix=".oci-layout.") as layout:
                    digest = oci.write_layout(jail, layout, ports, leave_out)
                    oci.write_archive(layout, temp, oci.epoch())
            else:
                with staged(path, directory=True) as layout:
                    digest = oci.write_layout(jail, layout, ports, leave_out)
            click.echo(f"{jail.name}: gen-{jail.generation} -> {path} ({oci.image_name(jail)}, "
                       f"manifest {digest})")
            _notes(oci.notes(jail, leave_out))
        elif fmt == "bundle":
            from jailkit.export import bundle

            with staged(path, directory=True) as temp:
                bundle.write_bundle(jail, temp, path, leave_out)
            click.echo(f"{jail.name}: gen-{jail.generation} -> {path} "
                       f"({bundle.run_command(jail, path)})")
            _notes(bundle.notes(jail, path, leave_out))
        elif fmt == "kube":
            from jailkit.export import kube, oci

            with staged(path, directory=False) as temp, open(temp, "w") as f:
                f.write(kube.pod_yaml(jail, _ports(jail, profile, sets)))
            click.echo(f"{jail.name}: gen-{jail.generation} -> {path} (image "
                       f"{oci.image_name(jail)}, from `--format oci`)")
            _notes(kube.notes(jail))
        else:
            from jailkit.export import archive
            from jailkit.profile.dump import as_toml
            from jailkit.profile.model import load

            # the profile as this jail was built: its remembered --set values, then these
            shown = as_toml(load(profile, _overrides(sets), jail.sets))
            with staged(path, directory=False) as temp:
                archive.write_archive(jail, temp, shown)
            click.echo(f"{jail.name}: gen-{jail.generation} -> {path}")
            _notes(archive.notes(jail))


@click.command("import")
@click.argument("archive", type=click.Path(dir_okay=False))
@root_option
@click.option("--accept-binds", is_flag=True,
              help="Keep the host directories the archive's jail mounts into itself (listed "
                   "when refused without this).")
@_one_line_errors
def import_(archive, root, accept_binds):
    """Restore a `jailkit export --format tar` ARCHIVE as a new generation of a jail directory,
    every file checked against the archive's manifest."""
    from jailkit.export.archive import import_archive

    name, directory, number, asked = import_archive(archive, root, accept_binds)
    click.echo(f"{name}: gen-{number} in {directory}, every file verified against its manifest")
    for line in asked:
        click.echo(f"jailkit: note: the imported jail asks for {line}", err=True)
