"""Each loader rule, compiled with gcc in a private directory and compared with the loader itself.

Every test checks two things: that the loader's own answer shows the rule at work (so the case
really exercises it), and that `jailkit ldd --json` gives the same answer.
"""

import grp
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from loader_truth import (
    LOADERS,
    RTLD,
    Build,
    LoaderView,
    check,
    differences,
    file_key,
    jailkit_ldd,
    loader_view,
    normalize_jailkit,
    rpath,
    runpath,
)

LD64 = LOADERS[(2, 62)]
LD32 = LOADERS[(1, 3)]


@pytest.fixture
def build(tmp_path) -> Build:
    return Build(tmp_path)


def found(truth, name) -> str | None:
    return dict(truth.libs).get(name, "not mapped")


def real(path) -> str:
    return os.path.realpath(path)


# -- PT_INTERP, order, names -------------------------------------------------------------------


def test_pt_interp_names_the_loader(build):
    # A private copy of ld.so as the interpreter: libc's own need of ld-linux-x86-64.so.2 is then
    # satisfied by that copy (already loaded, same SONAME), not by the system's.
    ldso = build.root / "myld" / "ld.so"
    ldso.parent.mkdir()
    shutil.copy(LD64, ldso)
    prog = build.exe("prog", flags=[f"-Wl,--dynamic-linker={ldso}"])
    truth, entry, _ = check(prog)
    assert truth.interp == str(ldso)
    assert found(truth, RTLD) == str(ldso)
    assert entry["interp"] == str(ldso)


def test_needed_breadth_first(build):
    d = build.root / "lib"
    leaf_a = build.lib("lib/libleafa.so")
    leaf_b = build.lib("lib/libleafb.so")
    mid_a = build.lib("lib/libmida.so", leaf_a)
    mid_b = build.lib("lib/libmidb.so", leaf_b)
    prog = build.exe("prog", mid_a, mid_b, flags=[rpath(d)])
    truth, _, _ = check(prog)  # check() compares the whole load order
    mine = ["libmida.so", "libmidb.so", "libleafa.so", "libleafb.so"]
    assert [name for name, _ in truth.libs if name in mine] == mine


def test_needed_name_satisfied_by_loaded_soname(build):
    # prog needs libfirst.so (whose SONAME is libalias.so); libsecond.so needs libalias.so and
    # has its own RUNPATH with a different libalias.so that must never be opened.
    first_dir, other_dir = build.root / "first", build.root / "other"
    build.lib("first/libfirst.so")  # linked against under this SONAME, then replaced
    second = build.lib(
        "first/libsecond.so", build.lib("other/libalias.so"), flags=[runpath(other_dir)]
    )
    prog = build.exe("prog", first_dir / "libfirst.so", second, flags=[rpath(first_dir)])
    build.lib("first/libfirst.so", soname="libalias.so")
    truth, entry, _ = check(prog)
    assert found(truth, "libfirst.so") == str(first_dir / "libfirst.so")
    assert "libalias.so" not in dict(truth.libs)
    paths = {lib["path"] for lib in entry["libs"]}
    assert str(other_dir / "libalias.so") not in paths


# -- DT_RPATH and DT_RUNPATH -----------------------------------------------------------------


def test_rpath_is_inherited_by_dependencies(build):
    d = build.root / "d"
    inner = build.lib("d/libinner.so")
    outer = build.lib("d/libouter.so", inner)  # no path of its own: found via prog's RPATH
    prog = build.exe("prog", outer, flags=[rpath(d)])
    truth, _, _ = check(prog)
    assert found(truth, "libinner.so") == str(d / "libinner.so")


def test_runpath_is_only_for_direct_needs(build):
    d = build.root / "d"
    inner = build.lib("d/libinner.so")
    outer = build.lib("d/libouter.so", inner)
    prog = build.exe("prog", outer, flags=[runpath(d)])
    truth, _, proc = check(prog)
    assert found(truth, "libouter.so") == str(d / "libouter.so")
    assert truth.missing == ["libinner.so"]
    assert proc.returncode != 0


