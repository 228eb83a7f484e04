"""`jailkit run`: its own small argument parser, because the run path must not import click.

entry.main() sends `jailkit run ...` here directly; the click group only lists the command
(and forwards to `main` if reached another way). Usage errors look like click's and exit 2.
"""

import os
import sys

from jailkit.errors import JailkitError
from jailkit.vocabulary import NETWORKS, check_name, default_jail_dir, default_name, jail_name

USAGE = "Usage: jailkit run [OPTIONS] PROFILE [-- CMD [ARGS]...]"
HELP = f"""{USAGE}

  Run PROFILE's service, or CMD, in the jail built for it, in the foreground (or, with
  --detach, in the background: `jailkit ps`, `stats`, `stop`, `restart` reach it by name).

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
  -p, --publish [HOSTADDR:]HOSTPORT:JAILPORT
                         Forward a host port (on HOSTADDR, default all addresses) to
                         the jail's port on its veth address, while it runs; e.g.
                         -p 127.0.0.1:8080:80. Needs --net veth. Repeatable.
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
  --name NAME            Its name among running jails, and of its cgroups [default:
                         the jail directory's last component].
  -d, --detach           Return once the service is started (and answers on the
                         profile's `ready` port); its output goes to a log file.
  --memory SIZE          Memory limit, e.g. 64M (cgroup.memory_max; root only).
  --pids N               Most processes and threads at once (cgroup.pids_max).
  --cpu-weight N         CPU share against other jails, 1-10000 (default 100).
  --cpu-quota PERCENT    CPU time cap, in percent of one CPU, e.g. 50% or 200%.
  --io-weight N          Disk I/O share, 1-10000 (needs the bfq I/O scheduler).
  --dry-run              Print what would be done, and do nothing.
  -h, --help             Show this message and exit.
"""
LIMIT_OPTIONS = {"--memory": "memory_max", "--pids": "pids_max", "--cpu-weight": "cpu_weight",
                 "--cpu-quota": "cpu_quota", "--io-weight": "io_weight"}


class UsageError(Exception):
    pass


class Options:
    __slots__ = ("profile", "root", "sets", "pass_fds", "dry_run", "interactive", "command",
                 "help", "name", "detach", "limits", "restart_args", "publish", "asking")

    def __init__(self):
        self.profile = self.root = self.command = self.name = None
        self.sets: list[tuple[str, str]] = []
        self.pass_fds: list[int] = []
        self.publish: list[str] = []  # as typed, checked in run()
        self.limits: dict[str, str] = {}  # option -> value as typed, checked in run()
        self.restart_args: list[str] = []  # what `jailkit restart` runs again
        self.dry_run = self.interactive = self.help = self.detach = False
        self.asking = "run"  # the command whose fix lines a refusal gives (check's caller)


def parse(argv: list[str]) -> Options:
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            if not args:
                raise UsageError("'--' must be followed by a command.")
            opts.command = args
            opts.restart_args += ["--", *args]
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
        if arg in ("-d", "--detach"):
            opts.detach = True
            continue
        name, eq, value = arg.partition("=")
        if name == "-p":
            name = "--publish"
        if name in ("--root", "--net", "--set", "--pass-fd", "--name", "--publish",
                    *LIMIT_OPTIONS):
            if not eq:
                if not args:
                    raise UsageError(f"Option '{name}' requires an argument.")
                value = args.pop(0)
            if name not in ("--root", "--name", "--pass-fd"):
                opts.restart_args += [name, value]
            if name == "--name":
                opts.name = value
            elif name in LIMIT_OPTIONS:
                opts.limits[name] = value
            elif name == "--publish":
                opts.publish.append(value)
            elif name == "--root":
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
    if opts.detach and opts.interactive:
        # a detached jail's input is /dev/null: the caller's terminal is not handed on
        raise UsageError("--interactive and --detach exclude each other: for a shell in a "
                         "running jail, jailkit exec -i NAME -- /bin/sh")
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


def limit_sets(limits: dict[str, str]) -> list[tuple[str, str]]:
    """--memory 64M ... as launch.json settings, each checked here so that a typo is named by
    the option the user typed."""
    from jailkit.launch.spec import cpu_quota, parse_size

    sets = []
    for option, value in limits.items():
        key = LIMIT_OPTIONS[option]
        try:
            if key == "memory_max":
                parse_size(value, key)
            elif key == "cpu_quota":
                value = str(cpu_quota(value, key))
            elif not value.isdigit() or not 1 <= int(value) <= (
                    10000 if key != "pids_max" else 1 << 22):
                raise JailkitError(key)
        except JailkitError:
            example = {"memory_max": "a size such as 64M or 1G",
                       "cpu_quota": "a percentage of one CPU such as 50% (200% is two CPUs)",
                       "pids_max": "a number of processes such as 64"}.get(
                           key, "a weight from 1 to 10000 (100 is the default)")
            raise JailkitError(f"{option} {value!r}: expected {example}") from None
        sets.append((f"cgroup.{key}", value if value.isdigit() else f'"{value}"'))
    return sets


