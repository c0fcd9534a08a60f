"""fagan: Full Attention GANs (FAGAN) in PyTorch.

Train, sample, measure and inspect attention GANs whose architectures are described in
the original project's YAML ``.conf`` files.
"""

from fagan.errors import FaganError

__version__ = "0.1.0"

__all__ = ["FaganError", "__version__"]
