"""Bounded text: anything that echoes user input (errors, logs, diagnostics values, parameter
results) goes through :func:`bounded`, so a hostile or huge value cannot turn one message into
megabytes republished every diagnostics period."""

from __future__ import annotations

from typing import Any

#: Default size of any text that may echo user input (characters).
TEXT_LIMIT = 500
#: Longest piece of user input (a path, a parameter name, a parser message) echoed in a one-line error.
ECHO_LIMIT = 200


def bounded(text: Any, limit: int = TEXT_LIMIT) -> str:
    """``str(text)`` cut to at most ``limit`` characters, saying how much was cut."""
    text = text if isinstance(text, str) else str(text)
    if len(text) <= limit:
        return text
    marker = f"... [{len(text) - limit} more chars]"
    keep = max(0, limit - len(marker))
    return (text[:keep] + marker)[:limit]


def bounded_repr(value: Any, limit: int = 120) -> str:
    """A short ``repr`` of a value for error messages; huge strings are cut before ``repr``
    copies them."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
        return bounded(repr(value) + "...", limit + 8)
    return bounded(repr(value), limit)


def one_line(text: Any, limit: int = ECHO_LIMIT) -> str:
    """``text`` with its whitespace runs collapsed and bounded, so an error printed at startup stays
    one readable line whatever the input was."""
    return bounded(" ".join(str(text).split()), limit)