def test_runpath_intermediate_in_rpath_chain(build):
    # prog (RPATH a) -> libmid (in a, RUNPATH x) -> libdirect (only in a: not found, libmid's
    # RUNPATH turns RPATHs off for its needs) and libx (in x) -> libdeep (only in a: found, libx
    # has no RUNPATH so the RPATH chain libx -> libmid -> prog is walked, past libmid).
    a, x = build.root / "a", build.root / "x"
    deep = build.lib("a/libdeep.so")
    direct = build.lib("a/libdirect.so")
    libx = build.lib("x/libx.so", deep)
    mid = build.lib("a/libmid.so", direct, libx, flags=[runpath(x)])
    prog = build.exe("prog", mid, flags=[rpath(a)])
    truth, _, _ = check(prog)
    assert found(truth, "libdirect.so") is None
    assert found(truth, "libx.so") == str(x / "libx.so")
    assert found(truth, "libdeep.so") == str(a / "libdeep.so")


def test_rpath_of_the_program_after_the_chain(build):
    # libmid has its own RPATH (y); its need libz2 is found in the program's RPATH (a) only.
    a, y = build.root / "a", build.root / "y"
    (y).mkdir()
    z2 = build.lib("a/libz2.so")
    mid = build.lib("a/libmid.so", z2, flags=[rpath(y)])
    prog = build.exe("prog", mid, flags=[rpath(a)])
    truth, _, _ = check(prog)
    assert found(truth, "libz2.so") == str(a / "libz2.so")


def test_filter_and_auxiliary_libraries_are_mapped(build):
    # DT_FILTER (-F) and DT_AUXILIARY (-f) name objects the loader maps with the filter, each placed
    # just before its filter in the load order.
    d = build.root / "d"
    build.lib("d/libfiltee.so")
    build.lib("d/libaux.so")
    flt = build.lib("d/libfilter.so", flags=["-Wl,-F,libfiltee.so"])
    aux = build.lib("d/libauxf.so", flags=["-Wl,-f,libaux.so"])
    prog = build.exe("prog", flt, aux, flags=[rpath(d)])
    truth, _, _ = check(prog)
    names = [name for name, _ in truth.libs]
    assert names.index("libfiltee.so") + 1 == names.index("libfilter.so")
    assert names.index("libaux.so") + 1 == names.index("libauxf.so")


def test_missing_filtee(build):
    # Without its filtee a filter cannot be used: the program does not start.
    d = build.root / "d"
    filtee = build.lib("d/libfiltee.so")
    flt = build.lib("d/libfilter.so", flags=["-Wl,-F,libfiltee.so"])
    prog = build.exe("prog", flt, flags=[rpath(d)])
    filtee.unlink()
    truth, _, proc = check(prog)
    assert truth.missing == ["libfiltee.so"]
    assert proc.returncode != 0


def test_missing_auxiliary_is_not_fatal(build):
    # A missing DT_AUXILIARY object is listed as not found, but the program still starts.
    d = build.root / "d"
    aux = build.lib("d/libaux.so")
    auxf = build.lib("d/libauxf.so", flags=["-Wl,-f,libaux.so"])
    prog = build.exe("prog", auxf, flags=[rpath(d)])
    aux.unlink()
    truth, _, proc = check(prog)
    assert found(truth, "libaux.so") is None and truth.missing == []
    assert proc.returncode == 0
    # The truth of "not fatal": run it (our own empty main) and see it start.
    assert subprocess.run([prog], timeout=60).returncode == 0


@pytest.mark.parametrize("present", [True, False])
def test_filters_of_the_library_itself(build, present):
    # A library given alone (as ld.so FILE loads it) with its own DT_FILTER and DT_AUXILIARY:
    # the loader maps them before everything else; a missing filtee is fatal, an auxiliary not.
    filtee = build.lib("d/libfiltee.so")
    aux = build.lib("d/libaux.so")
    lib = build.lib(
        "d/libself.so",
        real("/lib/x86_64-linux-gnu/libz.so.1"),
        flags=["-Wl,-F,libfiltee.so", "-Wl,-f,libaux.so", rpath("$ORIGIN")],
    )
    if not present:
        filtee.unlink()
        aux.unlink()
    truth, _, proc = check(lib)
    assert [name for name, _ in truth.libs[:2]] == ["libfiltee.so", "libaux.so"]
    assert truth.missing == ([] if present else ["libfiltee.so"])


