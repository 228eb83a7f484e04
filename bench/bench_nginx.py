"""nginx throughput in a jailkit jail against the same nginx unjailed, measured in the same run.

Both servers run at once: the bundled `nginx` profile's jail under `jailkit run`, and the host's
/usr/sbin/nginx with the configuration that jail was built with (only its paths pointed at a
private directory: pid file, access log, content types, docroot with the same files). `wrk`
loads each in turn over 127.0.0.1, in interleaved rounds whose order alternates, so drift on a
shared machine hits both alike. Prints requests/s per round and the ratio jailed/unjailed: the
median of the per-round ratios (each round's pair ran back to back, so load that drifts between
rounds cancels out; a ratio of the two overall medians would not), with its spread. Goal: ratio
>= 0.97. Run as root.

Usage: /opt/jailkit/bin/python bench/bench_nginx.py [--rounds N] [--seconds S] [--connections C]
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JAILKIT = os.path.join(sys.prefix, "bin", "jailkit")
FILE = "bench.html"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited {proc.returncode}: {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing answers on port {port}: {log.read_text()}")


def unjailed_config(jailed: str, base: Path, tree: Path) -> str:
    """The jail's nginx.conf with its paths moved to `base` (nothing of the host's is written).
    The docroot is the same path in both: the jail holds a copy of the host directory."""
    replaced = jailed
    for old, new in (("/run/nginx.pid", base / "nginx.pid"),
                     ("/var/log/nginx/access.log", base / "access.log"),
                     ("/etc/nginx/mime.types", tree / "etc/nginx/mime.types")):
        assert old in replaced, old
        replaced = replaced.replace(old, str(new))
    temp = "".join(f"    {name}_temp_path {base / name};\n"
                   for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return replaced.replace("http {\n", "http {\n" + temp, 1)


def wrk(port: int, seconds: int, connections: int) -> float:
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/{FILE}"],
        capture_output=True, text=True, check=True)
    if "Socket errors" in result.stdout or "Non-2xx" in result.stdout:
        sys.exit(f"wrk saw errors:\n{result.stdout}")
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", result.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the jail maps nginx's www-data workers")

    base = Path(tempfile.mkdtemp(prefix="jailkit-bench-nginx-"))
    os.chmod(base, 0o755)  # the unjailed workers (www-data) read the docroot below it
    servers: list[subprocess.Popen] = []
    try:
        jail_port, host_port = free_port(), free_port()
        page = os.urandom(2048).hex().encode()  # 4 KiB, the same bytes for both
        (base / "html").mkdir(mode=0o755)
        (base / "html" / FILE).write_bytes(page)
        (base / "html" / FILE).chmod(0o644)
        profile = base / "bench.toml"
        profile.write_text(f'extends = ["nginx"]\nfiles = ["{base / "html"}"]\n')
        subprocess.run([JAILKIT, "build", str(profile), "--root", str(base / "jail"),
                        "--set", f"port={jail_port}", "--set", f"docroot={base / 'html'}"],
                       check=True, stdout=subprocess.DEVNULL)
        tree = base / "jail/current/root"
        jailed_conf = (tree / "etc/nginx/nginx.conf").read_text()
        conf = base / "nginx.conf"
        conf.write_text(unjailed_config(jailed_conf, base, tree).replace(
            f"listen {jail_port};", f"listen {host_port};").replace(
            f"listen [::]:{jail_port};", f"listen [::]:{host_port};"))

        logs = {name: base / f"{name}.log" for name in ("jailed", "unjailed")}
        commands = {
            "jailed": [JAILKIT, "run", str(profile), "--root", str(base / "jail")],
            "unjailed": ["/usr/sbin/nginx", "-e", "stderr", "-p", str(base), "-c", str(conf)],
        }
        ports = {"jailed": jail_port, "unjailed": host_port}
        for name, command in commands.items():
            # each server in a session of its own, as the jail is (setsid) and as a system
            # service would be: with sched_autogroup the scheduler shares CPU between sessions,
            # so an nginx in wrk's own session would compete with wrk differently
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True,
                                    stdout=logs[name].open("wb"), stderr=subprocess.STDOUT)
            servers.append(proc)
            wait_port(ports[name], proc, logs[name])
        for name in commands:  # warm up both
            wrk(ports[name], 1, args.connections)

        rates = {name: [] for name in commands}
        print(f"nginx, {FILE} ({len(page)} bytes), wrk -t2 -c{args.connections} "
              f"-d{args.seconds}s, {args.rounds} interleaved rounds (requests/s):")
        for i in range(args.rounds):
            order = list(commands) if i % 2 == 0 else list(reversed(commands))
            for name in order:
                rates[name].append(wrk(ports[name], args.seconds, args.connections))
            print(f"  round {i + 1}: jailed {rates['jailed'][-1]:10.0f}   "
                  f"unjailed {rates['unjailed'][-1]:10.0f}   "
                  f"ratio {rates['jailed'][-1] / rates['unjailed'][-1]:.3f}")
        median = {name: statistics.median(r) for name, r in rates.items()}
        ratios = sorted(j / u for j, u in zip(rates["jailed"], rates["unjailed"], strict=True))
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"  medians over rounds: jailed {median['jailed']:.0f}, unjailed "
              f"{median['unjailed']:.0f} requests/s")
        print(f"  ratio jailed/unjailed: {statistics.median(ratios):.3f}  (goal >= 0.97; median "
              f"of per-round ratios; quartiles {quartiles[0]:.3f}..{quartiles[2]:.3f}, range "
              f"{ratios[0]:.3f}..{ratios[-1]:.3f})")
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # jailkit forwards it; nginx stops fast on TERM
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
