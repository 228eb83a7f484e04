"""`jailkit doctor`: why a jail's service fails, with the profile line that fixes it."""

import json
import sys

import click

from jailkit.cli.build import _one_line_errors, _root, json_option, root_option
from jailkit.vocabulary import NETWORKS


@click.command()
@click.argument("profile")
@root_option
@click.option("--timeout", type=click.FloatRange(0.5, 600), default=10.0, show_default=True,
              help="Seconds the service runs under the tracer before it is stopped.")
@click.option("--net", "network", type=click.Choice(NETWORKS),
              help="Network, as `jailkit run --net` [default: the profile's].")
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_one_line_errors
def doctor(profile, root, timeout, network, as_json, command):
    """Run PROFILE's service (or COMMAND, after --) in its built jail under strace, and say
    what the jail kept from it: files not copied, read-only paths it writes, capabilities,
    seccomp, users, ports, a service that went to the background. Each finding comes with the
    profile line to add; the profile is never changed. Files a service looked for before it
    listened, and went on without, are shown apart as probes. Exit status 1 when something
    else was found.
    """
    from jailkit.author.doctor import doctor as run_doctor
    from jailkit.vocabulary import jail_name

    report = run_doctor(profile, _root(root, jail_name(profile)), list(command), timeout,
                        network)
    failures = [f for f in report["findings"] if not f["went_on"]]
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        how = ("stopped after" if report["stopped"] else f"exited {report['status']} after")
        click.echo(f"{profile}: the service ran under the tracer and {how} "
                   f"{report['seconds']} s")
        for finding in failures:
            click.echo(f"{finding['kind']}: {finding['detail']}\n  fix: {finding['fix']}")
        if not failures:
            click.echo("nothing the jail refused was found")
        probes = [f for f in report["findings"] if f["went_on"]]
        if probes:
            click.echo("the service went on without these (probes before it listened, not "
                       "failures):")
        for finding in probes:
            click.echo(f"{finding['kind']}: {finding['detail']}\n  fix: {finding['fix']}")
    sys.exit(1 if failures else 0)
