"""Saving and loading weights and training states, safely.

* Every file is read with ``torch.load(weights_only=True)``: a ``.pth`` crafted to run
  code when unpickled is refused with a :class:`FaganError` before anything runs. A file
  that ``torch.save`` did not write (text, a plain pickle, another archive) never
  reaches ``torch.load``: it is named for what it is, from its first bytes.
* A training state is checked field by field (:func:`validate_training_state`) before
  a resume uses any of it; latents from a file by :func:`check_latents`.
* Every file is written atomically (temporary file in the same folder, fsync,
  ``os.replace``): a crash or a full disk mid-write leaves the previous file intact.
* A class-conditional run's per-epoch weights are network files (:func:`network_file`):
  the state dict with the architecture, latent size, conditioning and class names that
  rebuild the network; an unconditional run's are plain state dicts, as the original's.
* State dicts saved by attn-gan-pytorch (``...residual_conv.module.weight_bar``,
  ``weight_u``, ``weight_v``) are recognised and converted wherever generator or
  discriminator weights are accepted.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fagan.errors import FaganError, brief_repr, brief_text, describe_tensor
from fagan.fileio import atomic_write

TRAINING_STATE_FORMAT = "fagan-training-state"
#: The ``"format"`` of the per-epoch weights files of a class-conditional run
#: (:func:`network_file`); an unconditional run writes plain state dicts, as the original.
NETWORK_FILE_FORMAT = "fagan-network"
#: The roles a network file holds.
NETWORK_ROLES = ("generator", "discriminator")
#: The newest training-state layout this version reads.
TRAINING_STATE_VERSION = 1
_LEGACY_SUFFIXES = (".module.weight_bar", ".module.weight_u", ".module.weight_v")
# torch.save's legacy (pre-zip) format opens with this number, pickled with protocol 2
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
_ZIP_MAGIC = b"PK\x03\x04"
# how much of a file that is not a torch file is read to tell a pickle from other content
_PICKLE_SCAN_BYTES = 1 << 20


# --------------------------------------------------------------------------- reading files
def load_file(path: str | Path) -> Any:
    """Reads a torch file with ``weights_only=True`` onto the CPU.

    Only a file in one of ``torch.save``'s formats (its zip archive, or the legacy
    pickle opening with torch's magic number) reaches ``torch.load``; anything else is
    refused unread. Messages never quote torch's own text beyond a bounded detail (its
    advice to pass ``weights_only=False`` in particular is never repeated).

    Raises:
        FaganError: one line, for: a missing file; a file that is not a PyTorch weights
            file (text, a plain pickle, another archive); a torch file holding Python
            objects that could run code when unpickled; a truncated or damaged one.
    """
    path = Path(path)
    if not path.is_file():
        raise FaganError(f"file not found: {path}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as error:
        raise FaganError(f"cannot read {path}: {error.strerror or error}") from None
    if not head:
        raise FaganError(
            f"cannot read {path}: not a complete PyTorch checkpoint (the file is empty)"
        )
    if not _is_torch_file(path, head):
        raise _foreign_file_error(path)
    try:
        with warnings.catch_warnings():  # the refusal below says it better
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unpickling_error(path, str(error)) from None
    except MemoryError:
        raise FaganError(f"cannot read {path}: not enough memory to load it") from None
    except Exception as error:  # torch's many ways of finding a file incomplete or damaged
        raise FaganError(
            f"cannot read {path}: not a complete PyTorch checkpoint ({_torch_detail(error)})"
        ) from None


def _is_torch_file(path: Path, head: bytes) -> bool:
    """Whether ``head`` (the first bytes of ``path``) opens one of torch.save's formats."""
    if head.startswith(_LEGACY_MAGIC):
        return True
    if not head.startswith(_ZIP_MAGIC):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(
                name == "data.pkl" or name.endswith("/data.pkl") for name in archive.namelist()
            )
    except (zipfile.BadZipFile, OSError, ValueError):  # truncated: no central directory
        # torch writes <archive>/data.pkl first; its local header names it
        name_length = int.from_bytes(head[26:28], "little")
        return head[30 : 30 + name_length].endswith(b"data.pkl")


