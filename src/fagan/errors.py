"""The one user-facing exception type, and bounded quoting of values in its messages.

Anything a user can cause (a bad flag, a malformed config, a missing or foreign file)
raises :class:`FaganError` with a message meant to be read as is. The command line
prints that message on one line and exits with status 2.

Messages quote what they found through :func:`brief_repr` and :func:`brief_text`, never
with a plain ``repr``: a value from a file can be a 50 MB string, an integer of a
million digits or a YAML alias bomb whose full ``repr`` takes gigabytes.
"""

from __future__ import annotations

import reprlib
from typing import Any

#: The most characters a quoted value takes in a message.
QUOTE_LIMIT = 80


class FaganError(Exception):
    """An error caused by user input, with a message written for the user."""


class _BriefRepr(reprlib.Repr):
    """``reprlib.Repr`` that also bounds integers before formatting them, shows tensors by
    dtype and shape instead of by value, and elides subclasses of the containers
    (``OrderedDict``, ``torch.Size``) as it does the containers themselves; a plain
    ``repr`` of those would format every item."""

    _CONTAINERS = (dict, list, tuple, set, frozenset, str, bytes, int)

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxstring = self.maxother = self.maxlong = QUOTE_LIMIT
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 4

    def repr1(self, x: Any, level: int) -> str:
        if _is_tensor(x):
            return describe_tensor(x)
        for base in self._CONTAINERS:
            if isinstance(x, base) and not isinstance(x, bool):
                return getattr(self, f"repr_{base.__name__}")(x, level)
        return super().repr1(x, level)

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * self.maxlong:  # repr() of huge ints is slow or refused
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(int(x), level)


_BRIEF = _BriefRepr()


def brief_repr(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, in time and memory bounded
    by ``limit`` whatever the size of ``value`` (nested containers are elided)."""
    try:
        text = _BRIEF.repr(value)
    except Exception:  # a foreign object whose repr fails
        text = f"<{type(value).__name__}>"
    return _cut(text, limit)


def brief_text(text: str, limit: int = 200) -> str:
    """Free text (another library's message) on one line, cut to ``limit`` characters."""
    return _cut(" ".join(text[: 4 * limit].split()), limit)


def describe_tensor(value: Any) -> str:
    """``a sparse_coo float32 tensor of shape [3, 128]``: what a tensor is, not its values."""
    kind = ""
    if getattr(value, "is_nested", False):
        kind = "nested "
    elif str(value.layout) != "torch.strided":
        kind = f"{str(value.layout).replace('torch.', '')} "
    try:
        shape: Any = list(value.shape)
    except Exception:  # nested tensors have no single shape
        shape = f"{value.dim()} dimensions"
    dtype = str(value.dtype).replace("torch.", "")
    device = "" if value.device.type == "cpu" else f" on {value.device.type}"
    return f"a {kind}{dtype} tensor of shape {shape}{device}"


def _is_tensor(value: Any) -> bool:
    return all(hasattr(value, name) for name in ("layout", "dtype", "shape", "is_nested"))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


__all__ = ["FaganError", "QUOTE_LIMIT", "brief_repr", "brief_text", "describe_tensor"]
