"""`jailkit ldd --json` against the system loader on every ELF file of the system directories.

One test per directory; its assertion lists every file where jailkit and the loader disagree.
jailkit resolves a whole directory in one process; the loader side runs in a thread pool.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import run_jailkit
from loader_truth import differences, elf_facts, loader_view, normalize_jailkit, rtld_for

CHUNK = 500  # files per jailkit process: keeps argv far below ARG_MAX


def executables(directory: str) -> list[str]:
    """Every name in DIRECTORY (symlinks too: a symlinked program has its own $ORIGIN) that is
    an ELF file."""
    return sorted(
        entry.path
        for entry in os.scandir(directory)
        if os.path.isfile(entry.path) and elf_facts(entry.path) is not None
    )


def libraries(directory: str) -> list[str]:
    """Every regular ELF file under DIRECTORY (symlinks are other names of the same files)."""
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path) and os.path.isfile(path) and elf_facts(path) is not None:
                found.append(path)
    return sorted(found)


def jailkit_json(files: list[str]) -> dict:
    results = {}
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        proc = run_jailkit("ldd", "--json", *chunk, timeout=600)
        assert "Traceback" not in proc.stderr, proc.stderr
        results.update(json.loads(proc.stdout))
        # Exit status: non-zero exactly when some file has a missing library or an error.
        failed = any(results[f]["missing"] or results[f]["error"] for f in chunk)
        assert (proc.returncode != 0) == failed, (proc.returncode, proc.stderr[-2000:])
    return results


def compare(files: list[str]) -> list[str]:
    assert files, "no ELF files found"
    got = jailkit_json(files)
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) * 2) as pool:
        truth = dict(zip(files, pool.map(loader_view, files), strict=True))
    problems = []
    for path in files:
        if path not in got:
            problems.append(f"{path}: absent from jailkit's JSON")
            continue
        entry = got[path]
        mine = normalize_jailkit(entry, rtld_for(path))
        problems += differences(path, truth[path], mine, entry.get("missing"))
    return problems


@pytest.mark.parametrize("directory", ["/usr/bin", "/usr/sbin"])
def test_every_executable_matches_the_loader(directory):
    files = executables(directory)
    problems = compare(files)
    assert not problems, f"{len(problems)} differences over {len(files)} files:\n" + "\n".join(
        problems
    )


# /usr/lib32 (Debian's libc6-i386, from gcc-multilib) runs the same rules through the i386 loader.
@pytest.mark.parametrize("directory", ["/usr/lib/x86_64-linux-gnu", "/usr/lib32"])
def test_every_library_matches_the_loader(directory):
    files = libraries(directory)
    problems = compare(files)
    assert not problems, f"{len(problems)} differences over {len(files)} files:\n" + "\n".join(
        problems
    )
