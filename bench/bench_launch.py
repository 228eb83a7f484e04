"""`jailkit run` against bubblewrap, measured in the same run (run as root).

1. Start-up: `jailkit run shell -- /bin/true` versus `bwrap` with the same root and namespaces
   (user, mount, pid, ipc, uts; read-only root, /proc, /dev, tmpfs /tmp), runs interleaved;
   `python3 -c pass` is printed for scale. Goal: jailkit <= 4x bwrap.
2. Memory: PSS of the launcher's own resident processes per jail, 20 jails running `sleep`
   (jailkit: the waiter and the pid-1 reaper; bwrap: its two processes). Goal: <= 0.5 MB.

Usage: /opt/jailkit/bin/python bench/bench_launch.py [--runs N] [--jails N]
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JAILKIT = [os.path.join(sys.prefix, "bin", "jailkit")]


def bwrap(root: Path, *command: str) -> list[str]:
    return ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--ro-bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", *command]


def jailkit(jail: Path, *command: str, sets=()) -> list[str]:
    options = [arg for key_value in sets for arg in ("--set", key_value)]
    return [*JAILKIT, "run", "shell", "--root", str(jail), *options, "--", *command]


# bwrap sets no resource limits; root's jails have default cgroup limits, and on cgroup v1 the
# first move into a cgroup waits for an RCU grace period: both are shown
NO_CGROUP_LIMITS = ("cgroup.memory_max=null", "cgroup.pids_max=null")


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def startup(jail: Path, root: Path, runs: int) -> None:
    contenders = {
        "bwrap": bwrap(root, "/bin/true"),
        "jailkit run": jailkit(jail, "/bin/true"),
        "jailkit run, no cgroup limits": jailkit(jail, "/bin/true", sets=NO_CGROUP_LIMITS),
        "python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
    }
    for argv in contenders.values():  # warm caches
        time_once(argv)
    times = {name: [] for name in contenders}
    for _ in range(runs):
        for name, argv in contenders.items():
            times[name].append(time_once(argv))
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    # the fastest run: what each costs itself, least disturbed by the others on a shared machine
    best = {name: min(t) * 1000 for name, t in times.items()}
    print(f"start-up of /bin/true, {runs} interleaved runs each (median, fastest):")
    for name in times:
        print(f"  {name:30} {median[name]:6.1f} ms {best[name]:6.1f} ms")
    for name in ("jailkit run", "jailkit run, no cgroup limits"):
        print(f"  ratio {name}/bwrap: {median[name] / median['bwrap']:.2f} (median), "
              f"{best[name] / best['bwrap']:.2f} (fastest)  (goal <= 4)")


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except FileNotFoundError:
        pass
    return found


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children(current)
    return out


def exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def resident(argvs: list[list[str]], is_own, label: str) -> float:
    """Start the jails, sum the PSS of their launcher processes, stop them (by pid)."""
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL) for a in argvs]
    try:
        deadline = time.monotonic() + 30
        while True:
            trees = [tree(p.pid) for p in procs]
            # ready: each tree holds the launcher's processes and, under them, `sleep`
            if all(any(exe(pid) == "/usr/bin/sleep" for pid in t) for t in trees):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: jails did not start")
            time.sleep(0.05)
        own = [pid for t in trees for pid in t if is_own(pid)]
        total = sum(pss_kb(pid) for pid in own)
        per_jail = total / len(procs) / 1024
        print(f"  {label:12} {per_jail:5.2f} MB per jail ({len(own)} processes, "
              f"{total / 1024:.1f} MB for {len(procs)} jails)")
        return per_jail
    finally:
        for p in procs:
            for pid in reversed(tree(p.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in procs:
            p.wait()


def memory(jail: Path, root: Path, jails: int) -> None:
    print(f"resident memory (PSS) of the launcher's own processes, {jails} jails running sleep:")
    base = resident([bwrap(root, "/bin/sleep", "600")] * jails,
                    lambda pid: exe(pid) == "/usr/bin/bwrap", "bwrap")
    # one running instance per jail directory: a copy of the jail for each
    copies = []
    for n in range(jails):
        copies.append(jail.parent / f"copy{n}")
        subprocess.run(["cp", "-a", str(jail), str(copies[-1])], check=True)
    own = resident([jailkit(copy, "/bin/sleep", "600") for copy in copies],
                   # the waiter, and pid 1: "/memfd:jailkit-reaper (deleted)", its sealed copy
                   lambda pid: "jailkit-reaper" in exe(pid), "jailkit run")
    print(f"  ratio jailkit/bwrap: {own / base:.2f}  (goal: jailkit <= 0.5 MB per jail)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--jails", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the jails are compared as root launches them)")
    # as installed (.ci/setup): the launch path from bytecode, even under PYTHONDONTWRITEBYTECODE
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "jailkit")], check=True)
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        jail = Path(tmp) / "shell"
        subprocess.run([*JAILKIT, "build", "shell", "--root", str(jail)], check=True,
                       stdout=subprocess.DEVNULL)
        root = jail / "current" / "root"
        startup(jail, root, args.runs)
        memory(jail, root, args.jails)


if __name__ == "__main__":
    main()
