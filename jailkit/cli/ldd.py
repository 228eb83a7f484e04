"""`jailkit ldd`: what the dynamic loader would map for each file, without running it."""

import json
import sys

import click


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object keyed by each FILE.")
@click.option("--tree", is_flag=True, help="Show which object needs which library.")
@click.option(
    "--library-path",
    metavar="DIRS",
    help="Colon-separated directories searched as LD_LIBRARY_PATH would be.",
)
def ldd(files, as_json, tree, library_path):
    """List the shared objects the dynamic loader maps for each FILE.

    FILE is read with pyelftools and never executed: the loader's search rules (DT_RPATH,
    DT_RUNPATH, $ORIGIN, ld.so.cache, glibc-hwcaps, ...) are applied to the files on disk.
    """
    from jailkit.elf.closure import Resolver

    resolver = Resolver(library_path)
    results = {path: resolver.resolve(path) for path in files}
    if as_json:
        click.echo(json.dumps({path: r.to_json() for path, r in results.items()}, indent=2))
    else:
        for result in results.values():
            click.echo(render_tree(result) if tree else render_list(result))
    failed = False
    for path, result in results.items():
        if result.error:
            where = "" if result.error.startswith(path) else f"{path}: "
            click.echo(f"jailkit: {where}{result.error}", err=True)
            failed = True
        for name in result.missing:
            needers = ", ".join(result.needed_by.get(name, [path]))
            click.echo(f"jailkit: {path}: {needers} needs {name}, which was not found", err=True)
            failed = True
    sys.exit(1 if failed else 0)


def _header(result) -> list[str]:
    lines = [f"{result.file}:"]
    for script in result.scripts:
        lines.append(f"\t#! {script}")
    if result.static:
        lines.append("\tstatically linked")
    if result.interp:
        lines.append(f"\tinterpreter {result.interp}")
    return lines


def render_list(result) -> str:
    lines = _header(result)
    for lib in result.libs:
        lines.append(f"\t{lib.name} => {lib.path or 'not found'}")
    if result.error:
        lines.append(f"\terror: {result.error}")
    return "\n".join(lines)


def render_tree(result) -> str:
    lines = _header(result)
    shown: set[str] = set()

    def walk(path: str, depth: int) -> None:
        for lib in result.dependencies.get(path, []):
            target = lib.path or "not found"
            again = lib.path in shown
            lines.append(f"{'    ' * depth}{lib.name} => {target}{' (see above)' if again else ''}")
            if lib.path and not again:
                shown.add(lib.path)
                walk(lib.path, depth + 1)

    for root in result.dependencies:
        if root in (result.file, *result.scripts):
            lines.append(f"  {root}")
            walk(root, 2)
    if result.error:
        lines.append(f"\terror: {result.error}")
    return "\n".join(lines)
