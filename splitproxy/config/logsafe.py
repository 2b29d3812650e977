"""Log lines that a client cannot forge: every rendered message has its control characters
escaped, whoever logged it and whatever it quotes (an admin `?reason=`, a request target, a
header value in a library's error).

One rule in one place instead of care at every call site: `install()` puts the filter on every
handler of the root logger, so records of every logger (ours, aiohttp's, asyncio's) pass it.
A traceback keeps its newlines: it is rendered from the exception, not from the message.
"""

from __future__ import annotations

import logging
import re

# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape(text: str) -> str:
    """`text` with every control character written as an escape (`\\r`, `\\x1b`, ...)."""
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


class EscapeControlCharacters(logging.Filter):
    """Renders the message once, escaped; the record then carries no arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = escape(message)
        if safe is not message or record.args:
            record.msg = safe
            record.args = None
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Escape the messages of every handler of `logger` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, EscapeControlCharacters) for f in handler.filters):
            handler.addFilter(EscapeControlCharacters())