def _foreign_file_error(path: Path) -> FaganError:
    """The message for a file torch.save did not write, from its first megabyte (read,
    never unpickled): a pickle that would call code when unpickled is named as such."""
    with open(path, "rb") as handle:
        start = handle.read(_PICKLE_SCAN_BYTES)
    names = _pickle_globals(start, complete=len(start) < _PICKLE_SCAN_BYTES)
    if names:
        return FaganError(
            f"refusing to load {path}: not a PyTorch weights file but a Python pickle that "
            f"names {brief_text(names[0], 80)}, so it could run code when unpickled; refused: "
            "only files written by torch.save are read"
        )
    kind = (
        "a Python pickle not written by torch.save"
        if names is not None
        else (_foreign_kind(start[:4096]))
    )
    return FaganError(
        f"cannot read {path}: not a PyTorch weights file ({kind}); expected a state dict or "
        "training state written by torch.save"
    )


def _pickle_globals(data: bytes, *, complete: bool) -> list[str] | None:
    """The globals (``module.name``) a pickle would import, read with ``pickletools``
    without running anything; ``None`` when ``data`` is not a pickle (text, say, parses
    as a few opcodes and then fails). ``complete``: ``data`` is the whole file; otherwise
    a pickle opening with a protocol 2+ header may run past the end."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]) if len(strings) >= 2 else "a global")
            elif isinstance(arg, str):
                strings.append(arg)
            if opcode.name == "STOP":
                return names
    except Exception:  # not a pickle, or one cut by the read
        if complete or not (data[:1] == b"\x80" and data[1:2] in b"\x02\x03\x04\x05"):
            return None
        return names
    return None


def _foreign_kind(head: bytes) -> str:
    """What a file that is neither a torch file nor a pickle seems to be, for the message."""
    if head.startswith(_ZIP_MAGIC):
        return "a zip archive without torch's data.pkl"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array file"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "it looks like text"
        except UnicodeDecodeError as error:
            if error.start >= len(head) - 3:  # a character cut by the read
                return "it looks like text"
    return "unknown binary content"


def _unpickling_error(path: Path, message: str) -> FaganError:
    """torch's refusal under ``weights_only``, rephrased."""
    if found := re.search(r"GLOBAL ([\w.]{1,200})", message):
        return FaganError(
            f"refusing to load {path}: it holds Python objects that could run code when "
            f"unpickled (it names {found.group(1)}); refused: only tensors and plain "
            "containers are read"
        )
    if found := re.search(r"Unsupported operand (\d{1,3})\b", message):
        code = int(found.group(1))
        if code > 255 or chr(code) not in pickletools.code2op:
            return FaganError(
                f"cannot read {path}: not a complete PyTorch checkpoint (damaged: byte {code} "
                "where a pickle instruction should be)"
            )
        return FaganError(
            f"cannot read {path} safely: its pickle uses an instruction torch's weights-only "
            f"loader does not accept ({pickletools.code2op[chr(code)].name}, as pickle "
            "protocol 4 or later writes); save it again with torch.save's default protocol"
        )
    if re.search(r"truncated|ran out of input|EOF", message, re.IGNORECASE):
        return FaganError(f"cannot read {path}: not a complete PyTorch checkpoint (it ends early)")
    return FaganError(
        f"refusing to load {path}: it holds Python objects that could run code when "
        f"unpickled ({_torch_detail(pickle.UnpicklingError(message))}); refused: only "
        "tensors and plain containers are read"
    )


