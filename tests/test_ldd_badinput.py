"""Bad input for `jailkit ldd`: a one-line error and a non-zero exit, never a traceback or a hang.

Many files go through one jailkit process; every subprocess has a timeout, so a hang fails the
test instead of stalling the run.
"""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import jailkit_env, run_jailkit
from loader_truth import differences, loader_view, normalize_jailkit, rtld_for

SAMPLE = "/usr/bin/ls"  # a real dynamic executable to damage
TIMEOUT = 120


def ldd_json(*paths, **kwargs) -> tuple[dict, subprocess.CompletedProcess]:
    proc = run_jailkit("ldd", "--json", *paths, timeout=TIMEOUT, **kwargs)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc


def assert_all_refused(paths, results, proc):
    """Every path has an error; stderr has exactly one line per path, naming it; exit != 0."""
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    problems = []
    for path in map(str, paths):
        error = results[path]["error"]
        if not error or "\n" in error:
            problems.append(f"{path}: error {error!r}")
        mine = [line for line in lines if line.startswith(f"jailkit: {path}:")]
        if len(mine) != 1:
            problems.append(f"{path}: {len(mine)} stderr lines: {mine}")
    assert len(lines) == len(paths), proc.stderr[-3000:]
    assert not problems, "\n".join(problems)


def phdr_table(data: bytes) -> tuple[int, int, int]:
    """(offset, entry size, count) of the program header table of a 64-bit ELF file."""
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    return phoff, phentsize, phnum


def segments(data: bytes) -> list[tuple[int, ...]]:
    phoff, size, count = phdr_table(data)
    return [struct.unpack_from("<IIQQQQQQ", data, phoff + i * size) for i in range(count)]


def dynamic_segment(data: bytes) -> tuple[int, int]:
    for p_type, _, offset, _, _, filesz, _, _ in segments(data):
        if p_type == 2:
            return offset, filesz
    raise AssertionError("no PT_DYNAMIC")


def check_damaged(paths: list[Path]) -> int:
    """Damaged copies of a real program: jailkit either refuses one with a one-line error, or
    answers as the loader does (when the loader itself answers cleanly). Returns how many it
    answered."""
    results, proc = ldd_json(*paths)
    lines = proc.stderr.splitlines()
    problems = []
    answered = 0
    for path in map(str, paths):
        entry = results[path]
        if entry["error"] is not None:
            mine = [line for line in lines if line.startswith(f"jailkit: {path}:")]
            if "\n" in entry["error"] or len(mine) != 1:
                problems.append(f"{path}: error {entry['error']!r}, stderr lines {mine}")
            continue
        answered += 1
        truth = loader_view(path)
        if truth.error is None:
            got = normalize_jailkit(entry, rtld_for(path))
            problems += differences(path, truth, got, entry["missing"])
    failed = any(e["error"] or e["missing"] for e in results.values())
    assert (proc.returncode != 0) == failed
    assert not problems, "\n".join(problems)
    return answered


@pytest.fixture(scope="module")
def sample() -> bytes:
    return Path(SAMPLE).read_bytes()


