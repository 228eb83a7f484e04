"""The words a profile and launch.json share, defined once for the builder and the launcher.

On the `jailkit run` path: it imports `os` only (start-up is benchmarked), so no `re`, no enums.
"""

import os

from jailkit.errors import JailkitError

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
NETWORKS = ("host", "none", "veth")
# name -> number (Linux x86_64); in the order a profile's error lists them, the default first
SIGNALS = {
    "SIGTERM": 15, "SIGINT": 2, "SIGQUIT": 3, "SIGHUP": 1, "SIGUSR1": 10, "SIGUSR2": 12,
    "SIGWINCH": 28, "SIGKILL": 9, "SIGPWR": 30,
}  # fmt: skip
SIGNAL_NAMES = {number: name for name, number in SIGNALS.items()}
# name -> RLIMIT_* number (Linux x86_64)
RLIMITS = {
    "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
    "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13,
    "rtprio": 14, "rttime": 15,
}  # fmt: skip
# CAP_* name -> capability number, in the kernel's order
CAPABILITIES = {f"CAP_{name}": number for number, name in enumerate((
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
    "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
    "CHECKPOINT_RESTORE"
).split())}
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_UID_COUNT = 65536  # ids mapped into one jail: each root jail owns a slice of this many


def check_name(name, option: str = "--name") -> str:
    """A jail's name as running jails know it (the registry's entries and its cgroups' directory
    names are made from it as root): a plain name, never a path."""
    if (not isinstance(name, str) or not name or len(name) > 64 or name[0] in ".-"
            or not NAME_CHARS.issuperset(name)):
        raise JailkitError(f"{option} {name!r}: a jail name is 1-64 letters, digits, '.', '_' "
                           "or '-', not starting with '.' or '-': pick another")
    return name


SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def default_name(directory: str) -> str:
    """The name a jail in `directory` runs under when none is given (`run --name`), and that
    `unit` and the exports use: the directory's last component, made a jail name."""
    base = "".join(c if c in NAME_CHARS else "_" for c in os.path.basename(directory))[:60]
    return base.lstrip(".-") or "jail"


def parse_size(value) -> int | None:
    """Bytes from a positive integer or a string like "64m", "64M" or "64MiB" (K, M, G: powers of
    1024); None when `value` is no size (each caller words its own error)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("b").removesuffix("i")
        number, unit = (text[:-1], text[-1]) if text[-1:] in SIZE_UNITS else (text, "")
        if number.isdigit() and int(number) > 0:
            return int(number) * SIZE_UNITS[unit]
    return None


def jail_name(profile: str) -> str:
    """The jail's name from the PROFILE argument as typed: a profile file's name without its
    directory and `.toml` (`profiles/nginx.toml` -> `nginx`), or a bundled name as it is.

    Never the name of the file a symlink leads to: `x.toml -> shell.toml` builds and runs the
    jail `x`. The name typed is the one the user types again for `jailkit run x.toml` (or
    `run x`), and `run` only has that text: it does not read the profile (it starts fast and
    runs what was built, even if the profile has moved since). Two links to one profile, built
    with different --set values, are two jails, not one directory shared by both."""
    base = os.path.basename(profile.rstrip("/"))
    return base.removesuffix(".toml")


def jails_base() -> str:
    """Where jails live without --root: /var/lib/jailkit for root, else the user's XDG data
    directory (an ordinary user cannot write /var/lib). A relative XDG_DATA_HOME is ignored,
    as the XDG rules say; with no absolute HOME either, there is no default."""
    if os.geteuid() == 0:
        return "/var/lib/jailkit"
    data = os.environ.get("XDG_DATA_HOME", "")
    if not data.startswith("/"):
        data = os.path.expanduser("~/.local/share")  # HOME, else the passwd entry's home
    if not data.startswith("/"):
        raise JailkitError("no default jail directory: neither XDG_DATA_HOME nor HOME names "
                           "an absolute directory: pass --root DIR (a directory of yours), or "
                           "set XDG_DATA_HOME")
    return f"{data}/jailkit"


def default_jail_dir(name: str) -> str:
    """Where jail `name` lives without --root (jails_base). For an ordinary user, a directory
    that does not exist and could not be made (HOME unset, or not writable) is refused here,
    naming the fix, before a build fails to make it or a run says to build it there."""
    path = f"{jails_base()}/{name}"
    if os.geteuid() == 0 or os.path.lexists(path):
        return path
    made_in = os.path.dirname(path)
    while not os.path.lexists(made_in):
        made_in = os.path.dirname(made_in)
    if not os.path.isdir(made_in) or not os.access(made_in, os.W_OK | os.X_OK):
        raise JailkitError(f"the default jail directory {path} cannot be made ({made_in} is "
                           f"not a directory you can write): pass --root DIR (a directory of "
                           f"yours), or set XDG_DATA_HOME (default $HOME/.local/share)")
    return path
