"""Package provenance, the jail's dpkg status file, `jailkit sbom` and `jailkit outdated`.

Everything is judged by dpkg itself (`dpkg -S`, `dpkg-query --admindir`, `dpkg
--compare-versions`) and by the formats' own validators (cyclonedx-python-lib for CycloneDX 1.5,
spdx-tools for SPDX 2.3).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import nobody_jailkit, run_jailkit

from jailkit.provenance.dpkg import Database, compare_versions

pytestmark = pytest.mark.usefixtures("as_root")

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"  # what the loader opens; dpkg lists /lib/...


def dpkg_owner(path: str) -> str | None:
    """The package `dpkg -S` names for a host path, trying the spelling dpkg lists (merged /usr:
    packages list /lib/..., /bin/..., the loader opens /usr/lib/...)."""
    candidates = [path]
    if path.startswith(("/usr/lib/", "/usr/bin/", "/usr/sbin/", "/usr/lib64/")):
        candidates.append(path.removeprefix("/usr"))
    for candidate in candidates:
        result = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        owners = [line for line in result.stdout.splitlines()
                  if not line.startswith("diversion by ")]
        if result.returncode == 0 and owners:
            return owners[0].rpartition(": ")[0].split(", ")[0]
    return None


def installed_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="module")
def shell_jail(tmp_path_factory) -> Path:
    jail = tmp_path_factory.mktemp("sbom") / "shell"
    result = run_jailkit("build", "shell", "--root", jail)
    assert result.returncode == 0, result.stderr
    return jail


def manifest_entries(jail: Path) -> dict[str, dict]:
    data = json.loads((jail / "current/manifest.json").read_text())
    return {entry["path"]: entry for entry in data["entries"]}


def test_manifest_records_each_files_package_across_merged_usr(shell_jail):
    entries = manifest_entries(shell_jail)
    # dpkg itself does not know the loader's spelling of libc: only the /lib one it listed
    assert subprocess.run(["dpkg", "-S", LIBC], capture_output=True).returncode == 1
    assert entries[LIBC]["package"] == {"name": "libc6", "architecture": "amd64",
                                        "version": installed_version("libc6:amd64")}
    copied = [e for e in entries.values() if e["type"] == "file" and e["source"]]
    assert len(copied) > 40
    for entry in copied:
        owner = dpkg_owner(entry["source"])
        assert owner is not None, entry["source"]
        assert entry["package"]["name"] == owner.partition(":")[0], entry["source"]
    for path in ("/etc/passwd", "/etc/nsswitch.conf", "/var/lib/dpkg/status"):
        assert entries[path]["package"] is None  # written by jailkit, from no package


def test_jail_dpkg_status_lists_exactly_the_packages_it_holds(shell_jail):
    admindir = shell_jail / "current/root/var/lib/dpkg"
    query = subprocess.run(["dpkg-query", f"--admindir={admindir}", "-W",
                            "-f=${Package}:${Architecture} ${Version} ${db:Status-Abbrev}\n"],
                           capture_output=True, text=True)
    assert query.returncode == 0 and query.stderr == "", query.stderr  # no field missing
    listed = {tuple(line.split()) for line in query.stdout.splitlines()}
    held = {(f"{e['package']['name']}:{e['package']['architecture']}", e["package"]["version"],
             "ii") for e in manifest_entries(shell_jail).values() if e["package"]}
    assert listed == held
    # and those are the packages dpkg names for the jail's files (ls, dash, libc, libpcre2)
    names = {name.partition(":")[0] for name, _, _ in listed}
    for path in ("/usr/bin/ls", "/usr/bin/dash", LIBC, "/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0"):
        assert dpkg_owner(path).partition(":")[0] in names, path
    assert ("libc6:amd64", installed_version("libc6:amd64"), "ii") in listed


def test_diversions_decide_who_owns_the_diverted_path(tmp_path):
    """A copy of the host's dpkg database with two more diversions: ls diverted aside by dash (so
    what is at /usr/bin/ls is dash's — it lists none — and coreutils' ls lives at ls.distrib),
    and a local diversion of dash's manual page (owned by no package)."""
    admindir = tmp_path / "dpkg"
    admindir.mkdir()
    shutil.copy("/var/lib/dpkg/status", admindir / "status")
    os.symlink("/var/lib/dpkg/info", admindir / "info")
    host_diversions = Path("/var/lib/dpkg/diversions").read_text()
    (admindir / "diversions").write_text(
        host_diversions + "/bin/ls\n/bin/ls.distrib\ndash\n"
        "/usr/share/man/man1/dash.1.gz\n/usr/share/man/man1/dash.distrib.1.gz\n:\n")
    database = Database(str(admindir))
    assert database.owner("/usr/bin/ls") is None
    assert database.owner("/usr/bin/ls.distrib").name == "coreutils"
    assert database.owner("/usr/share/man/man1/dash.1.gz") is None
    assert database.owner("/usr/share/man/man1/dash.distrib.1.gz").name == "dash"
    # the host's own: dash diverts /bin/sh, and owns what is there (dpkg -S says so too)
    assert database.owner("/usr/bin/sh").name == dpkg_owner("/bin/sh") == "dash"
    assert Database().owner("/usr/bin/ls").name == "coreutils"


