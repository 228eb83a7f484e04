"""Speed of `jailkit ldd` against the loader itself, measured in the same run.

jailkit resolves every ELF file in /usr/bin in one `jailkit ldd --json` process (start-up
included). The anchor is a loop of the loader's own trace over the same files, one process per
file: `LD_TRACE_LOADED_OBJECTS=1 ld.so FILE` (which lists and exits without running the file),
or `ld.so --verify FILE` for the static ones (ld.so cannot map those and would crash).

Usage: /opt/jailkit/bin/python bench/bench_ldd.py [DIRECTORY] [ROUNDS]
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOADERS = {
    (2, 62): "/lib64/ld-linux-x86-64.so.2",  # ELFCLASS64, EM_X86_64
    (1, 3): "/lib/ld-linux.so.2",  # ELFCLASS32, EM_386
}


def elf_loader(path: str) -> str | None:
    """The glibc loader for PATH's ELF class and machine, or None if it is not such an ELF file."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return LOADERS.get((head[4], int.from_bytes(head[18:20], "little")))


def loader_commands(files: list[str]) -> list[list[str]]:
    """One loader command per file; which files are static is settled before timing."""
    commands = []
    for path in files:
        ldso = elf_loader(path)
        verify = subprocess.run([ldso, "--verify", path], capture_output=True)
        commands.append([ldso, "--verify", path] if verify.returncode == 1 else [ldso, path])
    return commands


def time_loader_loop(commands: list[list[str]]) -> float:
    env = {"LD_TRACE_LOADED_OBJECTS": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    start = time.perf_counter()
    for argv in commands:
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return time.perf_counter() - start


def time_jailkit(files: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "jailkit", "ldd", "--json", *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - start
    result = json.loads(proc.stdout)
    if set(result) != set(files):
        sys.exit(f"jailkit answered for {len(result)} of {len(files)} files")
    return elapsed


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "/usr/bin"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    files = sorted(
        entry.path
        for entry in os.scandir(directory)
        if os.path.isfile(entry.path) and elf_loader(entry.path)
    )
    commands = loader_commands(files)
    # Warm the page cache for both sides, then keep the best of ROUNDS for each.
    time_jailkit(files)
    time_loader_loop(commands)
    jailkit = min(time_jailkit(files) for _ in range(rounds))
    loader = min(time_loader_loop(commands) for _ in range(rounds))
    n = len(files)
    print(f"files: {n} ELF files in {directory}")
    print(f"loader loop (anchor): {loader:6.2f} s  {n / loader:7.0f} files/s")
    print(f"jailkit ldd --json:   {jailkit:6.2f} s  {n / jailkit:7.0f} files/s")
    print(f"ratio jailkit/loader: {loader / jailkit:.2f}  (goal >= 1.00)")


if __name__ == "__main__":
    main()
