"""Activation functions named by strings such as ``"lrelu(0.2)"``.

The strings come from configuration files, so they are parsed with a regular
expression and never evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

_LRELU = re.compile(r"^lrelu\(\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\)$")
_PLAIN = ("tanh", "sigmoid", "relu")

ACTIVATION_FORMS = "tanh, sigmoid, relu or lrelu(SLOPE) such as lrelu(0.2)"


@dataclass(frozen=True)
class ActivationSpec:
    """A parsed activation.

    Attributes:
        name: one of ``tanh``, ``sigmoid``, ``relu``, ``lrelu``.
        slope: the negative slope of ``lrelu``; ``0.0`` for the others.
    """

    name: str
    slope: float = 0.0

    def build(self) -> nn.Module:
        """Returns a fresh module computing this activation."""
        if self.name == "tanh":
            return nn.Tanh()
        if self.name == "sigmoid":
            return nn.Sigmoid()
        if self.name == "relu":
            return nn.ReLU()
        return nn.LeakyReLU(negative_slope=self.slope)

    def __str__(self) -> str:
        return f"lrelu({self.slope!r})" if self.name == "lrelu" else self.name


def parse_activation(text: str) -> ActivationSpec:
    """Parses an activation string, case-insensitively as the original did.

    Args:
        text: ``tanh``, ``sigmoid``, ``relu`` or ``lrelu(SLOPE)``.

    Returns:
        The parsed :class:`ActivationSpec`.

    Raises:
        ValueError: if ``text`` is not one of those forms.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string ({ACTIVATION_FORMS}), got {text!r}")
    name = text.strip().lower()
    if name in _PLAIN:
        return ActivationSpec(name)
    match = _LRELU.match(name)
    if match:
        return ActivationSpec("lrelu", float(match.group(1)))
    raise ValueError(f"cannot parse activation {text!r}; expected {ACTIVATION_FORMS}")
