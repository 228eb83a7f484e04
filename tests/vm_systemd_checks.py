"""`jailkit unit` under a real systemd: run as root inside the VM of tests/vm.py booted with
the host's systemd 252 as pid 1 (vm.run(systemd=True)), by tests/test_debian_kernel.py, with
one argument: the directory holding the jail `a` of vm_checks.py (the `shell` profile, with
service_probe), and `b` (the same, without it).

The unit `jailkit unit` prints for that jail, serving service_probe on 127.0.0.1:PORT, is
installed, started, killed, restarted and stopped with systemctl. Each check prints one line as
vm_checks.py's do, in this order (each builds on the one before); the last stops the unit
whatever happened.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import vm_checks
from vm_checks import UNIFIED, alive, jailkit, ps, read, stats, wait_for

MARK = vm_checks.MARK
NAME = "web"
UNIT = f"jailkit-{NAME}.service"
PORT = 8080
JAILS = ""  # sys.argv[1]


def systemctl(*args, check=True) -> str:
    result = subprocess.run(["systemctl", *args], text=True, capture_output=True, timeout=120)
    assert not check or result.returncode == 0, \
        f"systemctl {' '.join(args)}: {result.returncode}: {result.stderr.strip()}"
    return result.stdout.strip()


def show(prop: str) -> str:
    return systemctl("show", "-p", prop, "--value", UNIT)


def unit_group() -> str:
    return UNIFIED + show("ControlGroup")


def answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=2):
            return True
    except OSError:
        return False


def jail_group() -> str:
    """Where the registry says the jail's cgroup is."""
    with open(f"/run/jailkit/{NAME}.json") as f:
        return json.load(f)["cgroups"][0]


def service_pid() -> int:
    """The host's pid of service_probe, the service the jail's pid 1 runs."""
    for pid in map(int, read(f"{jail_group()}/cgroup.procs").split()):
        try:
            if read(f"/proc/{pid}/cmdline").startswith("/usr/bin/service_probe\0"):
                return pid
        except FileNotFoundError:
            pass
    raise AssertionError(f"no service_probe in {jail_group()}")


# --- the checks, in order ----------------------------------------------------------------


def systemd_is_pid_1_and_starts_the_unit():
    assert read("/proc/1/comm") == "systemd\n", read("/proc/1/comm")
    made = jailkit("unit", "svc", "--root", f"{JAILS}/a", "--name", NAME, "--", "--net", "host",
                   "--", "/usr/bin/service_probe", "listen", str(PORT), "0")
    assert "Delegate=yes" in made.stdout, made.stdout
    with open(f"/etc/systemd/system/{UNIT}", "w") as f:
        f.write(made.stdout)
    systemctl("daemon-reload")
    systemctl("start", UNIT)
    wait_for(answers, 30, f"the service on 127.0.0.1:{PORT}")
    assert systemctl("is-active", UNIT) == "active"
    assert NAME in ps(), ps()
    return f"systemd {systemctl('--version').split()[1]}"


def the_jail_is_in_the_units_cgroup():
    group = unit_group()
    assert group == f"{UNIFIED}/system.slice/{UNIT}", group
    # what jailkit reads as delegated
    assert os.getxattr(group, "trusted.delegate") == b"1", os.listxattr(group)
    assert jail_group() == f"{group}/jailkit/{NAME}", f"the registry says {jail_group()}"
    row = ps()[NAME]
    main = int(show("MainPID"))
    assert main == row["pid"], (main, row)  # `jailkit run` became the waiter: the main process
    waiter = read(f"/proc/{main}/cgroup")
    assert waiter == f"0::/system.slice/{UNIT}/supervisor\n", f"the waiter is in {waiter}"
    inside = f"0::/system.slice/{UNIT}/jailkit/{NAME}\n"
    for pid in (row["jail_pid"], service_pid()):
        assert read(f"/proc/{pid}/cgroup") == inside, f"{pid} is in {read(f'/proc/{pid}/cgroup')}"
    assert not read(f"{group}/cgroup.procs").strip(), "processes left in the unit's own group"
    delegated = set(read(f"{group}/cgroup.subtree_control").split())
    assert {"memory", "pids"} <= delegated, f"the unit's group delegates {delegated}"
    assert not os.path.exists(f"{UNIFIED}/jailkit"), "a group at the hierarchy's top"
    tree = subprocess.run(["systemd-cgls", "--no-pager", "-u", UNIT], text=True,
                          capture_output=True, timeout=60).stdout
    assert "service_probe" in tree, tree
    return f"jail in {inside.strip()[3:]}"


def the_units_accounting_covers_the_jail():
    jail_memory = int(read(f"{jail_group()}/memory.current"))
    unit_memory = int(show("MemoryCurrent"))
    assert 0 < jail_memory <= unit_memory, f"jail {jail_memory} bytes, unit {unit_memory}"
    assert stats(NAME)["memory_current"] > 0, stats(NAME)
    tasks = int(show("TasksCurrent"))
    assert tasks >= 3, tasks  # the waiter, the jail's pid 1, service_probe
    return f"unit {unit_memory} bytes, of which the jail {jail_memory}"


