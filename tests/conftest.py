"""Shared fixtures: run the jailkit CLI from this checkout, as root or as another user."""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# Values bundled profiles need from their user (no default can stand in for an ssh key): a real
# public key line, checked by the profile's `public_keys` filter.
SETS_NEEDED = {"sshd": {"sftp_pubkey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAg4S0LaxFSOlzj/HU0YiRi"
                                       "aSMzFK1nVVYdurw0RjquR test@jailkit"}}


def jailkit_env(pythonpath: Path = REPO) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pythonpath)
    return env


def run_jailkit(*args, check=False, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run `jailkit ARGS` from this checkout in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "jailkit", *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
        env=env or jailkit_env(),
        **kwargs,
    )


@pytest.fixture(scope="session")
def world_readable_checkout() -> Iterator[Path]:
    """A copy of the package (with its profiles) that user nobody can import (the checkout may sit
    under /root). It lives outside pytest's base directory, which pytest resets to 0700
    whenever another session starts."""
    base = Path(tempfile.mkdtemp(prefix="jailkit-src-"))
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "jailkit", base / "jailkit", ignore=ignore)
    for path in [base, *base.rglob("*")]:
        # executables stay so: the pid-1 helper an editable install compiled beside its module
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    yield base
    shutil.rmtree(base)


NOBODY = 65534


