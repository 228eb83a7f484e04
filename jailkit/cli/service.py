"""`jailkit ps`, `stats`, `kill`, `stop` and `restart`: running jails, by name
(launch/running.py)."""

import json
import sys
import time

import click

from jailkit.cli.build import _one_line_errors, json_option
from jailkit.errors import JailkitError
from jailkit.launch.cgroup import human_bytes, limits_text


def _bytes(value) -> str:
    return "-" if value is None else human_bytes(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds < 172800 else \
        f"{seconds // 86400}d"


@click.command()
@json_option
@_one_line_errors
def ps(as_json):
    """List the running jails: name, directory, generation, pid, uptime, memory, CPU time,
    limits and network (a veth jail's address and published ports). A generation marked `<`
    has a newer one built since it started (`jailkit restart NAME` runs it)."""
    from jailkit.launch.publish import Publish
    from jailkit.launch.running import row, running

    now = time.time()
    rows = [row(entry, now) for entry in running()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("NAME", "PID", "UPTIME", "MEMORY", "CPU", "GENERATION", "NETWORK", "LIMITS", "DIR")]
    for r in rows:
        generation = r["generation"] + (f" < {r['newer_generation']}"
                                        if r["newer_generation"] else "")
        network = " ".join([r["network"], *([r["address"]] if r["address"] else []),
                            *(Publish(**p).describe() for p in r["published"])])
        cpu = "-" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.1f}s"
        table.append((r["name"], str(r["pid"]), _duration(r["uptime"]), _bytes(r["memory"]),
                      cpu, generation, network, limits_text(r["limits"]), r["dir"]))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
                   + "  " + line[-1])


def _stats_lines(s: dict, cpu_percent: float | None) -> list[str]:
    cpu = "-" if s["cpu_usec"] is None else f"{s['cpu_usec'] / 1e6:.2f}s"
    if cpu_percent is not None:
        cpu += f" ({cpu_percent:.0f}% of one CPU now)"
    return [
        f"{s['name']}",
        f"  memory    {_bytes(s['memory_current'])} (peak {_bytes(s['memory_peak'])})",
        f"  cpu       {cpu}",
        f"  pids      {'-' if s['pids'] is None else s['pids']}",
        f"  oom kills {'-' if s['oom_kills'] is None else s['oom_kills']}",
        f"  io        read {_bytes(s['io_read_bytes'])}, written {_bytes(s['io_write_bytes'])}",
        f"  limits    {limits_text(s['limits'])}",
    ]


@click.command()
@click.argument("name")
@json_option
@click.option("--watch", is_flag=True, help="Print again every second, until the jail ends.")
@_one_line_errors
def stats(name, as_json, watch):
    """Resource use of the running jail NAME: memory now and at its peak, CPU time, processes,
    OOM kills, bytes read and written (where this host counts them). --watch ends with the
    jail, or at ^C (exit status 130)."""
    from jailkit.launch import running

    entry = running.find(name)
    try:
        _print_stats(entry, as_json, watch)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `jailkit stats NAME --watch | head`
        sys.stderr.close()
        sys.exit(0)


def _print_stats(entry: dict, as_json: bool, watch: bool) -> None:
    from jailkit.launch import running

    name = entry["name"]
    previous = None
    while True:
        s = running.stats(entry)
        now = time.monotonic()
        percent = None
        if previous and s["cpu_usec"] is not None and previous[1]["cpu_usec"] is not None:
            percent = (s["cpu_usec"] - previous[1]["cpu_usec"]) / 1e4 / (now - previous[0])
        if as_json:
            click.echo(json.dumps(s, indent=None if watch else 2))
        else:
            click.echo("\n".join(_stats_lines(s, percent)))
        sys.stdout.flush()
        if not watch:
            return
        previous = (now, s)
        time.sleep(1.0)
        if not any(e.get("name") == name and e["pid"] == entry["pid"]
                   for e in running.running()):
            click.echo(f"{name} has ended", err=True)
            return