# -- $ORIGIN and other dynamic string tokens --------------------------------------------------


def test_origin_through_symlinked_directory_is_not_normalized(build):
    # prog finds libviadir in linkdir (a symlink to real/sub). Its $ORIGIN is the string
    # ".../linkdir", and "$ORIGIN/../dep" is opened as written, so the kernel resolves ".."
    # from real/sub: real/dep. libdep, opened as ".../linkdir/../dep/libdep.so", has
    # "$ORIGIN/sib" again: real/dep/sib. Normalizing the string would give ROOT/dep/... instead.
    root = build.root
    for top in ("", "real/"):
        build.lib(f"{top}dep/sib/libsib.so")
        build.lib(f"{top}dep/libdep.so", root / "dep/sib/libsib.so", flags=[runpath("$ORIGIN/sib")])
    build.lib("real/sub/libviadir.so", root / "dep/libdep.so", flags=[runpath("$ORIGIN/../dep")])
    (root / "linkdir").symlink_to(root / "real" / "sub")
    prog = build.exe("prog", root / "real/sub/libviadir.so", flags=[runpath(root / "linkdir")])
    truth, _, _ = check(prog)
    assert found(truth, "libdep.so") == str(root / "real/dep/libdep.so")
    assert found(truth, "libsib.so") == str(root / "real/dep/sib/libsib.so")


def test_origin_of_library_that_is_a_symlink(build):
    root = build.root
    dep_here = build.lib("links/dep/libdep.so")
    build.lib("store/dep/libdep.so")
    build.lib("store/lib/libsym.so", dep_here, flags=[runpath("$ORIGIN/dep")])
    (root / "store/lib/dep").symlink_to(root / "store/dep")
    (root / "links").mkdir(exist_ok=True)
    (root / "links/libsym.so").symlink_to(root / "store/lib/libsym.so")
    prog = build.exe("prog", root / "store/lib/libsym.so", flags=[runpath(root / "links")])
    truth, _, _ = check(prog)
    # $ORIGIN is links/ (where the symlink is), so links/dep/libdep.so; store/dep would be wrong.
    assert found(truth, "libdep.so") == str(root / "links/dep/libdep.so")


def test_origin_of_symlinked_program_is_its_real_directory(build):
    root = build.root
    build.lib("app/lib/libapp.so")
    wrong = build.lib("bin/lib/libapp.so")
    prog = build.exe("app/prog", wrong, flags=[runpath("$ORIGIN/lib")])
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin/prog").symlink_to(prog)
    truth, _, _ = check(root / "bin/prog")
    assert truth.how == "exec"
    assert found(truth, "libapp.so") == str(root / "app/lib/libapp.so")


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("mode", [0o4755, 0o2755])
def test_setid_program_through_a_symlink(build, mode):
    # Secure mode would ignore the trace variable, so the loader is asked through ld.so with the
    # real path; $ORIGIN must still be the real directory, as when the kernel executes it.
    build.lib("app/lib/libsid.so")
    wrong = build.lib("bin/lib/libsid.so")
    prog = build.exe("app/prog", wrong, flags=[runpath("$ORIGIN/lib")])
    os.chown(prog, 0, grp.getgrnam("nogroup").gr_gid)
    (build.root / "bin/prog").symlink_to(prog)
    prog.chmod(mode)
    try:
        truth, _, _ = check(build.root / "bin/prog")
    finally:
        prog.chmod(0o755)  # leave no setuid program behind
    assert truth.how != "exec"
    assert found(truth, "libsid.so") == str(build.root / "app/lib/libsid.so")


