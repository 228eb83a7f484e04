"""`jailkit sbom`: a software bill of materials of a built jail, as CycloneDX 1.5 or SPDX 2.3 JSON.

Components are the Debian packages the jail holds files of (from its manifest and its own dpkg
status file), each with its purl `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`, and
every file that came from no package (the jail's passwd, templates, generated keys, host files
dpkg does not list), by its hash.
"""

import datetime
import hashlib
import os
import re
import urllib.parse
import uuid

from jailkit.build import manifest
from jailkit.build.jaildir import JailDir, open_dir
from jailkit.errors import JailkitError
from jailkit.provenance.dpkg import Package, parse_status
from jailkit.provenance.jail import STATUS_PATH

FORMATS = ("cyclonedx", "spdx")


class BuiltJail:
    """What an SBOM describes: the current generation's manifest, its status stanzas, and the
    SHA-1 of each file from no package (SPDX requires one; the manifest keeps SHA-256)."""

    def __init__(self, path: str):
        with JailDir(path) as jail:
            number = jail.current()
            if number is None:
                raise JailkitError(f"no jail is built in {jail.path}: run `jailkit build` first")
            try:
                gen_fd = jail.open_generation(number)
                try:
                    self.manifest = manifest.read(gen_fd, f"{jail.path}/gen-{number}")
                    root_fd = open_dir("root", gen_fd)
                finally:
                    os.close(gen_fd)
                try:
                    self.stanzas = parse_status(_read(root_fd, STATUS_PATH).decode(
                        "utf-8", "replace")) if STATUS_PATH in self.manifest.records else {}
                    self.loose = {r.path: (r.sha256, _sha1(root_fd, r.path))
                                  for r in self.manifest.records.values()
                                  if r.type == "file" and r.package is None}
                finally:
                    os.close(root_fd)
            except OSError as e:
                raise JailkitError(f"{jail.path}/gen-{number}: {e.strerror} (replaced by a build "
                                   "meanwhile? run again)") from None
        self.profile = self.manifest.profile
        self.packages: dict[Package, int] = {}  # package -> entries of it in the jail
        for record in self.manifest.records.values():
            if record.package is not None:
                self.packages[record.package] = self.packages.get(record.package, 0) + 1


def _read(root_fd: int, path: str) -> bytes:
    """A file of the jail tree, opened without following any symlink on the way."""
    *parents, name = path.strip("/").split("/")
    fd = os.dup(root_fd)
    try:
        for parent in parents:
            next_fd = open_dir(parent, fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as f:
        return f.read()


def _sha1(root_fd: int, path: str) -> str:
    return hashlib.sha1(_read(root_fd, path), usedforsecurity=False).hexdigest()


def distro() -> tuple[str, str]:
    """(ID, VERSION_ID) of this host's /etc/os-release: the purl's namespace and distro."""
    fields = {}
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                fields[key] = value.strip('"')
    except OSError:
        pass
    return fields.get("ID", "debian"), fields.get("VERSION_ID", "")


def purl(package: Package, os_release: tuple[str, str]) -> str:
    namespace, version_id = os_release
    qualifiers = f"arch={package.architecture}"
    if version_id:
        qualifiers += f"&distro={namespace}-{version_id}"
    # the epoch's ':' stays, '+' and the rest are percent-encoded (the purl spec's deb examples)
    version = urllib.parse.quote(package.version, safe=":~")
    return f"pkg:deb/{namespace}/{urllib.parse.quote(package.name)}@{version}?{qualifiers}"


def _is_library(fields: dict) -> bool:
    return fields.get("Section", "").startswith(("libs", "oldlibs")) or fields.get(
        "Package", "").startswith("lib")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jailkit")
    except PackageNotFoundError:
        return "unknown"  # a source tree used without being installed


def cyclonedx(jail: BuiltJail) -> dict:
    os_release = distro()
    root_ref = f"jail:{jail.profile}"
    components = []
    for package in sorted(jail.packages):
        fields = jail.stanzas.get(package.key, {})
        ref = purl(package, os_release)
        component = {"type": "library" if _is_library(fields) else "application",
                     "bom-ref": ref, "name": package.name, "version": package.version,
                     "purl": ref}
        if fields.get("Maintainer"):
            component["supplier"] = {"name": fields["Maintainer"]}
        properties = [{"name": "jailkit:entries", "value": str(jail.packages[package])}]
        if fields.get("Source"):
            properties.append({"name": "debian:source", "value": fields["Source"]})
        component["properties"] = properties
        components.append(component)
    for path, (sha256, _) in sorted(jail.loose.items()):
        components.append({"type": "file", "bom-ref": f"file:{path}", "name": path,
                           "hashes": [{"alg": "SHA-256", "content": sha256}]})
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": _now(),
            "tools": {"components": [{"type": "application", "name": "jailkit",
                                      "version": _version()}]},
            "component": {"type": "container", "bom-ref": root_ref, "name": jail.profile},
        },
        "components": components,
        "dependencies": [{"ref": root_ref, "dependsOn": [c["bom-ref"] for c in components]}],
    }


def _spdx_id(kind: str, number: int, name: str) -> str:
    return f"SPDXRef-{kind}-{number}-{re.sub(r'[^A-Za-z0-9.]+', '-', name).strip('-')}"


def spdx(jail: BuiltJail) -> dict:
    os_release = distro()
    root_id = "SPDXRef-Jail"
    packages = [{"SPDXID": root_id, "name": jail.profile, "downloadLocation": "NOASSERTION",
                 "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER"}]
    for number, package in enumerate(sorted(jail.packages), 1):
        fields = jail.stanzas.get(package.key, {})
        item = {
            "SPDXID": _spdx_id("Package", number, f"{package.name}-{package.architecture}"),
            "name": package.name, "versionInfo": package.version,
            "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "LIBRARY" if _is_library(fields) else "APPLICATION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": purl(package, os_release)}],
        }
        if fields.get("Maintainer"):
            name, _, email = fields["Maintainer"].partition("<")
            item["supplier"] = f"Organization: {name.strip()}" + (
                f" ({email.rstrip('>').strip()})" if email else "")
        if fields.get("Source"):
            item["sourceInfo"] = f"built from Debian source package {fields['Source']}"
        packages.append(item)
    files = [{"SPDXID": _spdx_id("File", number, path), "fileName": f".{path}",
              "checksums": [{"algorithm": "SHA1", "checksumValue": sha1},
                            {"algorithm": "SHA256", "checksumValue": sha256}],
              "licenseConcluded": "NOASSERTION", "copyrightText": "NOASSERTION"}
             for number, (path, (sha256, sha1)) in enumerate(sorted(jail.loose.items()), 1)]
    # the jail CONTAINS its packages; the files from no package are described beside it (a
    # package with filesAnalyzed false may contain no file element)
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": item["SPDXID"]} for item in [packages[0], *files]]
    relationships += [{"spdxElementId": root_id, "relationshipType": "CONTAINS",
                       "relatedSpdxElement": item["SPDXID"]} for item in packages[1:]]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"jailkit-jail-{jail.profile}",
        "documentNamespace": f"urn:uuid:{uuid.uuid4()}",
        "creationInfo": {"created": _now(), "creators": [f"Tool: jailkit-{_version()}"]},
        "packages": packages,
        "files": files,
        "relationships": relationships,
    }


def document(jail_path: str, kind: str) -> dict:
    if kind not in FORMATS:
        raise JailkitError(f"--format {kind!r}: expected one of {', '.join(FORMATS)}")
    jail = BuiltJail(jail_path)
    return cyclonedx(jail) if kind == "cyclonedx" else spdx(jail)
