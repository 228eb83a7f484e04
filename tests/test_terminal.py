"""`jailkit run` and `jailkit exec` on the user's terminal, as `ssh -t` and `podman exec -it`:
the user's terminal raw while the jail runs and exactly restored after it, the jail's pty
with the terminal's size and each resize, and the jail's own line discipline turning ^C into a
signal for the jail's foreground command (a shell's job), not for the jail.

The user's terminal is a pty the test makes; jailkit runs in a session of its own whose
controlling terminal that pty is, in its foreground, as from a login shell.
"""

import fcntl
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import pytest
from conftest import (
    NOBODY,
    PROBE,
    REPO,
    as_nobody,
    descendants,
    jailkit_env,
    run_jailkit,
    stop,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("as_root")

PREFIX = "y"  # names of this module's jails: PREFIX, the session's pid, a word
ROWS, COLS = 31, 97
PROMPT = b"# "  # dash's, as the jail's root


def comms(pid: int) -> list[str]:
    """The command names of every process below `pid`."""
    names = []
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass  # ended meanwhile
    return names


class UserTerminal:
    """A pty of the test's standing for the user's terminal, with modes of its own that differ
    from a new pty's (so that "restored" cannot mean "reset to the defaults")."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.resize(ROWS, COLS)
        attrs = termios.tcgetattr(self.slave)
        attrs[3] &= ~termios.ECHOCTL
        attrs[6][termios.VERASE] = b"\x08"
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.modes = termios.tcgetattr(self.slave)
        self.shown = b""
        self.seen = 0  # what expect() has matched so far
        self.proc = None

    def start(self, *args, env=None, as_user=lambda: None) -> None:
        """`jailkit ARGS` in the terminal's foreground: a session whose controlling terminal it
        is."""
        def session():
            as_user()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jailkit", *map(str, args)], env=env or jailkit_env(),
            stdin=self.slave, stdout=self.slave, stderr=self.slave, start_new_session=True,
            preexec_fn=session, cwd="/")

    def current_modes(self) -> list:
        return termios.tcgetattr(self.slave)

    def is_raw(self) -> bool:
        lflag = self.current_modes()[3]
        return not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)

    def resize(self, rows: int, cols: int) -> None:
        """As a terminal emulator does: the kernel then signals the foreground group."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, text: bytes, seconds: float = 20) -> None:
        """Read what the terminal shows until `text` appears after the last one expected."""
        deadline = time.monotonic() + seconds
        while (found := self.shown.find(text, self.seen)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not shown; the terminal showed {self.shown!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 1))
            if ready:
                self.shown += os.read(self.master, 4096)
        self.seen = found + len(text)

    def wait(self, seconds: float = 20) -> int:
        """The exit status, reading what the terminal shows meanwhile (a full pty would block
        the waiter)."""
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                self.shown += os.read(self.master, 4096)
        return self.proc.wait(1)

    def close(self) -> None:
        if self.proc:
            stop(self.proc)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal():
    term = UserTerminal()
    yield term
    term.close()


def check_raw_then_restored(terminal: UserTerminal, status: int) -> None:
    assert terminal.wait() == status, terminal.shown
    assert terminal.current_modes() == terminal.modes  # exactly, control characters too


def interrupt_a_command_and_go_on(terminal: UserTerminal, shell_pid: int) -> None:
    """In the jail's interactive shell: ^C ends the sleep it runs, not the shell."""
    terminal.type(b"sleep 30\r")
    wait_for(lambda: "sleep" in comms(shell_pid), what="the shell's sleep")
    terminal.type(b"\x03")  # ^C, a byte in the raw terminal; the jail's pty makes it SIGINT
    wait_for(lambda: "sleep" not in comms(shell_pid), what="^C to end the sleep")
    terminal.expect(PROMPT)
    terminal.type(b'echo al""ive\r')  # the echo of what was typed is not "alive"
    terminal.expect(b"\nalive\r\n")
    with open(f"/proc/{shell_pid}/comm") as f:
        assert f.read() == "sh\n"  # the same shell


# --- jailkit run ---------------------------------------------------------------------------


def test_the_jail_sees_the_terminals_size_and_each_resize(jail, terminal):
    terminal.start("run", "-i", "shell", "--root", jail, "--", PROBE, "winsize", "wait")
    terminal.expect(f"winsize {ROWS} {COLS}\r\n".encode())
    assert terminal.is_raw()  # while the jail runs, every key goes to it as it is
    terminal.resize(45, 120)
    terminal.expect(b"resized 45 120\r\n")  # the new size, and a SIGWINCH that said so
    check_raw_then_restored(terminal, 0)


def test_ctrl_c_interrupts_the_shells_command_and_the_shell_goes_on(jail, terminal):
    terminal.start("run", "-i", "shell", "--root", jail, "--", "/bin/sh")
    terminal.expect(PROMPT)
    assert terminal.is_raw()
    jail_pid = int(direct_child(terminal.proc.pid))
    shell = int(direct_child(jail_pid))
    interrupt_a_command_and_go_on(terminal, shell)
    terminal.type(b"exit\r")
    check_raw_then_restored(terminal, 0)


def direct_child(pid: int) -> str:
    def only_child():
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
        return children[0] if len(children) == 1 else None
    return wait_for(only_child, what=f"the child of {pid}")


def test_the_service_leads_the_session_of_its_terminal_and_pid_1_has_none(jail, terminal):
    terminal.start("run", "-i", "shell", "--root", jail, "--", "/bin/sh")
    terminal.expect(PROMPT)
    # the jail's pid 1 and the shell, seen from the host: field 7 of stat is tty_nr
    jail_pid = int(direct_child(terminal.proc.pid))
    shell = int(direct_child(jail_pid))
    stat = {pid: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            for pid in (jail_pid, shell)}
    assert stat[jail_pid][4] == "0"  # pid 1: no controlling terminal
    pgrp, session, tty = int(stat[shell][2]), int(stat[shell][3]), int(stat[shell][4])
    assert session == shell and pgrp == shell and tty != 0
    assert tty != os.fstat(terminal.slave).st_rdev  # its own pty, not the user's terminal
    terminal.type(b"exit\r")
    check_raw_then_restored(terminal, 0)


@pytest.mark.parametrize("how", ["SIGTERM to jailkit", "SIGHUP to jailkit",
                                 "SIGKILL to the jail's pid 1"])
def test_the_terminal_is_restored_when_the_jail_is_stopped_by_a_signal(jail, terminal, how):
    terminal.start("run", "-i", "shell", "--root", jail, "--", "/bin/sleep", "600")
    wait_for(lambda: "sleep" in comms(terminal.proc.pid), what="the jail's sleep")
    wait_for(terminal.is_raw, what="the terminal to be raw")
    sig = getattr(signal, how.split()[0])
    target = terminal.proc.pid if "jailkit" in how else int(direct_child(terminal.proc.pid))
    os.kill(target, sig)
    check_raw_then_restored(terminal, 128 + sig)


@pytest.fixture(scope="module")
def nobodys_jail(world_readable_checkout):
    """A `shell` jail user nobody built for itself (a jail directory is its owner's alone), with
    the probe, and how nobody runs jailkit (the world-readable copy of the package)."""
    base = Path(tempfile.mkdtemp(prefix="jailkit-terminal-nobody-"))
    os.chown(base, NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(world_readable_checkout),
           "HOME": "/nonexistent"}
    try:
        built = subprocess.run([sys.executable, "-m", "jailkit", "build", "shell", "--root",
                                base / "shell"], env=env, text=True, capture_output=True,
                               preexec_fn=as_nobody, timeout=120, cwd="/")
        assert built.returncode == 0, built.stderr
        probe = base / "shell/current/root" / PROBE.lstrip("/")
        subprocess.run(["gcc", "-static", "-O1", "-o", probe, REPO / "tests/launch_probe.c"],
                       check=True, capture_output=True)
        os.chown(probe, NOBODY, NOBODY)
        yield base / "shell", env
    finally:
        shutil.rmtree(base)


def test_an_ordinary_users_jail_gets_the_terminal_too(nobodys_jail, terminal):
    jail, env = nobodys_jail
    os.fchown(terminal.slave, NOBODY, NOBODY)  # the user's own terminal, as after a login
    terminal.start("run", "shell", "--root", jail, "--", "/bin/sh", env=env, as_user=as_nobody)
    terminal.expect(PROMPT)  # the jail's root, which is nobody outside
    assert terminal.is_raw()
    shell = int(direct_child(int(direct_child(terminal.proc.pid))))
    terminal.type(f"{PROBE} winsize\r".encode())
    terminal.expect(f"winsize {ROWS} {COLS}\r\n".encode())
    interrupt_a_command_and_go_on(terminal, shell)
    terminal.type(b"exit\r")
    check_raw_then_restored(terminal, 0)


# --- jailkit exec -i -----------------------------------------------------------------------


def test_exec_i_gets_the_terminal_as_run_does(jail, names, terminal):
    name = names("term")
    started = run_jailkit("run", "shell", "--root", jail, "--name", name, "--detach", "--",
                          "/bin/sh", "-c", "while :; do sleep 1; done", timeout=60)
    assert started.returncode == 0, started.stderr
    terminal.start("exec", name, "-i", "--", "/bin/sh")
    terminal.expect(PROMPT)
    assert terminal.is_raw()
    shell = int(direct_child(terminal.proc.pid))  # below the waiter, outside the pid namespace
    terminal.type(f"{PROBE} winsize wait\r".encode())
    terminal.expect(f"winsize {ROWS} {COLS}\r\n".encode())
    terminal.resize(45, 120)  # the shell's job, the probe, is the pty's foreground group
    terminal.expect(b"resized 45 120\r\n")
    terminal.expect(PROMPT)
    interrupt_a_command_and_go_on(terminal, shell)
    terminal.type(b"exit 3\r")
    check_raw_then_restored(terminal, 3)
    assert run_jailkit("stop", name, timeout=30).returncode == 0