def _typed_limits(opts: Options) -> tuple[str, ...]:
    """The cgroup limits given as options (--memory 64M: memory_max)."""
    return tuple(LIMIT_OPTIONS[option] for option in opts.limits)


def _refuse_variables(opts: Options) -> None:
    """`run --set` changes launch.json keys; a profile variable (port, docroot) is rendered into
    the jail's files at build time, so setting it here would change nothing: say so."""
    from jailkit.launch.spec import DEFAULTS, REQUIRED

    for key, text in opts.sets:
        if key.split(".")[0] not in (*REQUIRED, *DEFAULTS):
            raise JailkitError(f"--set {key}: launch.json has no key {key.split('.')[0]!r} "
                               "(run --set overrides launch.json keys); if it is a profile "
                               f"variable, rebuild: jailkit build {opts.profile}"
                               f"{f' --root {opts.root}' if opts.root else ''} --set {key}={text}")


def _refuse_privileged_ports(opts: Options, jail, spec) -> None:
    """A port the service would bind on the host's network but cannot (net.privileged_binds)
    fails only inside, once it has started: refuse it here, naming the rebuild with the
    profile's variable that holds it and, as root, a network of its own with the port
    published (veth needs root)."""
    from jailkit.launch.net import privileged_binds

    ports, start = privileged_binds(spec.network, spec.ports["bind"])
    if not ports:
        return
    port = ports[0]
    root = f" --root {opts.root}" if opts.root else ""
    variable = _variable_holding(opts.profile, jail, port)
    higher = port + 8000 if port + 8000 >= start else start  # 80 -> 8080, 443 -> 8443
    if any(key.split(".")[0] == "ports" for key, _ in opts.sets):
        fixes = f"give --set ports.bind a port from {start} up"
    elif variable:
        fixes = (f"rebuild it with another: jailkit build {opts.profile}{root} --set "
                 f"{variable}={higher}")
    else:
        fixes = f"rebuild it binding a port from {start} up (the profile's [service.ports] bind)"
    if os.geteuid() == 0 and opts.asking == "doctor":  # any port binds in its own network
        fixes += f", or look at it in a network of its own: jailkit doctor {opts.profile}{root} " \
                 "--net veth"
    elif os.geteuid() == 0:
        fixes += (f", or give it a network of its own and publish the port: jailkit run "
                  f"{opts.profile}{root} --net veth --publish {port}:{port}")
    raise JailkitError(f"port {port} is below {start} (net.ipv4.ip_unprivileged_port_start), "
                       f"which a jail on the host's network cannot bind, also as root: {fixes}")


def _variable_holding(profile: str, jail, port: int) -> str | None:
    """The profile variable whose value, as the jail was built, is `port` (None when there is
    none, or the profile cannot be read: the refusal is said all the same)."""
    try:
        from jailkit.build.jaildir import JailDir
        from jailkit.build.kept import remembered_sets
        from jailkit.profile.model import load

        with JailDir(jail.dir) as built:
            sets = remembered_sets(built, jail_name(profile))
        variables = load(profile, remembered=sets).variables
    except (JailkitError, OSError):
        return None
    return next((name for name, value in variables.items()
                 if value == port and not isinstance(value, bool)), None)


def prepare(opts: Options) -> tuple:
    """What a run checks before it plans: (the built jail, opened and locked; its spec with
    the options applied; the ports to publish)."""
    from jailkit.launch import publish
    from jailkit.launch.jail import Jail
    from jailkit.launch.spec import LaunchSpec

    if opts.name is not None:
        check_name(opts.name)
    publishes = [publish.parse(text) for text in opts.publish]
    _refuse_variables(opts)
    jail = Jail(opts.root or default_jail_dir(jail_name(opts.profile)), opts.profile)
    try:
        built = jail.raw_spec.get("name") if isinstance(jail.raw_spec, dict) else None
        if isinstance(built, str) and built != jail_name(opts.profile):
            # its launch.json, its files and its ports are another service's
            raise JailkitError(f"{jail.dir} holds the jail of profile {built!r}, not "
                               f"{jail_name(opts.profile)!r}: check --root, or run it with "
                               f"`jailkit run {built} --root {jail.dir}`")
        raw = apply_sets(jail.raw_spec, [*opts.sets, *limit_sets(opts.limits)])
        if opts.command:
            raw["command"] = opts.command
        spec = LaunchSpec.from_dict(raw)
        publish.check(publishes, spec.network)  # before the ports: --publish asks for veth
        _refuse_privileged_ports(opts, jail, spec)
        return jail, spec, publishes
    except BaseException:
        jail.close()
        raise