def a_killed_service_is_restarted():
    old_main, old_service = int(show("MainPID")), service_pid()
    os.kill(old_service, signal.SIGKILL)
    wait_for(lambda: int(show("MainPID")) not in (0, old_main) and answers(), 60,
             "the restarted service")
    assert systemctl("is-active", UNIT) == "active"
    assert show("NRestarts") == "1", f"NRestarts={show('NRestarts')}"
    assert not alive(old_service) and not alive(old_main), "the old service or waiter lives"
    assert service_pid() != old_service
    assert ps()[NAME]["pid"] == int(show("MainPID")), (ps(), show("MainPID"))


def systemctl_kill_ends_the_whole_jail():
    old = [int(p) for p in read(f"{jail_group()}/cgroup.procs").split()]
    systemctl("kill", "--signal=SIGKILL", UNIT)
    wait_for(lambda: not [p for p in old if alive(p)], 30, "the jail's processes' end")
    wait_for(lambda: show("NRestarts") == "2" and answers(), 60, "the second restart")
    assert list(ps()) == [NAME], ps()


def systemctl_stop_leaves_nothing():
    group, processes = unit_group(), [int(p) for p in read(f"{jail_group()}/cgroup.procs").split()]
    systemctl("stop", UNIT)
    state = systemctl("is-active", UNIT, check=False)
    assert state == "inactive", f"{UNIT} is {state} after stop"
    assert not [p for p in processes if alive(p)], "a jail process outlived stop"
    assert not answers(), "the service answers after stop"
    assert not os.path.exists(group), f"{group} is left"
    assert not os.path.exists(f"{UNIFIED}/jailkit"), f"{UNIFIED}/jailkit is left"
    assert ps() == {}, ps()
    assert not os.path.exists(f"/run/jailkit/{NAME}.json"), "its registry entry is left"


def a_service_that_ignores_sigterm_is_killed_at_the_stop_timeout():
    unit = "jailkit-deaf.service"
    made = jailkit("unit", "svc", "--root", f"{JAILS}/a", "--name", "deaf", "--stop-timeout",
                   "1", "--", "--", "/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done")
    with open(f"/etc/systemd/system/{unit}", "w") as f:
        f.write(made.stdout)
    systemctl("daemon-reload")
    systemctl("start", unit)
    try:
        wait_for(lambda: "deaf" in ps(), 30, "the jail")
        group = f"{UNIFIED}/system.slice/{unit}"
        processes = [int(p) for p in read(f"{group}/jailkit/deaf/cgroup.procs").split()]
        begun = time.monotonic()
        systemctl("stop", unit)
        took = time.monotonic() - begun
    finally:
        subprocess.run(["systemctl", "stop", unit], capture_output=True, timeout=120)
    assert not [p for p in processes if alive(p)], "a process outlived the stop timeout"
    assert not os.path.exists(group), f"{group} is left"
    assert ps() == {}, ps()
    # a stop that had to kill is a failure to systemd, as its own SIGKILL at TimeoutStopSec is
    return f"stopped in {took:.1f} s, then {systemctl('is-active', unit, check=False)}"


def two_jails_of_one_delegated_unit_are_side_by_side():
    """The second jail's launcher starts in UNIT/supervisor, where the first one moved the
    unit's processes: it finds the delegated group above it."""
    unit = "pair.service"
    start = " && ".join(
        f"{sys.executable} -m jailkit run svc --root {JAILS}/{jail} --name {jail}{jail} --detach "
        "-- /bin/sh -c 'while :; do sleep 1; done'" for jail in ("a", "b"))
    subprocess.run(["systemd-run", f"--unit={unit}", "-p", "Delegate=yes", "-p", "Type=oneshot",
                    "-p", "RemainAfterExit=yes", f"--setenv=PYTHONPATH={vm_checks.REPO}",
                    "/bin/sh", "-c", start], check=True, capture_output=True, timeout=120)
    try:
        group = f"{UNIFIED}/system.slice/{unit}"
        rows = ps()
        assert set(rows) == {"aa", "bb"}, rows
        for name, row in rows.items():
            jail = read(f"/proc/{row['jail_pid']}/cgroup")
            assert jail == f"0::/system.slice/{unit}/jailkit/{name}\n", f"{name} is in {jail}"
            waiter = read(f"/proc/{row['pid']}/cgroup")
            assert waiter == f"0::/system.slice/{unit}/supervisor\n", f"{name}'s waiter: {waiter}"
        for name in rows:
            assert jailkit("stop", name).returncode == 0
            assert not os.path.exists(f"{group}/jailkit/{name}"), f"{name}'s group is left"
    finally:
        subprocess.run(["systemctl", "stop", unit], capture_output=True, timeout=120)
    assert not os.path.exists(group), f"{group} is left"
    assert ps() == {}, ps()


CHECKS = [systemd_is_pid_1_and_starts_the_unit, the_jail_is_in_the_units_cgroup,
          the_units_accounting_covers_the_jail, a_killed_service_is_restarted,
          systemctl_kill_ends_the_whole_jail, systemctl_stop_leaves_nothing,
          a_service_that_ignores_sigterm_is_killed_at_the_stop_timeout,
          two_jails_of_one_delegated_unit_are_side_by_side]


def show_status() -> None:
    """For the console: what systemd saw (no journal here: its last lines are lost)."""
    print(systemctl("status", "--no-pager", "--full", UNIT, check=False), flush=True)


def main() -> int:
    global JAILS
    JAILS = sys.argv[1]
    try:
        return vm_checks.run(CHECKS, JAILS, show_status)
    finally:
        subprocess.run(["systemctl", "stop", UNIT], capture_output=True, timeout=120)


if __name__ == "__main__":
    sys.exit(main())
