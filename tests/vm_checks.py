"""jailkit's cgroup v2 path on a kernel with cgroup v2 alone: run as root inside the VM of
tests/vm.py, by tests/test_debian_kernel.py, with one argument: a directory holding the jails
`a` (the `shell` profile, a service looping on sleep, and service_probe) and `b` (the same,
without the probe) that test built.

Each check prints one line, `jkvm-check: NAME ok [WHAT IT SAW]` or `jkvm-check: NAME FAIL WHY`,
and the checks run in this order: the first sees a hierarchy no jail has touched yet. Every
wait is bounded; every jail is stopped by its check (or, when it failed, right after it).
"""

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
UNIFIED = "/sys/fs/cgroup"
PROBE = "/usr/bin/service_probe"
MARK = "jkvm-check:"
LOOP = ["/bin/sh", "-c", "while :; do sleep 1; done"]
JAILS = ""  # sys.argv[1]


def jailkit(*args, timeout=120, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "jailkit", *map(str, args)], text=True,
                            capture_output=True, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert not check or result.returncode == 0, \
        f"jailkit {' '.join(map(str, args))}: {result.returncode}: {result.stderr.strip()}"
    return result


def start(name: str, *options, command=LOOP, jail="a", **kwargs) -> subprocess.CompletedProcess:
    return jailkit("run", "svc", "--root", f"{JAILS}/{jail}", "--name", name, "--detach",
                   *options, "--", *command, **kwargs)


def stop(name: str, *options) -> subprocess.CompletedProcess:
    return jailkit("stop", name, *options, check=False)


def group(name: str) -> str:
    return f"{UNIFIED}/jailkit/{name}"


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def fields(path: str) -> dict:
    return {k: int(v) for k, v in (line.split() for line in read(path).splitlines())}


