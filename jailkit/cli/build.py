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
set_option = click.option("--set", "sets", multiple=True, metavar="VARIABLE=VALUE",
                          help="Set a profile variable (`show` lists them); remembered by the "
                               "jail for `update` and rebuilds. (`run --set` changes a "
                               "launch.json key instead.) Repeatable.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


@click.command()
@json_option
@_one_line_errors
def profiles(as_json):
    """List the bundled profiles."""
    from jailkit.profile.model import bundled_profiles, load

    rows = {name: {"kind": "service" if profile.runnable else "base",
                   "description": profile.description}
            for name, profile in ((name, load(name)) for name in bundled_profiles())}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        width = max(map(len, rows), default=0)
        for name, row in rows.items():
            click.echo(f"{name:<{width}}  {row['kind']:<7}  {row['description']}")
        click.echo("base: no service of its own; name it in `extends` of a profile that has one",
                   err=True)


@click.command()
@click.argument("profile")
@click.option("--root", type=click.Path(file_okay=False),
              help="Show the profile as the jail built in DIR was: with the --set values it "
                   "remembers (--set still overrides them).")
@set_option
@json_option
@_one_line_errors
def show(profile, root, sets, as_json):
    """Print PROFILE (a bundled name or a .toml path) fully resolved, bases merged in."""
    from jailkit.profile.dump import as_dict, as_toml
    from jailkit.profile.model import load

    remembered = {}
    if root is not None:
        from jailkit.build.jaildir import JailDir
        from jailkit.build.kept import remembered_sets
        from jailkit.vocabulary import jail_name

        with JailDir(root) as jail:
            remembered = remembered_sets(jail, jail_name(profile))
    loaded = load(profile, _overrides(sets), remembered)
    if as_json:
        click.echo(json.dumps(as_dict(loaded), indent=2))
        return
    if root is not None:
        built = " ".join(f"--set {k}={v}" for k, v in remembered.items()) or "no --set values"
        click.echo(f"# the jail in {root} was built with: {built}")
    click.echo(as_toml(loaded), nl=False)


def _load(profile, sets, remembered=None):
    """The profile with the remembered and the new --set values applied; says what its
    dangerous capabilities open."""
    from jailkit.launch.dangerous import warnings
    from jailkit.profile.model import load

    loaded = load(profile, _overrides(sets), remembered)
    for line in warnings(loaded.service.capabilities):  # accepted in the profile: say what it opens
        click.echo(f"jailkit: warning: {line}", err=True)
    return loaded


def _remembered(jail, profile: str, replace: bool) -> dict[str, str]:
    """The --set values the jail was built with, unless it is being replaced."""
    from jailkit.build.kept import remembered_sets
    from jailkit.vocabulary import jail_name

    return {} if replace else remembered_sets(jail, jail_name(profile))


def _dry_plan(profile, sets, root: str, replace: bool):
    """The plan a build would apply, reading what an existing jail keeps; writes nothing."""
    from jailkit.build.plan import make_plan

    if not os.path.isdir(root):
        loaded = _load(profile, sets)
        plan = make_plan(loaded)
    else:
        from jailkit.build.jaildir import JailDir
        from jailkit.build.kept import gather

        with JailDir(root) as jail:
            loaded = _load(profile, sets, _remembered(jail, profile, replace))
            plan = make_plan(loaded, gather(jail, loaded))
    _warn_unmappable(loaded, plan.launch)
    return plan


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


def _build(loaded, jail, quiet: bool, replace: bool = False):
    """Plan from what `jail` keeps, then apply: (plan, result). A jail of another profile is
    replaced only when asked (a mistyped --root must not turn one service's jail into
    another's)."""
    from jailkit.build.kept import gather
    from jailkit.build.plan import make_plan

    kept = gather(jail, loaded)
    if not replace and kept.manifest is not None and kept.manifest.profile != loaded.name:
        raise JailkitError(f"{jail.path} holds the jail of profile {kept.manifest.profile!r}, not "
                           f"{loaded.name!r}; check --root, or pass `jailkit build "
                           f"{loaded.name} --root {jail.path} --replace` to replace it")
    plan = make_plan(loaded, kept)
    result = _apply(plan, jail, kept.manifest, quiet)
    _warn_unmappable(loaded, plan.launch)
    return plan, result


def _warn_unmappable(loaded, launch: dict) -> None:
    """As an ordinary user, one line when `jailkit run` will refuse the jail for ids this user
    cannot map (launch/userns.py): built all the same, for root or a user with a range."""
    if os.geteuid() == 0:
        return
    from jailkit.launch import userns
    from jailkit.launch.spec import LaunchSpec

    spec = LaunchSpec.from_dict(launch)
    accounts = ({u.uid: u.name for u in loaded.users.values()},
                {g.gid: g.name for g in loaded.groups.values()})
    try:
        userns.plan(userns.Needed(spec, accounts), spec.uid_count)
    except JailkitError as e:
        click.echo(f"jailkit: warning: `jailkit run` will refuse this jail as this user: {e}",
                   err=True)


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
        for number in result.still_running:
            click.echo(f"gen-{number} is still used by a running jail: restart it to run "
                       f"gen-{result.generation}")
        return
    built = f"{plan.name}: gen-{result.generation} built in {root}"
    directories, files, symlinks = plan.counts()
    if result.linked or result.updated or result.removed or result.copied < files:
        # a previous generation was there: what changed since, and what is shared with it
        click.echo(f"{built}: {len(result.added)} added, {len(result.updated)} updated, "
                   f"{len(result.removed)} removed since the previous generation "
                   f"({_files(result.copied)} copied, {result.linked} unchanged ones shared "
                   "with it as hard links)")
    else:
        click.echo(f"{built}: {_files(files)} ({plan.summary()['bytes'] / 1e6:.1f} MB), "
                   f"{directories} directories, {symlinks} symlinks")
    if verbose:
        for path in result.added:
            click.echo(f"  added    {path}")
        for path, reason in result.updated:
            click.echo(f"  updated  {path}: {reason}")
        for path in result.removed:
            click.echo(f"  removed  {path}")
        if result.launch_changed:
            click.echo("  updated  launch.json")
    for number in result.still_running:
        click.echo(f"gen-{number} is still used by a running jail: restart it to run "
                   f"gen-{result.generation}")
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)


