"""The dynamic loader's fixed rules, for each kind of object it can load on this machine.

Everything here is what glibc 2.36's ld.so (as Debian builds it) decides before it opens a file:
which directories it searches by default, which subdirectories it tries in each (glibc-hwcaps
levels this CPU supports, then the legacy hwcap power set), what $ORIGIN, $LIB and $PLATFORM
expand to, and which cache entries it accepts.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from jailkit.elf.ldcache import CacheRules

EM_386, EM_X86_64 = 3, 62
ELFCLASS32, ELFCLASS64 = 1, 2

X86_64_LEVELS = {
    "x86-64-v2": {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"},
    "x86-64-v3": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}
HASWELL = {"avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt"}
X86_PLATFORMS = ("i586", "i686", "haswell", "xeon_phi")  # glibc's _dl_x86_platforms
FIRST_PLATFORM_BIT = 48
HWCAP_BITS = {"sse2": 1 << 0, "x86_64": 1 << 1, "avx512_1": 1 << 2}
TLS_BIT = 1 << 63


@dataclass(frozen=True)
class Cpu:
    vendor: str
    flags: frozenset[str]

    @classmethod
    @functools.cache
    def current(cls) -> Cpu:
        vendor, flags = "", frozenset()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    key = key.strip()
                    if key == "vendor_id":
                        vendor = value.strip()
                    elif key == "flags":
                        flags = frozenset(value.split())
                        break
        except OSError:
            pass
        return cls(vendor, flags)

    def x86_64_levels(self) -> list[str]:
        """The x86-64 ISA levels above baseline this CPU supports, lowest first."""
        levels = []
        for name, needs in X86_64_LEVELS.items():
            if not needs <= self.flags:
                break
            levels.append(name)
        return levels


@dataclass(frozen=True)
class LoaderRules:
    """How one loader (one ELF class and machine) finds libraries."""

    kind: str
    ei_class: int
    machine: int
    interp: str
    system_dirs: tuple[str, ...]  # each ends with "/"
    dst_lib: str
    platform: str
    subdirs: tuple[str, ...]  # tried in this order in every search directory; "" last
    cache: CacheRules

    def expand(self, text: str, origin: str | None) -> str | None:
        """Expand $ORIGIN, $LIB and $PLATFORM (also as ${...}); None when the path is unusable."""
        if "$" not in text:
            return text
        unusable = False

        def substitute(match: re.Match) -> str:
            nonlocal unusable
            name = match.group(1) or match.group(2)
            if name == "ORIGIN":
                if origin is None:
                    unusable = True
                    return ""
                return origin
            return self.dst_lib if name == "LIB" else self.platform

        expanded = DST.sub(substitute, text)
        return None if unusable else expanded

    def search_dirs(self, path_list: str, origin: str | None) -> list[str]:
        """A DT_RPATH/DT_RUNPATH/LD_LIBRARY_PATH value as the loader's list of directories."""
        dirs: list[str] = []
        for element in path_list.split(":"):
            if element:
                expanded = self.expand(element, origin)
                if not expanded:
                    continue
                element = expanded.rstrip("/") + "/" if expanded.strip("/") else "/"
            else:
                element = ""  # an empty element is the current directory
            if element not in dirs:
                dirs.append(element)
        return dirs

    def is_system_path(self, path: str) -> bool:
        return any(path.startswith(d) for d in self.system_dirs)


# A DST is $NAME or ${NAME}; $NAME must not run on into more identifier characters.
DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


def legacy_subdirs(names: list[str]) -> list[str]:
    """glibc's power set of legacy hwcap names, most specific first, as path prefixes.

    names are in glibc's order (hwcap bits, then platform, then "tls"); a subset's path lists
    its members from last to first, and subsets are ordered as a binary count down over the
    names from last to first.
    """
    count = len(names)
    result = []
    for mask in range((1 << count) - 1, -1, -1):
        members = [names[count - 1 - i] for i in range(count) if mask & (1 << (count - 1 - i))]
        result.append("".join(member + "/" for member in members))
    return result