def _torch_detail(error: BaseException) -> str:
    """A bounded one-line account of torch's error, without its advice on ``weights_only``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [
        line for line in lines if "weights_only" not in line and "documentation" not in line.lower()
    ]
    if "WeightsUnpickler error:" in " ".join(useful):
        useful = [line.split("WeightsUnpickler error:", 1)[-1].strip() for line in useful]
        useful = [line for line in useful if line]
    detail = useful[0] if useful else "no detail given"
    return brief_text(f"{type(error).__name__}: {detail}", 160)


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


def is_network_file(obj: Any) -> bool:
    """Whether ``obj`` is a network file of a class-conditional run (:func:`network_file`)."""
    return isinstance(obj, Mapping) and obj.get("format") == NETWORK_FILE_FORMAT


def network_file(
    role: str,
    weights: Mapping[str, Tensor],
    config: str,
    latent_size: int,
    conditioning: Mapping[str, Any],
    class_names: list[str] | tuple[str, ...],
    image_size: int | None = None,
) -> dict[str, Any]:
    """The contents of a class-conditional run's ``GAN_GEN_<e>.pth`` / ``GAN_DIS_<e>.pth``.

    A conditional network cannot be rebuilt from its weights and architecture alone: the
    file also carries its conditioning (``Generator.conditioning_options``) and the class
    names, so ``fagan generate`` and the other readers need nothing else.

    Args:
        role: ``"generator"`` or ``"discriminator"``.
        weights: the network's state dict.
        config: the network's architecture as YAML text (as ``gen.yaml`` / ``dis.yaml``).
        latent_size: the run's latent size.
        conditioning: ``{"num_classes", "conditioning", "embedding_dim"}``.
        class_names: one name per class.
        image_size: the run's image size, stored when given.

    Raises:
        ValueError: for a role other than the two, or conditioning or class names that
            :func:`check_conditioning_metadata` refuses (a programming error).
    """
    if role not in NETWORK_ROLES:
        raise ValueError(f"role must be one of {NETWORK_ROLES}, got {role!r}")
    try:
        check_conditioning_metadata(dict(conditioning), list(class_names), "network file")
    except FaganError as error:
        raise ValueError(str(error)) from None
    contents: dict[str, Any] = {
        "format": NETWORK_FILE_FORMAT,
        "role": role,
        "weights": dict(weights),
        "config": config,
        "latent_size": latent_size,
        "conditioning": dict(conditioning),
        "class_names": list(class_names),
    }
    if image_size is not None:
        contents["image_size"] = image_size
    return contents


def check_conditioning_metadata(conditioning: Any, class_names: Any, source: str) -> None:
    """Checks a file's ``conditioning`` and ``class_names`` entries.

    ``conditioning`` is None (an unconditional network) or a mapping of exactly
    ``num_classes`` (an integer >= 1), ``conditioning`` (``"projection"`` or
    ``"concat"``) and ``embedding_dim`` (None or an integer >= 1); ``class_names`` is
    None, or for a conditional network a list of ``num_classes`` strings.

    Raises:
        FaganError: one line naming ``source`` and the entry that is wrong.
    """
    from fagan.layers.conditional import CONDITIONING_SCHEMES

    if conditioning is None:
        if class_names is not None:
            raise FaganError(
                f"{source}: 'class_names' is set but 'conditioning' is None "
                "(an unconditional network has no classes)"
            )
        return
    keys = ("num_classes", "conditioning", "embedding_dim")
    if not isinstance(conditioning, Mapping) or sorted(map(str, conditioning)) != sorted(keys):
        raise FaganError(
            f"{source}: 'conditioning': expected None or a mapping of {', '.join(keys)}, "
            f"found {_found(conditioning)}"
        )
    num_classes = conditioning["num_classes"]
    if not _is_count(num_classes, 1):
        raise FaganError(
            f"{source}: 'conditioning'['num_classes']: expected a positive integer, "
            f"found {_found(num_classes)}"
        )
    if conditioning["conditioning"] not in CONDITIONING_SCHEMES:
        raise FaganError(
            f"{source}: 'conditioning'['conditioning']: expected one of "
            f"{', '.join(CONDITIONING_SCHEMES)}, found {_found(conditioning['conditioning'])}"
        )
    embedding_dim = conditioning["embedding_dim"]
    if embedding_dim is not None and not _is_count(embedding_dim, 1):
        raise FaganError(
            f"{source}: 'conditioning'['embedding_dim']: expected None or a positive "
            f"integer, found {_found(embedding_dim)}"
        )
    if (
        not isinstance(class_names, list)
        or len(class_names) != num_classes
        or not all(isinstance(name, str) for name in class_names)
    ):
        raise FaganError(
            f"{source}: 'class_names': expected a list of {num_classes} class names "
            f"(one per class), found {_found(class_names)}"
        )


def network_metadata(obj: Any) -> tuple[dict[str, Any] | None, tuple[str, ...] | None]:
    """The conditioning options and class names a loaded file states: a training state's
    or a network file's (None, None for a plain state dict or an unconditional run's state).

    The values are as stored; :func:`validate_training_state` and
    :func:`check_conditioning_metadata` check them.
    """
    if not (is_training_state(obj) or is_network_file(obj)):
        return None, None
    conditioning = obj.get("conditioning")
    names = obj.get("class_names")
    return (
        None if conditioning is None else dict(conditioning),
        None if names is None else tuple(names),
    )


# --------------------------------------------------------------------------- validation
#: The fields ``fagan train --resume`` reads from a training state.
TRAINING_STATE_FIELDS = (
    "generator",
    "discriminator",
    "g_optimizer",
    "d_optimizer",
    "scaler",
    "epoch",
    "batch",
    "step",
    "rng",
    "fixed_latents",
    "sampler",
    "generator_config",
    "discriminator_config",
)
_RNG_KEYS = ("torch", "latent", "augment")
_Scalar = (bool, int, float, type(None))


def _found(value: Any) -> str:
    """What a value is, for a message: its type and a bounded repr, or a tensor's kind."""
    if isinstance(value, Tensor):
        return describe_tensor(value)
    if isinstance(value, (Mapping, list, tuple)):
        return f"{type(value).__name__} of {len(value)} item(s) {brief_repr(value, 60)}"
    return f"{type(value).__name__} {brief_repr(value, 60)}"


