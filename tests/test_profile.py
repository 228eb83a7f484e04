"""Profile loading: bundled profiles, `extends` composition, strict validation with file+line."""

import json

import pytest
from conftest import SETS_NEEDED, run_jailkit

from jailkit.profile.dump import as_dict, as_toml
from jailkit.profile.model import ProfileError, bundled_profiles, load
from jailkit.profile.templates import TemplateError, _source, _substitute, render, render_jinja2


def write(tmp_path, name, text):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(ProfileError) as caught:
        load(str(path), **kwargs)
    return str(caught.value)


@pytest.mark.parametrize("name", sorted(bundled_profiles()))
def test_every_bundled_profile_loads_with_root_user(name):
    profile = load(name)
    assert profile.users["root"].uid == 0 and profile.groups["root"].gid == 0
    assert profile.sources[-1].endswith(f"/profiles/{name}.toml")


def test_profiles_command_lists_bundled_profiles():
    result = run_jailkit("profiles")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == sorted(bundled_profiles())
    assert {"libc", "pam", "tls", "tzdata", "dns", "shell", "python3"} <= set(names)


def test_unknown_key_names_file_line_and_expected_keys(tmp_path):
    path = write(tmp_path, "p", 'extends = ["libc"]\n\n[service]\ncomand = ["/bin/sh"]\n')
    message = error_of(path)
    assert message.startswith(f"{path}:4: service.comand: unknown key")
    assert "command" in message


def test_wrong_type_in_named_table_points_at_its_line(tmp_path):
    path = write(tmp_path, "p", '[users.www-data]\nuid = "33"\ngid = 33\n\n[groups.www-data]\n'
                                "gid = 33\n")
    assert error_of(path) == (f"{path}:2: users.www-data.uid: expected an integer, "
                              "got str '33'")


@pytest.mark.parametrize("body, expected", [
    ('[writable."/var/log"]\nmode = "999"\n', 'writable./var/log.mode: expected an octal mode'),
    ('[writable."/var/log"]\nkind = "disk"\n', "expected one of tmpfs, state, got 'disk'"),
    ('[templates."/etc/../../x"]\ntext = "a"\n', "expected an absolute path without '..'"),
    ('files = ["etc/passwd"]\n', "files.0: expected an absolute path"),
    ('devices = ["sda"]\n', "devices.0: expected one of null, zero"),
    ('[service]\ncapabilities = ["CAP_FLY"]\n', "expected a capability name"),
    ('[service.limits]\nnofile = [10, 5]\n', "soft <= hard"),
    ('[users."Bad Name"]\nuid = 1\ngid = 1\n', "expected a user/group name"),
    ('[templates."/etc/x"]\nmode = "0644"\n', "expected exactly one of `source` or `text`"),
])
def test_bad_values_are_refused_with_what_was_expected(tmp_path, body, expected):
    path = write(tmp_path, "p", body)
    message = error_of(path)
    assert message.startswith(f"{path}:") and expected in message


def test_invalid_toml_is_one_clear_error(tmp_path):
    path = write(tmp_path, "p", "binaries = [\n")
    assert error_of(path).startswith(f"{path}: invalid TOML:")


def test_cross_references_are_checked_by_key_path(tmp_path):
    path = write(tmp_path, "p", 'extends = ["libc"]\n[users.www-data]\nuid = 33\ngid = 33\n')
    assert "users.www-data.gid: no group has gid 33" in error_of(path)
    path = write(tmp_path, "q", 'extends = ["libc"]\n[writable."/var/log/x"]\nowner = "ftp"\n')
    assert 'writable."/var/log/x".owner: no user \'ftp\'' in error_of(path)
    path = write(tmp_path, "r", 'extends = ["libc"]\n[service]\nuser = "nobody"\n')
    assert "service.user: no user 'nobody'" in error_of(path)
    path = write(tmp_path, "s", 'extends = ["libc"]\n[writable."/etc/nginx"]\n')
    assert "writable directory under /etc" in error_of(path)