def test_rebuild_reads_no_dpkg_file_list_while_the_database_is_unchanged(tmp_path):
    jail = tmp_path / "shell"

    def files_opened(*args) -> str:
        log = tmp_path / "strace.log"
        result = subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat", "-o", log,
                                 sys.executable, "-m", "jailkit", *args],
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return log.read_text()

    assert "/var/lib/dpkg/info/libc6:amd64.list" in files_opened("build", "shell", "--root", jail)
    again = files_opened("build", "shell", "--root", jail)
    assert "/var/lib/dpkg/info/" not in again
    assert "up to date" in run_jailkit("build", "shell", "--root", jail).stdout


def test_cyclonedx_sbom_validates_and_names_packages_by_purl(shell_jail, tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    out = tmp_path / "bom.json"
    result = run_jailkit("sbom", "shell", "--root", shell_jail, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}: the CycloneDX 1.5 SBOM of {shell_jail}\n"
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    bom = json.loads(text)
    by_name = {c["name"]: c for c in bom["components"]}
    version = installed_version("libc6:amd64")
    assert by_name["libc6"]["purl"] == ("pkg:deb/debian/libc6@" + version.replace("+", "%2B")
                                        + "?arch=amd64&distro=debian-12")
    passwd = (shell_jail / "current/root/etc/passwd").read_bytes()
    assert by_name["/etc/passwd"]["type"] == "file"
    assert by_name["/etc/passwd"]["hashes"] == [{"alg": "SHA-256",
                                                "content": hashlib.sha256(passwd).hexdigest()}]
    assert "/usr/bin/ls" not in by_name  # a package's file is its package, not a loose file


def test_spdx_sbom_validates(shell_jail):
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    result = run_jailkit("sbom", "shell", "--root", shell_jail, "--format", "spdx")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert validate_full_spdx_document(JsonLikeDictParser().parse(data), "SPDX-2.3") == []
    purls = {ref["referenceLocator"] for p in data["packages"] for ref in p.get("externalRefs", [])}
    assert any(p.startswith("pkg:deb/debian/coreutils@") for p in purls)
    assert {f["fileName"] for f in data["files"]} == {
        "./etc/group", "./etc/nsswitch.conf", "./etc/passwd", "./var/lib/dpkg/status"}


def bumped_admindir(tmp_path: Path, package: str) -> Path:
    """A copy of dpkg's status file as after a host upgrade of `package` (name:arch)."""
    admindir = tmp_path / "dpkg-upgraded"
    admindir.mkdir()
    name, _, arch = package.partition(":")
    stanzas = Path("/var/lib/dpkg/status").read_text().split("\n\n")
    for i, stanza in enumerate(stanzas):
        if stanza.startswith(f"Package: {name}\n") and f"\nArchitecture: {arch}\n" in stanza:
            version = installed_version(package)
            stanzas[i] = stanza.replace(f"\nVersion: {version}\n", f"\nVersion: {version}+jk1\n")
    (admindir / "status").write_text("\n\n".join(stanzas))
    return admindir


def test_outdated_names_the_jail_the_package_and_the_fix(shell_jail, tmp_path):
    clean = run_jailkit("outdated", "--root", shell_jail)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    admindir = bumped_admindir(tmp_path, "libc6:amd64")
    result = run_jailkit("outdated", "--root", shell_jail, "--admindir", admindir, "--json")
    assert result.returncode == 1, result.stderr
    version = installed_version("libc6:amd64")
    (jail,) = json.loads(result.stdout)
    assert jail["root"] == str(shell_jail) and jail["profile"] == "shell"
    assert jail["fix"] == f"jailkit update shell --root {shell_jail}"
    (stale,) = jail["packages"]
    assert (stale["package"], stale["jail_version"], stale["host_version"]) == (
        "libc6:amd64", version, f"{version}+jk1")
    assert stale["entries"] >= 2  # libc.so.6 and the loader at least
    text = run_jailkit("outdated", "--root", shell_jail, "--admindir", admindir)
    assert f"  fix: jailkit update shell --root {shell_jail}\n" in text.stdout


def test_outdated_finds_an_ordinary_users_jails_in_the_xdg_dir(home):  # noqa: F811
    assert nobody_jailkit(home, "build", "shell").returncode == 0
    admindir = bumped_admindir(home / "home", "coreutils:amd64")  # pytest's tmp_path is 0700
    result = nobody_jailkit(home, "outdated", "--admindir", admindir)
    assert result.returncode == 1, result.stderr
    jail = home / "home/.local/share/jailkit/shell"
    assert f"  fix: jailkit update shell --root {jail}\n" in result.stdout
    assert nobody_jailkit(home, "outdated").returncode == 0


def test_bad_input_is_one_line(shell_jail, tmp_path):
    cases = [
        (["sbom", "shell", "--root", shell_jail, "--format", "xml"],
         "jailkit: --format 'xml': expected one of cyclonedx, spdx\n"),
        (["sbom", "shell", "--root", tmp_path / "none"],
         f"jailkit: no jail at {tmp_path / 'none'}; build it first with `jailkit build`\n"),
        (["sbom", "shell", "--root", shell_jail, "-o", tmp_path / "no/such/dir/bom.json"],
         f"jailkit: -o {tmp_path / 'no/such/dir/bom.json'}: No such file or directory\n"),
        (["outdated", "--root", shell_jail, "--admindir", tmp_path],
         f"jailkit: cannot read {tmp_path}/status: No such file or directory; pass --admindir "
         "with dpkg's database directory\n"),
    ]
    for args, message in cases:
        result = run_jailkit(*args)
        assert (result.returncode, result.stderr) == (2, message), args


@pytest.mark.parametrize("older, newer", [
    ("2.36-9+deb12u13", "2.36-9+deb12u14"), ("2.36-9+deb12u4", "2.36-9+deb12u13"),
    ("1.0~rc1", "1.0"), ("1.0", "1.0+b1"), ("1.0-1", "1.0-1.1"), ("9.9", "1:0.1"),
    ("1.0a", "1.0b"), ("1.0", "1.0.1"), ("1.0-1~bpo12+1", "1.0-1"), ("10.42-1", "10.42-1+jk1"),
])
def test_version_order_is_dpkgs(older, newer):
    assert subprocess.run(["dpkg", "--compare-versions", older, "lt", newer]).returncode == 0
    assert compare_versions(older, newer) < 0 < compare_versions(newer, older)
    assert compare_versions(older, older) == 0


@pytest.mark.parametrize("suffix", ["+jk1\u00b2", "+jk1" + "9" * 5000, "\x1b[2J\x1b]0;owned\x07"])
def test_outdated_survives_and_escapes_hostile_manifest_versions(shell_jail, tmp_path, suffix):
    """A manifest (an imported jail's, or an older jailkit's) with a version that str.isdigit
    took for digits (a superscript), a digit run too long for int(), or terminal escapes; the
    host's version is the installed one + "+jk1", so the comparison reaches the suffix."""
    version = installed_version("libc6:amd64") + suffix
    jail = tmp_path / "jail"
    shutil.copytree(shell_jail, jail, symlinks=True)
    manifest = jail / "current/manifest.json"
    data = json.loads(manifest.read_text())
    for entry in data["entries"]:
        if entry["package"] and entry["package"]["name"] == "libc6":
            entry["package"]["version"] = version
    manifest.write_text(json.dumps(data))
    admindir = bumped_admindir(tmp_path, "libc6:amd64")
    result = run_jailkit("outdated", "--root", jail, "--admindir", admindir)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1, 2), result.stderr
    assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_outdated_fix_for_a_jail_built_from_a_profile_file_names_the_file(tmp_path):
    """`jailkit update mysite` fails ("no bundled profile named 'mysite'"): the fix names the
    profile file, and the command it gives, with that file, updates the jail."""
    profile = tmp_path / "mysite.toml"
    profile.write_text((Path(__file__).parent.parent / "jailkit/profiles/shell.toml").read_text())
    jail = tmp_path / "mysite"
    assert run_jailkit("build", profile, "--root", jail).returncode == 0
    admindir = bumped_admindir(tmp_path, "libc6:amd64")
    result = run_jailkit("outdated", "--root", jail, "--admindir", admindir, "--json")
    (found,) = json.loads(result.stdout)
    assert found["fix"] == f"jailkit update <path of mysite.toml> --root {jail}", found
    fixed = found["fix"].replace("<path of mysite.toml>", str(profile)).split()
    assert run_jailkit(*fixed[1:]).returncode == 0


def test_an_imported_jail_is_not_reported_up_to_date(shell_jail, tmp_path):
    """An imported jail records no packages: outdated cannot know, and says so with the fix."""
    archive, jail = tmp_path / "shell.tar", tmp_path / "imported"
    assert run_jailkit("export", "shell", "--root", shell_jail, "--format", "tar", "-o",
                       archive, timeout=120).returncode == 0
    assert run_jailkit("import", archive, "--root", jail, timeout=120).returncode == 0
    result = run_jailkit("outdated", "--root", jail)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{jail}: its packages are unknown" in result.stdout, result.stdout
    assert f"  fix: jailkit update shell --root {jail} (once, to record its packages)" \
        in result.stdout
    (found,) = json.loads(run_jailkit("outdated", "--root", jail, "--json").stdout)
    assert found["unknown"] is True and found["packages"] == []
    assert run_jailkit("update", "shell", "--root", jail, timeout=300).returncode == 0
    assert run_jailkit("outdated", "--root", jail).returncode == 0
