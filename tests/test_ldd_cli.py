"""The `jailkit ldd` command line: --json schema, --tree, --library-path and the exit status."""

import json
import os
import re

import pytest
from conftest import run_jailkit
from loader_truth import Build, check, loader_view, rpath, runpath

SCHEMA = {"interp", "libs", "missing", "static", "error"}


@pytest.fixture
def build(tmp_path) -> Build:
    return Build(tmp_path)


@pytest.fixture
def chain(build):
    """prog -> libtop.so -> libbottom.so (all found through prog's RPATH), plus libc."""
    bottom = build.lib("d/libbottom.so")
    top = build.lib("d/libtop.so", bottom)
    return build.exe("prog", top, flags=[rpath(build.root / "d")])


def assert_schema(entry: dict) -> None:
    assert SCHEMA <= set(entry), entry
    assert entry["interp"] is None or os.path.isabs(entry["interp"])
    assert isinstance(entry["libs"], list)
    for lib in entry["libs"]:
        assert set(lib) == {"name", "path"}, lib
        assert isinstance(lib["name"], str) and lib["name"]
        assert lib["path"] is None or os.path.isabs(lib["path"]), lib
    assert isinstance(entry["missing"], list) and all(isinstance(m, str) for m in entry["missing"])
    assert isinstance(entry["static"], bool)
    assert entry["error"] is None or (isinstance(entry["error"], str) and entry["error"])


