"""`jailkit trace`: learn a profile by running a service under strace."""

import json
import os
import sys

import click

from jailkit.cli.build import _one_line_errors, json_option
from jailkit.errors import JailkitError


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the profile to this file (default: standard output).")
@click.option("--probe", metavar="'CLIENT COMMAND'",
              help="A client command run against the service until it succeeds, e.g. "
                   "'redis-cli -p 6380 ping'; the service is stopped once it has.")
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(0.5, 600),
              help="Seconds the service runs without a probe; the most the probe is retried.")
@click.option("--log", "log_out", type=click.Path(dir_okay=False),
              help="Also keep strace's log in this file.")
@click.option("--from-log", type=click.Path(dir_okay=False, exists=True),
              help="Read a log kept with --log instead of running anything.")
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_one_line_errors
def trace(output, probe, duration, log_out, from_log, as_json, command):
    """Run COMMAND under strace and write a profile for it.

    Usage: jailkit trace [-o PROFILE.toml] [--probe 'CLIENT COMMAND'] -- CMD ARGS...

    The service runs on the host with its own arguments (point it at a free port), with the
    jail's environment (PATH only), in the current directory. Every file, directory, device,
    socket, user and group it used becomes a profile entry, less what its programs' loader
    closure and the chosen bases bring; secrets it read are listed here and left out.
    """
    from jailkit.author.fold import fold
    from jailkit.author.trace import read_trace, trace_service
    from jailkit.author.write import render

    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    if from_log:
        with open(from_log, encoding="utf-8", errors="surrogateescape") as f:
            log = f.read()
    else:
        if not command:
            raise JailkitError("no command to trace: jailkit trace [OPTIONS] -- CMD ARGS...")
        run = trace_service(command, probe, duration)
        log = run.log
        if run.exited_early is not None:
            # a trace of a service that failed (a port taken, a bad option) is no profile of it
            if log_out:
                _write(log_out, log)
            status = run.exited_early
            how = f"status {status}" if status >= 0 else f"killed by signal {-status}"
            raise TraceFailed(f"the service exited by itself ({how}) before the trace stopped "
                              "it: no profile written; see its output above")
        if run.probe_ok is False:
            click.echo(f"jailkit: the probe never succeeded: {run.probe_output or 'no output'}",
                       err=True)
    if log_out:
        _write(log_out, log)
    observed = read_trace(log)
    if not observed.program:
        raise JailkitError("the trace shows no program started: nothing to write")
    name = (os.path.basename(output).removesuffix(".toml") if output
            else os.path.basename(observed.program))
    draft = fold(observed, name, command or None)
    text = render(draft, command or observed.command)
    for secret in draft.secrets:
        click.echo(f"jailkit: secret left out: {secret.value}: {secret.why}; add it to `files` "
                   "yourself if the jail must hold it", err=True)
    for note in draft.notes:
        click.echo(f"jailkit: note: {note}", err=True)
    if output:
        _write(output, text)
    if as_json:
        summary = draft.summary()
        if not output:
            summary["profile"] = text
        click.echo(json.dumps(summary, indent=2))
    elif not output:
        click.echo(text, nl=False)
    if not from_log and (run.probe_ok is False):
        sys.exit(1)


class TraceFailed(JailkitError):
    exit_code = 1


def _write(path: str, text: str) -> None:
    """Write beside the destination, then rename: a reader never sees half a profile."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "x", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.replace(temporary, path)
    except OSError as e:
        raise JailkitError(f"{path}: {e.strerror}") from None
