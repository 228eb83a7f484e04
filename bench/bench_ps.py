"""Running jails as services (run as root): `jailkit ps` with many jails, and their memory.

1. 50 detached jails (`jailkit run --detach`, each a copy of one `shell` jail running `sleep`);
   `jailkit ps` and `jailkit ps --json` timed with all of them running (median of 10 runs),
   runs interleaved with the anchor: procps' `ps` listing every process with its elapsed time,
   memory and CPU time (what an administrator reads without jailkit); `python3 -c pass` for
   scale.
2. Resident memory (PSS) of jailkit's own processes per running jail: the waiter and the
   jail's pid 1 (both jailkit-reaper). Goal: <= 0.5 MB per jail.
All jails are stopped with `jailkit stop` at the end.

Usage: /opt/jailkit/bin/python bench/bench_ps.py [--jails N] [--runs N]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JAILKIT = [os.path.join(sys.prefix, "bin", "jailkit")]
PREFIX = f"bench{os.getpid()}-"


def jailkit(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*JAILKIT, *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kwargs)


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


ANCHOR = ["ps", "-eo", "pid,etimes,rss,cputimes,args"]


def timed(commands: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float]]:
    """(median, fastest) ms of each command, the commands' runs interleaved."""
    times = {label: [] for label in commands}
    for _ in range(runs):
        for label, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            times[label].append(time.perf_counter() - start)
    return {label: (statistics.median(t) * 1000, min(t) * 1000) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jails", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (cgroups, as root's jails have them)")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "jailkit")], check=True)
    names = []
    with tempfile.TemporaryDirectory(prefix="bench-ps-") as tmp:
        jail = Path(tmp) / "shell"
        jailkit("build", "shell", "--root", jail, check=True)
        try:
            for n in range(args.jails):
                copy = Path(tmp) / f"copy{n}"
                subprocess.run(["cp", "-a", str(jail), str(copy)], check=True)
                names.append(f"{PREFIX}{n}")
                started = jailkit("run", "shell", "--root", copy, "--name", names[-1],
                                  "--detach", "--", "/bin/sleep", "3600")
                if started.returncode != 0:
                    raise SystemExit(f"jail {n} did not start: {started.stderr}")
            rows = [r for r in json.loads(jailkit("ps", "--json", check=True).stdout)
                    if r["name"].startswith(PREFIX)]
            assert len(rows) == args.jails, len(rows)
            print(f"jailkit ps with {args.jails} running jails ({args.runs} runs, median, "
                  "fastest):")
            results = timed({"jailkit ps": [*JAILKIT, "ps"],
                             "jailkit ps --json": [*JAILKIT, "ps", "--json"],
                             "procps ps -eo ...": ANCHOR,
                             "python3 -c pass": [sys.executable, "-c", "pass"]}, args.runs)
            for label, (median, best) in results.items():
                print(f"  {label:18} {median:7.1f} ms {best:7.1f} ms")
            anchor = results["procps ps -eo ..."][0]
            print(f"  ratio jailkit ps/procps ps: {results['jailkit ps'][0] / anchor:.2f} (median)")
            waiters = sum(pss_kb(r["pid"]) for r in rows)
            pid1s = sum(pss_kb(r["jail_pid"]) for r in rows if r["jail_pid"])
            total = waiters + pid1s
            print(f"resident memory (PSS) of jailkit's own processes: "
                  f"{total / len(rows) / 1024:.2f} MB per jail (goal <= 0.5 MB): waiter "
                  f"{waiters / len(rows) / 1024:.2f} MB, pid 1 {pid1s / len(rows) / 1024:.2f} MB "
                  f"(run from its own sealed memory copy of the reaper, shared with no other "
                  f"jail); {total / 1024:.1f} MB for {len(rows)} jails")
        finally:
            for name in names:
                jailkit("stop", name, "--timeout", "5")
            for name in names:  # logs are kept for `jailkit logs`; the bench's are its own
                for suffix in (".log", ".log.1"):
                    try:
                        os.unlink(f"/run/jailkit/{name}{suffix}")
                    except FileNotFoundError:
                        pass


if __name__ == "__main__":
    main()