def test_extends_merges_lists_tables_and_service_keys(tmp_path):
    write(tmp_path, "base", 'extends = ["libc"]\nbinaries = ["/bin/sh"]\n[variables]\nport = 80\n'
                            '[service]\ncommand = ["/bin/sh"]\nenv = { A = "1", B = "2" }\n')
    child = write(tmp_path, "child", 'extends = ["base.toml"]\nbinaries = ["/bin/ls", "/bin/sh"]\n'
                                     '[variables]\nname = "x"\n[service]\nenv = { B = "3" }\n'
                                     '[users.nobody]\nuid = 65534\ngid = 65534\n'
                                     '[groups.nogroup]\ngid = 65534\n')
    profile = load(str(child))
    assert profile.name == "child"
    assert profile.binaries[-2:] == ("/bin/sh", "/bin/ls")
    assert profile.variables == {"port": 80, "name": "x"}
    assert dict(profile.service.env) == {"A": "1", "B": "3"}
    assert profile.service.command == ("/bin/sh",)
    assert set(profile.users) == {"root", "nobody"}
    names = [s.rsplit("/", 1)[1] for s in profile.sources]
    assert names == ["libc.toml", "base.toml", "child.toml"]


def test_extends_cycle_and_unknown_base_are_errors(tmp_path):
    write(tmp_path, "a", 'extends = ["b.toml"]\n')
    b = write(tmp_path, "b", 'extends = ["a.toml"]\n')
    assert "cycle" in error_of(b)
    c = write(tmp_path, "c", 'extends = ["no-such-base"]\n')
    assert "extends[0]: no bundled profile named 'no-such-base'" in error_of(c)


def test_set_overrides_variables_with_their_type(tmp_path):
    path = write(tmp_path, "p", 'extends = ["libc"]\n[variables]\nport = 8080\nname = "a"\n'
                                'debug = false\n')
    profile = load(str(path), {"port": "81", "name": "b", "debug": "yes"})
    assert profile.variables == {"port": 81, "name": "b", "debug": True}
    assert "expected int" in error_of(path, overrides={"port": "eighty"})
    assert "has no such variable (variables: debug, name, port)" in error_of(
        path, overrides={"prot": "1"})


def test_show_prints_a_profile_that_loads_back_the_same(tmp_path):
    result = run_jailkit("show", "shell")
    assert result.returncode == 0, result.stderr
    copy = write(tmp_path, "shell", result.stdout)
    assert as_dict(load(str(copy))) == as_dict(load("shell"))
    assert as_toml(load("python3")).count("[users.root]") == 1


def test_bad_profile_on_the_command_line_is_one_line_without_traceback(tmp_path):
    path = write(tmp_path, "p", "binaries = 3\n")
    for command in (["show"], ["build", "--root", tmp_path / "jail"]):
        result = run_jailkit(*command, path)
        assert result.returncode == 2
        assert result.stderr == f"jailkit: {path}:1: binaries: expected a list, got int 3\n"
    result = run_jailkit("show", "no-such-profile")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


def test_placeholder_substitution_renders_as_jinja2_does(tmp_path):
    # every bundled template whose only syntax is `{{ name }}` skips jinja2: its substitution
    # must give jinja2's own output (the variables a profile needs from its user are given)
    substituted = 0
    for name in sorted(bundled_profiles()):
        profile = load(name, SETS_NEEDED.get(name))
        for template in profile.templates.values():
            text, origin = _source(template)
            by_jinja2 = render_jinja2(text, profile.variables, origin)
            by_substitution = _substitute(text, profile.variables, origin)
            if by_substitution is not None:
                assert by_substitution == by_jinja2, (name, template.dest)
                substituted += 1
            assert render(template, profile.variables) == by_jinja2, (name, template.dest)
    assert substituted >= 5  # the fast path is really taken, not only jinja2 compared to itself


def test_only_placeholder_templates_skip_jinja2():
    variables = {"port": 80, "on": True, "name": "x"}
    assert _substitute("listen {{port}};\n{{ on }} {{ name }}\n", variables, "t") == \
        "listen 80;\nTrue x\n"
    for text in ("{% if on %}x{% endif %}", "{{ port + 1 }}", "{{ name|upper }}", "{# c #}y"):
        assert _substitute(text, variables, "t") is None
        assert render_jinja2(text, variables, "t")  # jinja2 renders what substitution leaves
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        _substitute("{{ nope }}", variables, "t")


