"""Rendering profile templates with jinja2 (imported only when a template needs it).

Templates come from profiles, which may be shared: they are rendered in jinja2's sandbox, and a
variable the profile does not define is an error rather than an empty string. A template whose only
jinja2 syntax is `{{ name }}` is rendered by plain substitution, which gives jinja2's output for the
str/int/float/bool values a profile can hold, without importing jinja2 (~70 ms). Two filters:
`crypt` (a password as an /etc/shadow hash) and `public_keys` (ssh public key lines, given as text
or as the path of a file holding them).
"""

import errno
import os
import re
import stat

from jailkit.errors import JailkitError
from jailkit.profile.model import Template

PLACEHOLDER = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}")
UNDEFINED_HINT = "define it under [variables] or pass --set"
MAX_SIZE = 1 << 20  # a template source and what it renders to


class TemplateError(JailkitError):
    """A template that does not render."""


def _open_beneath(base: str, relative: str) -> int:
    """A descriptor of `base`/`relative`, walked one component at a time without following a
    symlink: a link in the profile's directory cannot lead the build to /etc/shadow."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        *directories, name = relative.split("/")
        for part in directories:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                       dir_fd=fd)
    finally:
        os.close(fd)


def _source(template: Template) -> tuple[str, str]:
    """(text, name for messages)."""
    if not template.source:
        return template.text, f"inline template for {template.dest}"
    origin = os.path.join(template.base, template.source)
    try:
        fd = _open_beneath(template.base, template.source)
    except OSError as e:
        why = "a symlink, which is not followed" if e.errno == errno.ELOOP else e.strerror
        raise TemplateError(f"template source {origin}: {why}; keep templates as plain files "
                            "beneath the profile's directory") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TemplateError(f"template source {origin}: not a regular file")
        data = f.read(MAX_SIZE + 1)
    if len(data) > MAX_SIZE:
        raise TemplateError(f"template source {origin}: larger than 1 MiB; use a smaller one")
    try:
        return data.decode(), origin
    except UnicodeDecodeError as e:
        raise TemplateError(f"template source {origin}: not UTF-8 ({e.reason})") from None


def _capped(text: str, origin: str) -> str:
    if len(text.encode()) > MAX_SIZE:
        raise TemplateError(f"{origin}: renders to more than 1 MiB; a template makes a "
                            "configuration file, not data")
    return text


def _substitute(text: str, variables: dict, origin: str) -> str | None:
    """The rendering of a placeholder-only template, or None when it needs jinja2."""
    if any(token in PLACEHOLDER.sub("", text) for token in ("{{", "{%", "{#")):
        return None

    def value(match):
        name = match.group(1)
        if name not in variables:
            raise TemplateError(f"{origin}: '{name}' is undefined; {UNDEFINED_HINT}")
        return str(variables[name])

    return PLACEHOLDER.sub(value, text)


KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)  # fmt: skip


def crypt(password: str, previous: tuple[str, ...] = ()) -> str:
    """A yescrypt hash (Debian's default, what pam_unix in the jail verifies) of `password`.

    A hash in `previous` (the jail's current /etc/shadow) that already matches is kept, so that a
    rebuild with the same password changes nothing; else a new one with a random salt."""
    import ctypes

    if not password:
        raise TemplateError("crypt: the password is empty; pass one with --set")
    try:
        libcrypt = ctypes.CDLL("libcrypt.so.1")
    except OSError:
        raise TemplateError("crypt: libcrypt.so.1 is not installed (Debian: libcrypt1)") from None
    libcrypt.crypt.restype = ctypes.c_char_p
    libcrypt.crypt.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    libcrypt.crypt_gensalt.restype = ctypes.c_char_p
    libcrypt.crypt_gensalt.argtypes = (ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                       ctypes.c_int)
    secret = password.encode()
    for old in previous:
        if old.startswith("$") and libcrypt.crypt(secret, old.encode()) == old.encode():
            return old
    salt = libcrypt.crypt_gensalt(b"$y$", 0, None, 0)  # random bytes from the kernel
    hashed = libcrypt.crypt(secret, salt) if salt else None
    if not hashed or not hashed.startswith(b"$y$"):
        raise TemplateError("crypt: libcrypt could not make a yescrypt hash")
    return hashed.decode()


def public_keys(value: str, variable: str | None = None) -> str:
    """authorized_keys lines from ssh public key text, or from the file it names (`/...`);
    errors say to pass `variable` with --set."""
    fix = f"; pass --set {variable}=KEY-LINE-OR-FILE" if variable else ""
    import base64
    import binascii

    text = value
    if value.startswith("/"):
        try:
            with open(value, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"public key file {value}: cannot read: "
                                f"{getattr(e, 'strerror', None) or e}{fix}") from None
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise TemplateError(f"no ssh public key in {value!r}: give a key line (ssh-ed25519 "
                            f"AAAA... comment) or the path of a .pub file{fix}")
    for number, line in enumerate(lines, 1):
        fields = line.split()
        try:
            # the key blob starts with its own type name: a truncated or pasted-wrong key fails
            ok = len(fields) >= 2 and fields[0] in KEY_TYPES and base64.b64decode(
                fields[1], validate=True)[4:4 + len(fields[0])] == fields[0].encode()
        except binascii.Error:
            ok = False
        if not ok:
            # a file's content is not echoed: it may be a secret named by mistake
            what = f"key line {number} of {value}" if value.startswith("/") else repr(line[:60])
            raise TemplateError(f"not an ssh public key line: {what} (expected TYPE BASE64 "
                                f"[comment], TYPE one of ssh-ed25519, ssh-rsa, ecdsa-...){fix}")
    return "\n".join(lines) + "\n"


def render(template: Template, variables: dict, previous_hashes: tuple[str, ...] = ()) -> str:
    """`previous_hashes`: password hashes the `crypt` filter keeps when they still match."""
    text, origin = _source(template)
    plain = _substitute(text, variables, origin)
    if plain is not None:
        return _capped(plain, origin)
    return render_jinja2(text, variables, origin, previous_hashes)


def render_jinja2(text: str, variables: dict, origin: str,
                  previous_hashes: tuple[str, ...] = ()) -> str:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                               autoescape=False)
    env.filters["crypt"] = lambda password: crypt(str(password), previous_hashes)
    env.filters["public_keys"] = lambda value, variable=None: public_keys(str(value), variable)
    size, parts = 0, []
    try:
        for part in env.from_string(text).generate(**variables):  # stopped at the cap
            size += len(part)
            parts.append(part)
            if size > MAX_SIZE:
                break
    except TemplateError as e:
        raise TemplateError(f"{origin}: {e}") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{origin}:{e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"{origin}: {e}; {UNDEFINED_HINT}") from None
    return _capped("".join(parts), origin)