@click.command()
@click.argument("name")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Seconds to wait after the stop signal before killing the whole jail.")
@_one_line_errors
def stop(name, timeout):
    """Stop the running jail NAME: its profile's stop signal, then, after --timeout seconds,
    SIGKILL to every process of the jail. Exit status 0 when it stopped on its own, 1 when it
    had to be killed, 3 when no jail of that name runs."""
    from jailkit.launch import running

    result = running.stop(running.find(name), timeout)
    click.echo(f"{name} stopped" if result == running.STOPPED
               else f"{name} did not stop within {timeout:g} s: killed", err=True)
    sys.exit(result)


@click.command()
@click.argument("name")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Seconds to wait after the stop signal before killing the whole jail.")
@_one_line_errors
def restart(name, timeout):
    """Stop the detached jail NAME and start it again, detached, with the same name and
    options, from the newest generation built in its directory. Nothing is stopped unless
    that would start (else one line says why); a jail run in the foreground is its
    launcher's to restart. Exit status: the new run's (3 when no jail of that name runs)."""
    import shlex

    from jailkit.cli.run import check
    from jailkit.cli.run import main as run_main
    from jailkit.launch import running

    entry = running.find(name)
    if not entry.get("log"):
        raise JailkitError(_in_the_foreground(entry))
    argv = [entry["profile"], "--root", entry["dir"], "--name", name, "--detach",
            *entry.get("restart", [])]
    try:
        check(argv)
    except JailkitError as e:
        raise JailkitError(f"cannot restart {name} (it keeps running): {e}") from None
    running.stop(entry, timeout)
    code = run_main(argv)
    if code and name not in (e.get("name") for e in running.running()):
        click.echo(f"jailkit: {name} was stopped and did not start again; to start it: "
                   + shlex.join(["jailkit", "run", *argv]), err=True)
    sys.exit(code)


def _in_the_foreground(entry: dict) -> str:
    """Why a foreground run is not restarted here: its launcher (a terminal's `jailkit run`,
    or a systemd unit's ExecStart) would see it end and do its own thing."""
    from jailkit.launch.running import systemd_unit

    name = entry["name"]
    unit = systemd_unit(entry["pid"])
    if unit:
        return (f"{name} runs in the foreground of the systemd unit {unit[0]}: restart it "
                f"with: systemctl{' --user' if unit[1] else ''} restart {unit[0]}")
    return (f"{name} runs in the foreground of the `jailkit run` that started it (pid "
            f"{entry['pid']}), which restart cannot start again: stop it there (^C, or "
            f"jailkit stop {name}) and run it again, with --detach to restart it here")


def _signal_number(text: str) -> int:
    """A signal by name (TERM, SIGTERM, sigterm) or number (1-64)."""
    import signal

    if text.isdigit() and 1 <= int(text) <= signal.SIGRTMAX:
        return int(text)
    try:
        return signal.Signals["SIG" + text.upper().removeprefix("SIG")]
    except KeyError:
        raise JailkitError(f"--signal {text!r}: no such signal: give its name or number, e.g. "
                           "TERM, HUP, USR1, KILL or 15") from None


@click.command()
@click.argument("name")
@click.option("-s", "--signal", "signal_text", metavar="SIG", default="KILL", show_default=True,
              help="The signal, by name (HUP, SIGHUP) or number.")
@_one_line_errors
def kill(name, signal_text):
    """Send a signal to the service of the running jail NAME (as podman kill: SIGKILL unless
    --signal says otherwise; `jailkit stop` is the graceful end). Straight to the service,
    not through the jail's pid 1: SIGTERM stays SIGTERM. Exit status 0 when sent, 2 for an
    unknown signal, 3 when no jail of that name runs."""
    import signal

    from jailkit.launch import running

    signum = _signal_number(signal_text)
    pid = running.kill(name, signum)
    try:
        shown = signal.Signals(signum).name
    except ValueError:  # a real-time signal
        shown = f"signal {signum}"
    click.echo(f"{shown} sent to the service of {name} (pid {pid})", err=True)