def test_hostname_is_checked_against_the_kernel_limit(tmp_path):
    path = write(tmp_path, "h" * 65, 'extends = ["libc"]\n')
    assert "is longer than 64 bytes" in error_of(path)
    path.write_text('extends = ["libc"]\n[service]\nhostname = "short"\n')
    assert load(str(path)).service.hostname == "short"


# --- capabilities that break the model need an explicit opt-in --------------------------------


def test_dangerous_capability_without_opt_in_is_refused_naming_the_fix(tmp_path):
    path = write(tmp_path, "p", 'extends = ["libc"]\n[service]\n'
                                'capabilities = ["CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]\n')
    message = error_of(path)
    assert "\n" not in message
    assert "service.capabilities: CAP_SYS_ADMIN" in message
    assert 'dangerous_capabilities = ["CAP_SYS_ADMIN"]' in message


def test_dangerous_capability_must_also_be_in_capabilities(tmp_path):
    path = write(tmp_path, "p", 'extends = ["libc"]\n[service]\n'
                                'dangerous_capabilities = ["CAP_SYS_PTRACE"]\n')
    assert "CAP_SYS_PTRACE is not in service.capabilities" in error_of(path)


def test_build_says_what_an_accepted_dangerous_capability_opens(tmp_path):
    path = write(tmp_path, "p", 'extends = ["shell"]\n[service]\n'
                                'capabilities = ["CAP_SYS_PTRACE", "CAP_CHOWN"]\n'
                                'dangerous_capabilities = ["CAP_SYS_PTRACE"]\n')
    result = run_jailkit("build", path, "--root", tmp_path / "jail", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "CAP_" in line] == [
        "jailkit: warning: CAP_SYS_PTRACE opens reading and writing the memory of every process "
        "in the jail, pid 1 included (/proc/PID/mem)"]
    assert '"dangerous_capabilities": ["CAP_SYS_PTRACE"]' in result.stdout
    refused = run_jailkit("build", write(tmp_path, "q", 'extends = ["shell"]\n[service]\n'
                                         'capabilities = ["CAP_BPF"]\n'), "--dry-run")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "dangerous_capabilities" in refused.stderr


# --- network: none unless asked; a host-network jail's TCP ports ------------------------------


def test_network_defaults_to_none_and_services_ask_for_the_hosts():
    assert load("shell").service.network == "none"
    assert load("python3").service.network == "none"
    for name in ("nginx", "nginx-tls", "lighttpd", "vsftpd", "sshd"):
        assert load(name).service.network == "host", name


def test_ports_take_variables_and_ranges_after_set():
    assert load("nginx").service.bind_ports == ((8080, 8080),)
    assert load("nginx-tls", {"port": "9443"}).service.bind_ports == ((9443, 9443),)
    vsftpd = load("vsftpd", {"pasv_min": "31000", "pasv_max": "31009"}).service
    assert vsftpd.bind_ports == ((2121, 2121), (31000, 31009)) and vsftpd.connect_ports == ()


