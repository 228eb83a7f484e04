"""`jailkit build` against the real Jailkit's `jk_init`, measured in the same run (run as root).

1. python3 (the interpreter, its standard library, CA certificates; ~2,000 entries): cold build
   versus `jk_init` with an equivalent section. Goal: <= 0.1x.
2. nginx (the bundled profile: binary, mime.types, nginx.conf, www-data): cold build versus
   `jk_init`. Goal: <= 1x, and the jail no larger. Also with all of /etc/nginx and
   /usr/share/nginx copied, as a jk_init section would usually list them.
3. No-op rebuild of the python3 jail versus its cold build. Goal: <= 0.5x.

jk_init appends to /etc/jailkit/jk_socketd.ini and reads its ini files from /etc/jailkit: it runs
in a private mount namespace with a private copy bind-mounted there (jailkit's builds run in the
same wrapper, so both pay for it). Its jails must not sit below a world-writable directory, so
everything is built under a fresh /var/lib/jailkit-bench-* that is removed at the end.

Usage: /opt/jailkit/bin/python bench/bench_build.py [--runs N] [--jk-runs N]
"""

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the console script users run (the editable install points it at this checkout)
JAILKIT = [os.path.join(sys.prefix, "bin", "jailkit")]
PYTHON_LIB = sorted(glob.glob("/usr/lib/python3.[0-9]*"))[-1]
PYTHON_ETC = f"/etc/{os.path.basename(PYTHON_LIB)}"

JK_SECTIONS = f"""
[bench-python3]
comment = python3, its standard library and CA certificates (jailkit's python3 profile)
paths = /usr/bin/python3, {PYTHON_LIB}, {PYTHON_ETC}, /etc/ssl/certs, /usr/lib/ssl/certs, \
/usr/lib/ssl/openssl.cnf
users = root
groups = root
devices = /dev/null, /dev/zero, /dev/urandom

[bench-nginx]
comment = what jailkit's bundled nginx profile holds (its two templates: nginx.conf copied instead)
paths = /usr/sbin/nginx, /etc/nginx/mime.types, /etc/nginx/nginx.conf
users = root, www-data
groups = root, www-data

[bench-nginx-tree]
comment = nginx with all of /etc/nginx and /usr/share/nginx, as a jk_init user would list it
paths = /usr/sbin/nginx, /etc/nginx, /usr/share/nginx
users = root, www-data
groups = root, www-data
"""

# the same as bench-nginx-tree, for jailkit
NGINX_TREE_PROFILE = """
extends = ["libc"]
binaries = ["/usr/sbin/nginx"]
files = ["/etc/nginx", "/usr/share/nginx"]

[users.www-data]
uid = 33
gid = 33
home = "/var/www"

[groups.www-data]
gid = 33

[service]
command = ["/usr/sbin/nginx", "-g", "daemon off;"]
"""


def private_etc(work: Path) -> Path:
    etc = work / "etc-jailkit"
    shutil.copytree("/etc/jailkit", etc)
    with open(etc / "jk_init.ini", "a") as f:
        f.write(JK_SECTIONS)
    return etc


def in_private_ns(etc: Path, argv: list[str]) -> list[str]:
    script = 'mount --bind "$0" /etc/jailkit && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(etc), *argv]


def timed(argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed jailkit has its bytecode compiled
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def tree_size(root: Path) -> tuple[int, int]:
    """(entries, bytes of regular files) under root, never following symlinks."""
    entries = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            entries += 1
            size += st.st_size if os.path.isfile(os.path.join(dirpath, name)) else 0
    return entries, size


def measure(work: Path, etc: Path, label: str, profile: str, section: str, runs: int,
            jk_runs: int) -> tuple[float, Path]:
    ours, theirs = [], []
    # untimed: compiles jailkit's bytecode and reads the host files into the page cache
    timed(in_private_ns(etc, [*JAILKIT, "build", profile, "--root",
                              str(work / f"warm-{label}")]))
    for i in range(max(runs, jk_runs)):
        if i < jk_runs:
            jail = work / f"jk-{label}-{i}"
            theirs.append(timed(in_private_ns(etc, [
                "jk_init", f"--configfile={etc}/jk_init.ini", "-j", str(jail), section])))
        if i < runs:
            root = work / f"jailkit-{label}-{i}"
            ours.append(timed(in_private_ns(etc, [
                *JAILKIT, "build", profile, "--root", str(root)])))
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    jk_entries, jk_bytes = tree_size(work / f"jk-{label}-0")
    our_entries, our_bytes = tree_size(root / "current/root")
    print(f"{label} cold build: jailkit {ours_s:.3f} s (median of {runs}), jk_init "
          f"{theirs_s:.3f} s (median of {jk_runs}) -> {ours_s / theirs_s:.3f}x")
    print(f"{label} jail size: jailkit {our_entries} entries, {our_bytes / 1e6:.1f} MB; jk_init "
          f"{jk_entries} entries, {jk_bytes / 1e6:.1f} MB -> {our_bytes / jk_bytes:.3f}x bytes")
    return ours_s, root


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="jailkit builds per measurement")
    parser.add_argument("--jk-runs", type=int, default=2, help="jk_init runs per measurement")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("jk_init"):
        print("bench_build needs root and jk_init (apt-get install jailkit)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="jailkit-bench-", dir="/var/lib"))
    try:
        work.chmod(0o755)
        etc = private_etc(work)
        cold, root = measure(work, etc, "python3", "python3", "bench-python3", args.runs,
                             args.jk_runs)
        print("goal: python3 cold <= 0.1x jk_init")
        measure(work, etc, "nginx", "nginx", "bench-nginx", args.runs + 2, args.jk_runs + 3)
        print("goal: nginx cold <= 1x jk_init, bytes <= 1x")
        tree_profile = work / "nginx-tree.toml"
        tree_profile.write_text(NGINX_TREE_PROFILE)
        measure(work, etc, "nginx-tree", str(tree_profile), "bench-nginx-tree", args.runs + 2,
                args.jk_runs + 3)
        noop = statistics.median(
            timed(in_private_ns(etc, [*JAILKIT, "build", "python3",
                                      "--root", str(root)]))
            for _ in range(args.runs + 2))
        print(f"python3 no-op rebuild: {noop:.3f} s vs cold {cold:.3f} s -> {noop / cold:.3f}x "
              "(goal <= 0.5x)")
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