TOKEN_DIRS = [
    "lib",
    "lib64",
    "lib32",
    "lib/x86_64-linux-gnu",
    "lib/i386-linux-gnu",
    "x86_64",
    "haswell",
    "xeon_phi",
    "i386",
    "i486",
    "i586",
    "i686",
]


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("token", ["$LIB", "${LIB}", "$PLATFORM", "${PLATFORM}"])
def test_lib_and_platform_tokens(build, token, bits):
    flags = ["-m32"] if bits == 32 else []
    for sub in TOKEN_DIRS:
        build.lib(f"t/{sub}/libtok.so", flags=flags)
    lib = build.root / "t/lib/libtok.so"
    prog = build.exe("t/prog", lib, flags=[*flags, runpath(f"$ORIGIN/{token}")])
    truth, _, _ = check(prog)
    hit = found(truth, "libtok.so")
    assert hit and hit.startswith(str(build.root / "t")), truth.libs


@pytest.mark.parametrize("element", ["${ORIGIN}/o", "$ORIGINAL/o", "$ORIGIN_X/o", "$FOO/o", "$/o"])
def test_dynamic_string_token_spelling(build, element):
    # Only a known name, optionally in braces, ending at a character that cannot continue a name,
    # is a token; anything else stays literal (and is then a path relative to the cwd).
    root = build.root
    literal = root / "cwd" / element
    build.lib(f"cwd/{element}/libspell.so")
    build.lib("app/o/libspell.so")
    prog = build.exe("app/prog", literal / "libspell.so", flags=[runpath(element)])
    truth, _, _ = check(prog, cwd=root / "cwd")
    assert found(truth, "libspell.so") is not None


def test_needed_with_absolute_path(build):
    lib = build.lib("abs/libabs.so", soname=None)
    prog = build.exe("prog", lib)
    truth, _, _ = check(prog)
    assert found(truth, file_key(str(lib), str(lib))) == str(lib)


def test_needed_with_relative_path_is_relative_to_cwd(build):
    root = build.root
    build.lib("rel/librel.so", soname=None)
    prog = build.exe("prog", "rel/librel.so", cwd=root)  # DT_NEEDED is "rel/librel.so"
    truth, _, _ = check(prog, cwd=root)
    librel = str(root / "rel/librel.so")
    assert found(truth, file_key("rel/librel.so", librel)) == librel
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    truth, _, proc = check(prog, cwd=elsewhere)
    assert truth.missing == ["rel/librel.so"]
    assert "rel/librel.so" in proc.stderr


def test_origin_in_a_needed_name(build):
    # A DT_NEEDED of "$ORIGIN/sub/libin.so" (the dependency's SONAME) is expanded like a path.
    lib = build.lib("app/sub/libin.so", soname="$ORIGIN/sub/libin.so")
    prog = build.exe("app/prog", lib)
    truth, entry, _ = check(prog)
    assert [path for _, path in truth.libs if path and path.endswith("libin.so")] == [str(lib)]
    assert {"name": "$ORIGIN/sub/libin.so", "path": str(lib)} in entry["libs"]


def test_empty_and_relative_rpath_elements_are_relative_to_cwd(build):
    root = build.root
    lib = build.lib("rel/librp.so")
    prog = build.exe("prog", lib, flags=["-Wl,--disable-new-dtags,-rpath,nowhere::rel"])
    truth, _, _ = check(prog, cwd=root / "rel")  # found through the empty element
    assert found(truth, "librp.so") == str(lib)
    truth, _, _ = check(prog, cwd=root)  # found through "rel"
    assert found(truth, "librp.so") == str(lib)


def test_origin_in_library_path_is_the_programs(build):
    lib = build.lib("app/lib/liblp.so")
    prog = build.exe("app/prog", lib)
    truth, _, _ = check(prog, library_path="$ORIGIN/lib")
    assert found(truth, "liblp.so") == str(lib)


def test_same_file_under_two_names_is_one_object(build):
    # libtwo.so is a symlink to libone.so in another directory: the loader finds the same inode
    # and maps it once.
    one = build.lib("a/libone.so")
    two = build.lib("b/libtwo.so")
    prog = build.exe("prog", one, two, flags=[rpath("$ORIGIN/a", "$ORIGIN/b")])
    two.unlink()
    two.symlink_to(one)
    truth, _, _ = check(prog)
    assert found(truth, "libone.so") == str(one)
    assert "libtwo.so" not in dict(truth.libs)


