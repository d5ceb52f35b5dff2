"""Image and mask sizes as users give them (``N``, ``HxW``, a pair, or ``input``) and as
``run.json`` keeps them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["parse_size", "size_option"]


def parse_size(value: str | int | Sequence[int] | None, what: str) -> tuple[int, int] | None:
    """``N``, ``HxW`` (or ``H,W``), an int or a pair -> ``(h, w)``; ``None`` stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        parts = [value]
    elif isinstance(value, str):
        try:
            parts = [int(v) for v in value.lower().replace(",", "x").split("x")]
        except ValueError:
            parts = []
    else:
        parts = [int(v) for v in value]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"{what} must be N or HxW with positive integers, got {value!r}")
    return parts[0], parts[1]


def size_option(value: Any) -> Any:
    """A size as JSON keeps it (``input``, ``N``, ``[h, w]``)."""
    if value is None or isinstance(value, str | int):
        return value
    return [int(v) for v in value]
