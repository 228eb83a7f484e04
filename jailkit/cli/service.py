"""`jailkit ps`, `stats`, `stop` and `restart`: running jails, by name (launch/running.py)."""

import json
import os
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
    limits and network. A generation marked `<` has a newer one built since it started
    (`jailkit restart NAME` runs it)."""
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
        network = r["network"] + (f" {r['address']}" if r["address"] else "")
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
    OOM kills, bytes read and written (where this host counts them)."""
    from jailkit.launch import running

    entry = running.find(name)
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
    had to be killed."""
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
    """Stop the running jail NAME and start it again, detached, with the same name and
    options: from the newest generation built in its directory."""
    from jailkit.cli.run import main as run_main
    from jailkit.launch import running

    entry = running.find(name)
    running.stop(entry, timeout)
    argv = [entry["profile"], "--root", entry["dir"], "--name", name, "--detach",
            *entry.get("restart", [])]
    sys.exit(run_main(argv))


def _open_log(registry_fd: int, name: str) -> int | None:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=registry_fd)
    except FileNotFoundError:
        return None


def _read_all(fd: int) -> bytes:
    with os.fdopen(os.dup(fd), "rb") as f:
        return f.read()


def _last_lines(registry_fd: int, name: str, count: int | None) -> tuple[bytes, int | None]:
    """The last `count` lines (all for None) of NAME.log.1 then NAME.log, and NAME.log's open
    descriptor, at its end (None when there is no log)."""
    current = _open_log(registry_fd, f"{name}.log")
    if current is None:
        return b"", None
    rotated = _open_log(registry_fd, f"{name}.log.1")
    text = b""
    if rotated is not None:
        text = _read_all(rotated)
        os.close(rotated)
    text += _read_all(current)
    os.lseek(current, 0, os.SEEK_END)
    if count is not None:
        text = b"".join(text.splitlines(keepends=True)[-count:] if count else [])
    return text, current


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the jail writes.")
@click.option("-n", "--lines", "count", type=click.IntRange(0), default=None,
              help="Only the last N lines.")
@_one_line_errors
def logs(name, follow, count):
    """Print the log of NAME, a jail started with `run --detach`: its stdout and stderr, each line
    timestamped (UTC), the rotated part first. With -f, follow it (across rotation) until the
    jail has ended and all it wrote is printed, or until interrupted."""
    from jailkit.launch.registry import Registry
    from jailkit.vocabulary import check_name

    check_name(name)
    registry = Registry(create=False)
    try:
        if registry.fd is None:
            raise JailkitError(f"no log for {name!r}: no jail has run here yet (`jailkit run "
                               "--detach` keeps one)")
        text, fd = _last_lines(registry.fd, name, count)
        if fd is None:
            raise JailkitError(f"no log for {name!r}: only a jail started with `jailkit run "
                               "--detach` has one (`jailkit ps` lists the running jails)")
        out = sys.stdout.buffer
        out.write(text)
        out.flush()
        try:
            while follow:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    out.write(chunk)
                    out.flush()
                    continue
                now = _open_log(registry.fd, f"{name}.log")
                if now is not None and os.fstat(now).st_ino != os.fstat(fd).st_ino:
                    os.close(fd)  # rotated: what the old file still got was read above
                    fd = now
                    continue
                if now is not None:
                    os.close(now)
                if not registry.read(name)[1]:
                    break  # the jail has ended and its last words are printed
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            os.close(fd)
    finally:
        registry.close()


UNIT = """\
# {unit}: the jail in {root}, started at boot.
# Install: jailkit unit {args} > /etc/systemd/system/{unit}
#          systemctl daemon-reload && systemctl enable --now {unit}
[Unit]
Description=jailkit jail {name} ({profile})
Wants=network-online.target
After=network-online.target

[Service]
# `jailkit run` in the foreground: the waiter is the main process, the jail dies with it
Type=exec
ExecStart={jailkit} run {profile} --root {root} --name {name}
# the profile's stop signal, then, after the timeout, SIGKILL to every process of the jail
ExecStop={jailkit} stop {name} --timeout {timeout}
TimeoutStopSec={stop_seconds}
KillMode=mixed
# jailkit makes and removes the jail's own cgroups
Delegate=yes
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


@click.command()
@click.argument("profile")
@click.option("--root", type=click.Path(file_okay=False),
              help="Jail directory (default /var/lib/jailkit/NAME as root, else "
                   "$XDG_DATA_HOME/jailkit/NAME).")
@click.option("--name", help="Its name among running jails [default: DIR's last component].")
@click.option("--timeout", type=click.IntRange(1, 3600), default=10, show_default=True,
              help="Seconds `jailkit stop` waits before killing the jail.")
@_one_line_errors
def unit(profile, root, name, timeout):
    """Print a systemd unit that runs the jail of PROFILE at boot, in the foreground under
    systemd, stopped with `jailkit stop`, restarted on failure."""
    import shutil

    from jailkit.vocabulary import check_name, default_jail_dir, jail_name

    root = os.path.abspath(root or default_jail_dir(jail_name(profile)))
    if not os.path.lexists(os.path.join(root, "current")):
        raise JailkitError(f"no jail is built in {root}: build it first with `jailkit build "
                           f"{profile} --root {root}`")
    name = check_name(name or os.path.basename(root))
    jailkit = shutil.which("jailkit")
    if jailkit is None:
        raise JailkitError("`jailkit` is not on PATH: the unit needs its absolute path (install "
                           "jailkit, or link it into /usr/local/bin)")
    if "/" in profile or profile.endswith(".toml"):
        profile = os.path.abspath(profile)  # systemd starts it from /
    for value in (profile, root):
        if any(c.isspace() or c in "\\\"'%$;" for c in value):
            raise JailkitError(f"{value!r}: a path with spaces, quotes or %$; cannot stand in a "
                               "unit's command line here; use a plainer path")
    unit_name = f"jailkit-{name}.service"
    click.echo(UNIT.format(
        unit=unit_name, root=root, name=name, profile=profile, jailkit=jailkit,
        timeout=timeout, stop_seconds=timeout + 10,
        args=" ".join([profile, "--root", root, "--name", name])), nl=False)