def test_directory_where_a_library_is_expected(build):
    (build.root / "d/libdir.so").mkdir(parents=True)
    good = build.lib("e/libdir.so")
    prog = build.exe("prog", good, flags=[rpath(build.root / "d", good.parent)])
    truth, entry, _ = check(prog)
    # ld.so has no strerror: it says "Error 21" where jailkit may say "Is a directory".
    assert truth.error.startswith("cannot read file data: ")
    assert "cannot read file data" in entry["error"] and "libdir.so" in entry["error"]


def test_dependency_cycle(build):
    # liba needs libb, which needs liba: each is mapped once.
    build.lib("c/liba.so")
    libb = build.lib("c/libb.so", build.root / "c/liba.so")
    liba = build.lib("c/liba.so", libb)
    prog = build.exe("prog", liba, flags=[rpath(build.root / "c")])
    truth, _, _ = check(prog)
    assert found(truth, "libb.so") == str(libb)


# -- hwcaps --------------------------------------------------------------------------------


def supported_hwcaps() -> list[str]:
    """glibc-hwcaps subdirectories this CPU may use, in the loader's priority order."""
    out = subprocess.run([LD64, "--help"], capture_output=True, text=True, check=True).stdout
    return re.findall(r"^\s+(x86-64-v\d) \(supported, searched\)", out, re.M)


def test_glibc_hwcaps_best_supported_subdirectory(build):
    levels = ["x86-64-v2", "x86-64-v3", "x86-64-v4"]
    for level in levels:
        build.lib(f"h/glibc-hwcaps/{level}/libhw.so")
    base = build.lib("h/libhw.so")
    prog = build.exe("prog", base, flags=[runpath(build.root / "h")])
    truth, _, _ = check(prog)
    best = supported_hwcaps()
    want = build.root / "h/glibc-hwcaps" / best[0] / "libhw.so" if best else base
    assert found(truth, "libhw.so") == str(want)


def test_glibc_hwcaps_falls_back_in_priority_order(build):
    best = supported_hwcaps()
    assert best, "this CPU supports no x86-64 level above the baseline"
    build.lib(f"h/glibc-hwcaps/{best[-1]}/libhw.so")
    build.lib("h/glibc-hwcaps/x86-64-v9/libhw.so")  # no such level: never searched
    base = build.lib("h/libhw.so")
    prog = build.exe("prog", base, flags=[rpath(build.root / "h")])
    truth, _, _ = check(prog)
    assert found(truth, "libhw.so") == str(build.root / "h/glibc-hwcaps" / best[-1] / "libhw.so")


@pytest.mark.parametrize(
    "bits,subdirs",
    [
        (64, ["tls", "x86_64"]),
        (64, ["x86_64"]),
        (64, ["tls"]),
        (64, ["tls/x86_64", "x86_64/x86_64"]),
        (64, ["x86_64", "tls", "glibc-hwcaps/x86-64-v2"]),  # glibc-hwcaps come first
        (32, ["i686", "sse2", "tls"]),
        (32, ["sse2"]),
        (32, ["tls/i686", "i686/sse2"]),
    ],
)
def test_legacy_hwcap_subdirectories(build, bits, subdirs):
    flags = ["-m32"] if bits == 32 else []
    for sub in subdirs:
        build.lib(f"h/{sub}/liblegacy.so", flags=flags)
    base = build.lib("h/liblegacy.so", flags=flags)
    prog = build.exe("prog", base, flags=[*flags, rpath(build.root / "h")])
    truth, _, _ = check(prog)
    assert found(truth, "liblegacy.so") != str(base), "no legacy subdirectory was used"


def test_i386_has_no_glibc_hwcaps(build):
    build.lib("h/glibc-hwcaps/x86-64-v2/libnohw.so", flags=["-m32"])
    base = build.lib("h/libnohw.so", flags=["-m32"])
    prog = build.exe("prog", base, flags=["-m32", rpath(build.root / "h")])
    truth, _, _ = check(prog)
    assert found(truth, "libnohw.so") == str(base)


# -- default directories and their exceptions ----------------------------------------------------