@click.command()
@click.argument("profile")
@root_option
@click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing.")
@click.option("--replace", is_flag=True,
              help="Build over a jail of another profile in DIR (else refused).")
@set_option
@json_option
@_one_line_errors
def build(profile, root, dry_run, replace, sets, as_json):
    """Build the jail for PROFILE (a bundled name or a .toml path) into its jail directory.

    --set sets the profile's variables (port, docroot, ...): the build renders them into
    the jail's files and launch.json. `jailkit run --set` overrides a launch.json key
    for one run instead."""
    from jailkit.vocabulary import jail_name

    root = _root(root, jail_name(profile))
    if dry_run:
        plan = _dry_plan(profile, sets, root, replace)
        if as_json:
            click.echo(json.dumps({**plan.summary(), "launch": plan.launch}, indent=2))
        else:
            _print_plan(plan)
        return
    with _locked_jail(root, create=True) as jail:
        loaded = _load(profile, sets, _remembered(jail, profile, replace))
        plan, result = _build(loaded, jail, as_json, replace)
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
    The --set values the jail was built with are reused unless set again.
    """
    from jailkit.vocabulary import jail_name

    root = _root(root, jail_name(profile))
    with _locked_jail(root, create=False) as jail:
        loaded = _load(profile, sets, _remembered(jail, profile, False))
        plan, result = _build(loaded, jail, as_json)
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
        findings = check_jail(jail, profile, root)
    if as_json:
        click.echo(json.dumps([f._asdict() for f in findings], indent=2))
    else:
        for finding in findings:
            click.echo(f"{finding.kind}: {finding.path}: {finding.detail}")
        click.echo(f"{len(findings)} finding(s) in {root}", err=True)
    sys.exit(1 if findings else 0)


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"
