"""Rendering profile templates with jinja2 (imported only when a build renders one).

Templates come from profiles, which may be shared: they are rendered in jinja2's sandbox, and a
variable the profile does not define is an error rather than an empty string.
"""


from jailkit.errors import JailkitError
from jailkit.profile import Template


class TemplateError(JailkitError):
    """A template that does not render."""


def render(template: Template, variables: dict) -> str:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                               autoescape=False)
    origin = template.source or f"inline template for {template.dest}"
    try:
        if template.source:
            with open(template.source, encoding="utf-8") as f:
                text = f.read()
        else:
            text = template.text
        return env.from_string(text).render(**variables)
    except OSError as e:
        raise TemplateError(f"{origin}: cannot read: {e.strerror}") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{origin}:{e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"{origin}: {e}; define it under [variables] or pass --set") from None