def _is_plain_tensor(value: Any) -> bool:
    """A dense, CPU, non-quantized, non-nested tensor: what a weights file holds."""
    return (
        isinstance(value, Tensor)
        and value.layout == torch.strided
        and not value.is_nested
        and not value.is_quantized
        and value.device.type == "cpu"
    )


def _is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_latents(value: Any, source: str, latent_size: int | None = None) -> Tensor:
    """Checks a tensor of latents and returns it as float32.

    Accepts a dense floating-point ``N x latent_size`` tensor (or ``N x latent_size x
    1 x 1``, as the original fed its generator) of finite values, N >= 1.

    Args:
        value: what a file held.
        source: names the file (and field) in messages.
        latent_size: the size each latent must have; any when ``None``.

    Raises:
        FaganError: one line saying what was found instead.
    """
    want = f"N x {latent_size}" if latent_size is not None else "N x latent_size"
    if not isinstance(value, Tensor):
        raise FaganError(f"{source}: expected a tensor of latents, found {_found(value)}")
    if not _is_plain_tensor(value):
        raise FaganError(f"{source}: expected a dense tensor of latents, found {_found(value)}")
    if value.dim() == 4 and tuple(value.shape[2:]) == (1, 1):
        value = value.flatten(1)
    if (
        value.dim() != 2
        or value.shape[0] < 1
        or value.shape[1] < 1
        or (latent_size is not None and value.shape[1] != latent_size)
    ):
        raise FaganError(f"{source}: expected latents of shape {want}, found {list(value.shape)}")
    if not value.is_floating_point():
        raise FaganError(f"{source}: latents must be floating point, found {value.dtype}")
    if not torch.isfinite(value).all():
        raise FaganError(f"{source}: latents contain NaN or infinite values")
    return value.float()


