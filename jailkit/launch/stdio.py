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
  already does) and is no process's controlling terminal.
- On a terminal (interactive, stdin a terminal, in its foreground: `run -i -- /bin/sh`, `exec
  -i`), the pty stands in for the whole terminal, as `ssh -t` does: it gets the caller's modes
  in cooked form (echo, line editing, ^C and ^Z as signals) and window size before the jail
  starts, and becomes the controlling terminal of the service's own session (`own_session`);
  the waiter (--pty-terminal) puts the caller's terminal in raw mode, passes every key on as a
  byte, sets a new window size on the master at each SIGWINCH (the kernel then signals the
  jail's foreground group), and restores the caller's modes when the jail has exited. The
  service, not pid 1, is the session leader: ^C then signals the foreground group of the
  service's session (a shell's job, or the service), never pid 1, which keeps forwarding the
  host's signals and stays out of every session with a terminal.
  What the jail can do with its controlling terminal stays on its own side of the pty: TIOCSTI
  pushes bytes into the slave's own input queue, which only the jail's readers of that pty
  read (the master carries the jail's output alone), and TIOCSWINSZ or tcsetattr change the
  jail's pty, not the caller's terminal. The caller's terminal itself is held by the waiter
  only, outside the jail; no descriptor of it, and no process of the jail in its session, is
  ever in the jail.
- Pipes and files are passed as they are (stdin only when interactive).
- Detached (`run --detach`): stdin is /dev/null and stdout and stderr one pipe, whose lines the
  waiter (jailkit-reaper wait --log) writes to the jail's log file, timestamped and capped.
"""

import os


class Stdio:
    __slots__ = ("interactive", "terminal", "tty_fds", "null_stdin", "master", "slave", "null",
                 "detached", "log_r", "log_w")

    def __init__(self, interactive_flag: bool, detached: bool = False):
        self.detached = detached
        self.tty_fds = [] if detached else [fd for fd in (0, 1, 2) if os.isatty(fd)]
        self.interactive = not detached and (
            interactive_flag or (0 in self.tty_fds and _in_foreground()))
        if not self.interactive and 0 in self.tty_fds:
            self.tty_fds.remove(0)
        # in the foreground too: raw mode from the background would take the terminal from
        # the shell that runs there (the waiter blocks SIGTTOU, so the kernel would allow it)
        self.terminal = self.interactive and 0 in self.tty_fds and _in_foreground()
        self.null_stdin = not self.interactive
        self.master = self.slave = self.null = self.log_r = self.log_w = None

    def describe(self) -> str:
        if self.detached:
            return "stdin /dev/null, 1 and 2 to the jail's log file (detached)"
        text = "interactive" if self.interactive else "stdin /dev/null"
        if self.tty_fds:
            text += f", {' '.join(map(str, self.tty_fds))} on a pty relayed to the terminal"
        if self.terminal:
            text += (" (the service's controlling terminal, with the caller's window size; "
                     "the caller's terminal raw while the jail runs)")
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
            if self.terminal:
                import fcntl  # and own_session's ioctl, in the jail, finds it imported

                # the caller's modes (its erase and interrupt keys...), cooked whatever state
                # its terminal is in now: the jail's line discipline echoes, edits lines and
                # makes ^C and ^Z signals, while the waiter makes the caller's terminal raw
                attrs = termios.tcgetattr(0)
                attrs[3] |= termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN
                size = fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8))
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
            else:
                attrs = termios.tcgetattr(self.slave)
                attrs[3] &= ~(termios.ECHO | termios.ECHONL)  # the caller's terminal echoes
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

    def own_session(self) -> None:
        """In the service (or exec's command), after attach: on a terminal, a session of its
        own whose controlling terminal is the jail's pty, the service its leader and its
        process group the foreground one (a shell with job control then moves its jobs in
        and out of the foreground)."""
        if not self.terminal:
            return
        import fcntl  # imported by open(), before the jail's tree was entered
        import termios

        if os.getsid(0) != os.getpid():
            os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

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
        mode = "--pty-terminal" if self.terminal else (
            "--pty-interactive" if self.interactive else "--pty")
        return [mode, str(self.master)]


def _in_foreground() -> bool:
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False