def test_nodefaultlib_stops_cache_and_default_directories(build):
    d = build.root / "d"
    zlib = real("/lib/x86_64-linux-gnu/libz.so.1")
    nodef = build.lib("d/libnodef.so", zlib, flags=["-Wl,-z,nodefaultlib"])
    prog = build.exe("prog", nodef, flags=[rpath(d)])
    truth, _, _ = check(prog)
    assert found(truth, "libz.so.1") is None
    # Without the flag the same need is found in the default directories.
    plain = build.lib("e/libplain.so", zlib)
    prog2 = build.exe("prog2", plain, flags=[rpath(plain.parent)])
    truth, _, _ = check(prog2)
    assert found(truth, "libz.so.1") == zlib


def test_library_path_option_is_ld_library_path(build):
    d = build.root / "d"
    lib = build.lib("d/libenv.so")
    build.lib("e/libenv.so")
    prog = build.exe("prog", lib, flags=[runpath(build.root / "e")])
    truth, _, _ = check(prog, library_path=str(d))
    assert found(truth, "libenv.so") == str(lib)


# -- candidates the loader passes over or fails on ---------------------------------------------


def test_wrong_class_earlier_in_path_is_skipped(build):
    build._gcc(
        build.root / "d32/libcls.so",
        "int g(void){return 1;}\n",
        ["-m32", "-shared", "-fPIC", "-Wl,-soname,libcls.so"],
    )
    lib64 = build.lib("d64/libcls.so")
    prog = build.exe("prog", lib64, flags=[rpath(build.root / "d32", build.root / "d64")])
    truth, _, _ = check(prog)
    assert found(truth, "libcls.so") == str(lib64)


def set_machine(path: Path, machine: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 18, machine)
    path.write_bytes(bytes(data))


def test_wrong_machine_earlier_in_path_is_skipped(build):
    other = build.lib("arm/libmach.so")
    set_machine(other, 183)  # EM_AARCH64: same class, another machine
    good = build.lib("x86/libmach.so")
    prog = build.exe("prog", good, flags=[rpath(other.parent, good.parent)])
    truth, _, _ = check(prog)
    assert found(truth, "libmach.so") == str(good)


@pytest.mark.parametrize(
    "content,reason",
    [
        (
            b"this is not an ELF file at all, but it is long enough to be read whole" * 2,
            "invalid ELF header",
        ),
        (b"\x7fELF", "file too short"),
    ],
)
def test_non_elf_candidate_stops_the_loader(build, content, reason):
    good = build.lib("good/libbad.so")
    bad = build.root / "bad/libbad.so"
    bad.parent.mkdir()
    bad.write_bytes(content)
    prog = build.exe("prog", good, flags=[rpath(bad.parent, good.parent)])
    truth, entry, proc = check(prog)
    assert truth.error == reason
    # The loader names the candidate it opened: jailkit names it too, with the same reason.
    assert os.path.basename(truth.error_object) == "libbad.so"
    assert reason in entry["error"] and "libbad.so" in entry["error"]
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_as_candidate(build, device):
    # The loader opens whatever the name leads to; a device gives it no ELF header.
    good = build.lib("good/libdev.so")
    (build.root / "bad").mkdir()
    (build.root / "bad/libdev.so").symlink_to(device)
    prog = build.exe("prog", good, flags=[rpath(build.root / "bad", good.parent)])
    truth, entry, proc = check(prog)
    assert truth.error in ("invalid ELF header", "file too short")
    assert truth.error in entry["error"] and "libdev.so" in entry["error"]


def test_path_elements_that_are_not_directories(build):
    root = build.root
    (root / "file").write_text("a regular file where a directory is expected\n")
    x = build.lib("ok/libnd1.so")
    y = build.lib("ok/libnd2.so")
    elements = [root / "file", root / "file/sub", root / "absent", root / "ok"]
    prog = build.exe("prog", x, y, flags=[rpath(*elements)])
    truth, _, _ = check(prog)
    assert found(truth, "libnd1.so") == str(x) and found(truth, "libnd2.so") == str(y)