def validate_training_state(state: Any, path: str | Path) -> None:
    """Checks every field ``fagan train --resume`` reads, before anything uses one.

    Network weights are state dicts of dense CPU tensors; optimisers are
    ``Optimizer.state_dict()`` mappings; ``epoch``/``batch``/``step`` non-negative
    integers; ``rng`` a list (one per process) of mappings of uint8 CPU generator
    states; ``fixed_latents`` a dense 2-D float tensor as wide as the generator's input;
    the two configs valid architectures (:func:`fagan.config.parse_config`, with its size
    guard); ``sampler`` and ``options`` mappings; ``latent_size``/``image_size`` positive
    integers where present. A class-conditional run's ``conditioning`` and
    ``class_names`` (:func:`check_conditioning_metadata`; a state without them is an
    unconditional run's) and its ``fixed_labels``, one int64 class label per fixed latent.

    Raises:
        FaganError: one line naming the file and the first field that is wrong.
    """
    from fagan.config import parse_config

    if not is_training_state(state):
        raise FaganError(f"{path}: not a fagan training state (found {_found(state)})")
    missing = [key for key in TRAINING_STATE_FIELDS if key not in state]
    if missing:
        raise FaganError(f"{path}: incomplete training state: it lacks {', '.join(missing)}")

    def fail(field: str, problem: str) -> FaganError:
        return FaganError(f"{path}: training state field {field}: {problem}")

    version = state.get("format_version", 1)
    if not _is_count(version, 1):
        raise fail("'format_version'", f"expected a positive integer, found {_found(version)}")
    if version > TRAINING_STATE_VERSION:
        raise fail(
            "'format_version'",
            f"{version} is newer than this fagan reads "
            f"({TRAINING_STATE_VERSION}); update fagan to resume from it",
        )
    for field in ("generator", "discriminator", "ema_generator"):
        if field == "ema_generator" and state.get(field) is None:
            continue
        _check_state_dict(state[field], f"'{field}'", fail)
    for field in ("g_optimizer", "d_optimizer"):
        _check_optimizer(state[field], f"'{field}'", fail)
    _check_numbers(state["scaler"], "'scaler'", fail)
    for field in ("epoch", "batch", "step"):
        if not _is_count(state[field]):
            raise fail(
                f"'{field}'", f"expected a non-negative integer, found {_found(state[field])}"
            )
    _check_rng(state["rng"], fail)
    _check_numbers(state["sampler"], "'sampler'", fail)
    for field in ("latent_size", "image_size"):
        if field in state and not _is_count(state[field], 1):
            raise fail(f"'{field}'", f"expected a positive integer, found {_found(state[field])}")
    options = state.get("options", {})
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise fail("'options'", f"expected a mapping of option names, found {_found(options)}")

    specs = {}
    for field in ("generator_config", "discriminator_config"):
        if not isinstance(state[field], dict):
            raise fail(f"'{field}'", f"expected a config mapping, found {_found(state[field])}")
        specs[field] = parse_config(state[field], f"{path} (training state field '{field}')")
    conditioning = state.get("conditioning")
    check_conditioning_metadata(
        conditioning, state.get("class_names"), f"{path}: training state field"
    )
    in_channels = specs["generator_config"].in_channels
    latent_size = state.get("latent_size", in_channels)
    allowed = [in_channels]
    if conditioning is not None and conditioning["conditioning"] == "concat":
        # a config written for concat conditioning takes the condition channels too
        allowed.append(in_channels - (conditioning["embedding_dim"] or conditioning["num_classes"]))
    if latent_size not in allowed:
        raise fail(
            "'latent_size'",
            f"{state['latent_size']} differs from the generator "
            f"config's input channels, {in_channels}",
        )
    if conditioning is not None:
        fixed_labels = state.get("fixed_labels")
        if not _is_plain_tensor(fixed_labels) or fixed_labels.dtype != torch.int64:
            raise fail("'fixed_labels'", f"expected an int64 tensor, found {_found(fixed_labels)}")
        if fixed_labels.numel() and not (
            0 <= int(fixed_labels.min()) and int(fixed_labels.max()) < conditioning["num_classes"]
        ):
            raise fail(
                "'fixed_labels'",
                f"labels outside [0, {conditioning['num_classes']}) for "
                f"{conditioning['num_classes']} classes",
            )
    check_latents(
        state["fixed_latents"], f"{path}: training state field 'fixed_latents'", latent_size
    )
    if conditioning is not None and tuple(state["fixed_labels"].shape) != (
        len(state["fixed_latents"]),
    ):
        raise fail(
            "'fixed_labels'",
            f"expected one label per fixed latent ({len(state['fixed_latents'])}), found "
            f"shape {list(state['fixed_labels'].shape)}",
        )


def _check_state_dict(value: Any, field: str, fail: Any) -> None:
    if not isinstance(value, Mapping) or not value:
        raise fail(field, f"expected a state dict of tensors, found {_found(value)}")
    for key, tensor in value.items():
        if not isinstance(key, str):
            raise fail(field, f"key {brief_repr(key, 60)} is not a parameter name")
        if not _is_plain_tensor(tensor):
            raise fail(
                f"{field}[{brief_repr(key, 60)}]",
                f"expected a dense CPU tensor, found {_found(tensor)}",
            )


def _check_optimizer(value: Any, field: str, fail: Any) -> None:
    if (
        not isinstance(value, Mapping)
        or not isinstance(value.get("state"), Mapping)
        or not isinstance(value.get("param_groups"), list)
        or not value["param_groups"]
    ):
        raise fail(
            field,
            "expected an optimizer state dict (a mapping with 'state' and "
            f"'param_groups'), found {_found(value)}",
        )
    for number, group in enumerate(value["param_groups"]):
        where = f"{field}['param_groups'][{number}]"
        if (
            not isinstance(group, Mapping)
            or not isinstance(group.get("params"), list)
            or not all(_is_count(index) for index in group["params"])
        ):
            raise fail(
                where,
                f"expected a mapping with a 'params' list of parameter "
                f"numbers, found {_found(group)}",
            )
        for key, setting in group.items():
            if key != "params" and not _is_setting(setting):
                raise fail(
                    f"{where}[{brief_repr(key, 40)}]",
                    f"expected a number or flag, found {_found(setting)}",
                )
    for index, per_parameter in value["state"].items():
        where = f"{field}['state'][{brief_repr(index, 20)}]"
        if not _is_count(index) or not isinstance(per_parameter, Mapping):
            raise fail(
                where,
                f"expected a parameter number and a mapping of tensors, found "
                f"{_found(per_parameter)}",
            )
        for key, entry in per_parameter.items():
            if not (_is_plain_tensor(entry) or _is_setting(entry)):
                raise fail(
                    f"{where}[{brief_repr(key, 40)}]",
                    f"expected a dense CPU tensor or a number, found {_found(entry)}",
                )