def procs(name: str) -> list[int]:
    try:
        return [int(p) for p in read(f"{group(name)}/cgroup.procs").split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        return read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or while reading
        return False


def stats(name: str) -> dict:
    return json.loads(jailkit("stats", name, "--json").stdout)


def ps() -> dict:
    return {row["name"]: row for row in json.loads(jailkit("ps", "--json").stdout)}


def log(name: str) -> str:
    try:
        return read(f"/run/jailkit/{name}.log")
    except FileNotFoundError:
        return ""


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out ({seconds:.0f} s) waiting for {what}")


def stopped_and_gone(name: str) -> None:
    stopped = stop(name)
    assert stopped.returncode == 0, f"stop {name}: {stopped.stderr.strip()}"
    assert not os.path.exists(group(name)), f"{group(name)} is left after stop"


# --- the checks, in order ----------------------------------------------------------------


def kernel_has_cgroup_v2_alone():
    from jailkit.launch.cgroup import Host

    controllers = set(read(f"{UNIFIED}/cgroup.controllers").split())
    assert {"memory", "pids", "cpu", "io"} <= controllers, controllers
    v1 = [line for line in read("/proc/mounts").splitlines() if line.split()[2] == "cgroup"]
    assert not v1, v1
    assert Host().v2_only
    assert not os.path.exists(f"{UNIFIED}/jailkit"), "a jail ran before this check"


def accounting_without_limits():
    start("acct", "--set", "cgroup.memory_max=null", "--set", "cgroup.pids_max=null")
    delegated = set(read(f"{UNIFIED}/jailkit/cgroup.subtree_control").split())
    assert {"memory", "pids", "io"} <= delegated, f"jailkit/ delegates only {delegated}"
    counted = stats("acct")
    assert counted["limits"].get("memory_max") is None, counted["limits"]
    assert counted["memory_current"] and counted["memory_current"] > 0, counted
    assert counted["memory_peak"] and counted["memory_peak"] >= counted["memory_current"], counted
    assert counted["pids"] and counted["pids"] >= 2, counted
    assert counted["cpu_usec"] and counted["cpu_usec"] > 0, counted
    assert counted["oom_kills"] == 0, counted
    row = ps()["acct"]
    assert row["memory"] and row["memory"] > 0 and row["cpu_seconds"] is not None, row
    stopped_and_gone("acct")


def limits_are_written():
    start("lim", "--memory", "64M", "--pids", "32", "--cpu-weight", "400", "--cpu-quota", "50%",
          "--set", "cgroup.memory_high=48M")
    written = {f: read(f"{group('lim')}/{f}").strip() for f in
               ("memory.max", "memory.high", "memory.swap.max", "pids.max", "cpu.weight",
                "cpu.max")}
    assert written == {"memory.max": str(64 << 20), "memory.high": str(48 << 20),
                       "memory.swap.max": "0", "pids.max": "32", "cpu.weight": "400",
                       "cpu.max": "50000 100000"}, written
    assert ps()["lim"]["limits"] == {"memory_max": 64 << 20, "memory_high": 48 << 20,
                                     "pids_max": 32, "cpu_weight": 400, "cpu_quota": 50}


def the_jail_sees_its_cgroup_as_root():
    inside = jailkit("exec", "lim", "--", "/bin/cat", "/proc/self/cgroup").stdout.replace("\r", "")
    assert inside == "0::/\n", inside
    jail_pid = ps()["lim"]["jail_pid"]
    assert read(f"/proc/{jail_pid}/cgroup") == "0::/jailkit/lim\n"


def exec_joins_the_cgroup_and_stop_ends_it():
    command = [sys.executable, "-m", "jailkit", "exec", "lim", "--", "/bin/sleep", "321"]
    execed = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        def sleeper():
            for pid in procs("lim"):
                try:
                    if read(f"/proc/{pid}/cmdline") == "/bin/sleep\x00321\x00":
                        return pid
                except FileNotFoundError:
                    pass
            return None

        pid = wait_for(sleeper, 30, "the exec'd sleep in the jail's cgroup")
        assert read(f"/proc/{pid}/cgroup") == "0::/jailkit/lim\n"
        stopped_and_gone("lim")
        assert not alive(pid), "the exec'd process outlived stop"
        execed.wait(30)  # its waiter ends with it
    finally:
        if execed.poll() is None:
            execed.kill()
            execed.wait()


def a_memory_hog_is_oom_killed_and_counted():
    start("hog", "--memory", "64M",
          command=["/bin/sh", "-c", f"{PROBE} hog 400; echo hog ended $?; sleep 600"])
    wait_for(lambda: "hog ended" in log("hog"), 45, "the hog's end")
    assert "hog ended 137" in log("hog"), log("hog")  # SIGKILL by the OOM killer
    assert fields(f"{group('hog')}/memory.events")["oom_kill"] >= 1
    counted = stats("hog")
    assert counted["oom_kills"] >= 1 and counted["memory_peak"] <= 64 << 20, counted
    assert "oom kills" in jailkit("stats", "hog").stdout
    stopped_and_gone("hog")


def a_service_the_oom_killer_killed_says_so_in_its_log():
    start("oom", "--memory", "32M",
          command=["/bin/sh", "-c", f"echo hogging; sleep 1; exec {PROBE} hog 400"])
    wait_for(lambda: "oom" not in ps(), 45, "the hog's end")
    last = log("oom").splitlines()[-1]
    assert "killed by the kernel's OOM killer" in last, log("oom")
    assert not os.path.exists(group("oom"))


def a_fork_flood_stops_at_pids_max():
    flood = "sh -c 'i=0; while [ $i -lt 100 ]; do sleep 600 & i=$((i+1)); done'; " \
            "echo forked; exec sleep 600"
    start("flood", "--pids", "32", command=["/bin/sh", "-c", flood])
    wait_for(lambda: "forked" in log("flood"), 45, "the flood's end")
    assert "fork" in log("flood").lower().replace("forked", ""), log("flood")
    assert fields(f"{group('flood')}/pids.events")["max"] >= 1
    counted = stats("flood")
    assert 20 <= counted["pids"] <= 32, counted
    assert len(procs("flood")) <= 32
    stopped_and_gone("flood")


def stop_kills_a_daemon_that_double_forked():
    daemon = "(sh -c 'trap \"\" TERM HUP INT; while :; do sleep 1; done' &) ; " \
             "trap '' TERM; while :; do sleep 1; done"
    start("daemon", command=["/bin/sh", "-c", daemon])
    processes = wait_for(lambda: len(procs("daemon")) >= 5 and procs("daemon"), 30,
                         "the daemon's processes")
    stopped = stop("daemon", "--timeout", "1")
    assert stopped.returncode == 1 and "killed" in stopped.stderr, stopped.stderr
    assert not [p for p in processes if alive(p)], "a process outlived cgroup.kill"
    assert not os.path.exists(group("daemon"))


def a_killed_waiter_leaves_no_group_once_the_next_command_ran():
    for round_ in (1, 2):  # the second start reuses the name: no "File exists"
        start("orphan")
        processes = wait_for(lambda: len(procs("orphan")) >= 3 and procs("orphan"), 30,
                             "the jail's processes")
        waiter = ps()["orphan"]["pid"]
        os.kill(waiter, signal.SIGKILL)
        gone = [waiter, *processes]
        wait_for(lambda gone=gone: not [p for p in gone if alive(p)], 30, "the jail's death")
        assert os.path.exists(group("orphan"))  # the waiter did not live to remove it
        assert "orphan" not in ps(), round_  # the next command removes it
        assert not os.path.exists(group("orphan")), round_


def cpu_quota_throttles():
    start("quota", "--cpu-quota", "20%", command=["/bin/sh", "-c", "while :; do :; done"])
    time.sleep(1)
    before, begun = stats("quota")["cpu_usec"], time.monotonic()
    time.sleep(3)
    used = (stats("quota")["cpu_usec"] - before) / ((time.monotonic() - begun) * 1e6)
    throttled = fields(f"{group('quota')}/cpu.stat")
    assert throttled["nr_throttled"] > 0 and throttled["throttled_usec"] > 0, throttled
    assert 0.05 <= used <= 0.35, f"a busy loop under 20% used {used:.0%} of a CPU"
    stopped_and_gone("quota")
    return f"a busy loop used {used:.0%} of a CPU"


def cpu_weights_share_one_cpu_about_one_to_four():
    busy = ["/bin/sh", "-c", "while :; do :; done"]
    os.sched_setaffinity(0, {0})  # the jails inherit it: both on CPU 0
    try:
        start("light", "--cpu-weight", "100", command=busy)
        start("heavy", "--cpu-weight", "400", command=busy, jail="b")
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    time.sleep(1)
    before = {n: stats(n)["cpu_usec"] for n in ("light", "heavy")}
    time.sleep(4)
    used = {n: stats(n)["cpu_usec"] - before[n] for n in ("light", "heavy")}
    ratio = used["heavy"] / max(used["light"], 1)
    assert 2.5 <= ratio <= 6, (used, ratio)
    stopped_and_gone("light")
    stopped_and_gone("heavy")
    return f"CPU time 1:{ratio:.2f}"


def io_weight_is_refused_without_bfq_naming_the_fix():
    schedulers = read("/sys/block/vda/queue/scheduler")
    assert "[bfq]" not in schedulers, schedulers
    refused = start("io", "--io-weight", "200", check=False)
    assert refused.returncode != 0, refused.stdout
    lines = [line for line in refused.stderr.splitlines() if not line.startswith(
        "jailkit: warning:")]
    assert len(lines) == 1 and "bfq" in lines[0] and "--io-weight" in lines[0], refused.stderr
    assert "/sys/block/DISK/queue/scheduler" in lines[0], refused.stderr
    assert not os.path.exists(group("io"))


def io_weight_is_bfqs_weight_and_io_is_counted():
    with open("/sys/block/vda/queue/scheduler", "w") as f:
        f.write("bfq")
    start("io", "--io-weight", "200")
    weights = read(f"{group('io')}/io.bfq.weight")
    assert weights.startswith("default 200"), weights
    # the jail's reads of its own files, from the disk (not the page cache), are its I/O
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    jailkit("exec", "io", "--", "/bin/sh", "-c", "cat /usr/bin/* /usr/lib/*/* >/dev/null 2>&1; :")
    counted = stats("io")
    assert counted["io_read_bytes"] and counted["io_read_bytes"] > 100_000, counted
    stopped_and_gone("io")
    return f"{counted['io_read_bytes']} bytes read"


CHECKS = [kernel_has_cgroup_v2_alone, accounting_without_limits, limits_are_written,
          the_jail_sees_its_cgroup_as_root, exec_joins_the_cgroup_and_stop_ends_it,
          a_memory_hog_is_oom_killed_and_counted,
          a_service_the_oom_killer_killed_says_so_in_its_log, a_fork_flood_stops_at_pids_max,
          stop_kills_a_daemon_that_double_forked,
          a_killed_waiter_leaves_no_group_once_the_next_command_ran, cpu_quota_throttles,
          cpu_weights_share_one_cpu_about_one_to_four,
          io_weight_is_refused_without_bfq_naming_the_fix,
          io_weight_is_bfqs_weight_and_io_is_counted]


def run(checks, jails: str, after_failure) -> int:
    """Run each check, one console line each (MARK NAME ok|FAIL ...); `after_failure()` after
    a check failed (what it left would fail the next ones, or the console should show why)."""
    global JAILS
    JAILS = jails
    failed = 0
    for check in checks:
        begun = time.monotonic()
        try:
            outcome = " ".join(filter(None, ["ok", check()]))  # a check may say what it saw
        except Exception as e:  # noqa: BLE001 - every failure is this check's report
            failed += 1
            why = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
            outcome = "FAIL " + " | ".join(why.strip().splitlines() or [repr(e)])
            after_failure()
        print(f"{MARK} {check.__name__} {outcome} ({time.monotonic() - begun:.1f} s)",
              flush=True)
    return 1 if failed else 0


def stop_every_jail() -> None:
    for name in ps():
        stop(name)


def main() -> int:
    return run(CHECKS, sys.argv[1], stop_every_jail)


if __name__ == "__main__":
    sys.exit(main())