@pytest.mark.usefixtures("as_root")
def test_unreadable_candidate_is_used_by_root(build):
    # Mode 000 does not stop root (CAP_DAC_OVERRIDE): the loader opens it and uses it.
    first = build.lib("first/libperm.so")
    second = build.lib("second/libperm.so")
    first.chmod(0)
    prog = build.exe("prog", second, flags=[rpath(first.parent, second.parent)])
    truth, _, _ = check(prog)
    assert found(truth, "libperm.so") == str(first)


# -- program kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-static", "-static-pie"])
def test_static_programs(build, flag):
    prog = build.exe("prog", flags=[flag])
    truth, entry, proc = check(prog)
    assert truth.static and not truth.libs
    assert entry["static"] is True and entry["interp"] is None and entry["libs"] == []
    assert proc.returncode == 0


def test_i386_program(build):
    d32 = build.root / "d32"
    lib32 = build._gcc(
        d32 / "lib32dep.so",
        "int g(void){return 1;}\n",
        ["-m32", "-shared", "-fPIC", "-Wl,-soname,lib32dep.so"],
    )
    build.lib("d64/lib32dep.so")  # a 64-bit candidate earlier in the path: skipped
    prog = build._gcc(
        build.root / "prog32",
        "int main(void){return 0;}\n",
        ["-m32", lib32, rpath(build.root / "d64", d32)],
    )
    truth, entry, _ = check(prog)
    assert truth.interp == real(LD32)
    assert found(truth, "lib32dep.so") == str(lib32)
    assert found(truth, "libc.so.6") == real("/lib32/libc.so.6")


def test_i386_skips_cache_entries_of_the_other_abi(build):
    # /etc/ld.so.cache has an x86-64 libz.so.1 but no i386 one: an i386 program must not get it.
    stub = build._gcc(
        build.root / "stub/libz.so.1",
        "int g(void){return 1;}\n",
        ["-m32", "-shared", "-fPIC", "-Wl,-soname,libz.so.1"],
    )
    prog = build._gcc(build.root / "prog32", "int main(void){return 0;}\n", ["-m32", stub])
    stub.unlink()
    truth, _, _ = check(prog)
    assert found(truth, "libz.so.1") in (None, real("/usr/lib32/libz.so.1"))


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_script_gets_its_interpreters_closure(build):
    script = write_script(build.root / "run.sh", "#!/bin/sh\necho hi\n")
    truth, entry, _ = check(script)
    assert found(truth, "libc.so.6") == real("/lib/x86_64-linux-gnu/libc.so.6")
    assert entry["scripts"] == ["/bin/sh"]


def test_script_whose_interpreter_is_a_script(build):
    inner = write_script(build.root / "inner", "#!/bin/bash\n")
    outer = write_script(build.root / "outer", f"#!{inner} -x\n")
    truth, entry, _ = check(outer)
    assert "libtinfo.so.6" in dict(truth.libs)  # bash's closure, through two `#!` levels
    assert entry["scripts"] == [str(inner), "/bin/bash"]


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's


def test_env_script_needs_env_and_the_program_it_finds(build):
    script = write_script(build.root / "tool", "#!/usr/bin/env python3\nprint(1)\n")
    target = shutil.which("python3", path=DEFAULT_PATH)
    assert target
    env_view = loader_view("/usr/bin/env")
    target_view = loader_view(target)
    entry, proc = jailkit_ldd(script)
    assert proc.returncode == 0, proc.stderr
    assert entry["scripts"][0] == "/usr/bin/env" and real(entry["scripts"][1]) == real(target)
    got = normalize_jailkit(entry, LD64)
    want = {(n, p) for n, p in env_view.libs + target_view.libs}
    assert {(n, p) for n, p in got.libs} == want
    assert got.interp == env_view.interp


def test_missing_library_names_who_needs_it(build):
    gone = build.lib("d/libgone.so")
    mid = build.lib("d/libmid.so", gone)
    prog = build.exe("prog", mid, flags=[rpath(gone.parent)])
    gone.unlink()
    truth, entry, proc = check(prog)
    assert truth.missing == ["libgone.so"]
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "libgone.so" in line]
    assert len(lines) == 1 and str(mid) in lines[0], proc.stderr


