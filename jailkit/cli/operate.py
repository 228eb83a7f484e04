"""`jailkit logs`, `exec` and `unit`: looking into and after a jail run as a service."""

import sys

import click

from jailkit.cli.build import _one_line_errors


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new lines (also across the log's rotation) until the jail "
                   "ends or you interrupt.")
@click.option("-n", "--lines", type=click.IntRange(0), default=None,
              help="Only the last N lines (default: all that is kept, up to 2 MiB).")
@_one_line_errors
def logs(name, follow, lines):
    """The output of the detached jail NAME (its stdout and stderr, and what it sends to
    /dev/log), each line prefixed with a UTC timestamp. Kept after the jail ends."""
    from jailkit.launch.logs import Log

    log = Log(name)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    try:
        text, fd = log.tail(lines)
        write(text)
        if not text and lines != 0:
            _note_quiet(log)
        if follow:
            log.follow(fd, write, lambda: not log.running())
            click.echo(f"{name} has ended", err=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `jailkit logs NAME | head`
        sys.stderr.close()
        sys.exit(0)
    finally:
        log.close()


def _note_quiet(log) -> None:
    """An empty log of a running jail: its service may log to files (nginx does), in its state."""
    entry, alive = log.registry.read(log.name)
    if alive and entry and entry.get("dir"):
        click.echo(f"jailkit: note: {log.name} has written nothing to stdout, stderr or /dev/log "
                   f"yet; what it logs to files is in {entry['dir']}/state", err=True)


class _ExecCommand(click.Command):
    """Its usage errors exit as its other failures do: 125, not click's 2."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            from jailkit.launch.attach import FAILED

            e.exit_code = FAILED
            raise


@click.command("exec", cls=_ExecCommand, context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--user", "-u", metavar="USER",
              help="Run as this user of the jail (name or uid; default the service's).")
@click.option("-i", "--interactive", is_flag=True,
              help="Pass stdin to the command even when it is not a terminal.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name, user, interactive, command):
    """Run COMMAND in the running jail NAME, for debugging: in its namespaces and cgroups, as
    confined as its service (capabilities, no_new_privs, seccomp, its network rules), as its
    service's user. Exit status, as podman exec's: the command's; 125 when jailkit failed
    (no such jail, no such --user), 126 when COMMAND cannot be executed, 127 when the jail
    has no COMMAND."""
    from jailkit.errors import JailkitError
    from jailkit.launch.attach import FAILED, attach

    try:
        attach(name, list(command), user, interactive)
    except JailkitError as e:
        click.echo(f"jailkit: {e}", err=True)
        sys.exit(FAILED)
    except OSError as e:
        click.echo(f"jailkit: cannot run a command in {name}: {e}", err=True)
        sys.exit(FAILED)


def _systemd_quote(arg: str) -> str:
    """One word of an Exec= line: % and $ are systemd's specifiers and variables."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _jailkit_command() -> list[str]:
    """The absolute command that runs this jailkit: its installed script, else this interpreter
    with `-m jailkit` (a checkout: PYTHONPATH goes into the unit too)."""
    import os
    import shutil

    script = sys.argv[0]
    if os.path.basename(script) == "jailkit" and os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    found = shutil.which("jailkit")
    if found and os.path.dirname(os.path.realpath(found)) == \
            os.path.dirname(os.path.realpath(sys.executable)):
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "jailkit"]


@click.command()
@click.argument("profile")
@click.option("--root", "root", metavar="DIR", help="The jail directory (as for `jailkit run`).")
@click.option("--name", metavar="NAME", help="The jail's name (default: DIR's last component).")
@click.option("--stop-timeout", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="Seconds `jailkit stop` gives the service before killing the jail.")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
@_one_line_errors
def unit(profile, root, name, stop_timeout, run_args):
    """Print a systemd unit that runs PROFILE's jail at boot: `jailkit run` in the foreground,
    stopped by `jailkit stop`, restarted on failure; for an ordinary user, a user unit
    (`systemctl --user`). Options after `--` go to `jailkit run` (--net, --memory, --set ...).
    What `run` would refuse (a jail not built, a typo in its options) is refused here."""
    import os

    from jailkit.cli.run import check
    from jailkit.launch.registry import directory as registry_directory
    from jailkit.vocabulary import check_name, default_jail_dir, default_name, jail_name

    directory = os.path.abspath(root or default_jail_dir(jail_name(profile)))
    name = check_name(name or default_name(directory))
    options = run_args[:run_args.index("--")] if "--" in run_args else run_args
    for arg in options:
        if arg in ("-d", "--detach") or arg.split("=")[0] in ("--root", "--name"):
            raise click.UsageError(f"{arg}: the unit sets it; pass only run's other options")
    # `run` needs the profile's name only (a profile file's is its name: no path in the unit)
    run = ["run", jail_name(profile), "--root", directory, "--name", name, *run_args]
    stop_signal = check(run[1:])
    system = os.geteuid() == 0
    jailkit = _jailkit_command()
    start, stop = [*jailkit, *run], [*jailkit, "stop", name, "--timeout", str(stop_timeout)]
    lines = [
        "[Unit]",
        f"Description=jailkit jail {name} (profile {profile}, {directory})",
        # a user's manager cannot order its units after the system's
        *(["After=network.target"] if system else []),
        "",
        "[Service]",
        # the jail runs in the foreground: its output goes to the journal
        "Type=exec",
        "ExecStart=" + " ".join(map(_systemd_quote, start)),
        # the stop signal, then the whole jail killed (cgroup.kill) after the timeout; `-`: a
        # jail that has already ended is no failure
        "ExecStop=-" + " ".join(map(_systemd_quote, stop)),
        "Restart=on-failure",
        # `jailkit stop` ends the service with the stop signal, and `run` then exits 128+N:
        # a stop, not a failure (the unit would be left `failed`)
        f"SuccessExitStatus={128 + stop_signal}",
        "RestartSec=2",
        # the jail's cgroups (jailkit/NAME) are jailkit's to make, limit and remove (an
        # ordinary user's jail has none)
        *(["Delegate=yes"] if system else []),
        # SIGTERM to `jailkit run`'s waiter alone, which passes it on as the profile's stop
        # signal and cleans up; SIGKILL to what is left only after TimeoutStopSec
        "KillMode=mixed",
        f"TimeoutStopSec={stop_timeout + 20}",
        f"# its entry and the registry of running jails that `jailkit ps` reads: "
        f"{registry_directory()}",
    ]
    if not system:  # the registry of the user who printed the unit: the one its ps reads
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        lines.append("Environment=" + _systemd_quote(f"XDG_RUNTIME_DIR={runtime}") if runtime
                     else "UnsetEnvironment=XDG_RUNTIME_DIR")
    pythonpath = os.environ.get("PYTHONPATH")
    if len(jailkit) > 1 and pythonpath:
        lines.append("Environment=" + _systemd_quote(f"PYTHONPATH={pythonpath}"))
    lines += ["", "[Install]", f"WantedBy={'multi-user' if system else 'default'}.target"]
    click.echo("\n".join(lines))
    _note_running(name, directory)


def _note_running(name: str, directory: str) -> None:
    """The unit's run would be refused while this jail runs already, started by hand: say so."""
    from jailkit.launch.running import running

    for entry in running():
        if entry.get("name") == name or entry.get("dir") == directory:
            click.echo(f"jailkit: note: {entry.get('name')} runs now (pid {entry.get('pid')}): "
                       f"the unit's run is refused until it ends: jailkit stop "
                       f"{entry.get('name')}, then systemctl start the unit", err=True)