def _is_setting(value: Any) -> bool:
    """A hyperparameter as optimizers store them: a scalar, a 0-d tensor, or a short tuple
    of numbers (Adam's betas)."""
    if isinstance(value, _Scalar):
        return True
    if isinstance(value, Tensor):
        return _is_plain_tensor(value) and value.numel() == 1
    return (
        isinstance(value, (tuple, list))
        and len(value) <= 4
        and all(
            isinstance(v, (int, float)) or (_is_plain_tensor(v) and v.numel() == 1) for v in value
        )
    )


def _check_numbers(value: Any, field: str, fail: Any) -> None:
    """A mapping of names to scalars or one-element tensors (the scaler, the sampler key)."""
    if not isinstance(value, Mapping):
        raise fail(field, f"expected a mapping, found {_found(value)}")
    for key, entry in value.items():
        if not isinstance(key, str) or not _is_setting(entry) or isinstance(entry, (tuple, list)):
            raise fail(
                f"{field}[{brief_repr(key, 40)}]", f"expected a number, found {_found(entry)}"
            )


def _check_rng(value: Any, fail: Any) -> None:
    if not isinstance(value, list) or not value:
        raise fail(
            "'rng'", f"expected a list of generator states (one per process), found {_found(value)}"
        )
    cpu_state_size = torch.get_rng_state().numel()
    for rank, states in enumerate(value):
        if not isinstance(states, Mapping):
            raise fail(
                f"'rng'[{rank}]", f"expected a mapping of generator states, found {_found(states)}"
            )
        missing = [key for key in _RNG_KEYS if key not in states]
        if missing:
            raise fail(f"'rng'[{rank}]", f"lacks {', '.join(missing)}")
        for key in (*_RNG_KEYS, "cuda"):
            if key not in states:
                continue
            state = states[key]
            if (
                not _is_plain_tensor(state)
                or state.dtype != torch.uint8
                or state.dim() != 1
                or state.numel() == 0
            ):
                raise fail(
                    f"'rng'[{rank}]['{key}']",
                    f"expected a 1-D uint8 CPU tensor, found {_found(state)}",
                )
            if key == "torch" and state.numel() != cpu_state_size:
                raise fail(
                    f"'rng'[{rank}]['torch']",
                    f"expected the CPU generator's "
                    f"{cpu_state_size}-byte state, found {state.numel()} bytes",
                )


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Reads a training state written by ``fagan train`` and validates every field resume
    reads (:func:`validate_training_state`).

    Raises:
        FaganError: unreadable or unsafe file, or a field that is missing or wrong.
    """
    state = load_file(path)
    validate_training_state(state, path)
    return state


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
        return {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def network_state_dict(
    obj: Any, role: str, *, prefer_ema: bool = True, source: str = "<weights>"
) -> dict[str, Tensor]:
    """Finds the state dict for ``role`` (``generator`` or ``discriminator``) in a loaded file.

    Accepts a plain state dict (ours, attn-gan-pytorch's, or one saved from a
    ``DataParallel``/DDP/compiled wrapper), a network file of a class-conditional run
    (:func:`network_file`, its role must be ``role``), or a full training state, from
    which the EMA generator is taken when ``prefer_ema`` and present.
    """
    if is_network_file(obj):
        if obj.get("role") != role:
            raise FaganError(
                f"{source}: this file holds {brief_repr(obj.get('role'), 40)} weights, "
                f"not {role} weights"
            )
        state = obj.get("weights")
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        ):
            raise FaganError(f"{source}: its 'weights' are not a state dict of tensors")
    elif is_training_state(obj):
        key = role
        if role == "generator" and prefer_ema and obj.get("ema_generator") is not None:
            key = "ema_generator"
        state = obj.get(key)
        if state is None:
            raise FaganError(f"{source}: this training state holds no {role} weights")
    elif (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
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


def _other_layer_kind(
    key: str, tensor: Tensor, state: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> str:
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
