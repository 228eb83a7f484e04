"""The set of files the dynamic loader maps for a program, found without running anything.

This follows glibc 2.36's _dl_map_object and _dl_map_object_deps: DT_NEEDED breadth first, a
name satisfied by an object already loaded (by name, SONAME or inode), then DT_RPATH of the
requester and of every object up its chain of loaders (unless the requester has DT_RUNPATH),
the program's DT_RPATH, LD_LIBRARY_PATH, the requester's own DT_RUNPATH, /etc/ld.so.cache, and
the default directories (the last two limited by DF_1_NODEFLIB). Each directory is tried with
the glibc-hwcaps and legacy hwcap subdirectories first; a candidate of another ELF class or
machine is passed over; one that is not ELF at all stops the loader, as it stops here.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, field

from jailkit.elf.ldcache import LdCache
from jailkit.elf.loader import EM_X86_64, LoaderRules, rules_for
from jailkit.elf.reader import (
    DF_1_NODEFLIB,
    ELFCLASS64,
    ET_DYN,
    ET_EXEC,
    ElfError,
    ElfInfo,
    ElfReader,
    header_problem,
    open_regular,
)

SCRIPT_DEPTH = 4  # the kernel's limit on nested `#!` interpreters (BINPRM_MAX_RECURSION)
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LoadError(Exception):
    """The loader would stop here: the message is the one it prints."""


@dataclass
class Lib:
    name: str
    path: str | None


@dataclass
class Resolution:
    file: str
    interp: str | None = None
    libs: list[Lib] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    needed_by: dict[str, list[str]] = field(default_factory=dict)
    dependencies: dict[str, list[Lib]] = field(default_factory=dict)  # object -> its DT_NEEDED
    static: bool = False
    scripts: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def files(self) -> list[str]:
        """Every host path the loader opens for this file, the file itself first."""
        paths = [self.file, *self.scripts]
        if self.interp:
            paths.append(self.interp)
        paths.extend(lib.path for lib in self.libs if lib.path)
        return list(dict.fromkeys(paths))

    def to_json(self) -> dict:
        return {
            "interp": self.interp,
            "libs": [{"name": lib.name, "path": lib.path} for lib in self.libs],
            "missing": self.missing,
            "static": self.static,
            "error": self.error,
            "scripts": self.scripts,
        }


@dataclass
class LoadedObject:
    """One object in the simulated link map."""

    path: str  # l_name: the path it was opened by (not a realpath)
    info: ElfInfo
    names: set[str]
    loader: LoadedObject | None  # l_loader: the object whose DT_NEEDED brought it in
    origin: str | None


class Resolver:
    """Resolves closures; caches ELF files, directory probes and the ld.so.cache across calls."""

    def __init__(self, library_path: str | None = None, cache_file: str = "/etc/ld.so.cache"):
        self.reader = ElfReader()
        self.library_path = library_path
        self.cache_file = cache_file
        self._cache: LdCache | None = None
        self._probes: dict[tuple[str, str], tuple[str, str | None] | None] = {}

    @property
    def ldcache(self) -> LdCache:
        if self._cache is None:
            self._cache = LdCache.load(self.cache_file)
        return self._cache

    # -- the program and its `#!` interpreters -------------------------------------------

    def resolve(self, path: str) -> Resolution:
        result = Resolution(file=path)
        try:
            self._resolve_program(path, result, depth=0)
        except (ElfError, LoadError) as e:
            result.error = str(e)
        return result

    def find_library(self, name: str) -> str | None:
        """Where dlopen(name) from a plain 64-bit program finds a bare soname, or None."""
        rules = rules_for(ELFCLASS64, EM_X86_64)
        if self.library_path:
            found = self._open_path(name, self.library_path, None, rules)
            if found:
                return found[0]
        cached = self.ldcache.lookup(name, rules.cache)
        if cached and self._verify(cached, rules):
            return cached
        found = self._open_dirs(name, rules.system_dirs, rules)
        return found[0] if found else None

    def _resolve_program(self, path: str, result: Resolution, depth: int) -> None:
        interpreter = read_shebang(path)
        if interpreter is None:
            self._resolve_elf(path, result)
            return
        if depth >= SCRIPT_DEPTH:
            raise LoadError(f"{path}: too many levels of `#!` interpreters")
        program, argument = interpreter
        if not os.path.isabs(program):
            program = unnormalized_absolute(program)
        result.scripts.append(program)
        self._resolve_program(program, result, depth + 1)
        # `#!/usr/bin/env NAME` runs NAME from PATH: the jail needs it too.
        if os.path.basename(program) == "env" and argument and not argument.startswith("-"):
            target = find_in_path(argument.split()[0])
            if target is None:
                raise LoadError(f"{path}: `#!` names {argument!r}, which is not in PATH")
            result.scripts.append(target)
            self._resolve_program(target, result, depth + 1)

    # -- ELF objects ---------------------------------------------------------------------

    def _resolve_elf(self, path: str, result: Resolution) -> None:
        info = self.reader.read(path)
        rules = rules_for(info.ei_class, info.machine)
        if rules is None:
            raise ElfError(f"{path}: no loader on this machine runs this kind of ELF file")
        if info.static:
            result.static = result.static or not result.libs
            return
        result.static = False
        executed = info.interp is not None
        if executed:
            result.interp = result.interp or info.interp
        # As executed, $ORIGIN of the program is the directory of its real path (the kernel
        # passes the resolved file); a library given alone is loaded as `ld.so FILE` does.
        where = os.path.realpath(path) if executed else unnormalized_absolute(path)
        main = LoadedObject(path, info, {path}, None, os.path.dirname(where))
        link_map = [main]
        interp_path = info.interp or rules.interp
        try:
            interp_info = self.reader.read(interp_path)
        except ElfError as e:
            raise LoadError(f"{path}: cannot run its interpreter: {e}") from None
        if interp_info.ei_class != info.ei_class or interp_info.machine != info.machine:
            raise LoadError(f"{path}: interpreter {interp_path} is for another kind of ELF file")
        interp = LoadedObject(
            interp_path, interp_info, {interp_path}, None, os.path.dirname(interp_path)
        )
        link_map.append(interp)
        self._map_dependencies(main, link_map, rules, result)

    def _map_dependencies(self, main, link_map, rules, result) -> None:
        queue = deque([main])
        # The loader lists each object once, under the name that first loaded it, and each
        # missing name where it was first needed.
        listed = {lib.path or lib.name for lib in result.libs}
        # The link map in the loader's order, the program first (the loader does not list it).
        program = Lib("", main.path)
        chain = [program]
        while queue:
            requester = queue.popleft()
            for tag, name in requester.info.dependencies:
                result.needed_by.setdefault(name, [])
                if requester.path not in result.needed_by[name]:
                    result.needed_by[name].append(requester.path)
                obj, new = self._map_object(name, requester, main, link_map, rules)
                result.dependencies.setdefault(requester.path, []).append(
                    Lib(name, obj.path if obj else None)
                )
                if obj is None:
                    # A missing DT_AUXILIARY is listed by the loader but does not stop the program.
                    if tag != "DT_AUXILIARY" and name not in result.missing:
                        result.missing.append(name)
                    if name not in listed:
                        listed.add(name)
                        list_object(chain, Lib(name, None), tag, requester)
                    continue
                if obj.info is main.info or obj.path in listed:
                    continue
                listed.add(obj.path)
                if new and tag == "DT_NEEDED":
                    queue.append(obj)
                elif new:
                    queue.appendleft(obj)  # a filtee's needs are taken next
                list_object(chain, Lib(name, obj.path), tag, requester)
        result.libs.extend(lib for lib in chain if lib is not program)

    def _map_object(self, name, requester, main, link_map, rules):
        """The object a DT_NEEDED name maps to: (object, newly loaded?), or (None, False)."""
        if name == "" and requester is not main:
            return main, False  # the executed program's link-map name is ""
        for obj in link_map:
            if name in obj.names or name == obj.info.soname:
                obj.names.add(name)
                return obj, False
        if "/" in name:
            path = rules.expand(name, requester.origin)
            if not path:
                raise LoadError(f"{name}: cannot load: empty dynamic string token substitution")
            found = self._verify(path, rules)
        else:
            found = self._search(name, requester, main, rules)
        if found is None:
            return None, False
        path, info = found
        for obj in link_map:  # the same file under another name is the same object
            if (obj.info.dev, obj.info.ino) == (info.dev, info.ino):
                obj.names.add(name)
                return obj, False
        directory = os.path.dirname(unnormalized_absolute(path))
        obj = LoadedObject(path, info, {name}, requester, directory)
        link_map.append(obj)
        return obj, True

    def _search(self, name, requester, main, rules: LoaderRules):
        if requester.info.runpath is None:
            did_main = False
            chain = requester
            while chain is not None:
                if chain.info.rpath is not None:
                    found = self._open_path(name, chain.info.rpath, chain.origin, rules)
                    if found:
                        return found
                    did_main = did_main or chain is main
                chain = chain.loader
            if not did_main and main.info.rpath is not None:
                found = self._open_path(name, main.info.rpath, main.origin, rules)
                if found:
                    return found
        if self.library_path:
            found = self._open_path(name, self.library_path.replace(";", ":"), main.origin, rules)
            if found:
                return found
        if requester.info.runpath is not None:
            found = self._open_path(name, requester.info.runpath, requester.origin, rules)
            if found:
                return found
        nodeflib = bool(requester.info.flags_1 & DF_1_NODEFLIB)
        cached = self.ldcache.lookup(name, rules.cache)
        if cached and not (nodeflib and rules.is_system_path(cached)):
            found = self._verify(cached, rules)
            if found:
                return found
        if not nodeflib:
            return self._open_dirs(name, rules.system_dirs, rules)
        return None

    def _open_path(self, name, path_list, origin, rules):
        return self._open_dirs(name, rules.search_dirs(path_list, origin), rules)

    def _open_dirs(self, name, dirs, rules):
        for directory in dirs:
            for subdir in rules.subdirs:
                found = self._verify(directory + subdir + name, rules)
                if found:
                    return found
        return None

    def _verify(self, path: str, rules: LoaderRules) -> tuple[str, ElfInfo] | None:
        """open_verify: the candidate if the loader accepts it, None if it passes it over."""
        key = (path, rules.kind)
        if key not in self._probes:
            self._probes[key] = self._probe(path, rules)
        probe = self._probes[key]
        if probe is None:
            return None
        if probe[1] is not None:
            raise LoadError(f"error while loading shared libraries: {path}: {probe[1]}")
        return path, self.reader.read(path)

    def _probe(self, path: str, rules: LoaderRules) -> tuple[str, str | None] | None:
        # The loader opens any kind of file and judges what read() gives; only a FIFO is not
        # opened here, since the loader would block on it for ever.
        try:
            st = os.stat(path)
        except OSError:
            return None  # absent: the loader tries the next candidate
        if stat.S_ISFIFO(st.st_mode):
            return path, "a FIFO: the loader would block opening it"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return None  # unreadable: the loader tries the next candidate
        try:
            head = os.pread(fd, 64, 0) if stat.S_ISREG(st.st_mode) else os.read(fd, 64)
        except OSError as e:
            return path, f"cannot read file data: {e.strerror}"
        finally:
            os.close(fd)
        problem = header_problem(head, rules.ei_class, rules.machine, len(head))
        if problem == "skip":
            return None
        if problem is None:
            problem = loadable_problem(head, rules)
        return None if problem == "skip" else (path, problem)


def list_object(libs: list[Lib], lib: Lib, tag: str, requester: LoadedObject) -> None:
    """Add a newly mapped object where the loader lists it: a filtee just before its filter."""
    if tag == "DT_NEEDED":
        libs.append(lib)
        return
    position = next((i for i, x in enumerate(libs) if x.path == requester.path), len(libs))
    libs.insert(position, lib)


def loadable_problem(head: bytes, rules: LoaderRules) -> str | None:
    """The checks open_verify makes after e_ident, in its order (little-endian x86 only)."""
    if int.from_bytes(head[20:24], "little") != 1:
        return "ELF file version does not match current one"
    if int.from_bytes(head[18:20], "little") != rules.machine:
        return "skip"
    if int.from_bytes(head[16:18], "little") not in (ET_EXEC, ET_DYN):
        return "only ET_DYN and ET_EXEC can be loaded"
    phentsize_at = 54 if rules.ei_class == ELFCLASS64 else 42
    expected = 56 if rules.ei_class == ELFCLASS64 else 32
    if int.from_bytes(head[phentsize_at : phentsize_at + 2], "little") != expected:
        return "ELF file's phentsize not the expected size"
    return None


def read_shebang(path: str) -> tuple[str, str] | None:
    """The `#!` interpreter and its optional argument, or None for a file that is not a script."""
    fd, _ = open_regular(path)
    try:
        head = os.pread(fd, 256, 0)
    finally:
        os.close(fd)
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    if not line:
        raise ElfError(f"{path}: `#!` line names no interpreter")
    program, _, argument = line.replace(b"\t", b" ").partition(b" ")
    return os.fsdecode(program), os.fsdecode(argument.strip())


def unnormalized_absolute(path: str) -> str:
    """An absolute path as the loader makes one: the cwd prefixed, `..` kept (it is physical)."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def find_in_path(name: str) -> str | None:
    for directory in ENV_PATH.split(":"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def resolve(paths, library_path: str | None = None) -> dict[str, Resolution]:
    """Resolve each path's closure: {path as given: Resolution}."""
    resolver = Resolver(library_path)
    return {path: resolver.resolve(path) for path in paths}


def path_chain(path: str) -> list[tuple[str, str | None]]:
    """Every symlink met while resolving an absolute path, then the final object.

    Each item is (absolute path, link target as stored or None for the final object), so that
    a jail can hold the same chain of links as the host.
    """
    steps: list[tuple[str, str | None]] = []
    pending = [part for part in path.split("/") if part]
    current = "/"
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current.rstrip("/")) or "/"
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(40, "Too many levels of symbolic links", path)
            target = os.readlink(candidate)
            steps.append((candidate, target))
            pending = [p for p in target.split("/") if p] + pending
            if target.startswith("/"):
                current = "/"
        else:
            current = candidate
    steps.append((current, None))
    return steps