def test_build_writes_ports_into_launch_json(tmp_path):
    result = run_jailkit("build", "lighttpd", "--set", "port=9081", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    launch = json.loads(result.stdout)["launch"]
    assert launch["ports"] == {"bind": [9081], "connect": []}
    assert launch["network"] == "host" and launch["require_landlock"] is False


@pytest.mark.parametrize("ports, expected", [
    ('bind = ["http"]', "expected a port, a range such as '30000-30099'"),
    ("bind = [70000]", "service.ports.bind.0: expected an integer"),
    ('bind = ["{{ nope }}"]', "service.ports.bind: {{ nope }} names no variable"),
    ('bind = ["{{ name }}"]', "service.ports.bind: 'web' is not a port"),
    ('connect = ["90-80"]', "service.ports.connect: '90-80' is the range 90-80, which is empty"),
    ('listen = [80]', "service.ports.listen: unknown key"),
])
def test_bad_ports_are_one_line_errors(tmp_path, ports, expected):
    path = write(tmp_path, "p", f'extends = ["libc"]\n[variables]\nname = "web"\n'
                                f'[service.ports]\n{ports}\n')
    message = error_of(path)
    assert expected in message and "\n" not in message


EVERY_KEY = """
description = "all keys"
binaries = ["/bin/sh"]
libraries = ["libz.so.1"]
files = ["/etc/hostname"]
exclude = ["*.pyc"]
keep_setuid = ["/bin/su"]
private_files = ["/etc/hostname"]
keep_file_caps = ["/bin/ping"]
devices = ["null"]
multiline_variables = ["motd"]
path_variables = ["site"]
[variables]
motd = "hi\\nthere"
site = "/srv"
[users.app]
uid = 100
gid = 100
home = "/srv"
shell = "/bin/sh"
gecos = "App"
password = "!"
[groups.app]
gid = 100
members = ["app"]
[directories."/srv"]
owner = "app"
group = "app"
mode = "0750"
[writable."/var/lib/app"]
owner = "app"
group = "app"
mode = "0700"
kind = "state"
size = "1m"
[binds."/srv/live"]
source = "/usr/share"
rw = false
exec = true
[templates."/etc/motd"]
text = "{{ motd }}"
mode = "0640"
owner = "app"
group = "app"
[generated."/etc/key.pem"]
kind = "tls-cert"
subject = "example"
mode = "0400"
owner = "app"
group = "app"
[service]
command = ["/bin/sh"]
workdir = "/srv"
user = "app"
group = "app"
groups = ["app"]
hostname = "h"
stop_signal = "SIGINT"
capabilities = ["CAP_NET_BIND_SERVICE"]
dangerous_capabilities = []
network = "host"
require_landlock = true
mount_proc = false
mount_sys = true
seccomp_allow = ["io_uring_setup"]
uid_count = 1000
[service.env]
HOME = "/srv"
[service.ports]
bind = [80]
connect = ["1000-1010"]
[service.ready]
tcp = 80
timeout = 5
[service.limits]
memory_max = "64m"
pids_max = 10
memory_high = "48m"
swap_max = 0
cpu_weight = 400
cpu_quota = "50%"
io_weight = 200
""" + "".join(f"{limit} = 7\n" for limit in (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"))


def test_every_key_of_the_settings_table_is_read_and_shown_and_loads_back(tmp_path):
    # the table (jailkit.profile.schema.SETTINGS) drives parsing, the records and `show`: a key
    # that one of them missed would be absent from the output, or load back different
    from jailkit.profile.schema import SETTINGS

    profile = load(str(write(tmp_path, "all", EVERY_KEY)))
    shown = as_dict(profile)
    for setting in SETTINGS:
        if setting.key in ("extends", "templates.<path>.source"):  # composed away; inlined
            continue
        node = shown
        for part in setting.key.split("."):
            assert isinstance(node, dict) and node, setting.key
            node = node[next(iter(node))] if part.startswith("<") else node[part]
    (tmp_path / "elsewhere").mkdir()
    again = load(str(write(tmp_path / "elsewhere", "all", as_toml(profile))))
    assert again._replace(sources=()) == profile._replace(sources=())


def test_a_profile_without_the_root_user_is_told_how_to_get_it(tmp_path):
    """A traced or hand-written profile without `extends = ["libc"]` has no root user: the
    error names the fix, not only the lack."""
    path = write(tmp_path, "p", 'binaries = ["/bin/true"]\n[service]\ncommand = ["/bin/true"]\n')
    result = run_jailkit("build", path, "--root", tmp_path / "jail")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no user 'root'" in result.stderr, result.stderr
    assert 'extends = ["libc"]' in result.stderr and "[users.root]" in result.stderr


def test_an_empty_set_value_for_a_variable_with_a_default_is_refused(tmp_path):
    """`--set worker_processes=` rendered `worker_processes ;`: nginx would not start."""
    result = run_jailkit("build", "nginx", "--root", tmp_path / "jail",
                         "--set", "worker_processes=")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--set worker_processes=" in result.stderr and "empty" in result.stderr
    assert not (tmp_path / "jail").exists()
