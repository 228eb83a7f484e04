"""`jailkit doctor`: why a jail's service fails, with the profile line that fixes it."""

import json
import sys

import click

from jailkit.cli.build import _one_line_errors, _root, json_option, root_option


@click.command()
@click.argument("profile")
@root_option
@click.option("--timeout", type=click.FloatRange(0.5, 600), default=10.0, show_default=True,
              help="Seconds the service runs under the tracer before it is stopped.")
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_one_line_errors
def doctor(profile, root, timeout, as_json, command):
    """Run PROFILE's service (or COMMAND, after --) in its built jail under strace, and say
    what the jail kept from it: files not copied, read-only paths it writes, capabilities,
    seccomp, users, ports, a service that went to the background. Each finding comes with the
    profile line to add; the profile is never changed. Exit status 1 when something was found.
    """
    from jailkit.author.doctor import doctor as run_doctor
    from jailkit.vocabulary import jail_name

    report = run_doctor(profile, _root(root, jail_name(profile)), list(command), timeout)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        how = ("stopped after" if report["stopped"] else f"exited {report['status']} after")
        click.echo(f"{profile}: the service ran under the tracer and {how} "
                   f"{report['seconds']} s")
        for finding in report["findings"]:
            click.echo(f"{finding['kind']}: {finding['detail']}\n  fix: {finding['fix']}")
        if not report["findings"]:
            click.echo("nothing the jail refused was found")
    sys.exit(1 if report["findings"] else 0)
