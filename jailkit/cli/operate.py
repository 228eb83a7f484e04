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


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--user", "-u", metavar="USER",
              help="Run as this user of the jail (name or uid; default the service's).")
@click.option("-i", "--interactive", is_flag=True,
              help="Pass stdin to the command even when it is not a terminal.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@_one_line_errors
def exec_(name, user, interactive, command):
    """Run COMMAND in the running jail NAME, for debugging: in its namespaces and cgroups, as
    confined as its service (capabilities, no_new_privs, seccomp, its network rules), as its
    service's user. Exit status: the command's (125 when it could not start)."""
    from jailkit.launch.attach import attach

    attach(name, list(command), user, interactive)
