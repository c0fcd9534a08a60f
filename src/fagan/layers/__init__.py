"""Building blocks of FAGAN networks, one concept per module."""

from fagan.layers import fast
from fagan.layers.activations import ActivationSpec, parse_activation
from fagan.layers.attention import (
    FullAttention,
    SelfAttention,
    attend,
    attention_layers,
    capture_attention,
)
from fagan.layers.blocks import ConvBlock, make_conv

__all__ = [
    "ActivationSpec",
    "ConvBlock",
    "FullAttention",
    "SelfAttention",
    "attend",
    "attention_layers",
    "capture_attention",
    "fast",
    "make_conv",
    "parse_activation",
]
