"""`jailkit profiles`, `show`, `build`, `check`, `update`: profiles in, jail directories out."""

import contextlib
import functools
import json
import os
import sys

import click

from jailkit.errors import JailkitError


def _one_line_errors(command):
    """A JailkitError becomes one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except JailkitError as e:
            click.echo(f"jailkit: {e}", err=True)
            sys.exit(e.exit_code)

    return run


def _overrides(values) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JailkitError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _root(root, name: str) -> str:
    from jailkit.vocabulary import default_jail_dir

    return root or default_jail_dir(name)


root_option = click.option("--root", type=click.Path(file_okay=False),
                           help="Jail directory (default /var/lib/jailkit/NAME as root, "
                                "else $XDG_DATA_HOME/jailkit/NAME).")
set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Override a profile variable (repeatable).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


@click.command()
@json_option
@_one_line_errors
def profiles(as_json):
    """List the bundled profiles."""
    from jailkit.profile.model import bundled_profiles, load

    rows = {name: load(name).description for name in bundled_profiles()}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        width = max(map(len, rows), default=0)
        for name, description in rows.items():
            click.echo(f"{name:<{width}}  {description}")


@click.command()
@click.argument("profile")
@set_option
@json_option
@_one_line_errors
def show(profile, sets, as_json):
    """Print PROFILE (a bundled name or a .toml path) fully resolved, bases merged in."""
    from jailkit.profile.dump import as_dict, as_toml
    from jailkit.profile.model import load

    loaded = load(profile, _overrides(sets))
    click.echo(json.dumps(as_dict(loaded), indent=2) if as_json else as_toml(loaded), nl=False)


def _load(profile, sets):
    """The profile with --set values applied; says what its dangerous capabilities open."""
    from jailkit.launch.dangerous import warnings
    from jailkit.profile.model import load

    loaded = load(profile, _overrides(sets))
    for line in warnings(loaded.service.capabilities):  # accepted in the profile: say what it opens
        click.echo(f"jailkit: warning: {line}", err=True)
    return loaded


def _dry_plan(loaded, root: str):
    """The plan a build would apply, reading what an existing jail keeps; writes nothing."""
    from jailkit.build.plan import make_plan

    if not os.path.isdir(root):
        return make_plan(loaded)
    from jailkit.build.jaildir import JailDir
    from jailkit.build.kept import gather

    with JailDir(root) as jail:
        return make_plan(loaded, gather(jail, loaded))


@contextlib.contextmanager
def _locked_jail(root: str, create: bool):
    """The jail directory, open and locked from reading what it keeps to the swap: one handle,
    one lock for the whole build. A first build that fails leaves no jail directory behind."""
    from jailkit.build.jaildir import JailDir

    new = not os.path.isdir(root)
    with JailDir(root, create=create) as jail, jail.locked():
        try:
            yield jail
        except JailkitError:
            if new:
                _remove_new_jail_dir(root)
            raise


def _remove_new_jail_dir(root: str) -> None:
    """Undo the jail directory a failed first build made (only its lock file is in it)."""
    try:
        os.unlink(os.path.join(root, "lock"))
        os.rmdir(root)
    except OSError:
        pass  # more than the lock is in it (a key made before the failure): it stays


def _build(loaded, jail, quiet: bool, check_profile: bool = False):
    """Plan from what `jail` keeps, then apply: (plan, result)."""
    from jailkit.build.kept import gather
    from jailkit.build.plan import make_plan

    kept = gather(jail, loaded)
    if check_profile and kept.manifest is not None and kept.manifest.profile != loaded.name:
        raise JailkitError(f"{jail.path} holds a jail of profile {kept.manifest.profile!r}, not "
                           f"{loaded.name!r}; `jailkit build` replaces it")
    plan = make_plan(loaded, kept)
    return plan, _apply(plan, jail, kept.manifest, quiet)


def _print_plan(plan) -> None:
    for entry in plan.entries.values():
        owner = f"{entry.mode:04o} {entry.uid}:{entry.gid}"
        if entry.type == "symlink":
            click.echo(f"link  {entry.path} -> {entry.target}")
        elif entry.type == "dir":
            click.echo(f"dir   {owner} {entry.path}")
        elif entry.content is not None:
            click.echo(f"write {owner} {entry.path}")
        else:
            click.echo(f"copy  {owner} {entry.path} <- {entry.source}")
    click.echo("launch.json " + json.dumps(plan.launch))
    for note in plan.notes:
        click.echo(f"note: {note}")


def _apply(plan, jail, built, quiet: bool):
    from jailkit.build.apply import apply

    if quiet or not sys.stdout.isatty():
        return apply(plan, jail, previous=built)
    with click.progressbar(length=len(plan.entries), label=f"building {plan.name}") as bar:
        return apply(plan, jail, bar.update, built)


def _report(result, plan, root: str, as_json: bool, verbose: bool) -> None:
    if as_json:
        click.echo(json.dumps({"root": str(root), **plan.summary(), **result.to_dict()}, indent=2))
        return
    if not result.changed:
        click.echo(f"{plan.name}: up to date in {root} (gen-{result.generation})")
        return
    click.echo(f"{plan.name}: gen-{result.generation} in {root}: {result.copied} files copied, "
               f"{result.linked} unchanged, {len(result.added)} added, {len(result.updated)} "
               f"updated, {len(result.removed)} removed")
    if verbose:
        for path in result.added:
            click.echo(f"  added    {path}")
        for path, reason in result.updated:
            click.echo(f"  updated  {path}: {reason}")
        for path in result.removed:
            click.echo(f"  removed  {path}")
        if result.launch_changed:
            click.echo("  updated  launch.json")
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)


@click.command()
@click.argument("profile")
@root_option
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing.")
@set_option
@json_option
@_one_line_errors
def build(profile, root, dry_run, sets, as_json):
    """Build the jail for PROFILE (a bundled name or a .toml path) into its jail directory."""
    loaded = _load(profile, sets)
    root = _root(root, loaded.name)
    if dry_run:
        plan = _dry_plan(loaded, root)
        if as_json:
            click.echo(json.dumps({**plan.summary(), "launch": plan.launch}, indent=2))
        else:
            _print_plan(plan)
        return
    with _locked_jail(root, create=True) as jail:
        plan, result = _build(loaded, jail, as_json)
    _report(result, plan, root, as_json, verbose=False)


@click.command()
@click.argument("profile")
@root_option
@set_option
@json_option
@_one_line_errors
def update(profile, root, sets, as_json):
    """Bring an existing jail up to date with the host and PROFILE; say what changed.

    Files whose host source and jail copy are unchanged are kept; DIR/state is never touched.
    """
    loaded = _load(profile, sets)
    root = _root(root, loaded.name)
    with _locked_jail(root, create=False) as jail:
        plan, result = _build(loaded, jail, as_json, check_profile=True)
    _report(result, plan, root, as_json, verbose=True)


@click.command()
@click.argument("profile")
@root_option
@json_option
@_one_line_errors
def check(profile, root, as_json):
    """Verify a built jail against its manifest, by full hash; non-zero exit on any finding."""
    from jailkit.build.check import check_jail
    from jailkit.build.jaildir import JailDir

    if root is None:
        from jailkit.profile.model import locate

        root = _root(None, os.path.basename(locate(profile)).removesuffix(".toml"))
    with JailDir(root) as jail:
        findings = check_jail(jail)
    if as_json:
        click.echo(json.dumps([f._asdict() for f in findings], indent=2))
    else:
        for finding in findings:
            click.echo(f"{finding.kind}: {finding.path}: {finding.detail}")
        click.echo(f"{len(findings)} finding(s) in {root}", err=True)
    sys.exit(1 if findings else 0)