def _plan(opts: Options, jail, spec, publishes):
    """The plan of a dry run: what would be done, nothing allocated or started."""
    from jailkit.launch.plan import LaunchPlan

    return LaunchPlan(spec, jail, os.getpid(), opts.pass_fds, True, opts.interactive,
                      opts.name or default_name(jail.dir), opts.detach, publishes,
                      _typed_limits(opts))


def check(argv: list[str], asking: str = "run") -> int:
    """Refuse, as `jailkit run ARGV` would, what could not start; start nothing. For the
    commands that must know before they act: `restart` (before it stops the jail), `unit`
    (before a boot runs it) and `doctor` (`asking`: its fix lines name doctor). Options are
    parsed as typed, but for --pass-fd: the descriptors are the future run's. Returns the
    jail's stop signal."""
    try:
        opts = parse(argv)
    except UsageError as e:
        raise JailkitError(str(e)) from None
    opts.pass_fds, opts.asking = [], asking
    jail, spec, publishes = prepare(opts)
    try:
        _plan(opts, jail, spec, publishes)
    finally:
        jail.close()
    return spec.stop_signal


def run(opts: Options) -> int:
    jail, spec, publishes = prepare(opts)
    if opts.dry_run:
        from jailkit.launch.registry import check_usable

        check_usable()  # where the run would register it
        print(_plan(opts, jail, spec, publishes).describe())
        return 0
    if opts.detach:
        from jailkit.launch.detach import start

        return start(lambda report: _launch(opts, jail, spec, publishes, report), spec.ready,
                     spec.network, _doctor(opts, jail))
    return _launch(opts, jail, spec, publishes)


def _doctor(opts: Options, jail) -> str:
    """`jailkit doctor` for this jail and command, as the user would type it: what explains a
    service that fails at once."""
    words = ["jailkit", "doctor", opts.profile, "--root", jail.dir,
             *(["--", *opts.command] if opts.command else [])]
    return " ".join(_shell_word(word) for word in words)


def _shell_word(word: str) -> str:
    """`word` as a POSIX shell reads it back (shlex.quote, whose import of re the run path
    avoids)."""
    if word and all(c.isalnum() or c in "@%+=:,./_-" for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _launch(opts: Options, jail, spec, publishes, report=None) -> int:
    """Register the jail by name, then launch it (execs the waiter on success). `report`: a
    descriptor to write the name to once registered (a detached start's watcher reads it)."""
    from jailkit.launch.dangerous import warnings
    from jailkit.launch.launcher import launch
    from jailkit.launch.plan import LaunchPlan
    from jailkit.launch.registry import Registry, entry_for, pick_name

    if os.geteuid() == 0:  # the jail's cgroups: start the kernel's wait for them now
        from jailkit.launch.cgroup import prime
        from jailkit.launch.plan import reaper_path

        prime(reaper_path())
    registry = Registry()
    with registry:
        running = registry.running()
        name = pick_name(opts.name, jail, running, registry.names())
        if os.geteuid() == 0:
            from jailkit.launch.cgroup import remove_stale

            remove_stale(name)  # a killed launcher's, or the registry would name it
        plan = LaunchPlan(spec, jail, os.getpid(), opts.pass_fds, False, opts.interactive, name,
                          opts.detach, publishes, _typed_limits(opts))
        # a command's status is its own to give, and so is an interactive session's
        if not opts.command and not opts.detach and not opts.interactive:
            plan.early_hint = _doctor(opts, jail)
        entry_fd = registry.register(name, entry_for(plan, opts.profile, opts.restart_args))
    plan.registration = (registry.fd, entry_fd)
    if report is not None:  # its name, and its log (length, inode) before this run writes
        try:
            log = os.stat(f"{name}.log", dir_fd=registry.fd, follow_symlinks=False)
            log_size, log_file = log.st_size, log.st_ino
        except FileNotFoundError:
            log_size = log_file = 0
        os.write(report, f"{name} {log_size} {log_file}\n".encode())
    for line in warnings(spec.capabilities):  # accepted by name: still say what each opens
        sys.stderr.write(f"jailkit: warning: {line}\n")
    if plan.landlock.missing:
        sys.stderr.write(f"jailkit: warning: not enforced on this kernel: "
                         f"{'; '.join(plan.landlock.missing)}\n")
    try:
        launch(plan, jail.lock_fd)  # execs the waiter on success
    except BaseException:
        registry.unregister(name, entry_fd)
        raise
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
