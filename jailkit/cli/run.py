"""`jailkit run`: its own small argument parser, because the run path must not import click.

entry.main() sends `jailkit run ...` here directly; the click group only lists the command
(and forwards to `main` if reached another way). Usage errors look like click's and exit 2.
"""

import os
import sys

from jailkit.errors import JailkitError
from jailkit.vocabulary import NETWORKS, default_jail_dir, jail_name

USAGE = "Usage: jailkit run [OPTIONS] PROFILE [-- CMD [ARGS]...]"
HELP = f"""{USAGE}

  Run PROFILE's service, or CMD, in the jail built for it, in the foreground.

  The jail gets its own user, mount, pid, ipc and uts namespaces, a read-only root,
  the profile's writable directories, a fresh /proc and a minimal /dev; only the
  profile's capabilities; no_new_privs; a seccomp filter. Signals (SIGTERM, SIGINT,
  SIGHUP, ...) are forwarded; the exit status is the service's (128+N for signal N).

  PROFILE names the jail (a profile name or a profile file: its name is used). The jail
  is read from DIR/current (built by `jailkit build PROFILE --root DIR`).

Options:
  --root DIR             Jail directory [default: /var/lib/jailkit/PROFILE as root,
                         else $XDG_DATA_HOME/jailkit/PROFILE].
  --net [host|none|veth] Network: the host's, loopback only, or a veth pair to the
                         host (root only) [default: the profile's].
  --set KEY=VALUE        Override a launch.json key for this run (dotted for nested
                         keys, VALUE as JSON or a plain string), e.g. --set user.uid=33
                         --set cgroup.memory_max=64M. Repeatable. Profile variables
                         (port, docroot) are set when building: `jailkit build
                         PROFILE --set port=9000`.
  --pass-fd N            Let the service inherit open file descriptor N (every other
                         one but 0-2 is closed). Repeatable.
  -i, --interactive      Give the service this stdin (a pipe, or a terminal's input
                         when run in the background). Without it, the service reads
                         stdin only when it is a terminal and the run is in its
                         foreground; else /dev/null. A terminal is never passed
                         itself: the service gets a pty relayed to it.
  --dry-run              Print what would be done, and do nothing.
  -h, --help             Show this message and exit.
"""


class UsageError(Exception):
    pass


class Options:
    __slots__ = ("profile", "root", "sets", "pass_fds", "dry_run", "interactive", "command",
                 "help")

    def __init__(self):
        self.profile = self.root = self.command = None
        self.sets: list[tuple[str, str]] = []
        self.pass_fds: list[int] = []
        self.dry_run = self.interactive = self.help = False


def parse(argv: list[str]) -> Options:
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            if not args:
                raise UsageError("'--' must be followed by a command.")
            opts.command = args
            break
        if arg in ("-h", "--help"):
            opts.help = True
            return opts
        if arg == "--dry-run":
            opts.dry_run = True
            continue
        if arg in ("-i", "--interactive"):
            opts.interactive = True
            continue
        name, eq, value = arg.partition("=")
        if name in ("--root", "--net", "--set", "--pass-fd"):
            if not eq:
                if not args:
                    raise UsageError(f"Option '{name}' requires an argument.")
                value = args.pop(0)
            if name == "--root":
                opts.root = value
            elif name == "--pass-fd":
                if not value.isdigit() or int(value) < 3:
                    raise UsageError(f"Invalid value for '--pass-fd': {value!r} is not a "
                                     "descriptor number above 2.")
                opts.pass_fds.append(int(value))
            elif name == "--net":
                if value not in NETWORKS:
                    raise UsageError(
                        f"Invalid value for '--net': {value!r} is not one of "
                        + ", ".join(f"'{n}'" for n in NETWORKS) + "."
                    )
                opts.sets.append(("network", f'"{value}"'))
            else:
                key, eq2, setting = value.partition("=")
                if not eq2 or not key:
                    raise UsageError(f"Invalid value for '--set': {value!r} is not KEY=VALUE.")
                opts.sets.append((key, setting))
            continue
        if arg.startswith("-") and arg != "-":
            raise UsageError(f"No such option: {arg}")
        if opts.profile is not None:
            raise UsageError(f"Got unexpected extra argument ({arg}); put a command after '--'.")
        opts.profile = arg
    if opts.profile is None:
        raise UsageError("Missing argument 'PROFILE'.")
    return opts


def apply_sets(raw: dict, sets: list[tuple[str, str]]) -> dict:
    """`raw` (changed in place) with each KEY=VALUE set; VALUE is JSON, or else a string."""
    from jailkit.launch.jsonload import loads

    for key, text in sets:
        try:
            value = loads(text)
        except ValueError:
            value = text
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise JailkitError(f"--set {key}: {part} is not an object in launch.json")
        node[last] = value
    return raw


def _refuse_variables(opts: Options) -> None:
    """`run --set` changes launch.json keys; a profile variable (port, docroot) is rendered into
    the jail's files at build time, so setting it here would change nothing: say so."""
    from jailkit.launch.spec import DEFAULTS, REQUIRED

    for key, text in opts.sets:
        if key.split(".")[0] not in (*REQUIRED, *DEFAULTS):
            raise JailkitError(f"--set {key}: launch.json has no key {key.split('.')[0]!r} "
                               "(run --set overrides launch.json keys); if it is a profile "
                               f"variable, rebuild: jailkit build {opts.profile} --set "
                               f"{key}={text}")


def run(opts: Options) -> int:
    from jailkit.launch.jail import Jail
    from jailkit.launch.plan import LaunchPlan
    from jailkit.launch.spec import LaunchSpec

    _refuse_variables(opts)
    jail = Jail(opts.root or default_jail_dir(jail_name(opts.profile)), opts.profile)
    raw = apply_sets(jail.raw_spec, opts.sets)
    if opts.command:
        raw["command"] = opts.command
    spec = LaunchSpec.from_dict(raw)
    plan = LaunchPlan(spec, jail, os.getpid(), opts.pass_fds, opts.dry_run, opts.interactive)
    if opts.dry_run:
        print(plan.describe())
        return 0
    from jailkit.launch.dangerous import warnings
    from jailkit.launch.launcher import launch

    for line in warnings(spec.capabilities):  # accepted by name: still say what each opens
        sys.stderr.write(f"jailkit: warning: {line}\n")
    if plan.landlock.missing:
        sys.stderr.write(f"jailkit: warning: not enforced on this kernel: "
                         f"{'; '.join(plan.landlock.missing)}\n")
    launch(plan, jail.lock_fd)  # execs the waiter on success
    return 1


def main(argv: list[str]) -> int:
    try:
        opts = parse(argv)
    except UsageError as e:
        sys.stderr.write(f"{USAGE}\nTry 'jailkit run --help' for help.\n\nError: {e}\n")
        return 2
    if opts.help:
        sys.stdout.write(HELP)
        return 0
    try:
        return run(opts)
    except JailkitError as e:
        sys.stderr.write(f"jailkit: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def click_command():
    """The click stand-in that lists `run` in `jailkit --help` and forwards to `main`."""
    import click

    @click.command(
        "run",
        context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                          "help_option_names": []},
        short_help="Run a profile's service (or a command) in its built jail.",
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def run_command(args):
        sys.exit(main(list(args)))

    return run_command


def __getattr__(name: str):
    # jailkit.cli.main's COMMANDS looks up `run_command`; built on demand so importing this module
    # never imports click
    if name == "run_command":
        return click_command()
    raise AttributeError(name)