def test_json_schema_keyed_by_path_as_given(build, chain):
    static = build.exe("static", flags=["-static"])
    os.symlink(chain, build.root / "link")
    given = ["prog", "./prog", "link", str(static), "/usr/bin/ls"]
    proc = run_jailkit("ldd", "--json", *given, cwd=build.root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(proc.stdout)
    assert list(result) == given
    for entry in result.values():
        assert_schema(entry)
    names = [lib["name"] for lib in result["prog"]["libs"]]
    assert names[:2] == ["libtop.so", "libc.so.6"] and "libbottom.so" in names
    assert result["prog"]["libs"] == result["./prog"]["libs"] == result["link"]["libs"]
    assert result[str(static)]["static"] is True and result[str(static)]["libs"] == []
    assert result["prog"]["static"] is False
    assert result["prog"]["interp"] == "/lib64/ld-linux-x86-64.so.2"


def test_json_with_missing_library_and_bad_file(build, chain):
    (build.root / "d/libbottom.so").unlink()
    bad = build.root / "bad"
    bad.write_text("neither ELF nor script\n")
    proc = run_jailkit("ldd", "--json", chain, bad, "/usr/bin/ls")
    assert proc.returncode != 0
    result = json.loads(proc.stdout)  # stdout stays one JSON document; problems go to stderr
    for entry in result.values():
        assert_schema(entry)
    assert result[str(chain)]["missing"] == ["libbottom.so"]
    assert {"name": "libbottom.so", "path": None} in result[str(chain)]["libs"]
    assert result[str(chain)]["error"] is None
    assert result[str(bad)]["error"] and result[str(bad)]["libs"] == []
    assert result["/usr/bin/ls"]["error"] is None and result["/usr/bin/ls"]["missing"] == []
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert any("libbottom.so" in line and str(build.root / "d/libtop.so") in line for line in lines)
    assert any(str(bad) in line for line in lines)


def test_plain_list(build, chain):
    proc = run_jailkit("ldd", chain)
    assert proc.returncode == 0, proc.stderr
    truth = loader_view(str(chain))
    text = proc.stdout
    for name, path in truth.libs:
        if path is not None and not name.startswith("<"):
            assert re.search(rf"^\s+{re.escape(name)} => \S+", text, re.M), (name, text)
    assert str(chain) in text


def test_plain_list_shows_not_found(build, chain):
    (build.root / "d/libbottom.so").unlink()
    proc = run_jailkit("ldd", chain)
    assert proc.returncode != 0
    assert re.search(r"^\s+libbottom\.so => not found$", proc.stdout, re.M), proc.stdout


def tree_lines(text: str) -> list[tuple[int, str]]:
    """(indent, library name) for every `name => path` line."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\s*)(\S+) => ", line)
        if m:
            out.append((len(m[1].expandtabs(8)), m[2]))
    return out


def test_tree_nests_each_library_under_the_object_that_needs_it(build, chain):
    proc = run_jailkit("ldd", "--tree", chain)
    assert proc.returncode == 0, proc.stderr
    lines = tree_lines(proc.stdout)
    names = [name for _, name in lines]
    assert "libtop.so" in names and "libbottom.so" in names, proc.stdout
    top = names.index("libtop.so")
    bottom = names.index("libbottom.so")
    # libbottom is shown below libtop, deeper, before anything at libtop's depth again.
    assert bottom > top and lines[bottom][0] > lines[top][0], proc.stdout
    assert all(indent > lines[top][0] for indent, _ in lines[top + 1 : bottom + 1]), proc.stdout
    # libc.so.6 is needed by prog directly, at libtop's depth.
    assert (lines[top][0], "libc.so.6") in lines, proc.stdout


def test_tree_and_json_name_the_same_libraries(build, chain):
    tree = run_jailkit("ldd", "--tree", chain)
    as_json = json.loads(run_jailkit("ldd", "--json", chain).stdout)[str(chain)]
    assert {name for _, name in tree_lines(tree.stdout)} == {lib["name"] for lib in as_json["libs"]}


@pytest.mark.parametrize("separator", [":", ";"])
def test_library_path_order_and_separators(build, separator):
    first = build.lib("one/libpick.so")
    build.lib("two/libpick.so")
    prog = build.exe("prog", first)
    dirs = separator.join([str(build.root / "nothing"), str(build.root / "two"), str(first.parent)])
    truth, entry, _ = check(prog, library_path=dirs)
    assert dict(truth.libs)["libpick.so"] == str(build.root / "two/libpick.so")


def test_library_path_comes_after_rpath_and_before_runpath(build):
    a = build.lib("a/libprec.so")
    build.lib("b/libprec.so")
    with_rpath = build.exe("p_rpath", a, flags=[rpath(a.parent)])
    with_runpath = build.exe("p_runpath", a, flags=[runpath(a.parent)])
    truth, _, _ = check(with_rpath, library_path=str(build.root / "b"))
    assert dict(truth.libs)["libprec.so"] == str(a)
    truth, _, _ = check(with_runpath, library_path=str(build.root / "b"))
    assert dict(truth.libs)["libprec.so"] == str(build.root / "b/libprec.so")


def test_library_path_empty_element_is_the_current_directory(build):
    lib = build.lib("here/libcwd.so")
    prog = build.exe("prog", lib)
    truth, _, _ = check(prog, cwd=lib.parent, library_path=f"{build.root / 'none'}::")
    assert dict(truth.libs)["libcwd.so"] == str(lib)


def test_exit_status(build, chain):
    assert run_jailkit("ldd", chain).returncode == 0
    assert run_jailkit("ldd", "--json", chain, "/usr/bin/ls").returncode == 0
    assert run_jailkit("ldd", build.root / "absent").returncode != 0
    usage = run_jailkit("ldd")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    (build.root / "d/libbottom.so").unlink()
    missing = run_jailkit("ldd", "--json", chain)
    assert missing.returncode != 0
    # A missing library fails the run even when the other files are fine.
    assert run_jailkit("ldd", "/usr/bin/ls", chain).returncode != 0


def test_every_command_takes_dash_h_for_help():
    """`jailkit build -h` answered "No such option: -h" while `jailkit run -h` printed help."""
    from jailkit.cli.main import COMMANDS

    for args in ([], *([name] for name in COMMANDS)):
        result = run_jailkit(*args, "-h")
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.startswith("Usage:"), (args, result.stdout)
