"""Rendering profile templates with jinja2 (imported only when a template needs it).

Templates come from profiles, which may be shared: they are rendered in jinja2's sandbox, and a
variable the profile does not define is an error rather than an empty string. A template whose only
jinja2 syntax is `{{ name }}` is rendered by plain substitution, which gives jinja2's output for the
str/int/float/bool values a profile can hold, without importing jinja2 (~70 ms).
"""

import re

from jailkit.errors import JailkitError
from jailkit.profile import Template

PLACEHOLDER = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}")
UNDEFINED_HINT = "define it under [variables] or pass --set"


class TemplateError(JailkitError):
    """A template that does not render."""


def _source(template: Template) -> tuple[str, str]:
    """(text, name for messages)."""
    if not template.source:
        return template.text, f"inline template for {template.dest}"
    try:
        with open(template.source, encoding="utf-8") as f:
            return f.read(), template.source
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"{template.source}: cannot read: {e}") from None


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


def render(template: Template, variables: dict) -> str:
    text, origin = _source(template)
    plain = _substitute(text, variables, origin)
    if plain is not None:
        return plain
    return render_jinja2(text, variables, origin)


def render_jinja2(text: str, variables: dict, origin: str) -> str:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                               autoescape=False)
    try:
        return env.from_string(text).render(**variables)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{origin}:{e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"{origin}: {e}; {UNDEFINED_HINT}") from None
