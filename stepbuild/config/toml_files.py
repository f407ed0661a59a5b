"""Reading TOML configuration files, and naming their keys and lines in errors.

`read_toml(path)` gives the document or a `ConfigError` with the file and, for a syntax
error, the line tomllib reports. tomllib gives no positions for keys, so `line_of` finds the
line of a key by a plain scan of the text (its table header, then `key =` under it); a key
it cannot find (an inline table, a dotted key) is named without a line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from stepbuild.errors import ConfigError

__all__ = ["dotted", "line_of", "read_toml"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SYNTAX_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_HEADER = re.compile(r"\s*\[\[?([^\[\]]*)\]\]?\s*(#.*)?$")


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The document in `path` and its text. `ConfigError` if unreadable or not TOML."""
    import tomllib  # ~6 ms: only when there is a file to read (a no-op build counts them)

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(str(path), f"cannot be read: {reason}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        found = _SYNTAX_LINE.search(str(exc))
        reason = _SYNTAX_LINE.sub("", str(exc)).strip()
        raise ConfigError(str(path), f"is not valid TOML: {reason}",
                          line=int(found.group(1)) if found else None) from None


def dotted(*parts: str) -> str:
    """A key path as TOML writes it: `registries."docker.io".mirrors`."""
    return ".".join(p if _BARE_KEY.fullmatch(p) else '"' + p.replace('"', '\\"') + '"'
                    for p in parts)


def line_of(text: str, table: tuple[str, ...], key: str | None) -> int | None:
    """The line (1-based) of `key` in the table `table` (or of the table's header when `key`
    is None); None when a plain scan cannot tell."""
    want = _normal(dotted(*table)) if table else ""
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            current = _normal(header.group(1))
            if key is None and current == want:
                return number
            continue
        if key is not None and current == want and re.match(
                rf"\s*(\"?){re.escape(key)}\1\s*=", line):
            return number
    return None


def _normal(header: str) -> str:
    """A table header without the spaces TOML allows around its dots, quotes unified."""
    return re.sub(r"\s*\.\s*", ".", header.strip()).replace("'", '"')
