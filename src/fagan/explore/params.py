"""Validation of everything a page (or anyone else) sends to the explore server.

Each parser takes the raw text of one parameter and returns a typed value or raises
:class:`RequestError` with the HTTP status and a message meant for the user. Nothing
is coerced silently: ``1e3``, ``-0``, `` 7`` and ``0x10`` are not seeds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fagan.errors import FaganError

#: Largest accepted seed: the largest signed 64-bit integer.
SEED_MAX = 2**63 - 1
#: Accepted truncation thresholds (``|z| <= t``); no truncation when the parameter is absent.
TRUNCATION_RANGE = (0.05, 10.0)
#: Largest accepted upload, in bytes.
MAX_UPLOAD_BYTES = 10 * 2**20
#: Largest accepted upload, in pixels (width x height), checked before decoding.
MAX_UPLOAD_PIXELS = 50_000_000
#: Accepted upload types: content type -> the file's first bytes.
UPLOAD_TYPES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
#: Encodings of attention probabilities on the wire.
DTYPES = ("float16", "float32")

_WHOLE = re.compile(r"0|[1-9][0-9]{0,18}")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


class RequestError(FaganError):
    """A request the server refuses, with its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageRequest:
    """Which generated image: a seed, or a point between two seeds.

    Attributes:
        seed: the latent's seed, as ``fagan generate --seed``.
        truncation: ``|z| <= truncation`` for the latents, or None.
        seed2: the second seed of an interpolation, or None.
        mix: where between ``seed`` (0) and ``seed2`` (1) the latent lies (slerp).
        label: the class of a conditional generator, or None.
    """

    seed: int
    truncation: float | None = None
    seed2: int | None = None
    mix: float = 0.0
    label: int | None = None

    def as_dict(self) -> dict[str, object]:
        """The request as the page sends it back (seeds as strings: JSON numbers lose them)."""
        out: dict[str, object] = {"seed": str(self.seed)}
        if self.truncation is not None:
            out["truncation"] = self.truncation
        if self.seed2 is not None:
            out["seed2"], out["mix"] = str(self.seed2), self.mix
        if self.label is not None:
            out["class"] = self.label
        return out


def single_values(pairs: Iterable[tuple[str, str]], allowed: Iterable[str]) -> dict[str, str]:
    """Query pairs as a dict, refusing unknown and repeated names."""
    allowed = set(allowed)
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise RequestError(
                f"unknown parameter {name!r} (expected some of {', '.join(sorted(allowed))})"
            )
        if name in values:
            raise RequestError(f"parameter {name!r} given more than once")
        values[name] = value
    return values


def parse_seed(text: str, name: str = "seed") -> int:
    """A whole number in 0..2^63-1 written plainly in decimal."""
    if not _WHOLE.fullmatch(text) or int(text) > SEED_MAX:
        raise RequestError(f"{name} must be a whole number from 0 to {SEED_MAX}, got {text[:40]!r}")
    return int(text)


def parse_number(text: str, name: str, low: float, high: float) -> float:
    """A finite decimal number in ``[low, high]``."""
    if (
        not _NUMBER.fullmatch(text)
        or not math.isfinite(float(text))
        or not low <= float(text) <= high
    ):
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}, got {text[:40]!r}")
    return float(text)


def parse_index(text: str, name: str, count: int) -> int:
    """A whole number in ``0..count-1``."""
    if not _WHOLE.fullmatch(text) or int(text) >= count:
        raise RequestError(
            f"{name} must be a whole number from 0 to {count - 1}, got {text[:40]!r}"
        )
    return int(text)


def parse_choice(text: str, name: str, choices: Iterable[str]) -> str:
    """One of ``choices``, exactly."""
    choices = list(choices)
    if text not in choices:
        shown = ", ".join(choices) if len(choices) <= 12 else ", ".join(choices[:12]) + ", ..."
        raise RequestError(f"unknown {name} {text[:80]!r} (expected one of {shown})")
    return text


def parse_upload_key(text: str) -> str:
    """The SHA-256 (64 lowercase hex digits) by which an upload is named."""
    if not _HEX_KEY.fullmatch(text):
        raise RequestError("upload must be the 64 hex digits the upload returned")
    return text


def parse_image_request(values: Mapping[str, str], num_classes: int) -> ImageRequest:
    """The generated image named by ``seed``, ``truncation``, ``seed2``, ``mix``, ``class``.

    Args:
        values: the request's parameters.
        num_classes: the generator's classes, 0 for an unconditional generator.

    Raises:
        RequestError: a missing seed, a value out of range, ``mix`` without ``seed2``,
            a class for an unconditional generator or a conditional one without class.
    """
    if "seed" not in values:
        raise RequestError("missing parameter 'seed'")
    seed = parse_seed(values["seed"])
    truncation = None
    if "truncation" in values:
        truncation = parse_number(values["truncation"], "truncation", *TRUNCATION_RANGE)
    seed2 = parse_seed(values["seed2"], "seed2") if "seed2" in values else None
    mix = 0.0
    if "mix" in values:
        if seed2 is None:
            raise RequestError("mix needs seed2, the seed to interpolate towards")
        mix = parse_number(values["mix"], "mix", 0.0, 1.0)
    label = None
    if "class" in values:
        if num_classes == 0:
            raise RequestError("this generator is unconditional: it takes no class")
        label = parse_index(values["class"], "class", num_classes)
    elif num_classes:
        raise RequestError(f"this generator is conditional: give class (0 to {num_classes - 1})")
    return ImageRequest(seed, truncation, seed2, mix, label)


def parse_seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: at least one seed, each in 0..2^63-1, no repeats.

    Raises:
        FaganError: naming the first bad part.
    """
    seeds = [parse_seed(part.strip()) for part in text.split(",") if part.strip()]
    if not seeds:
        raise FaganError(f"--seeds needs at least one seed, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise FaganError(f"--seeds repeats a seed: {text!r}")
    return seeds


def check_upload(data: bytes, content_type: str) -> str:
    """Checks an uploaded image's size, declared type and first bytes; returns its type.

    Raises:
        RequestError: 413 when too large, 415 for a type other than PNG or JPEG or a
            body whose first bytes do not match its declared type, 400 when empty.
    """
    kind = content_type.split(";")[0].strip().lower()
    if kind not in UPLOAD_TYPES:
        raise RequestError(
            f"uploads must be PNG or JPEG (image/png, image/jpeg), got "
            f"{kind[:60] or 'no content type'!r}",
            415,
        )
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(
            f"the upload is {len(data)} bytes; at most {MAX_UPLOAD_BYTES} are accepted", 413
        )
    if not data:
        raise RequestError("the upload is empty")
    if not data.startswith(UPLOAD_TYPES[kind]):
        raise RequestError(
            f"the upload is not a {kind.split('/')[1].upper()} file (its first bytes do not match)",
            415,
        )
    return kind