# -- /etc/ld.so.cache, in a private mount namespace -------------------------------------------

NAMESPACE_SCRIPT = r"""
import dataclasses, json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from conftest import run_jailkit
from loader_truth import loader_view
job = json.loads(sys.argv[2])
# ldconfig also rewrites its aux cache: give it a throwaway one.
subprocess.run(["mount", "-t", "tmpfs", "none", "/var/cache/ldconfig"], check=True)
subprocess.run(["ldconfig", "-X", "-C", job["cache"], "-f", job["conf"]], check=True)
subprocess.run(["mount", "--bind", job["cache"], "/etc/ld.so.cache"], check=True)
# ld.so.conf now lists none of the cache's private directories: the cache is stale.
subprocess.run(["mount", "--bind", "/dev/null", "/etc/ld.so.conf"], check=True)
for path in job["remove"]:
    os.unlink(path)
proc = run_jailkit("ldd", "--json", *job["programs"], timeout=120)
print(json.dumps({
    "truth": {p: dataclasses.asdict(loader_view(p)) for p in job["programs"]},
    "jailkit": json.loads(proc.stdout), "stderr": proc.stderr,
}, default=sorted))
"""


def in_private_cache(build: Build, cache_dirs, programs, remove=()) -> dict:
    """Loader and jailkit answers for PROGRAMS with an ld.so.cache built from CACHE_DIRS bound
    over /etc/ld.so.cache, and REMOVE deleted after the cache was built."""
    conf = build.root / "ld.so.conf"
    conf.write_text("".join(f"{d}\n" for d in cache_dirs))
    cache = build.root / "ld.so.cache"
    cache.touch()
    job = {
        "cache": str(cache),
        "conf": str(conf),
        "remove": list(map(str, remove)),
        "programs": list(map(str, programs)),
    }
    # unshare -m: the mounts exist only in this namespace and vanish with it.
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        sys.executable,
        "-c",
        NAMESPACE_SCRIPT,
        str(REPO / "tests"),
        json.dumps(job),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for view in result["truth"].values():
        view["libs"] = [tuple(lib) for lib in view["libs"]]
        view["optional"] = set(view["optional"])
    return result


@pytest.mark.usefixtures("as_root")
def test_ld_so_cache(build):
    only = build.lib("cached/libonly.so.1")
    gone = build.lib("cached2/libgone.so.1")
    best = supported_hwcaps()
    for level in best:
        build.lib(f"cached/glibc-hwcaps/{level}/libhw.so.1")
    hw = build.lib("cached/libhw.so.1")
    zlib = real("/lib/x86_64-linux-gnu/libz.so.1")
    nodef = build.lib("d/libnodef.so", only, zlib, flags=["-Wl,-z,nodefaultlib"])
    p_only, p_gone, p_hw, p_nodef = progs = [
        build.exe("p_only", only),
        build.exe("p_gone", gone),
        build.exe("p_hw", hw),
        build.exe("p_nodef", nodef, flags=[rpath(nodef.parent)]),
    ]
    result = in_private_cache(build, [only.parent, gone.parent], progs, remove=[gone])
    problems = []
    for prog in map(str, progs):
        entry = result["jailkit"][prog]
        truth = LoaderView(**result["truth"][prog])
        problems += differences(prog, truth, normalize_jailkit(entry, LD64), entry["missing"])
    assert not problems, "\n".join(problems)
    truths = {p: dict(result["truth"][str(p)]["libs"]) for p in progs}
    # Found only through the cache, whose directory ld.so.conf no longer names.
    assert truths[p_only]["libonly.so.1"] == str(only)
    # The cache names a file that is gone: the loader goes on to the default directories.
    assert truths[p_gone]["libgone.so.1"] is None
    want = build.root / "cached/glibc-hwcaps" / best[0] / "libhw.so.1" if best else hw
    assert truths[p_hw]["libhw.so.1"] == str(want)
    # DF_1_NODEFLIB: a cache entry outside the system directories is used, one inside is not.
    assert truths[p_nodef]["libonly.so.1"] == str(only)
    assert truths[p_nodef]["libz.so.1"] is None