def as_nobody():
    """preexec_fn for a process that runs as user nobody (no groups)."""
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def build(*args, check=True, timeout=300) -> subprocess.CompletedProcess:
    """`jailkit build ARGS`; by default it must succeed."""
    result = run_jailkit("build", *args, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def home(world_readable_checkout):
    """The checkout copy nobody can read, with a home it owns (removed afterwards)."""
    home = world_readable_checkout / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    yield world_readable_checkout
    shutil.rmtree(home)


@pytest.fixture
def subid_file():
    """Write the text of /etc/subuid and /etc/subgid for `nobody_with_subids` (a file of its
    own, world-readable: newuidmap reads it as nobody)."""
    made = []

    def write(text: str) -> str:
        fd, path = tempfile.mkstemp(prefix="jailkit-subid-")
        os.write(fd, text.encode())
        os.close(fd)
        os.chmod(path, 0o644)
        made.append(path)
        return path

    yield write
    for path in made:
        os.unlink(path)


def nobody_with_subids(subids: str) -> list[str]:
    """A command prefix running what follows as nobody, with `subids` (a file) as /etc/subuid
    and /etc/subgid: bound only in a private mount namespace of its own, never on the host
    (this host's own files may or may not give nobody a range)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/subuid && mount --bind "$0" /etc/subgid && cd / && '
            'exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"', subids]


def nobody_jailkit(home, *args):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(home), "HOME": str(home / "home")}
    return subprocess.run([sys.executable, "-m", "jailkit", *args], env=env, cwd="/",
                          text=True, capture_output=True, preexec_fn=as_nobody, timeout=120)


@contextlib.contextmanager
def traversable_dir(prefix: str) -> Iterator[Path]:
    """A new directory that other users (`nobody`, a jail's unprivileged root) may pass through
    (0711), removed afterwards. Not under pytest's tmp root: pytest makes that 0700 again
    whenever another session starts."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        base.chmod(0o711)
        yield base
    finally:
        shutil.rmtree(base)


# --- launching the `shell` jail as root, and looking at its processes ----------------------

PROBE = "/usr/bin/jkprobe"


@pytest.fixture(scope="session")
def jail() -> Path:
    """A `shell` jail built by jailkit, with the probe added (owned by the jail's root), where
    `nobody` reaches it too (test_launch_nobody.py)."""
    with traversable_dir("jailkit-launch-") as base:
        built = run_jailkit("build", "shell", "--root", base / "shell")
        assert built.returncode == 0, built.stderr
        root = base / "shell" / "current" / "root"
        subprocess.run(["gcc", "-static", "-O1", "-o", root / PROBE.lstrip("/"),
                        REPO / "tests/launch_probe.c"], check=True)
        yield base / "shell"


def jailkit_run(jail: Path, *command, sets=(), net=None, **kwargs):
    options = [arg for key_value in sets for arg in ("--set", key_value)]
    if net:
        options += ["--net", net]
    return run_jailkit("run", "shell", "--root", jail, *options, "--", *command,
                       timeout=60, **kwargs)


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below `pid` (start time: a reused pid is not it)."""
    children: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        start[int(entry)] = fields[19]
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = start[child]
            todo.append(child)
    return found


def wait_for(predicate, seconds=10.0, what="the jail"):
    """The predicate's first true value, polled for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def host_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def in_netns(netns: int | None) -> list[str]:
    """A command prefix entering the network namespace of process `netns` (nsenter execs, so
    the pid stays the launcher's)."""
    return ["nsenter", f"--net=/proc/{netns}/ns/net", "--"] if netns else []


@pytest.fixture
def netns():
    """A network namespace of the test's own (held by a sleep it kills by pid), so that a veth
    and its test addresses never touch the host's own network."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    try:
        ours = os.readlink("/proc/self/ns/net")
        wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != ours)
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def net(netns) -> list[str]:
    """The command prefix that enters this test's own network namespace, its loopback up."""
    enter = in_netns(netns)
    subprocess.run([*enter, "ip", "link", "set", "lo", "up"], check=True)
    return enter


PROBE_IN_JAIL = "/usr/bin/service_probe"
LOOP_PROFILE = """\
extends = ["shell"]

[service]
command = ["/bin/sh", "-c", "while :; do sleep 1; done"]
"""


def probe_jail(base: Path, name: str) -> Path:
    """A jail of the `shell` profile in base/NAME, with tests/service_probe.c built into it at
    PROBE_IN_JAIL, for a service of the test's choosing (`run ... -- PROBE_IN_JAIL ...`)."""
    (base / f"{name}.toml").write_text(LOOP_PROFILE)
    built = run_jailkit("build", base / f"{name}.toml", "--root", base / name, timeout=300)
    assert built.returncode == 0, built.stderr
    subprocess.run(["gcc", "-static", "-O1", "-o",
                    base / name / "current/root" / PROBE_IN_JAIL.lstrip("/"),
                    REPO / "tests/service_probe.c"], check=True)
    return base / name


def start(jail: Path, *command, sets=(), netns=None):
    """A running jail (Popen of the launcher, whose pid the waiter keeps) and its processes."""
    options = [arg for key_value in sets for arg in ("--set", key_value)]
    proc = subprocess.Popen(
        [*in_netns(netns), sys.executable, "-m",
         "jailkit", "run", "shell", "--root", jail, *options, "--", *command],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # the launcher has become the waiter, and the reaper (pid 1) has started the service
    wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("jailkit-reaper")
             and len(descendants(proc.pid)) >= 2)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()  # the launcher's own pid: the jail dies with it (parent-death signal)
        proc.wait(10)


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


@pytest.fixture(scope="session", autouse=True)
def nobody_registry() -> Iterator[None]:
    """`jailkit run` as nobody (several modules) makes nobody's registry of running jails,
    /tmp/jailkit-65534 (no XDG_RUNTIME_DIR): removed after the session if it made it."""
    registry = Path("/tmp/jailkit-65534")
    existed = registry.exists()
    yield
    if not existed and os.geteuid() == 0:
        shutil.rmtree(registry, ignore_errors=True)


@pytest.fixture
def names(request):
    """Names for this test's jails (prefixed by the module's PREFIX and this session's pid);
    whatever still runs at the test's end is stopped, and its logs are removed."""
    prefix = getattr(request.module, "PREFIX", "t")
    made = []

    def name(suffix: str) -> str:
        made.append(f"{prefix}{os.getpid()}{suffix}")
        return made[-1]

    yield name
    for leftover in made:
        run_jailkit("stop", leftover, "--timeout", "1", timeout=30)
        for log in (f"/run/jailkit/{leftover}.log", f"/run/jailkit/{leftover}.log.1"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log)


@pytest.fixture
def as_root():
    """For tests that switch ids or enter namespaces as root: they fail, never skip, elsewhere."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root: run the suite as root, as the README and CI do")


# What a test needs, as markers (pyproject.toml lists them): `-m "not root"` runs what an ordinary
# user can, `-m "not root and not slow"` the pure tests in about a second.
PURE_MODULES = {  # modules that only compute: no jail built, no program compiled or started
    "test_profile", "test_launch_spec", "test_imports", "test_service_profile_comments",
}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__
        if "as_root" in item.fixturenames:
            item.add_marker(pytest.mark.root)
        if module.startswith("test_service_") and module != "test_service_profile_comments":
            item.add_marker(pytest.mark.service)
            item.add_marker(pytest.mark.slow)
        elif module not in PURE_MODULES:
            item.add_marker(pytest.mark.slow)
