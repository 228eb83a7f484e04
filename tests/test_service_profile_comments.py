"""Every non-ELF entry of a bundled service profile says, in a comment, what it is for."""

import re

import pytest

from jailkit.profile.model import bundled_profiles, load

SERVICES = ["nginx", "nginx-tls", "lighttpd", "vsftpd", "sshd"]
ENTRY_TABLES = ("users", "groups", "directories", "writable", "templates", "generated")
HEADER = re.compile(r"^\[(\w+)[.\]]")


def uncommented(text: str) -> list[str]:
    """Entries (table headers, `files`/`devices` lists) without a comment right above them (or,
    for a list, at its end); a group right after a user is explained by the user's comment."""
    missing, previous_table = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        above = lines[i - 1].lstrip() if i else ""
        header = HEADER.match(line)
        if header and header.group(1) in ENTRY_TABLES:
            explained = above.startswith("#") or (header.group(1) == "groups"
                                                  and previous_table == "users")
            if not explained:
                missing.append(line)
        if header:
            previous_table = header.group(1)
        if re.match(r"^(files|devices) = ", line) and not (above.startswith("#") or "#" in line):
            missing.append(line)
    return missing


@pytest.mark.parametrize("name", SERVICES)
def test_each_entry_is_explained(name):
    with open(bundled_profiles()[name]) as f:
        assert uncommented(f.read()) == []


@pytest.mark.parametrize("name", SERVICES)
def test_knobs_have_their_documented_names(name):
    knobs = {"port"} | {"nginx": {"docroot"}, "nginx-tls": {"docroot"}, "lighttpd": {"docroot"},
                        "vsftpd": {"pasv_min", "pasv_max", "anon_root", "local_user",
                                   "local_password"},
                        "sshd": {"sftp_user", "sftp_pubkey"}}[name]
    assert knobs <= set(load(name).variables)


def test_the_check_catches_an_unexplained_entry():
    assert uncommented('[users.www-data]\nuid = 33\n[groups.www-data]\ngid = 33\n') == [
        "[users.www-data]"]
    assert uncommented('files = ["/etc/x"]\n# why\n[writable."/run"]\n') == ['files = ["/etc/x"]']