def test_truncated_files(tmp_path, sample):
    # Every cut point lies before the end of the dynamic segment, so nothing can be resolved.
    dyn_offset, dyn_size = dynamic_segment(sample)
    cuts = [0, 1, 3, 4, 5, 15, 16, 17, 52, 63, 64, 65, 64 + 56, 64 + 56 * 3 + 7]
    cuts += [dyn_offset, dyn_offset + 8, dyn_offset + dyn_size // 2, dyn_offset + dyn_size - 1]
    paths = []
    for cut in cuts:
        path = tmp_path / f"cut{cut}"
        path.write_bytes(sample[:cut])
        paths.append(path)
    results, proc = ldd_json(*paths)
    assert_all_refused(paths, results, proc)


def test_garbage_headers(tmp_path):
    rng = random.Random(2)
    paths = []
    for seed in range(200):
        head = b"\x7fELF" if seed % 2 else b""
        body = bytes(rng.randrange(256) for _ in range(rng.choice([12, 60, 200, 4096])))
        path = tmp_path / f"garbage{seed}"
        path.write_bytes(head + body)
        paths.append(path)
    # An ELF identification with a valid class and byte order but nonsense beyond it.
    for seed in range(50):
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
        path = tmp_path / f"ident{seed}"
        path.write_bytes(ident + bytes(rng.randrange(256) for _ in range(48 + seed * 7)))
        paths.append(path)
    results, proc = ldd_json(*paths)
    assert_all_refused(paths, results, proc)


def test_fuzzed_program_headers(tmp_path, sample):
    phoff, phentsize, phnum = phdr_table(sample)
    rng = random.Random(7)
    paths = []
    for seed in range(150):
        data = bytearray(sample)
        if seed < 50:  # the whole table replaced by random bytes
            data[phoff : phoff + phentsize * phnum] = rng.randbytes(phentsize * phnum)
        else:  # one field of one entry set to a random or extreme value, the type kept
            entry = phoff + rng.randrange(phnum) * phentsize
            field = rng.choice([8, 16, 24, 32, 40, 48])  # offset, vaddr, paddr, filesz, memsz
            value = rng.choice([0, 1, 2**63, 2**64 - 1, len(sample), rng.getrandbits(64)])
            struct.pack_into("<Q", data, entry + field, value)
        if seed % 10 == 9:  # the header's own view of the table
            struct.pack_into("<HH", data, 54, rng.randrange(65536), rng.randrange(65536))
        path = tmp_path / f"phdr{seed}"
        path.write_bytes(bytes(data))
        path.chmod(0o755)
        paths.append(path)
    assert check_damaged(paths) > 0, "no damaged file was answered: nothing compared"


def test_dynamic_segment_is_found_by_its_address(tmp_path, sample):
    # The loader reads the dynamic section from memory (PT_DYNAMIC's p_vaddr in a PT_LOAD), never
    # at p_offset: a wrong p_offset changes nothing for it, and must not make jailkit read
    # something else as the dynamic section.
    phoff, phentsize, phnum = phdr_table(sample)
    (entry,) = [
        phoff + i * phentsize
        for i in range(phnum)
        if struct.unpack_from("<I", sample, phoff + i * phentsize)[0] == 2
    ]
    paths = []
    for value in (0, 64, len(sample) - 16, 2**63):
        data = bytearray(sample)
        struct.pack_into("<Q", data, entry + 8, value)
        path = tmp_path / f"dynoffset{value}"
        path.write_bytes(bytes(data))
        path.chmod(0o755)
        paths.append(path)
    # p_offset is not used by the loader at all: each file must be answered, as ls is.
    assert check_damaged(paths) == len(paths)


def test_fuzzed_dynamic_sections(tmp_path, sample):
    offset, size = dynamic_segment(sample)
    rng = random.Random(11)
    paths = []
    for seed in range(150):
        data = bytearray(sample)
        if seed < 50:
            data[offset : offset + size] = rng.randbytes(size)
        else:  # a value of one entry (DT_NEEDED offset, DT_STRTAB address, ...) made wrong
            entry = offset + 16 * rng.randrange(size // 16)
            value = rng.choice([0, 2**63, 2**64 - 1, len(sample), rng.getrandbits(64)])
            struct.pack_into("<Q", data, entry + 8, value)
        path = tmp_path / f"dyn{seed}"
        path.write_bytes(bytes(data))
        path.chmod(0o755)
        paths.append(path)
    assert check_damaged(paths) > 0, "no damaged file was answered: nothing compared"


def test_directory_missing_file_and_symlink_loop(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    paths = [tmp_path, tmp_path / "absent", loop, "/"]
    results, proc = ldd_json(*paths)
    assert_all_refused(paths, results, proc)


def test_device_files_and_fifo_do_not_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    paths = ["/dev/null", "/dev/zero", "/dev/urandom", str(fifo)]
    # A FIFO with no writer: opening it for reading blocks unless the reader avoids that.
    results, proc = ldd_json(*paths)
    assert_all_refused(paths, results, proc)


def test_fifo_as_library_candidate_does_not_hang(tmp_path):
    # The loader itself would block for ever opening it; jailkit must stop with an error.
    src = tmp_path / "m.c"
    src.write_text("int main(void) { return 0; }\n")
    lib_src = tmp_path / "l.c"
    lib_src.write_text("int f(void) { return 1; }\n")
    lib = tmp_path / "good/libfifo.so"
    lib.parent.mkdir()
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-Wl,-soname,libfifo.so", "-o", str(lib), str(lib_src)],
        check=True,
    )
    (tmp_path / "bad").mkdir()
    os.mkfifo(tmp_path / "bad/libfifo.so")
    prog = tmp_path / "prog"
    rpath = f"-Wl,--disable-new-dtags,-rpath,{tmp_path / 'bad'}:{lib.parent}"
    cmd = ["gcc", "-o", str(prog), str(src), "-Wl,--no-as-needed", str(lib), rpath]
    subprocess.run(cmd, check=True)
    results, proc = ldd_json(prog)
    assert_all_refused([prog], results, proc)
    assert "libfifo.so" in results[str(prog)]["error"]


def test_script_loops_and_bad_interpreters(tmp_path):
    itself = tmp_path / "itself"
    itself.write_text(f"#!{itself}\n")
    empty = tmp_path / "empty"
    empty.write_text("#!\n")
    nowhere = tmp_path / "nowhere"
    nowhere.write_text("#!/nonexistent/interpreter\n")
    for path in (itself, empty, nowhere):
        path.chmod(0o755)
    paths = [itself, empty, nowhere]
    results, proc = ldd_json(*paths)
    assert_all_refused(paths, results, proc)


@pytest.fixture
def public_dir():
    """A directory user nobody can enter, outside pytest's base directory (which another pytest
    session may reset to 0700 at any time)."""
    path = Path(tempfile.mkdtemp(prefix="jailkit-ldd-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_nobody(world_readable_checkout, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jailkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=jailkit_env(world_readable_checkout),
        user="nobody",
        group="nogroup",
        extra_groups=[],
        timeout=TIMEOUT,
        cwd=cwd or "/",
    )


@pytest.mark.usefixtures("as_root")
def test_unreadable_file_as_nobody(public_dir, world_readable_checkout):
    secret = public_dir / "secret"
    shutil.copy(SAMPLE, secret)
    secret.chmod(0o000)
    proc = as_nobody(world_readable_checkout, "ldd", "--json", secret)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(secret) in lines[0], proc.stderr
    assert "Permission denied" in json.loads(proc.stdout)[str(secret)]["error"]


@pytest.mark.usefixtures("as_root")
def test_unreadable_library_candidate_as_nobody(public_dir, world_readable_checkout):
    # The loader, as nobody, cannot open the first candidate and goes on to the next one.
    src = public_dir / "l.c"
    src.write_text("int f(void) { return 1; }\n")
    for d in ("closed", "open"):
        (public_dir / d).mkdir(mode=0o755)
        lib = public_dir / d / "libp.so"
        cmd = ["gcc", "-shared", "-fPIC", "-Wl,-soname,libp.so", "-o", str(lib), str(src)]
        subprocess.run(cmd, check=True)
    (public_dir / "closed/libp.so").chmod(0o000)
    main = public_dir / "m.c"
    main.write_text("int main(void) { return 0; }\n")
    prog = public_dir / "prog"
    rpath = f"-Wl,--disable-new-dtags,-rpath,{public_dir / 'closed'}:{public_dir / 'open'}"
    cmd = [
        "gcc",
        "-o",
        str(prog),
        str(main),
        "-Wl,--no-as-needed",
        str(public_dir / "open/libp.so"),
    ]
    subprocess.run([*cmd, rpath], check=True)
    truth = loader_view(str(prog), user="nobody")
    assert dict(truth.libs)["libp.so"] == str(public_dir / "open/libp.so"), truth
    proc = as_nobody(world_readable_checkout, "ldd", "--json", prog)
    assert "Traceback" not in proc.stderr, proc.stderr
    entry = json.loads(proc.stdout)[str(prog)]
    got = normalize_jailkit(entry, rtld_for(str(prog)))
    problems = differences(str(prog), truth, got, entry["missing"])
    assert not problems, "\n".join(problems)


def replace_repeatedly(target: Path, versions: list[bytes], stop: threading.Event, in_place: bool):
    """Swap TARGET between VERSIONS until STOP: by rename(2), or by rewriting it in place."""
    n = 0
    while not stop.is_set():
        data = versions[n % len(versions)]
        n += 1
        if in_place:
            with open(target, "r+b") as f:
                f.truncate(0)
                f.write(data)
        else:
            tmp = target.with_name(target.name + ".new")
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            os.replace(tmp, target)


@pytest.mark.parametrize("in_place", [False, True], ids=["rename", "rewrite"])
def test_file_replaced_while_being_read(tmp_path, sample, in_place):
    target = tmp_path / "changing"
    target.write_bytes(sample)
    target.chmod(0o755)
    truth = loader_view(SAMPLE)
    stop = threading.Event()
    versions = [sample, sample[:100], b"#!/bin/sh\n", sample[: len(sample) // 3]]
    writer = threading.Thread(target=replace_repeatedly, args=(target, versions, stop, in_place))
    writer.start()
    try:
        # The same path many times: each is resolved again while the file keeps changing.
        runs = [run_jailkit("ldd", "--json", target, timeout=TIMEOUT) for _ in range(30)]
    finally:
        stop.set()
        writer.join()
    sh = loader_view("/bin/sh")
    problems = []
    for proc in runs:
        if "Traceback" in proc.stderr:
            problems.append(proc.stderr)
            continue
        entry = json.loads(proc.stdout)[str(target)]
        if entry["error"] is not None:
            if proc.returncode == 0 or len(proc.stderr.splitlines()) != 1:
                problems.append(f"error {entry['error']!r} exit {proc.returncode}: {proc.stderr}")
            continue
        got = normalize_jailkit(entry, rtld_for(SAMPLE))
        # An answer must be the whole answer for one of the versions the file went through.
        if differences(SAMPLE, truth, got, entry["missing"]) and differences(
            "/bin/sh", sh, got, entry["missing"]
        ):
            problems.append(f"an answer for no version of the file: {entry}")
    assert not problems, "\n".join(problems)
