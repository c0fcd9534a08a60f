"""Choosing classes of a class-conditional generator: ``--class`` values to class indices.

A ``--class`` value is a class name or a class index; several classes are given by
repeating the flag or separating values with commas (``--class cat --class 3,dog``). A
value that is one of the generator's class names means that class (so the sub-folder
names ``1``, ``10``, ``2`` of a labelled folder are names first); any other value must
be a whole number from 0 to ``num_classes - 1``. Repeated classes count once, in the
order first given.

Every refusal is one :class:`~fagan.errors.FaganError` line that names the valid
classes (the first and last few when there are many).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from fagan.errors import FaganError, brief_text

__all__ = [
    "SHOWN_CLASSES",
    "abbreviate",
    "class_folder_names",
    "class_label",
    "describe_classes",
    "generator_classes",
    "resolve_classes",
    "resolve_one_class",
    "split_class_values",
]

#: Most classes a message lists by name before abbreviating (the first and last few).
SHOWN_CLASSES = 12
_WHOLE = re.compile(r"0|[1-9][0-9]*")
_UNSAFE = re.compile(r"[^\w.\- ]+")


def generator_classes(generator: Any) -> tuple[int, tuple[str, ...] | None]:
    """``(num_classes, class_names)`` of a generator: ``(0, None)`` when unconditional.

    Class names come from the file the generator was loaded from
    (``generator.class_names``); a conditional generator without them has None.
    """
    count = int(getattr(generator, "num_classes", None) or 0)
    names = getattr(generator, "class_names", None) if count else None
    if names is not None and len(names) != count:
        names = None  # names that do not fit the classes are not used to resolve anything
    return count, None if names is None else tuple(str(n) for n in names)


def class_label(index: int, names: Sequence[str] | None) -> str:
    """``"3 (cat)"`` or ``"3"``: one class for messages and tables."""
    return f"{index} ({names[index]})" if names else str(index)


def abbreviate(items: Sequence[str]) -> str:
    """``items`` joined with commas; beyond :data:`SHOWN_CLASSES`, the first and last few."""
    if len(items) <= SHOWN_CLASSES:
        return ", ".join(items)
    head, tail = SHOWN_CLASSES - 3, 2
    return f"{', '.join(items[:head])}, ..., {', '.join(items[-tail:])} ({len(items)} in all)"


def describe_classes(
    num_classes: int, names: Sequence[str] | None = None, indices: Sequence[int] | None = None
) -> str:
    """Classes for a message: ``"0 cat, 1 dog, 2 bird"`` (abbreviated when many).

    All classes, or those of ``indices``. Without names, all classes are ``"0 to 9"``
    and chosen ones their indices.
    """
    if not names:
        if indices is not None:
            return abbreviate([str(i) for i in indices])
        return "0" if num_classes == 1 else f"0 to {num_classes - 1}"
    chosen = range(len(names)) if indices is None else indices
    return abbreviate([f"{i} {brief_text(names[i], 40)}" for i in chosen])


def split_class_values(values: str | Sequence[str] | None) -> list[str]:
    """The values of one or more ``--class`` flags, split at commas, blanks dropped."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


def _one_class(value: str, num_classes: int, names: Sequence[str] | None, flag: str) -> int:
    if names is not None and value in names:
        return list(names).index(value)
    shown = brief_text(value, 60)
    valid = describe_classes(num_classes, names)
    if _WHOLE.fullmatch(value):
        index = int(value)
        if index < num_classes:
            return index
        raise FaganError(
            f"{flag} {shown}: there is no class {index}; the generator has {num_classes} "
            f"class{'es' if num_classes != 1 else ''}: {valid}"
        )
    hint = ""
    if names is not None:
        close = difflib.get_close_matches(value, list(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    kind = "class name" if names is not None else "class index"
    raise FaganError(
        f"{flag} {shown!r} is no {kind} of the generator{hint}; its classes are {valid}"
        + ("" if names is not None else " (it has no class names)")
    )


def resolve_classes(
    values: str | Sequence[str] | None,
    num_classes: int,
    names: Sequence[str] | None = None,
    *,
    required: bool = False,
    source: str = "the generator",
    flag: str = "--class",
) -> list[int] | None:
    """The class indices that ``--class`` values name, checked against the classes.

    Args:
        values: the flag's values (each may hold several, comma-separated), or None.
        num_classes: the generator's classes; 0 for an unconditional generator.
        names: the classes' names by index, or None.
        required: a conditional generator must be given a class (the command has no
            default for it).
        source: the generator's file, for messages.
        flag: the option, for messages.

    Returns:
        The indices, each once, in the order given; None when no class was given (and
        none is required).

    Raises:
        FaganError: a class for an unconditional generator, a required class missing, an
            unknown name, an index out of range.
    """
    given = split_class_values(values)
    if values is not None and not given:
        raise FaganError(f"{flag} needs a class name or index, got {values!r}")
    if not num_classes:
        if given:
            raise FaganError(
                f"{flag} applies to a class-conditional generator, and {source} is "
                "unconditional (leave out --class)"
            )
        return None
    if not given:
        if required:
            raise FaganError(
                f"{source} is class-conditional ({num_classes} classes: "
                f"{describe_classes(num_classes, names)}): give {flag} with a class name "
                "or index (repeat it or separate with commas for several)"
            )
        return None
    indices: list[int] = []
    for value in given:
        index = _one_class(value, num_classes, names, flag)
        if index not in indices:
            indices.append(index)
    return indices


def resolve_one_class(
    values: str | Sequence[str] | None,
    num_classes: int,
    names: Sequence[str] | None = None,
    *,
    required: bool = False,
    source: str = "the generator",
    flag: str = "--class",
    why: str = "",
) -> int | None:
    """:func:`resolve_classes` for a command that takes one class.

    Args:
        why: why one class only, added to the message for several (``"an
            interpolation is of one class: run it once per class"``).

    Raises:
        FaganError: as :func:`resolve_classes`, or for more than one class.
    """
    indices = resolve_classes(
        values, num_classes, names, required=required, source=source, flag=flag
    )
    if indices is None:
        return None
    if len(indices) > 1:
        raise FaganError(
            f"{flag} takes one class here, got {len(indices)}: "
            f"{describe_classes(num_classes, names, indices)}" + (f" ({why})" if why else "")
        )
    return indices[0]


def class_folder_names(indices: Sequence[int], names: Sequence[str] | None) -> list[str]:
    """One sub-folder name per class: the class name made file-safe, else ``class_<i>``.

    Names are used when every class's name stays non-empty and distinct once characters
    other than letters, digits, ``.``, ``-``, ``_`` and spaces are replaced by ``_``
    (leading dots and spaces dropped, at most 100 characters); otherwise every folder is
    ``class_<index>``.
    """
    if names:
        safe = [_UNSAFE.sub("_", str(n)).lstrip(". ").rstrip(" ")[:100] for n in names]
        if all(safe) and len(set(safe)) == len(safe):
            return [safe[i] for i in indices]
    return [f"class_{i}" for i in indices]
