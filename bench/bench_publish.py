"""nginx through a published port (`run --publish`, the waiter's relay) against the same nginx
reached straight at its veth address, measured in the same run.

One jail of the bundled `nginx` profile on port 80, run with `--net veth --publish
127.0.0.1:PORT:80` in a network namespace of the benchmark's own (the veth and the port never
touch the host's network). `wrk` loads, in interleaved rounds whose order alternates, the
published port and the jail's address, for a small page (requests/s) and a 1 MiB file
(bytes/s). Prints the ratio published/direct: the median of the per-round ratios, with its
spread (as bench_nginx.py); and the relay's and the waiter's resident memory (PSS) after the
load. Run as root.

Usage: /opt/jailkit/bin/python bench/bench_publish.py [--rounds N] [--seconds S] [--connections C]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JAILKIT = os.path.join(sys.prefix, "bin", "jailkit")
PORT = 18080  # free in the benchmark's own network namespace
NAME = f"bench-publish-{os.getpid()}"
FILES = {"page": 4096, "file": 1 << 20}
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def wrk(enter: list[str], url: str, seconds: int, connections: int, measure: str) -> float:
    result = subprocess.run([*enter, "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url],
                            capture_output=True, text=True, check=True)
    if "Socket errors" in result.stdout or "Non-2xx" in result.stdout:
        sys.exit(f"wrk saw errors:\n{result.stdout}")
    if measure == "page":
        return float(re.search(r"Requests/sec:\s+([0-9.]+)", result.stdout).group(1))
    value, unit = re.search(r"Transfer/sec:\s+([0-9.]+)([KMG]?)B", result.stdout).groups()
    return float(value) * UNITS[unit]


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def relay_of(waiter: int) -> int:
    with open(f"/proc/{waiter}/task/{waiter}/children") as f:
        for child in f.read().split():
            with open(f"/proc/{child}/comm") as comm:
                if comm.read().strip() == "jailkit-publish":
                    return int(child)
    sys.exit("the waiter has no relay child")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: a veth network needs it")

    base = Path(tempfile.mkdtemp(prefix="jailkit-bench-publish-"))
    os.chmod(base, 0o711)
    holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
    enter = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
    started = False
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline:
                sys.exit("unshare --net did not make a network namespace")
            time.sleep(0.01)
        subprocess.run([*enter, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([JAILKIT, "build", "nginx", "--root", str(base / "nginx"), "--set",
                        "port=80"], check=True, stdout=subprocess.DEVNULL)
        html = base / "nginx/current/root/var/www/html"
        for name, size in FILES.items():
            (html / f"{name}.bin").write_bytes(os.urandom(size))
        subprocess.run([*enter, JAILKIT, "run", "nginx", "--root", str(base / "nginx"), "--name",
                        NAME, "--net", "veth", "--detach", "--publish", f"127.0.0.1:{PORT}:80"],
                       check=True, stdout=subprocess.DEVNULL)
        started = True
        row = next(r for r in json.loads(subprocess.run([JAILKIT, "ps", "--json"], check=True,
                                                        capture_output=True).stdout)
                   if r["name"] == NAME)
        targets = {"published": f"http://127.0.0.1:{PORT}", "direct": f"http://{row['address']}"}
        for measure in FILES:
            for url in targets.values():  # warm up both
                wrk(enter, f"{url}/{measure}.bin", 1, args.connections, measure)
            rates = {target: [] for target in targets}
            what = "requests/s" if measure == "page" else "MiB/s"
            scale = 1 if measure == "page" else 1 << 20
            print(f"nginx in a veth jail, {FILES[measure]} bytes a response, wrk -t2 "
                  f"-c{args.connections} -d{args.seconds}s, {args.rounds} interleaved rounds "
                  f"({what}):")
            for i in range(args.rounds):
                order = list(targets) if i % 2 == 0 else list(reversed(targets))
                for target in order:
                    rates[target].append(wrk(enter, f"{targets[target]}/{measure}.bin",
                                             args.seconds, args.connections, measure) / scale)
                print(f"  round {i + 1}: published {rates['published'][-1]:10.1f}   "
                      f"direct {rates['direct'][-1]:10.1f}   "
                      f"ratio {rates['published'][-1] / rates['direct'][-1]:.3f}")
            ratios = sorted(p / d for p, d in zip(rates["published"], rates["direct"],
                                                  strict=True))
            quartiles = statistics.quantiles(ratios, n=4)
            print(f"  ratio published/direct: {statistics.median(ratios):.3f}  (median of "
                  f"per-round ratios; quartiles {quartiles[0]:.3f}..{quartiles[2]:.3f}, range "
                  f"{ratios[0]:.3f}..{ratios[-1]:.3f})")
        print(f"resident memory after the load (PSS): relay {pss_kib(relay_of(row['pid']))} KiB, "
              f"waiter {pss_kib(row['pid'])} KiB")
    finally:
        if started:
            subprocess.run([JAILKIT, "stop", NAME], stdout=subprocess.DEVNULL)
            for log in (f"/run/jailkit/{NAME}.log", f"/run/jailkit/{NAME}.log.1"):
                if os.path.exists(log):
                    os.unlink(log)
        holder.kill()
        holder.wait()
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
