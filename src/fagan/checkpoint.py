"""Saving and loading weights and training states, safely.

* Every file is read with ``torch.load(weights_only=True)``: a ``.pth`` crafted to run
  code when unpickled is refused with a :class:`FaganError` before anything runs.
* Every file is written atomically (temporary file in the same folder, fsync,
  ``os.replace``): a crash or a full disk mid-write leaves the previous file intact.
* State dicts saved by attn-gan-pytorch (``...residual_conv.module.weight_bar``,
  ``weight_u``, ``weight_v``) are recognised and converted wherever generator or
  discriminator weights are accepted.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fagan.errors import FaganError
from fagan.fileio import atomic_write

TRAINING_STATE_FORMAT = "fagan-training-state"
_LEGACY_SUFFIXES = (".module.weight_bar", ".module.weight_u", ".module.weight_v")


def load_file(path: str | Path) -> Any:
    """Reads a torch file with ``weights_only=True`` onto the CPU.

    Raises:
        FaganError: missing file, a file that would run code when unpickled, or a
            file that is not a (complete) PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FaganError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's first line is generic; the line naming the refused global says what it is
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line),
                      lines[0] if lines else "unsafe content")
        raise FaganError(
            f"refusing to load {path}: it holds Python objects that could run code when "
            f"unpickled, and only plain tensors and containers are accepted ({detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise FaganError(
            f"cannot read {path}: not a complete PyTorch checkpoint "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else 'empty'})"
        ) from None


