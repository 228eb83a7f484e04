"""Reading the parts of an ELF file the dynamic loader looks at.

Only the ELF header, the program headers and the dynamic segment are read, with
pyelftools' struct definitions (built once per kind of file, not once per file:
building them dominates the cost of a straightforward ELFFile per file). Corrupt
input never escapes as a pyelftools or construct exception: it becomes ElfError.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from jailkit.errors import JailkitError

ELF_MAGIC = b"\x7fELF"
EI_NIDENT = 16
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ELFOSABI_SYSV, ELFOSABI_GNU = 0, 3
LIBC_ABI_MAX = 4  # glibc 2.36's libc-abis: DEFAULT, UNIQUE, IFUNC, ABSOLUTE
ET_EXEC, ET_DYN = 2, 3
DF_1_NODEFLIB = 0x800
DF_1_PIE = 0x08000000

# A dynamic segment larger than this is not something a linker wrote.
MAX_DYNAMIC_ENTRIES = 100_000
MAX_STRING = 4096


class ElfError(JailkitError):
    """The file is not a readable ELF object; the message says why."""


@dataclass
class ElfInfo:
    path: str
    dev: int
    ino: int
    ei_class: int
    machine: int
    e_type: int
    interp: str | None = None
    dynamic: bool = False
    needed: list[str] = field(default_factory=list)
    # DT_NEEDED, DT_AUXILIARY and DT_FILTER names in dynamic-array order, as (tag, name)
    dependencies: list[tuple[str, str]] = field(default_factory=list)
    rpath: str | None = None
    runpath: str | None = None
    soname: str | None = None
    flags_1: int = 0

    @property
    def static(self) -> bool:
        """Static or static-pie: nothing for the loader to map."""
        if self.interp is not None:
            return False
        if not self.dynamic:
            return self.e_type == ET_EXEC or not self.needed
        return bool(self.flags_1 & DF_1_PIE)


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open a path for reading without blocking on FIFOs or devices; only regular files pass."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ElfError(f"{path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ElfError(f"{path}: {kind}")
    return fd, st


def header_problem(ident: bytes, ei_class: int, machine: int, read_len: int) -> str | None:
    """What glibc's open_verify says of a candidate library's first bytes.

    Returns None when the loader accepts it, "skip" when it silently passes over it (wrong class
    or machine), or the loader's fatal error message.
    """
    if read_len < (64 if ei_class == ELFCLASS64 else 52):
        return "file too short"
    if ident[:4] != ELF_MAGIC:
        return "invalid ELF header"
    if ident[4] != ei_class:
        return "skip"
    if ident[5] != ELFDATA2LSB:
        return "ELF file data encoding not little-endian"
    if ident[6] != 1:
        return "ELF file version ident does not match current one"
    osabi, abiversion = ident[7], ident[8]
    if osabi not in (ELFOSABI_SYSV, ELFOSABI_GNU):
        return "ELF file OS ABI invalid"
    if not (abiversion == 0 or (osabi == ELFOSABI_GNU and abiversion < LIBC_ABI_MAX)):
        return "ELF file ABI version invalid"
    if any(ident[9:EI_NIDENT]):
        return "nonzero padding in e_ident"
    return None


class ElfReader:
    """Parses ELF files with pyelftools' structs, reusing them across files of one kind."""

    def __init__(self):
        self._structs: dict[tuple, object] = {}
        self._by_inode: dict[tuple[int, int], ElfInfo] = {}

    def _structs_for(self, little: bool, elfclass: int, ehdr_fields: tuple | None = None):
        from elftools.elf.structs import ELFStructs

        key = (little, elfclass, ehdr_fields)
        structs = self._structs.get(key)
        if structs is None:
            structs = ELFStructs(little_endian=little, elfclass=elfclass)
            structs.create_basic_structs()
            if ehdr_fields is not None:
                structs.create_advanced_structs(*ehdr_fields)
            self._structs[key] = structs
        return structs

    def read(self, path: str) -> ElfInfo:
        """The loader-relevant facts of the ELF file at path (cached per device and inode)."""
        fd, st = open_regular(path)
        try:
            cached = self._by_inode.get((st.st_dev, st.st_ino))
            if cached is not None:
                return cached
            try:
                info = self._parse(fd, path, st)
            except ElfError:
                raise
            except Exception as e:  # pyelftools/construct raise many kinds on corrupt input
                raise ElfError(f"{path}: corrupt ELF file ({type(e).__name__}: {e})") from None
            self._by_inode[(st.st_dev, st.st_ino)] = info
            return info
        finally:
            os.close(fd)

    def _parse(self, fd: int, path: str, st: os.stat_result) -> ElfInfo:
        size = st.st_size
        head = os.pread(fd, 64, 0)
        if len(head) < EI_NIDENT or head[:4] != ELF_MAGIC:
            raise ElfError(f"{path}: not an ELF file")
        if head[4] not in (ELFCLASS32, ELFCLASS64) or head[5] not in (ELFDATA2LSB, ELFDATA2MSB):
            raise ElfError(f"{path}: invalid ELF header")
        little = head[5] == ELFDATA2LSB
        elfclass = 64 if head[4] == ELFCLASS64 else 32
        basic = self._structs_for(little, elfclass)
        if len(head) < basic.Elf_Ehdr.sizeof():
            raise ElfError(f"{path}: file too short")
        ehdr = basic.Elf_Ehdr.parse(head)
        structs = self._structs_for(
            little, elfclass, (ehdr["e_type"], ehdr["e_machine"], ehdr["e_ident"]["EI_OSABI"])
        )
        info = ElfInfo(
            path=path,
            dev=st.st_dev,
            ino=st.st_ino,
            ei_class=head[4],
            machine=int.from_bytes(head[18:20], "little" if little else "big"),
            e_type=int.from_bytes(head[16:18], "little" if little else "big"),
        )
        phentsize, phnum, phoff = ehdr["e_phentsize"], ehdr["e_phnum"], ehdr["e_phoff"]
        if phnum == 0:
            return info
        if phentsize != structs.Elf_Phdr.sizeof():
            raise ElfError(f"{path}: ELF file's phentsize not the expected size")
        if phoff + phnum * phentsize > size:
            raise ElfError(f"{path}: program headers lie beyond the end of the file")
        table = os.pread(fd, phnum * phentsize, phoff)
        phdrs = [
            structs.Elf_Phdr.parse(table[i * phentsize : (i + 1) * phentsize]) for i in range(phnum)
        ]
        loads = [p for p in phdrs if p["p_type"] == "PT_LOAD"]
        for phdr in phdrs:
            if phdr["p_type"] == "PT_INTERP":
                info.interp = self._read_string(fd, path, phdr["p_offset"], phdr["p_filesz"], size)
            elif phdr["p_type"] == "PT_DYNAMIC":
                info.dynamic = True
                self._read_dynamic(fd, path, structs, phdr, loads, size, info)
        return info

    @staticmethod
    def _read_string(fd: int, path: str, offset: int, length: int, size: int) -> str:
        if offset >= size:
            raise ElfError(f"{path}: string lies beyond the end of the file")
        data = os.pread(fd, min(length or MAX_STRING, MAX_STRING), offset)
        end = data.find(b"\0")
        if end < 0:
            raise ElfError(f"{path}: unterminated string in ELF file")
        return data[:end].decode("utf-8", "surrogateescape")

    def _read_dynamic(self, fd, path, structs, phdr, loads, size, info) -> None:
        # The loader reads the dynamic array where PT_DYNAMIC's address is mapped, not at p_offset.
        entry_size = structs.Elf_Dyn.sizeof()
        offset = self._vaddr_to_offset(path, phdr["p_vaddr"], loads)
        count = min(phdr["p_filesz"] // entry_size, MAX_DYNAMIC_ENTRIES)
        if offset + count * entry_size > size:
            raise ElfError(f"{path}: dynamic segment lies beyond the end of the file")
        raw = os.pread(fd, count * entry_size, offset)
        strtab = None
        dependency_offsets: list[tuple[str, int]] = []
        named: dict[str, int] = {}
        for i in range(count):
            entry = structs.Elf_Dyn.parse(raw[i * entry_size : (i + 1) * entry_size])
            tag, value = entry["d_tag"], entry["d_val"]
            if tag == "DT_NULL":
                break
            if tag in ("DT_NEEDED", "DT_AUXILIARY", "DT_FILTER"):
                dependency_offsets.append((tag, value))
            elif tag == "DT_STRTAB":
                strtab = value
            elif tag == "DT_FLAGS_1":
                info.flags_1 = value
            elif tag in ("DT_RPATH", "DT_RUNPATH", "DT_SONAME"):
                named[tag] = value
        if not dependency_offsets and not named:
            return
        if strtab is None:
            raise ElfError(f"{path}: dynamic segment has no string table")
        strtab_offset = self._vaddr_to_offset(path, strtab, loads)

        def string(offset: int) -> str:
            return self._read_string(fd, path, strtab_offset + offset, MAX_STRING, size)

        info.dependencies = [(tag, string(offset)) for tag, offset in dependency_offsets]
        info.needed = [name for tag, name in info.dependencies if tag == "DT_NEEDED"]
        if "DT_RUNPATH" in named:
            info.runpath = string(named["DT_RUNPATH"])
        elif "DT_RPATH" in named:  # glibc ignores DT_RPATH when DT_RUNPATH is present
            info.rpath = string(named["DT_RPATH"])
        if "DT_SONAME" in named:
            info.soname = string(named["DT_SONAME"])

    @staticmethod
    def _vaddr_to_offset(path: str, vaddr: int, loads) -> int:
        for load in loads:
            if load["p_vaddr"] <= vaddr < load["p_vaddr"] + load["p_filesz"]:
                return vaddr - load["p_vaddr"] + load["p_offset"]
        raise ElfError(f"{path}: string table address {vaddr:#x} is not in any loaded segment")