def _x86_64_rules(cpu: Cpu) -> LoaderRules:
    levels = cpu.x86_64_levels()
    hwcaps = [f"glibc-hwcaps/{level}/" for level in reversed(levels)]
    hwcap_names = ["x86_64"]
    platform = "x86_64"  # AT_PLATFORM
    if cpu.vendor == "GenuineIntel":
        if "avx512cd" in cpu.flags:
            if "avx512er" in cpu.flags:
                if "avx512pf" in cpu.flags:
                    platform = "xeon_phi"
            elif {"avx512bw", "avx512dq", "avx512vl"} <= cpu.flags:
                hwcap_names.append("avx512_1")
        if platform == "x86_64" and HASWELL <= cpu.flags:
            platform = "haswell"
    subdirs = tuple(hwcaps + legacy_subdirs([*hwcap_names, platform, "tls"]))
    return LoaderRules(
        kind="x86-64",
        ei_class=ELFCLASS64,
        machine=EM_X86_64,
        interp="/lib64/ld-linux-x86-64.so.2",
        system_dirs=("/lib/x86_64-linux-gnu/", "/usr/lib/x86_64-linux-gnu/", "/lib/", "/usr/lib/"),
        dst_lib="lib/x86_64-linux-gnu",
        platform=platform,
        subdirs=subdirs,
        cache=CacheRules(
            cache_flags=(0x303,),
            cache_id=0x303,
            hwcaps_priority={level: i + 1 for i, level in enumerate(reversed(levels))},
            isa_levels=(1 << (len(levels) + 1)) - 1,
            hwcap_allowed=_hwcap_bits(hwcap_names),
            platform_mask=_platform_mask(),
            platform_bit=_platform_bit(platform),
        ),
    )


def _i386_rules(cpu: Cpu) -> LoaderRules:
    # Debian's libc6-i386 (what gcc-multilib brings) is a biarch build living in /lib32;
    # a multiarch libc6:i386 lives in /lib/i386-linux-gnu. The loader's own location tells.
    interp = "/lib/ld-linux.so.2"
    multiarch = "/i386-linux-gnu/" in os.path.realpath(interp)
    libdir = "lib/i386-linux-gnu" if multiarch else "lib32"
    system_dirs = (f"/{libdir}/", f"/usr/{libdir}/", "/lib/", "/usr/lib/")
    hwcap_names = ["sse2"] if "sse2" in cpu.flags else []
    platform = "i686"
    return LoaderRules(
        kind="i386",
        ei_class=ELFCLASS32,
        machine=EM_386,
        interp=interp,
        system_dirs=system_dirs,
        dst_lib=libdir,
        platform=platform,
        subdirs=tuple(legacy_subdirs([*hwcap_names, platform, "tls"])),
        cache=CacheRules(
            cache_flags=(1, 3),
            cache_id=3,
            hwcaps_priority={},
            isa_levels=1,
            hwcap_allowed=_hwcap_bits(hwcap_names),
            platform_mask=_platform_mask(),
            platform_bit=_platform_bit(platform),
        ),
    )


def _hwcap_bits(names: list[str]) -> int:
    bits = TLS_BIT | _platform_mask()
    for name in names:
        bits |= HWCAP_BITS[name]
    return bits


def _platform_mask() -> int:
    return ((1 << len(X86_PLATFORMS)) - 1) << FIRST_PLATFORM_BIT


def _platform_bit(platform: str) -> int:
    if platform in X86_PLATFORMS:
        return 1 << (FIRST_PLATFORM_BIT + X86_PLATFORMS.index(platform))
    return (1 << 64) - 1


@functools.cache
def rules_for(ei_class: int, machine: int) -> LoaderRules | None:
    """The loader rules for objects of this class and machine, or None if none runs them here."""
    if os.uname().machine != "x86_64":
        return None
    if ei_class == ELFCLASS64 and machine == EM_X86_64:
        return _x86_64_rules(Cpu.current())
    if ei_class == ELFCLASS32 and machine == EM_386:
        return _i386_rules(Cpu.current())
    return None
