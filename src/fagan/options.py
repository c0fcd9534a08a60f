"""Options declared once: dataclass fields whose metadata builds the command-line flags.

A subcommand's options are one dataclass. Each field is declared with :func:`option`,
which records its help text, its kind (how text is parsed and which values are valid)
and how it appears on the command line. From that single declaration:

* :func:`add_arguments` builds the argparse flags (with defaults shown in ``--help``),
* :func:`from_namespace` turns parsed arguments into the dataclass, and
  :func:`given_options` tells which flags the command line gave,
* :func:`check_fields` validates a dataclass built in Python (library use) with the
  same rules and messages the command line applies.

Checks that relate several options live in the dataclass's own ``validate`` method,
which calls :func:`check_fields` first.

Example::

    @dataclass
    class Opts:
        batch_size: int = option(32, POSITIVE_INT, "images per step")
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import reprlib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from fagan.errors import FaganError

_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80


def quote(value: Any) -> str:
    """A bounded ``repr`` for messages: long or nested values are cut, never expanded."""
    return _short.repr(value)


@dataclass(frozen=True)
class Kind:
    """How an option's text is parsed and which values it accepts.

    Attributes:
        parse: text -> value; raises ValueError on malformed text.
        accepts: value -> whether it is valid.
        what: the valid values in words, used in every message ("a whole number >= 1").
    """

    parse: Callable[[str], Any]
    accepts: Callable[[Any], bool]
    what: str

    def check(self, name: str, value: Any) -> Any:
        """Returns ``value`` if valid, else raises FaganError naming ``--name``."""
        ok = False
        try:
            ok = bool(self.accepts(value))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise FaganError(f"--{name} must be {self.what}, got {quote(value)}")
        return value

    def argparse_type(self) -> Callable[[str], Any]:
        """An argparse ``type=`` function: parse and check, argparse's message on failure."""

        def parse(text: str) -> Any:
            try:
                value = self.parse(text)
            except (ValueError, OverflowError):
                raise argparse.ArgumentTypeError(
                    f"expected {self.what}, got {quote(text)}"
                ) from None
            try:
                ok = self.accepts(value)
            except (TypeError, ValueError, OverflowError):
                ok = False
            if not ok:
                raise argparse.ArgumentTypeError(f"expected {self.what}, got {quote(text)}")
            return value

        parse.__name__ = self.what  # argparse names the type in some messages
        return parse


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float) and math.isfinite(value)


_INT64 = 2**63 - 1

