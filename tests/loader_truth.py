"""The truth anchor for `jailkit ldd`: ask glibc's own loader which objects it maps.

Tests only. jailkit itself never runs the files it inspects; here running the loader is the point,
and it is done only in the ways where the loader lists objects and exits before any of the file's
code runs (LD_TRACE_LOADED_OBJECTS=1), with a timeout:

- `ld.so --verify FILE` first: it maps the file without running it and says whether it cannot be
  loaded as a dynamic object (1: a static ET_EXEC, or a broken file), is dynamic without PT_INTERP
  (2: a library or a static-pie), or dynamic with PT_INTERP (0). A static file is never traced: it
  would ignore the variable and run. A broken one is traced only through ld.so, for its message.
- A dynamic executable is executed itself, as the kernel would run it: that is the only way to get
  $ORIGIN of a symlinked program right (the directory of its real path, /proc/self/exe).
- A setuid/setgid or file-capability executable runs in the loader's secure mode (AT_SECURE) unless
  the ids match, and secure mode ignores LD_TRACE_LOADED_OBJECTS, so the program would really run.
  It goes through `LD_TRACE_LOADED_OBJECTS=1 ld.so REALPATH` instead, with ld.so invoked by its
  PT_INTERP string: ld.so is not setid, the real path gives the same $ORIGIN as the kernel's exec,
  and the loader names itself exactly as when executed. (`ld.so --list` is not used: it stops at the
  first missing library, while the trace variable lists every one as "not found".)
- Everything else (libraries, static-pie, files without PT_INTERP, non-executable files) goes
  through the ld.so of the file's ELF class and machine, the same way.
"""

import filecmp
import functools
import json
import os
import pwd
import re
import signal
import stat
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from conftest import run_jailkit

# (EI_CLASS, e_machine) -> the glibc loader for that ABI
LOADERS = {
    (2, 62): "/lib64/ld-linux-x86-64.so.2",  # ELFCLASS64, EM_X86_64
    (1, 3): "/lib/ld-linux.so.2",  # ELFCLASS32, EM_386
}
GLIBC_LOADERS = {os.path.realpath(p) for p in LOADERS.values()}
# The loader itself in a library list: printed under its own name, so compared by this key.
RTLD = "<ld.so>"


def file_key(name: str, real: str | None) -> str:
    """A found name with a slash is a file: the loader prints it with $ORIGIN etc. expanded,
    jailkit as written in DT_NEEDED, so both are compared by the file they name."""
    return f"<file {real}>" if "/" in name and real is not None else name


TIMEOUT = 20

ET_EXEC = 2
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NEEDED, DT_STRTAB = 1, 5
DT_FILTER, DT_AUXILIARY = 0x7FFFFFFF, 0x7FFFFFFD
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_PIE = 0x08000000

_TRACE_LINE = re.compile(r"^\t(?P<name>.+?)(?: => (?P<path>.+?))?(?: \(0x[0-9a-f]+\))?$")
_LOAD_ERROR = re.compile(r"error while loading shared libraries: (?P<name>.+?): (?P<reason>.+)$")


@dataclass
class ElfFacts:
    """What the kernel reads from a file before any loader is involved."""

    elf_class: int
    machine: int
    e_type: int
    interp: str | None
    pie_flag: bool  # DF_1_PIE: a PIE executable rather than a library (decides static-pie)


@dataclass
class LoaderView:
    """One file as the loader sees it; every path is a real path."""

    interp: str | None = None
    libs: list[tuple[str, str | None]] = field(default_factory=list)  # (name, path) load order
    static: bool = False
    error: str | None = None  # the loader's own complaint, when it refused to load
    error_object: str | None = None  # the object it was loading when it refused
    how: str = ""  # which way the loader was asked (for failure messages)
    # Names only DT_AUXILIARY entries ask for: listed when absent, but the program still runs.
    optional: set[str] = field(default_factory=set)

    @property
    def missing(self) -> list[str]:
        return [name for name, path in self.libs if path is None and name not in self.optional]