def save_file(obj: Any, path: str | Path) -> Path:
    """Writes ``obj`` with ``torch.save`` atomically.

    The data goes to a temporary file beside ``path``, is flushed to disk, then
    renamed over ``path``: readers see either the old file or the complete new one.

    Raises:
        FaganError: if the file cannot be written (no space left, no permission);
            any previous file at ``path`` is left as it was.
    """
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: _torch_save(obj, tmp))
    except Exception as error:
        if isinstance(error.__context__, OSError):  # torch's writer hides a full disk's
            error = error.__context__  # errno behind "unexpected pos ..."
        reason = getattr(error, "strerror", None) or (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise FaganError(f"cannot write {path}: {reason}; the previous file is unchanged") from None
    return path


def _torch_save(obj: Any, path: Path) -> None:
    # through a Python file, whose failing write keeps its errno (ENOSPC, EFBIG) as the
    # context of torch's error; torch's own writer would report only "unexpected pos"
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def is_training_state(obj: Any) -> bool:
    """Whether ``obj`` is a full training state written by ``fagan train``."""
    return isinstance(obj, Mapping) and obj.get("format") == TRAINING_STATE_FORMAT


def is_legacy_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether a state dict was saved by attn-gan-pytorch (its own SpectralNorm wrapper)."""
    return any(key.endswith(_LEGACY_SUFFIXES) for key in state)


def _legacy_power_iteration(w_bar: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """The one power iteration attn-gan-pytorch's SpectralNorm runs on every forward.

    It updates ``v`` first, then ``u`` (PyTorch's order is the reverse), and divides
    the weight by ``u . W v``. Storing the updated ``u, v`` makes our eval-mode
    spectral norm compute exactly what the original computes on its next forward.
    """
    w = w_bar.reshape(w_bar.shape[0], -1).double()
    v = w.t().mv(u.double())
    v = v / (v.norm() + 1e-12)
    u = w.mv(v)
    u = u / (u.norm() + 1e-12)
    return u.to(w_bar.dtype), v.to(w_bar.dtype)


def convert_legacy_state_dict(
    state: Mapping[str, Tensor], model: nn.Module | None = None
) -> dict[str, Tensor]:
    """Converts an attn-gan-pytorch state dict to this package's parameter names.

    ``X.module.weight_bar/_u/_v`` become ``X.parametrizations.weight.original`` and
    ``X.parametrizations.weight.0._u/_v`` (after the original's next power
    iteration); ``X.module.bias`` becomes ``X.bias``. The original always created a
    ``batch_norm`` inside full attention layers, used or not: those entries are dropped
    when ``model`` has no such module.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".module.weight_bar"):
            base = key[: -len(".module.weight_bar")]
            u, v = _legacy_power_iteration(
                value, state[f"{base}.module.weight_u"], state[f"{base}.module.weight_v"]
            )
            out[f"{base}.parametrizations.weight.original"] = value
            out[f"{base}.parametrizations.weight.0._u"] = u
            out[f"{base}.parametrizations.weight.0._v"] = v
        elif key.endswith((".module.weight_u", ".module.weight_v")):
            continue
        elif ".module." in key and f"{key.rsplit('.module.', 1)[0]}.module.weight_bar" in state:
            base, name = key.rsplit(".module.", 1)
            out[f"{base}.{name}"] = value
        else:
            out[key] = value
    if model is not None:
        out = _drop_unused_batch_norms(out, model)
    return out


def _drop_unused_batch_norms(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Drops the ``batch_norm`` entries attn-gan-pytorch saved for full attention layers
    built without batch norm (it created that module whether used or not)."""
    from fagan.layers import FullAttention

    unused = tuple(
        f"{name}.batch_norm." if name else "batch_norm."
        for name, module in model.named_modules()
        if isinstance(module, FullAttention) and module.batch_norm is None
    )
    if not unused:
        return dict(state)
    return {key: value for key, value in state.items() if not key.startswith(unused)}


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


def network_state_dict(
    obj: Any, role: str, *, prefer_ema: bool = True, source: str = "<weights>"
) -> dict[str, Tensor]:
    """Finds the state dict for ``role`` (``generator`` or ``discriminator``) in a loaded file.

    Accepts a plain state dict (ours, attn-gan-pytorch's, or one saved from a
    ``DataParallel``/DDP/compiled wrapper) or a full training state, from which the
    EMA generator is taken when ``prefer_ema`` and present.
    """
    if is_training_state(obj):
        key = role
        if role == "generator" and prefer_ema and obj.get("ema_generator") is not None:
            key = "ema_generator"
        state = obj.get(key)
        if state is None:
            raise FaganError(f"{source}: this training state holds no {role} weights")
    elif isinstance(obj, Mapping) and obj and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        state = obj
    else:
        raise FaganError(
            f"{source}: not a {role} state dict or fagan training state "
            f"(found {type(obj).__name__})"
        )
    for prefix in ("module.", "_orig_mod."):
        state = _strip_prefix(state, prefix)
    return dict(state)


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Loads ``state`` into ``model`` after checking every key and shape.

    Converts attn-gan-pytorch state dicts first.

    Raises:
        FaganError: naming the first parameter that is missing or has another shape
            (with both shapes), or the first one the architecture does not have.
    """
    if is_legacy_state_dict(state):
        state = convert_legacy_state_dict(state, model)
    else:  # a legacy dict without spectral norm has no weight_bar to be recognised by
        state = _drop_unused_batch_norms(state, model)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            missing = [k for k in expected if k not in state]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FaganError(
                f"{source} does not fit the configured architecture: it lacks {key}{more}"
                + _other_layer_kind(key, tensor, state, expected)
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise FaganError(
                f"{source} does not fit the configured architecture: {key} has shape "
                f"{list(state[key].shape)} in the file but {list(tensor.shape)} in the "
                "architecture"
            )
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise FaganError(
            f"{source} does not fit the configured architecture: it has {unexpected[0]}{more}, "
            "which the architecture lacks"
        )
    model.load_state_dict(state, strict=True)


def _other_layer_kind(key: str, tensor: Tensor, state: Mapping[str, Tensor],
                      expected: Mapping[str, Tensor]) -> str:
    """When the file's layer holding ``key`` is another kind of layer: both layers' first
    differing tensors and their shapes (``model.<i>`` is ``architecture[i]`` of the config)."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
        return ""
    prefix = f"model.{parts[1]}."
    foreign = [k for k in state if k.startswith(prefix) and k not in expected]
    if not foreign:
        return ""
    return (
        f"; layer model.{parts[1]} (architecture[{parts[1]}]) is another kind of layer in "
        f"the file: it holds {foreign[0]} of shape {list(state[foreign[0]].shape)} where the "
        f"architecture has {key} of shape {list(tensor.shape)}"
    )


def load_network(model: nn.Module, path: str | Path, role: str, *, prefer_ema: bool = True) -> None:
    """Loads generator or discriminator weights from any accepted file into ``model``."""
    obj = load_file(path)
    state = network_state_dict(obj, role, prefer_ema=prefer_ema, source=str(path))
    load_state_into(model, state, f"{role} weights {path}")
