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