def _headers(path: str):
    """(ELF header bytes, program headers as (type, offset, vaddr, filesz)), or None."""
    with open(path, "rb") as f:
        data = f.read(64)
        if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] != 1:
            return None
        if data[4] == 2:
            (phoff,) = struct.unpack_from("<Q", data, 32)
            phentsize, phnum = struct.unpack_from("<HH", data, 54)
            fmt, fields = "<IIQQQQQQ", (0, 2, 3, 5)
        else:
            (phoff,) = struct.unpack_from("<I", data, 28)
            phentsize, phnum = struct.unpack_from("<HH", data, 42)
            fmt, fields = "<IIIIIIII", (0, 1, 2, 4)
        if phentsize != struct.calcsize(fmt):
            return None  # the loader refuses such a file (and so must a reader of its headers)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    segments = []
    for i in range(len(table) // phentsize):
        entry = struct.unpack_from(fmt, table, i * phentsize)
        segments.append(tuple(entry[k] for k in fields))
    return data, segments


def _dynamic(path: str, data: bytes, segments) -> list[tuple[int, int]]:
    dyn_fmt = "<qQ" if data[4] == 2 else "<iI"
    step = struct.calcsize(dyn_fmt)
    entries = []
    for p_type, p_offset, _, p_filesz in segments:
        if p_type == PT_DYNAMIC:
            with open(path, "rb") as f:
                f.seek(p_offset)
                dyn = f.read(min(p_filesz, 1 << 20))
            for off in range(0, len(dyn) - step + 1, step):
                tag, val = struct.unpack_from(dyn_fmt, dyn, off)
                if tag == 0:
                    break
                entries.append((tag, val))
    return entries


def elf_facts(path: str) -> ElfFacts | None:
    """Class, machine, type, PT_INTERP and DF_1_PIE read with struct (independent of jailkit)."""
    try:
        headers = _headers(path)
        if headers is None:
            return None
        data, segments = headers
        interp = None
        for p_type, p_offset, _, p_filesz in segments:
            if p_type == PT_INTERP:
                with open(path, "rb") as f:
                    f.seek(p_offset)
                    raw = f.read(min(p_filesz, 4096))
                interp = raw.split(b"\0")[0].decode(errors="replace")
        flags_1 = dict(_dynamic(path, data, segments)).get(DT_FLAGS_1, 0)
    except (OSError, OverflowError, ValueError):
        return None  # program headers that point nowhere: no facts to rely on
    machine, e_type = struct.unpack_from("<H", data, 18)[0], struct.unpack_from("<H", data, 16)[0]
    return ElfFacts(data[4], machine, e_type, interp, bool(flags_1 & DF_1_PIE))


def dynamic_names(path: str) -> dict[int, list[str]]:
    """The string values of DT_NEEDED, DT_FILTER and DT_AUXILIARY entries, by tag."""
    headers = _headers(path)
    if headers is None:
        return {}
    data, segments = headers
    entries = _dynamic(path, data, segments)
    strtab = dict(entries).get(DT_STRTAB)
    names: dict[int, list[str]] = {}
    for p_type, p_offset, p_vaddr, p_filesz in segments:
        if strtab is not None and p_type == PT_LOAD and p_vaddr <= strtab < p_vaddr + p_filesz:
            with open(path, "rb") as f:
                for tag, val in entries:
                    if tag in (DT_NEEDED, DT_FILTER, DT_AUXILIARY):
                        f.seek(p_offset + strtab - p_vaddr + val)
                        name = f.read(4096).split(b"\0")[0].decode(errors="replace")
                        names.setdefault(tag, []).append(name)
    return names


def shebang(path: str) -> tuple[str, str | None] | None:
    """The kernel's reading of a `#!` line: interpreter and at most one argument (binfmt_script)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n")[0].strip(b" \t")
    interp, _, arg = line.replace(b"\t", b" ").partition(b" ")
    arg = arg.strip(b" ")
    return interp.decode(), (arg.decode() or None)


def _run(argv, env, cwd, user=None) -> subprocess.CompletedProcess:
    ids = {}
    if user is not None:
        ids = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
    # A session of its own: on a timeout the whole group this call started is killed, nothing else.
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        **ids,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _secure_exec(path: str, st: os.stat_result) -> bool:
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return True
    try:
        os.getxattr(path, "security.capability")
    except OSError:
        return False
    return os.getuid() != 0


def loader_env(library_path: str | None = None) -> dict:
    """A clean environment: no inherited LD_* variable may change what the loader does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env["LD_TRACE_LOADED_OBJECTS"] = "1"
    if library_path is not None:
        env["LD_LIBRARY_PATH"] = library_path
    return env


def loader_view(
    path: str, cwd: str | None = None, library_path: str | None = None, user: str | None = None
) -> LoaderView:
    """What the loader maps for PATH (a file name as a user would give it, relative to CWD),
    run as USER if given."""
    full = os.path.join(cwd or os.getcwd(), path)
    script = shebang(full)
    if script is not None:
        # The kernel runs the interpreter; the loader maps the interpreter's closure.
        return loader_view(script[0], cwd=cwd, library_path=library_path, user=user)
    facts = elf_facts(full)
    if facts is None:
        return LoaderView(error="not an ELF file the loader can read", how="header")
    ldso = LOADERS.get((facts.elf_class, facts.machine))
    if ldso is None:
        return LoaderView(error=f"no loader for class {facts.elf_class} machine {facts.machine}")
    env = loader_env(library_path)
    verify = _run([ldso, "--verify", full], env={}, cwd=cwd, user=user)
    if verify.returncode == 1 and facts.interp is None and facts.e_type == ET_EXEC:
        # The kernel runs it without any loader; ld.so FILE would crash on its fixed addresses.
        return LoaderView(static=True, how="ld.so --verify")
    if verify.returncode not in (0, 1, 2):
        return LoaderView(error=f"ld.so --verify exit {verify.returncode}", how="ld.so --verify")
    interp = None
    rtld_name = ldso
    if facts.interp is not None:
        interp = os.path.realpath(os.path.join(cwd or os.getcwd(), facts.interp))
        if not os.path.isfile(interp) or not any(
            filecmp.cmp(interp, known, shallow=False) for known in GLIBC_LOADERS
        ):
            # Executing it would run unknown code instead of a trace.
            return LoaderView(error=f"PT_INTERP {facts.interp} is not a glibc loader")
        rtld_name = facts.interp
    st = os.stat(full)
    # verify 1: ld.so cannot load it; only the trace through ld.so says why (never exec it).
    loadable = verify.returncode != 1
    if loadable and facts.interp and os.access(full, os.X_OK) and not _secure_exec(full, st):
        how = "exec"
        argv = [path if "/" in path else "./" + path]
    else:
        how = f"{rtld_name} FILE"
        argv = [rtld_name, os.path.realpath(full) if facts.interp else path]
    try:
        proc = _run(argv, env=env, cwd=cwd, user=user)
    except OSError as e:  # the kernel refuses to execute it
        return LoaderView(error=f"exec: {e.strerror}", how=how)
    view = LoaderView(interp=interp, how=how)
    view.static = facts.interp is None and facts.pie_flag
    rtld_real = os.path.realpath(rtld_name)
    for line in proc.stdout.splitlines():
        m = _TRACE_LINE.match(line)
        if not m or line.strip() == "statically linked":
            continue
        name, found = m["name"], m["path"]
        if name.startswith("linux-vdso") or name.startswith("linux-gate"):
            continue
        if found == "not found":
            # The loader fakes a map per object needing a missing name (faked maps never match
            # a later request), so the name repeats; nothing is mapped for any of them.
            if (name, None) not in view.libs:
                view.libs.append((name, None))
            continue
        real = os.path.realpath(os.path.join(cwd or os.getcwd(), found or name))
        view.libs.append(
            (RTLD if name == rtld_name and real == rtld_real else file_key(name, real), real)
        )
    _add_filtees(view, full, argv, env, cwd, user)
    if proc.returncode != 0:
        err = _LOAD_ERROR.search(proc.stderr)
        if err:
            view.error, view.error_object = err["reason"].strip(), err["name"]
        else:
            lines = proc.stderr.strip().splitlines()
            view.error = lines[-1] if lines else f"loader exit {proc.returncode}"
    return view


@functools.lru_cache(maxsize=4096)
def _names(path: str) -> dict[int, list[str]]:
    try:
        return dynamic_names(path)
    except (OSError, OverflowError, ValueError):
        return {}


_DEBUG_PREFIX = re.compile(r"^\s*\d+:\s*")
_AUX_REQUEST = re.compile(r"^load auxiliary object=(?P<name>.+) requested by file=(?P<by>.+)$")
_FIND = re.compile(r"^find library=(?P<name>.+) \[\d+\]; searching$")
_TRYING = re.compile(r"^trying file=(?P<path>.+)$")
_MAPPED = re.compile(r"^file=(?P<name>.+) \[\d+\];  generating link map$")


def _add_filtees(view: LoaderView, full: str, argv, env, cwd, user) -> None:
    """DT_FILTER and DT_AUXILIARY objects: which absent ones are optional, and those of the file
    itself, which the trace never prints.

    The loader maps filtees like needed objects, but a missing DT_AUXILIARY one is ignored at
    run time (the trace still says "not found"). And it moves each filtee just before its filter
    in the list it prints from the object after the file: the file's own filtees are mapped
    (before all the rest) but not printed. LD_DEBUG=libs,files shows their lookups.
    """
    objects = [full] + [path for _, path in view.libs if path is not None]
    needed, auxiliary = set(), set()
    for obj in objects:
        names = _names(os.path.realpath(obj))
        needed.update(names.get(DT_NEEDED, []), names.get(DT_FILTER, []))
        auxiliary.update(names.get(DT_AUXILIARY, []))
    view.optional = auxiliary - needed
    own = _names(os.path.realpath(full))
    if view.how == "exec" or not (own.get(DT_FILTER) or own.get(DT_AUXILIARY)):
        return
    debug = _run(argv, env={**env, "LD_DEBUG": "libs,files"}, cwd=cwd, user=user)
    requests, searched, mapped, last_try = [], set(), {}, None
    for raw in debug.stderr.splitlines():
        line = _DEBUG_PREFIX.sub("", raw).strip()
        if m := _AUX_REQUEST.match(line):
            if m["by"] == argv[-1]:
                requests.append(m["name"])
        elif m := _FIND.match(line):
            searched.add(m["name"])
            last_try = None
        elif m := _TRYING.match(line):
            last_try = m["path"]
        elif m := _MAPPED.match(line):
            mapped[m["name"]] = m["name"] if "/" in m["name"] else last_try
    front = []
    for name in requests:
        if name in mapped:
            front.append((name, os.path.realpath(os.path.join(cwd or os.getcwd(), mapped[name]))))
        elif name in searched:  # looked for and not found
            front.append((name, None))
        # else: an object already loaded under that name serves it
    view.libs[:0] = front


def normalize_jailkit(entry: dict, rtld: str | None, cwd: str | None = None) -> LoaderView:
    """jailkit's JSON for one file in the same shape as loader_view's answer.

    RTLD is the loader that is mapped anyway (the interpreter, or the ld.so a library would be
    listed with): an entry resolving to it is the loader itself, whatever name needed it.
    """
    base = cwd or os.getcwd()
    rtld_real = os.path.realpath(rtld) if rtld else None
    libs = []
    for lib in entry.get("libs") or []:
        path = lib.get("path")
        real = os.path.realpath(os.path.join(base, path)) if path else None
        key = RTLD if real is not None and real == rtld_real else file_key(lib.get("name"), real)
        libs.append((key, real))
    interp = entry.get("interp")
    return LoaderView(
        interp=os.path.realpath(os.path.join(base, interp)) if interp else None,
        libs=libs,
        static=bool(entry.get("static")),
        error=entry.get("error"),
    )


def rtld_for(path: str, cwd: str | None = None) -> str | None:
    """The loader mapped for PATH: its PT_INTERP, else the ld.so of its class (scripts: of the
    interpreter)."""
    full = os.path.join(cwd or os.getcwd(), path)
    script = shebang(full)
    if script is not None:
        return rtld_for(script[0], cwd)
    facts = elf_facts(full)
    if facts is None:
        return None
    if facts.interp:
        return facts.interp
    return LOADERS.get((facts.elf_class, facts.machine))


def differences(path: str, truth: LoaderView, got: LoaderView, missing: list | None) -> list[str]:
    """Every way jailkit's answer differs from the loader's, one readable line each."""
    out = []
    if truth.error is not None or got.error is not None:
        if (truth.error is None) != (got.error is None):
            out.append(f"{path}: error: loader says {truth.error!r}, jailkit says {got.error!r}")
        return out
    if truth.static != got.static:
        out.append(f"{path}: static: loader says {truth.static}, jailkit says {got.static}")
    if truth.interp != got.interp:
        out.append(f"{path}: interp: loader says {truth.interp}, jailkit says {got.interp}")
    t_rtld = RTLD in dict(truth.libs)
    g_rtld = RTLD in dict(got.libs)
    if t_rtld != g_rtld:
        out.append(f"{path}: loader itself mapped as a library: loader {t_rtld}, jailkit {g_rtld}")
    t_libs = [lib for lib in truth.libs if lib[0] != RTLD]
    g_libs = [lib for lib in got.libs if lib[0] != RTLD]
    if t_libs != g_libs:
        if dict(t_libs) == dict(g_libs) and len(t_libs) == len(g_libs):
            t_order, g_order = [n for n, _ in t_libs], [n for n, _ in g_libs]
            out.append(f"{path}: order: loader {t_order}, jailkit {g_order}")
        else:
            t, g = dict(t_libs), dict(g_libs)
            for name in sorted(set(t) | set(g)):
                if t.get(name, "ABSENT") != g.get(name, "ABSENT"):
                    out.append(
                        f"{path}: {name}: loader says {t.get(name, 'not mapped')}, "
                        f"jailkit says {g.get(name, 'not mapped')}"
                    )
            if len(g_libs) != len(g) or len(t_libs) != len(t):
                t_names, g_names = [n for n, _ in t_libs], [n for n, _ in g_libs]
                out.append(f"{path}: a name listed twice: loader {t_names}, jailkit {g_names}")
    if missing is not None and sorted(missing) != sorted(truth.missing):
        out.append(f"{path}: missing: loader says {truth.missing}, jailkit says {missing}")
    return out


# --- building test programs and checking jailkit against the loader on them ---------------


class Build:
    """Compiles small programs and libraries into one temporary directory."""

    def __init__(self, root: Path):
        self.root = root
        self.n = 0

    def _gcc(self, out: Path, source: str, flags, cwd=None) -> Path:
        self.n += 1
        src = self.root / f"src{self.n}.c"
        src.write_text(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["gcc", "-o", str(out), str(src), "-Wl,--no-as-needed", *map(str, flags)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
        return out

    def lib(self, rel: str, *needs, soname: str | None = "", flags=()) -> Path:
        """A shared library at ROOT/REL needing NEEDS (paths of libraries built before).

        Its SONAME is its file name unless given (None: no SONAME, so that a dependent records
        the path it was linked with).
        """
        out = self.root / rel
        name = out.name if soname == "" else soname
        extra = [f"-Wl,-soname,{name}"] if name else []
        code = f"int f{self.n}(void) {{ return {self.n}; }}\n"
        return self._gcc(out, code, ["-shared", "-fPIC", *extra, *flags, *needs])

    def exe(self, rel: str, *needs, flags=(), cwd=None) -> Path:
        code = "int main(void) { return 0; }\n"
        return self._gcc(self.root / rel, code, [*flags, *needs], cwd=cwd)


def rpath(*dirs) -> str:
    return "-Wl,--disable-new-dtags,-rpath," + ":".join(map(str, dirs))


def runpath(*dirs) -> str:
    return "-Wl,--enable-new-dtags,-rpath," + ":".join(map(str, dirs))


def jailkit_ldd(path, cwd=None, library_path=None) -> tuple[dict, subprocess.CompletedProcess]:
    args = ["ldd", "--json"]
    if library_path is not None:
        args += ["--library-path", library_path]
    proc = run_jailkit(*args, path, cwd=cwd, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)[str(path)], proc


def check(path, cwd=None, library_path=None):
    """Assert that jailkit and the loader agree on PATH; return the loader's view, jailkit's
    JSON entry and the completed jailkit process."""
    path = str(path)
    truth = loader_view(path, cwd=cwd, library_path=library_path)
    entry, proc = jailkit_ldd(path, cwd=cwd, library_path=library_path)
    got = normalize_jailkit(entry, rtld_for(path, cwd), cwd)
    problems = differences(path, truth, got, entry.get("missing"))
    assert not problems, "\n".join(problems) + f"\n(loader asked by {truth.how})"
    # Exit status: non-zero exactly when something is missing or the file was refused.
    assert (proc.returncode != 0) == bool(truth.missing or truth.error), proc.stderr
    return truth, entry, proc
