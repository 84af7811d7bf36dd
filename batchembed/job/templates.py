"""Text templates: ``input.text`` is a column name, or a template over columns (``"{title}\n\n{body}"``);
which columns it names."""

from __future__ import annotations

import string

from batchembed.errors import ConfigError


def text_fields(template: str) -> list[str]:
    """Column names a text spec refers to: the spec itself if it has no ``{}``, else the template's fields."""
    if "{" not in template and "}" not in template:
        return [template]
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"input.text: malformed template {template!r}: {exc}") from None
    if not names or any(not n for n in names):
        raise ConfigError(f"input.text: template {template!r} must name its columns, like {{title}}")
    return list(dict.fromkeys(names))
