"""What the jail gets as stdin, stdout and stderr: never the caller's terminal itself.

A jail started in the background must not read the caller's terminal (its input is what the
caller types to the shell), and a host terminal descriptor inside the jail is a channel to it
(ioctls on it reach the caller's line discipline, window size, modes). So:

- The run is interactive when stdin is a terminal and `jailkit run` is in that terminal's
  foreground process group (started in the foreground), or when `--interactive`/`-i` says so.
  Otherwise stdin is /dev/null.
- Every one of 0-2 that is a terminal is replaced by the slave of a new pty; the waiter
  (jailkit-reaper wait --pty) relays the jail's output to the caller's terminal and, when
  interactive, the caller's input to the jail. The slave echoes nothing (the caller's terminal
  already does) and keeps no controlling terminal (the jail is its own session).
- Pipes and files are passed as they are (stdin only when interactive).
- Detached (`run --detach`): stdin is /dev/null and stdout and stderr one pipe, whose lines the
  waiter (jailkit-reaper wait --log) writes to the jail's log file, timestamped and capped.
"""

import os


class Stdio:
    __slots__ = ("interactive", "tty_fds", "null_stdin", "master", "slave", "null", "detached",
                 "log_r", "log_w")

    def __init__(self, interactive_flag: bool, detached: bool = False):
        self.detached = detached
        self.tty_fds = [] if detached else [fd for fd in (0, 1, 2) if os.isatty(fd)]
        self.interactive = not detached and (
            interactive_flag or (0 in self.tty_fds and _in_foreground()))
        if not self.interactive and 0 in self.tty_fds:
            self.tty_fds.remove(0)
        self.null_stdin = not self.interactive
        self.master = self.slave = self.null = self.log_r = self.log_w = None

    def describe(self) -> str:
        if self.detached:
            return "stdin /dev/null, 1 and 2 to the jail's log file (detached)"
        text = "interactive" if self.interactive else "stdin /dev/null"
        if self.tty_fds:
            text += f", {' '.join(map(str, self.tty_fds))} on a pty relayed to the terminal"
        return text

    def open(self) -> None:
        """In the launcher, before the clone: the descriptors the jail and the waiter take."""
        if self.null_stdin:
            self.null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        if self.detached:
            self.log_r, self.log_w = os.pipe()  # both close-on-exec
        if self.tty_fds:
            import termios  # only for a run on a terminal

            self.master, self.slave = os.openpty()  # both close-on-exec
            attrs = termios.tcgetattr(self.slave)
            attrs[3] &= ~(termios.ECHO | termios.ECHONL)  # lflag: the caller's terminal echoes
            termios.tcsetattr(self.slave, termios.TCSANOW, attrs)

    def attach(self) -> None:
        """In the jail: the pty slave and /dev/null in place of the caller's descriptors."""
        for fd in self.tty_fds:
            os.dup2(self.slave, fd)
        if self.null_stdin:
            os.dup2(self.null, 0)
        if self.log_w is not None:
            os.dup2(self.log_w, 1)
            os.dup2(self.log_w, 2)

    def waiter_args(self) -> list[str]:
        """In the launcher, after the clone: what the waiter relays (it keeps the master, or
        the log pipe's read end)."""
        if self.log_w is not None:
            os.close(self.log_w)
            os.set_inheritable(self.log_r, True)
            return ["--log", str(self.log_r)]
        if self.slave is not None:
            os.close(self.slave)
        if self.master is None:
            return []
        os.set_inheritable(self.master, True)
        return ["--pty-interactive" if self.interactive else "--pty", str(self.master)]


def _in_foreground() -> bool:
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False
