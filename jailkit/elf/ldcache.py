"""/etc/ld.so.cache in its binary format, looked up the way glibc 2.36's dl-cache.c does.

ldconfig writes entries sorted by name; for one name, glibc-hwcaps entries come first. The
loader takes the glibc-hwcaps entry of highest priority this CPU supports, else the first
plain entry whose flags fit. The cache is the truth even where it is stale: an entry whose
directory is no longer configured is still used, as long as the file is still there.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
NEW_HEADER = struct.Struct("<20sII B3x I 12x")  # magic, nlibs, len_strings, flags, ext offset
NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap
OLD_HEADER = struct.Struct("<11sxI")  # magic (+1 pad), nlibs
OLD_ENTRY = struct.Struct("<iII")  # flags, key, value
EXTENSION_MAGIC = 0xEAA42174
EXTENSION_TAG_GLIBC_HWCAPS = 1
HWCAP_EXTENSION = 1 << 62
ISA_LEVEL_MASK = (1 << 10) - 1


@dataclass(frozen=True)
class CacheRules:
    """What the loader of one kind (class and machine) accepts from the cache."""

    cache_flags: tuple[int, ...]  # entry flags the loader accepts: (0x303,) x86-64, (1, 3) i386
    cache_id: int  # the flags of the loader's own kind: an entry with them ends the search
    hwcaps_priority: dict[str, int]  # supported glibc-hwcaps subdirectory -> priority, 1 best
    isa_levels: int  # x86 ISA levels this CPU supports as bits: baseline 1, v2 2, v3 4, v4 8
    hwcap_allowed: int  # legacy hwcap bits an entry may carry: the loader's, platform, tls
    platform_mask: int  # the bits of the hwcap word that name a platform
    platform_bit: int  # this CPU's platform bit, or all ones when it has none in the list

    def legacy_hwcap_fits(self, hwcap: int) -> bool:
        if hwcap & ~self.hwcap_allowed:
            return False
        return not (hwcap & self.platform_mask) or hwcap & self.platform_mask == self.platform_bit


@dataclass(frozen=True)
class CacheEntry:
    flags: int
    path: str
    hwcap: int
    hwcaps_subdir: str | None  # set for glibc-hwcaps entries


def _string(data: bytes, offset: int) -> str | None:
    if offset >= len(data):
        return None
    end = data.find(b"\0", offset)
    if end < 0:
        return None
    return data[offset:end].decode("utf-8", "surrogateescape")


class LdCache:
    """An in-memory index of one ld.so.cache file: name -> entries in file order."""

    def __init__(self, entries: dict[str, list[CacheEntry]]):
        self.entries = entries

    @classmethod
    def load(cls, path: str = "/etc/ld.so.cache") -> LdCache:
        """Parse the cache; a missing or corrupt cache is an empty one, as for the loader."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return cls({})
        return cls(parse(data))

    def lookup(self, name: str, rules: CacheRules) -> str | None:
        """The path the loader takes from the cache for a bare name, or None."""
        best = None
        best_priority = 0
        for entry in self.entries.get(name, ()):
            if entry.flags not in rules.cache_flags:
                continue
            named = entry.hwcaps_subdir is not None
            if named:
                level = 1 << ((entry.hwcap >> 32) & ISA_LEVEL_MASK)
                if level & rules.isa_levels != level:
                    continue
            elif best is not None:
                break  # the glibc-hwcaps entries (listed first) are exhausted
            if not named and not rules.legacy_hwcap_fits(entry.hwcap):
                continue
            if named:
                priority = rules.hwcaps_priority.get(entry.hwcaps_subdir, 0)
                if priority == 0 or (best is not None and priority >= best_priority):
                    continue
                best_priority = priority
            best = entry.path
            if not named and entry.flags == rules.cache_id:
                break
        return best


def parse(data: bytes) -> dict[str, list[CacheEntry]]:
    if data.startswith(NEW_MAGIC):
        return _parse_new(data, 0)
    if data.startswith(OLD_MAGIC) and len(data) >= OLD_HEADER.size:
        _, nlibs = OLD_HEADER.unpack_from(data)
        if (len(data) - OLD_HEADER.size) // OLD_ENTRY.size < nlibs:
            return {}
        # An old-format cache may carry a new-format one after its entries (8-byte aligned).
        offset = (OLD_HEADER.size + nlibs * OLD_ENTRY.size + 7) & ~7
        if data[offset : offset + len(NEW_MAGIC)] == NEW_MAGIC:
            return _parse_new(data, offset)
        strings = OLD_HEADER.size + nlibs * OLD_ENTRY.size
        table = data[strings:]
        result: dict[str, list[CacheEntry]] = {}
        for i in range(nlibs):
            flags, key, value = OLD_ENTRY.unpack_from(data, OLD_HEADER.size + i * OLD_ENTRY.size)
            name, path = _string(table, key), _string(table, value)
            if name is not None and path is not None:
                result.setdefault(name, []).append(CacheEntry(flags, path, 0, None))
        return result
    return {}


def _parse_new(data: bytes, base: int) -> dict[str, list[CacheEntry]]:
    cache = data[base:]
    if len(cache) < NEW_HEADER.size:
        return {}
    _, nlibs, _, _, extension_offset = NEW_HEADER.unpack_from(cache)
    if (len(cache) - NEW_HEADER.size) // NEW_ENTRY.size < nlibs:
        return {}
    subdirs = _hwcaps_subdirs(cache, extension_offset)
    result: dict[str, list[CacheEntry]] = {}
    for i in range(nlibs):
        offset = NEW_HEADER.size + i * NEW_ENTRY.size
        flags, key, value, _, hwcap = NEW_ENTRY.unpack_from(cache, offset)
        name, path = _string(cache, key), _string(cache, value)
        if name is None or path is None:
            continue
        subdir = None
        if (hwcap >> 32) & ~ISA_LEVEL_MASK == HWCAP_EXTENSION >> 32:
            index = hwcap & 0xFFFFFFFF
            subdir = subdirs[index] if index < len(subdirs) else ""
        result.setdefault(name, []).append(CacheEntry(flags, path, hwcap, subdir))
    return result


def _hwcaps_subdirs(cache: bytes, offset: int) -> list[str]:
    """The glibc-hwcaps subdirectory names from the cache's extension section."""
    if offset == 0 or offset + 8 > len(cache):
        return []
    magic, count = struct.unpack_from("<II", cache, offset)
    if magic != EXTENSION_MAGIC:
        return []
    for i in range(count):
        start = offset + 8 + i * 16
        if start + 16 > len(cache):
            return []
        tag, _, section_offset, section_size = struct.unpack_from("<IIII", cache, start)
        if tag == EXTENSION_TAG_GLIBC_HWCAPS and section_offset + section_size <= len(cache):
            indexes = struct.unpack_from(f"<{section_size // 4}I", cache, section_offset)
            return [_string(cache, i) or "" for i in indexes]
    return []