POSITIVE_INT = Kind(int, lambda v: _is_int(v) and 1 <= v <= _INT64, "a whole number >= 1")
NON_NEGATIVE_INT = Kind(int, lambda v: _is_int(v) and 0 <= v <= _INT64, "a whole number >= 0")
SEED = Kind(int, lambda v: _is_int(v) and 0 <= v <= _INT64, "a whole number in [0, 2^63)")
POSITIVE_FLOAT = Kind(float, lambda v: _is_number(v) and v > 0, "a positive number")
PERCENTAGE = Kind(float, lambda v: _is_number(v) and 0 < v <= 100, "a percentage in (0, 100]")
UNIT_INTERVAL = Kind(float, lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
TEXT = Kind(str, lambda v: isinstance(v, str), "text")
FLAG = Kind(bool, lambda v: isinstance(v, bool), "true or false")
EXISTING_FILE = Kind(str, lambda v: isinstance(v, str) and Path(v).is_file(), "an existing file")
EXISTING_DIR = Kind(str, lambda v: isinstance(v, str) and Path(v).is_dir(), "an existing folder")


def int_range(low: int, high: int) -> Kind:
    """A kind that accepts whole numbers from ``low`` to ``high`` (both included)."""
    return Kind(
        int, lambda v: _is_int(v) and low <= v <= high, f"a whole number from {low} to {high}"
    )


def choice(*values: str) -> Kind:
    """A kind that accepts one of ``values``."""
    return Kind(str, lambda v: v in values, "one of " + ", ".join(values))


def option(
    default: Any = MISSING,
    kind: Kind = TEXT,
    help: str = "",  # noqa: A002 - argparse's name
    *,
    group: str | None = None,
    negative_flag: str | None = None,
    cli: bool = True,
    flag: str | None = None,
    repeat: bool = False,
) -> Any:
    """Declares one option as a dataclass field.

    Args:
        default: the default value; ``None`` means "derived" (say how in ``help``).
        kind: how its text is parsed and which values are valid.
        help: the ``--help`` text.
        group: the ``--help`` section it is listed under.
        negative_flag: for a boolean defaulting to true, the flag that sets it false
            (``--no_tensorboard``); for a ``bool | None`` option, the second flag of the
            pair (``--channels_last`` / ``--no_channels_last``).
        cli: False for options that exist only in the library API.
        flag: the flag's name when it is not the field's (``class`` for ``classes``).
        repeat: the flag may be given several times; the value is the list of the
            values given (each checked against ``kind``), None when never given.
    """
    metadata = {
        "kind": kind,
        "help": help,
        "group": group,
        "negative_flag": negative_flag,
        "cli": cli,
        "flag": flag,
        "repeat": repeat,
    }
    return dataclasses.field(default=default, metadata=metadata)


def _help(f: dataclasses.Field, text: str) -> str:
    shown = not any(f.default is v for v in (None, MISSING, False, True))
    if shown and f.metadata["kind"] is not FLAG:
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
    return text


class _Record(argparse.Action):
    """Stores a flag's value (``const`` for a flag without one) and records that it was given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if self.nargs == 0:
            values = self.const
        elif self.const == _REPEAT:  # a repeatable flag: every value given, in order
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)
        setattr(namespace, _GIVEN, given_options(namespace) | {self.dest})


_GIVEN = "_given_options"
_REPEAT = "repeat"  # the ``const`` that marks a repeatable flag


def given_options(namespace: argparse.Namespace) -> frozenset[str]:
    """The names of the options whose flags were given (not left at their defaults)."""
    return getattr(namespace, _GIVEN, frozenset())


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Adds one flag (``--name``) per declared field of dataclass ``cls`` to ``parser``."""
    groups: dict[str | None, Any] = {None: parser}
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", False):
            continue
        group = meta["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        target = groups[group]
        kind: Kind = meta["kind"]
        text = meta["help"]
        if kind is FLAG:
            negative = meta["negative_flag"]
            switch = dict(dest=f.name, action=_Record, nargs=0)
            if f.default is None:  # tri-state: two flags, neither means "derive it"
                pair = target.add_mutually_exclusive_group()
                pair.add_argument(f"--{f.name}", const=True, default=None, help=text, **switch)
                pair.add_argument(
                    f"--{negative}",
                    const=False,
                    default=None,
                    help=f"the opposite of --{f.name}",
                    **switch,
                )
            elif f.default is True:
                target.add_argument(f"--{negative}", const=False, default=True, help=text, **switch)
            else:
                target.add_argument(f"--{f.name}", const=True, default=False, help=text, **switch)
            continue
        required = f.default is MISSING
        target.add_argument(
            f"--{meta.get('flag') or f.name}",
            dest=f.name,
            type=kind.argparse_type(),
            required=required,
            action=_Record,
            const=_REPEAT if meta.get("repeat") else None,
            metavar=meta["flag"].upper() if meta.get("flag") else None,
            default=None if required else f.default,
            help=_help(f, text),
        )


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """The dataclass ``cls`` built from the parsed arguments of :func:`add_arguments`."""
    values = {
        f.name: getattr(namespace, f.name)
        for f in fields(cls)
        if f.metadata.get("cli", False) and hasattr(namespace, f.name)
    }
    return cls(**values)


def check_fields(obj: Any) -> None:
    """Checks every declared field of ``obj`` against its kind.

    ``None`` is accepted where it is the default (a derived value).

    Raises:
        FaganError: naming the first invalid option and its (bounded) value.
    """
    for f in fields(obj):
        if "kind" not in f.metadata:
            continue
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        name = f.metadata.get("flag") or f.name
        if f.metadata.get("repeat"):
            if not isinstance(value, (list, tuple)):
                raise FaganError(f"--{name} must be a list of values, got {quote(value)}")
            for item in value:
                f.metadata["kind"].check(name, item)
            continue
        f.metadata["kind"].check(name, value)
