"""Tests for fagan.checkpoint: atomic saving, safe loading, fitting weights to architectures,
wrapper prefixes, and attn-gan-pytorch state dicts."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fagan.checkpoint import (
    TRAINING_STATE_FIELDS,
    TRAINING_STATE_FORMAT,
    check_latents,
    load_file,
    load_network,
    load_state_into,
    load_training_state,
    network_state_dict,
    save_file,
    validate_training_state,
)
from fagan.config import load_config
from fagan.errors import FaganError
from fagan.networks import Discriminator, Generator

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def small_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(load_config(CONFIGS / "small32" / "gen.yaml")).eval()


def leftovers(folder: Path) -> list[str]:
    """Temporary files save_file may have left beside its target."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def state_equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- save_file
def test_save_file_round_trip_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "w.pth"  # missing folders are created
    first = {"w": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(3)}
    assert save_file(first, path) == path
    assert state_equal(load_file(path), first)
    second = {"w": torch.zeros(4)}
    save_file(second, path)
    assert state_equal(load_file(path), second)
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.pth"]


class FailsToPickle:
    """Pickling raises part-way through a save (after the tensors before it were written)."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    def __reduce__(self):
        raise self.error("cannot pickle this object")


def _previous(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "GAN_GEN_1.pth"
    save_file({"w": torch.ones(3)}, path)
    return path, path.read_bytes()


def test_save_failing_midway_with_runtime_error_keeps_previous_file(tmp_path: Path) -> None:
    path, before = _previous(tmp_path)
    with pytest.raises(FaganError) as info:
        save_file({"big": torch.zeros(100_000), "bad": FailsToPickle(RuntimeError)}, path)
    assert str(info.value) == (
        f"cannot write {path}: cannot pickle this object; the previous file is unchanged"
    )
    assert path.read_bytes() == before
    assert state_equal(load_file(path), {"w": torch.ones(3)})
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "bad",
    [lambda: 0, FailsToPickle(TypeError), FailsToPickle(pickle.PicklingError)],
    ids=["lambda", "TypeError", "PicklingError"],
)
def test_save_failing_to_pickle_keeps_previous_file(tmp_path: Path, bad: object) -> None:
    path, before = _previous(tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - the type is the subject of the xfail below
        save_file({"big": torch.zeros(100_000), "bad": bad}, path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "bad",
    [lambda: 0, FailsToPickle(TypeError), FailsToPickle(pickle.PicklingError)],
    ids=["lambda", "TypeError", "PicklingError"],
)
def test_save_failing_to_pickle_is_a_fagan_error_and_leaves_no_temp_file(
    tmp_path: Path, bad: object
) -> None:
    path, _ = _previous(tmp_path)
    try:
        save_file({"big": torch.zeros(100_000), "bad": bad}, path)
    except FaganError as error:
        assert "previous file is unchanged" in str(error)
    finally:
        assert leftovers(tmp_path) == []


def test_save_failing_when_the_disk_fills_keeps_previous_file(tmp_path: Path) -> None:
    """A write that fails part-way (file size limit: EFBIG, as a full disk gives ENOSPC)."""
    path, before = _previous(tmp_path)
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from fagan.checkpoint import save_file
        from fagan.errors import FaganError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            save_file({{"w": torch.zeros(1_000_000)}}, {str(path)!r})
            print("SAVED")
        except FaganError as error:
            print("FaganError:", error)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip()
    assert out.startswith(f"FaganError: cannot write {path}: "), out
    assert out.endswith("; the previous file is unchanged")
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_save_onto_a_directory_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "GAN_GEN_1.pth"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(
        FaganError, match=r"^cannot write .*GAN_GEN_1\.pth: .*previous file is unchanged$"
    ):
        save_file({"w": torch.ones(2)}, target)
    assert (target / "keep").read_text() == "x"
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions"
)
def test_save_into_read_only_folder(tmp_path: Path) -> None:
    path, before = _previous(tmp_path)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(FaganError, match=r"^cannot write "):
            save_file({"w": torch.zeros(3)}, path)
        assert path.read_bytes() == before
        assert leftovers(tmp_path) == []
    finally:
        tmp_path.chmod(0o755)


def test_saved_file_has_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = save_file({"w": torch.ones(1)}, tmp_path / "w.pth")
        plain = tmp_path / "plain.pth"
        torch.save({"w": torch.ones(1)}, plain)
    finally:
        os.umask(umask)
    assert plain.stat().st_mode & 0o777 == 0o644
    assert path.stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- load_file: refused content
class RunsCode:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def load_error(path: Path) -> str:
    """load_file's message for ``path``: one short line that never repeats torch's advice."""
    with pytest.raises(FaganError) as info:
        load_file(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert "weights_only" not in message, message
    return message


def test_load_file_refuses_code_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "GAN_GEN_9.pth"
    torch.save({"model.0.gamma": torch.zeros(1), "x": RunsCode(f"touch {marker}")}, path)
    message = load_error(path)
    assert message == (
        f"refusing to load {path}: it holds Python objects that could run code when unpickled "
        f"(it names {os.system.__module__}.system); refused: only tensors and plain containers "
        "are read"
    )
    assert not marker.exists()
    with pytest.raises(FaganError, match="refusing"):
        load_network(small_generator(), path, "generator")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is malicious
    assert marker.exists()


PICKLES_NAMING_GLOBALS = [
    pytest.param(
        lambda marker: pickle.dumps({"x": RunsCode(f"touch {marker}")}, protocol=2),
        f"{os.system.__module__}.system",
        id="protocol-2",
    ),
    pytest.param(
        lambda marker: pickle.dumps([RunsCode(f"touch {marker}")], protocol=5),
        f"{os.system.__module__}.system",
        id="protocol-5",
    ),
    pytest.param(
        lambda marker: f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        "os.system",
        id="protocol-0-text",
    ),
    pytest.param(
        lambda marker: pickle.dumps({"w": torch.ones(2)}),
        "torch._utils._rebuild_tensor_v2",
        id="state-dict-pickled-by-pickle",
    ),
]


@pytest.mark.parametrize("write,name", PICKLES_NAMING_GLOBALS)
def test_plain_pickles_naming_code_are_refused_unread(tmp_path: Path, write, name: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "GAN_GEN_9.pth"
    path.write_bytes(write(marker))
    assert load_error(path) == (
        f"refusing to load {path}: not a PyTorch weights file but a Python pickle that names "
        f"{name}, so it could run code when unpickled; refused: only files written by "
        "torch.save are read"
    )
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # each really is a pickle; the first three run code
    assert marker.exists() == (name != "torch._utils._rebuild_tensor_v2")


def _zip_without_torch_layout(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights/readme.txt", "not torch")


def _npy(path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((2, 3), np.float32))


FOREIGN_FILES = [
    pytest.param(
        lambda p: p.write_text("hello\nthese are not weights\n"), "it looks like text", id="text"
    ),
    pytest.param(
        lambda p: p.write_text("cat\ndog\n(S'a'\n"),
        "it looks like text",
        id="text-that-starts-like-a-protocol-0-pickle",
    ),
    pytest.param(
        lambda p: p.write_bytes((CONFIGS / "small32" / "gen.yaml").read_bytes()),
        "it looks like text",
        id="a-config-given-as-weights",
    ),
    pytest.param(lambda p: p.write_text("é" * 3000), "it looks like text", id="utf8-text"),
    pytest.param(
        lambda p: p.write_bytes(pickle.dumps({"a": 1, "b": [2.0]}, protocol=4)),
        "a Python pickle not written by torch.save",
        id="harmless-protocol-4-pickle",
    ),
    pytest.param(
        lambda p: p.write_bytes(pickle.dumps(list(range(300_000)) + [RunsCode("x")], protocol=4)),
        "a Python pickle not written by torch.save",
        id="pickle-longer-than-the-scan",
    ),
    pytest.param(
        _zip_without_torch_layout, "a zip archive without torch's data.pkl", id="other-zip"
    ),
    pytest.param(_npy, "a NumPy array file", id="numpy"),
    pytest.param(
        lambda p: p.write_bytes(bytes(range(256)) * 40), "unknown binary content", id="binary"
    ),
]


@pytest.mark.parametrize("write,kind", FOREIGN_FILES)
def test_files_torch_did_not_write_are_not_weights_files(tmp_path: Path, write, kind: str) -> None:
    path = tmp_path / "GAN_GEN_1.pth"
    write(path)
    assert load_error(path) == (
        f"cannot read {path}: not a PyTorch weights file ({kind}); expected a state dict or "
        "training state written by torch.save"
    )


def test_torch_file_in_pickle_protocol_4_is_named_so(tmp_path: Path) -> None:
    """Harmless, but torch's weights-only loader does not read protocol 4's FRAME."""
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warning about the protocol is not shown
        message = load_error(path)
    assert message == (
        f"cannot read {path} safely: its pickle uses an instruction torch's weights-only loader "
        "does not accept (FRAME, as pickle protocol 4 or later writes); save it again with "
        "torch.save's default protocol"
    )
    torch.save({"w": torch.ones(2)}, path)  # the default protocol reads
    assert torch.equal(load_file(path)["w"], torch.ones(2))


def _torch_zip_head(path: Path) -> bytes:
    torch.save(small_generator().state_dict(), path)
    return path.read_bytes()[:4096]


def _legacy_head(path: Path) -> bytes:
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    return pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


TWO_GB_FILES = [
    pytest.param(lambda p: b"", "not a PyTorch weights file (unknown binary content)", id="zeros"),
    pytest.param(
        lambda p: b"some notes\n" * 500,
        "not a PyTorch weights file (it looks like text)",
        id="text-then-zeros",
    ),
    pytest.param(_torch_zip_head, "not a complete PyTorch checkpoint (", id="torch-zip-start"),
    pytest.param(
        _legacy_head,
        "not a complete PyTorch checkpoint (damaged: byte 0 where a pickle instruction should be)",
        id="legacy-torch-start",
    ),
]


@pytest.mark.parametrize("head,words", TWO_GB_FILES)
def test_two_gigabyte_files_are_refused_quickly(tmp_path: Path, head, words: str) -> None:
    """Sparse 2 GiB files: refused from their first bytes or torch's index, not read whole."""
    path = tmp_path / "big.pth"
    start = head(tmp_path / "source.pth")
    path.write_bytes(start)
    os.truncate(path, 2 << 30)
    assert path.stat().st_size == 2 << 30
    began = time.perf_counter()
    message = load_error(path)
    assert time.perf_counter() - began < 10
    assert message.startswith(f"cannot read {path}: ") and words in message, message


# --------------------------------------------------------------------------- load_file: incomplete files
@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.3, 0.6, 0.95, 0.999])
def test_load_file_truncated(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.pth"
    save_file(small_generator().state_dict(), full)
    data = full.read_bytes()
    path = tmp_path / "GAN_GEN_2.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    message = load_error(path)
    assert message.startswith(f"cannot read {path}: not a complete PyTorch checkpoint ("), message
    with pytest.raises(FaganError, match="not a complete PyTorch checkpoint"):
        load_network(small_generator(), path, "generator")


@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.6, 0.95])
def test_load_file_truncated_legacy_format(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.pth"
    torch.save(small_generator().state_dict(), full, _use_new_zipfile_serialization=False)
    data = full.read_bytes()
    path = tmp_path / "old.pth"
    path.write_bytes(data[: max(int(len(data) * fraction), 20)])
    message = load_error(path)
    assert message.startswith(f"cannot read {path}: not a complete PyTorch checkpoint ("), message


def test_load_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FaganError) as info:
        load_file(path)
    assert str(info.value) == f"file not found: {path}"


# --------------------------------------------------------------------------- fitting weights
def test_shape_mismatch_names_first_key_and_both_shapes(tmp_path: Path) -> None:
    model = small_generator()
    state = model.state_dict()
    state["model.2.value_conv.weight"] = torch.zeros(64, 30, 4, 4)
    state["model.3.0.bias"] = torch.zeros(4)  # later in the module order
    with pytest.raises(FaganError) as info:
        load_state_into(model, state, "generator weights w.pth")
    assert str(info.value) == (
        "generator weights w.pth does not fit the configured architecture: "
        "model.2.value_conv.weight has shape [64, 30, 4, 4] in the file but [64, 32, 4, 4] "
        "in the architecture"
    )


def test_other_architecture_weights_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(1)
    big = Generator(load_config(CONFIGS / "fagan64" / "gen.yaml"))
    path = save_file(big.state_dict(), tmp_path / "GAN_GEN_5.pth")
    model = small_generator()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FaganError) as info:
        load_network(model, path, "generator")
    # model.0 is a 128 -> 512 full attention in the file, 128 -> 128 here; its query and
    # key (128 -> 16) fit, its value is the first tensor that does not
    assert str(info.value) == (
        f"generator weights {path} does not fit the configured architecture: "
        "model.0.value_conv.weight has shape [128, 512, 4, 4] in the file but "
        "[128, 128, 4, 4] in the architecture"
    )
    assert state_equal(model.state_dict(), before)  # nothing was half-loaded


@pytest.mark.parametrize("count", [1, 3])
def test_missing_keys(count: int) -> None:
    model = small_generator()
    state = model.state_dict()
    removed = list(state)[5 : 5 + count]
    for key in removed:
        del state[key]
    more = f" (and {count - 1} more)" if count > 1 else ""
    with pytest.raises(FaganError) as info:
        load_state_into(model, state, "weights")
    assert str(info.value) == (
        f"weights does not fit the configured architecture: it lacks {removed[0]}{more}"
    )


@pytest.mark.parametrize("extra", [["model.9.weight"], ["model.0.extra", "zzz"]])
def test_unexpected_keys(extra: list[str]) -> None:
    model = small_generator()
    state = model.state_dict()
    for key in extra:
        state[key] = torch.zeros(1)
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    with pytest.raises(FaganError) as info:
        load_state_into(model, state, "weights")
    assert str(info.value) == (
        f"weights does not fit the configured architecture: it has {extra[0]}{more}, "
        "which the architecture lacks"
    )


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = save_file([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(FaganError) as info:
        load_network(small_generator(), path, "generator")
    assert str(info.value) == (
        f"{path}: not a generator state dict or fagan training state (found list)"
    )


# --------------------------------------------------------------------------- wrappers, training states
def _outputs(model: nn.Module) -> torch.Tensor:
    z = torch.randn(2, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(z)


def test_data_parallel_state_dict_loads(tmp_path: Path) -> None:
    source = small_generator(seed=3)
    wrapped = nn.DataParallel(source)
    state = wrapped.state_dict()
    assert all(key.startswith("module.model.") for key in state)
    path = save_file(state, tmp_path / "dp.pth")
    target = small_generator(seed=4)
    assert not torch.equal(_outputs(target), _outputs(source))
    load_network(target, path, "generator")
    assert state_equal(target.state_dict(), source.state_dict())
    torch.testing.assert_close(_outputs(target), _outputs(source), rtol=0, atol=0)


@pytest.mark.parametrize("prefixes", [["_orig_mod."], ["module.", "_orig_mod."]])
def test_compiled_and_nested_wrapper_prefixes(tmp_path: Path, prefixes: list[str]) -> None:
    source = small_generator(seed=5)
    prefix = "".join(prefixes)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    path = save_file(state, tmp_path / "w.pth")
    target = small_generator(seed=6)
    load_network(target, path, "generator")
    assert state_equal(target.state_dict(), source.state_dict())


def test_partial_prefix_is_not_stripped() -> None:
    model = small_generator()
    state = model.state_dict()
    first = next(iter(state))
    state = {("module." + k if k == first else k): v for k, v in state.items()}
    with pytest.raises(FaganError, match=f"it lacks {first}"):
        load_state_into(model, network_state_dict(state, "generator"), "weights")


@pytest.mark.parametrize("prefer_ema,expected", [(True, "ema"), (False, "live")])
def test_training_state_prefers_ema_generator(
    tmp_path: Path, prefer_ema: bool, expected: str
) -> None:
    live, ema = small_generator(seed=7), small_generator(seed=8)
    state = {
        "format": TRAINING_STATE_FORMAT,
        "generator": live.state_dict(),
        "ema_generator": ema.state_dict(),
        "discriminator": None,
    }
    path = save_file(state, tmp_path / "state.pth")
    target = small_generator(seed=9)
    load_network(target, path, "generator", prefer_ema=prefer_ema)
    want = ema if expected == "ema" else live
    assert state_equal(target.state_dict(), want.state_dict())
    with pytest.raises(FaganError) as info:
        load_network(
            Discriminator(load_config(CONFIGS / "small32" / "dis.yaml")), path, "discriminator"
        )
    assert str(info.value) == f"{path}: this training state holds no discriminator weights"


# --------------------------------------------------------------------------- training-state validation
@pytest.fixture(scope="module")
def written_state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The training state a real two-step ``fagan train`` run wrote (small32, real faces)."""
    from conftest import train_small_run

    run = train_small_run(tmp_path_factory.mktemp("run"), max_steps=2, seed=1)
    return load_file(run / "models" / "training_state.pth")


def test_a_written_training_state_is_valid(written_state: dict, tmp_path: Path) -> None:
    validate_training_state(written_state, "training_state.pth")
    path = save_file(written_state, tmp_path / "training_state.pth")
    again = load_training_state(path)
    assert set(again) == set(written_state) and set(TRAINING_STATE_FIELDS) <= set(again)
    assert again["step"] == written_state["step"] == 2
    assert torch.equal(again["fixed_latents"], written_state["fixed_latents"])
    assert state_equal(again["generator"], written_state["generator"])


def _setter(field: str, value):
    def change(state: dict) -> None:
        state[field] = value() if callable(value) else value

    return change


def _remove(*fields: str):
    def change(state: dict) -> None:
        for field in fields:
            del state[field]

    return change


def _set_in(path: tuple, value):
    def change(state: dict) -> None:
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value() if callable(value) else value

    return change


def _first_key(field: str):
    def change(state: dict) -> None:
        key = next(iter(state[field]))
        state[field][key] = state[field][key].to_sparse()

    return change


def _bomb() -> list:
    bomb: list = ["lol"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    return bomb


BAD_STATES = [
    # (change, field named in the message, words in the message)
    pytest.param(
        _setter("step", "abc"),
        "'step'",
        "expected a non-negative integer, found str 'abc'",
        id="step-string",
    ),
    pytest.param(_setter("step", -3), "'step'", "found int -3", id="step-negative"),
    pytest.param(_setter("step", True), "'step'", "found bool True", id="step-bool"),
    pytest.param(_setter("epoch", -1), "'epoch'", "non-negative integer", id="epoch-negative"),
    pytest.param(_setter("batch", 1.5), "'batch'", "found float 1.5", id="batch-float"),
    pytest.param(
        _setter("batch", torch.tensor(3)),
        "'batch'",
        "found a int64 tensor of shape []",
        id="batch-tensor",
    ),
    pytest.param(_setter("rng", 5), "'rng'", "expected a list of generator states", id="rng-int"),
    pytest.param(_setter("rng", []), "'rng'", "found list of 0 item(s)", id="rng-empty"),
    pytest.param(
        _setter("rng", [5]), "'rng'[0]", "expected a mapping of generator states", id="rng-item-int"
    ),
    pytest.param(
        _set_in(("rng", 0), lambda: {"torch": torch.get_rng_state()}),
        "'rng'[0]",
        "lacks latent, augment",
        id="rng-missing-streams",
    ),
    pytest.param(
        _set_in(("rng", 0, "latent"), lambda: torch.zeros(5056)),
        "'rng'[0]['latent']",
        "expected a 1-D uint8 CPU tensor, found a float32 tensor",
        id="rng-float-state",
    ),
    pytest.param(
        _set_in(("rng", 0, "augment"), lambda: torch.zeros(2, 8, dtype=torch.uint8)),
        "'rng'[0]['augment']",
        "found a uint8 tensor of shape [2, 8]",
        id="rng-2d-state",
    ),
    pytest.param(
        _set_in(("rng", 0, "torch"), lambda: torch.zeros(12, dtype=torch.uint8)),
        "'rng'[0]['torch']",
        "expected the CPU generator's 5056-byte state, found 12",
        id="rng-short-cpu-state",
    ),
    pytest.param(
        _set_in(("rng", 0, "torch"), "state"),
        "'rng'[0]['torch']",
        "found str 'state'",
        id="rng-string-state",
    ),
    pytest.param(
        _setter("fixed_latents", lambda: [[0.0] * 128] * 4),
        "'fixed_latents'",
        "expected a tensor of latents, found list",
        id="latents-list",
    ),
    pytest.param(
        _setter("fixed_latents", lambda: torch.randn(4, 128).to_sparse()),
        "'fixed_latents'",
        "found a sparse_coo float32 tensor of shape [4, 128]",
        id="latents-sparse",
    ),
    pytest.param(
        _setter("fixed_latents", lambda: torch.randn(4, 128, 2)),
        "'fixed_latents'",
        "expected latents of shape N x 128, found [4, 128, 2]",
        id="latents-3d",
    ),
    pytest.param(
        _setter("fixed_latents", lambda: torch.randn(4, 100)),
        "'fixed_latents'",
        "expected latents of shape N x 128, found [4, 100]",
        id="latents-width",
    ),
    pytest.param(
        _setter("fixed_latents", lambda: torch.randn(0, 128)),
        "'fixed_latents'",
        "found [0, 128]",
        id="latents-none",
    ),
    pytest.param(
        _setter("fixed_latents", lambda: torch.ones(4, 128, dtype=torch.int64)),
        "'fixed_latents'",
        "latents must be floating point, found torch.int64",
        id="latents-int",
    ),
    pytest.param(
        _setter("fixed_latents", lambda: torch.full((4, 128), float("nan"))),
        "'fixed_latents'",
        "NaN or infinite",
        id="latents-nan",
    ),
    pytest.param(
        _setter("fixed_latents", lambda: torch.zeros(4, 128, device="meta")),
        "'fixed_latents'",
        "found a float32 tensor of shape [4, 128] on meta",
        id="latents-meta",
    ),
    pytest.param(
        _setter("sampler", "seed=0"),
        "'sampler'",
        "expected a mapping, found str",
        id="sampler-string",
    ),
    pytest.param(
        _set_in(("sampler", "seed"), _bomb),
        "'sampler'['seed']",
        "expected a number, found list of 9 item(s)",
        id="sampler-bomb-value",
    ),
    pytest.param(
        _setter("options", 5), "'options'", "expected a mapping of option names", id="options-int"
    ),
    pytest.param(
        _setter("generator_config", "small32"),
        "'generator_config'",
        "expected a config mapping, found str 'small32'",
        id="gen-config-string",
    ),
    pytest.param(
        _setter("discriminator_config", []),
        "'discriminator_config'",
        "expected a config mapping, found list",
        id="dis-config-list",
    ),
    pytest.param(
        _set_in(("generator_config", "architecture", 0, "stride"), "(2, x)"),
        "'generator_config'): architecture[0] (full_attention): field 'stride'",
        "malformed tuple '(2, x)'",
        id="gen-config-bad-layer",
    ),
    pytest.param(
        _setter("generator_config", lambda: {"architecture": [_bomb()]}),
        "'generator_config'",
        "expands to more than 100,000 values",
        id="gen-config-bomb",
    ),
    pytest.param(
        _remove("step"), "", "incomplete training state: it lacks step", id="missing-step"
    ),
    pytest.param(
        _remove("rng", "sampler", "scaler"),
        "",
        "incomplete training state: it lacks scaler, rng, sampler",
        id="missing-three",
    ),
    pytest.param(
        _remove("format"), "", "not a fagan training state (found dict of", id="no-format-tag"
    ),
    pytest.param(
        _setter("format_version", 7),
        "'format_version'",
        "7 is newer than this fagan reads (1)",
        id="newer-format",
    ),
    pytest.param(
        _setter("generator", {}),
        "'generator'",
        "expected a state dict of tensors, found dict of 0 item(s)",
        id="generator-empty",
    ),
    pytest.param(
        _setter("discriminator", [1, 2]),
        "'discriminator'",
        "expected a state dict of tensors, found list",
        id="discriminator-list",
    ),
    pytest.param(
        _first_key("generator"),
        "'generator'['model.0",
        "expected a dense CPU tensor, found a sparse_coo",
        id="generator-sparse-tensor",
    ),
    pytest.param(
        _set_in(("discriminator", "model.0.0.bias"), "zeros"),
        "'discriminator'['model.0.0.bias']",
        "found str 'zeros'",
        id="discriminator-string-weight",
    ),
    pytest.param(
        _setter("ema_generator", 5), "'ema_generator'", "state dict of tensors", id="ema-int"
    ),
    pytest.param(
        _setter("g_optimizer", lambda: {}),
        "'g_optimizer'",
        "expected an optimizer state dict",
        id="g-optimizer-empty",
    ),
    pytest.param(
        _set_in(("d_optimizer", "param_groups"), lambda: [{"params": ["a"]}]),
        "'d_optimizer'['param_groups'][0]",
        "'params' list of parameter numbers",
        id="d-optimizer-params",
    ),
    pytest.param(
        _set_in(("d_optimizer", "param_groups", 0, "lr"), "fast"),
        "'d_optimizer'['param_groups'][0]['lr']",
        "expected a number or flag",
        id="d-optimizer-lr-string",
    ),
    pytest.param(
        _set_in(("g_optimizer", "state", 0, "exp_avg"), lambda: torch.ones(3).to_sparse()),
        "'g_optimizer'['state'][0]['exp_avg']",
        "found a sparse_coo",
        id="g-optimizer-sparse-moment",
    ),
    pytest.param(_setter("scaler", "x"), "'scaler'", "expected a mapping", id="scaler-string"),
    pytest.param(
        _setter("scaler", {"scale": "big"}),
        "'scaler'['scale']",
        "expected a number, found str 'big'",
        id="scaler-value",
    ),
    pytest.param(
        _setter("latent_size", 0),
        "'latent_size'",
        "expected a positive integer",
        id="latent-size-zero",
    ),
    pytest.param(
        _setter("latent_size", 100),
        "'latent_size'",
        "100 differs from the generator config's input channels, 128",
        id="latent-size-mismatch",
    ),
    pytest.param(
        _setter("image_size", "32"), "'image_size'", "found str '32'", id="image-size-string"
    ),
]


@pytest.mark.parametrize("change,field,words", BAD_STATES)
def test_bad_training_state_fields_give_one_line(
    written_state: dict, tmp_path: Path, change, field: str, words: str
) -> None:
    state = copy.deepcopy(written_state)
    change(state)
    path = save_file(state, tmp_path / "training_state.pth")
    with pytest.raises(FaganError) as info:
        load_training_state(path)
    message = str(info.value)
    assert message.startswith(f"{path}"), message
    assert field in message and words in message, message
    assert "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize(
    "state", [[1, 2], "state", None, torch.zeros(3)], ids=["list", "string", "none", "tensor"]
)
def test_not_a_training_state(tmp_path: Path, state) -> None:
    with pytest.raises(FaganError) as info:
        validate_training_state(state, tmp_path / "s.pth")
    assert str(info.value).startswith(f"{tmp_path / 's.pth'}: not a fagan training state (found ")


# --------------------------------------------------------------------------- latents
@pytest.mark.parametrize(
    "latents,words",
    [
        (torch.randn(3, 128).to_sparse(), "expected a dense tensor of latents, found a sparse_coo"),
        (torch.randn(3, 128).to_sparse_csr(), "found a sparse_csr float32 tensor"),
        (
            torch.ones(3, 128, dtype=torch.int32),
            "latents must be floating point, found torch.int32",
        ),
        (
            torch.ones(3, 128, dtype=torch.complex64),
            "must be floating point, found torch.complex64",
        ),
        (torch.randn(128), "expected latents of shape N x 128, found [128]"),
        (torch.randn(2, 3, 128), "expected latents of shape N x 128, found [2, 3, 128]"),
        (torch.randn(3, 100), "expected latents of shape N x 128, found [3, 100]"),
        (torch.randn(3, 128, 2, 2), "found [3, 128, 2, 2]"),
        (torch.tensor([[float("inf")] * 128]), "NaN or infinite"),
        ({"z": torch.randn(3, 128)}, "expected a tensor of latents, found dict of 1 item(s)"),
        (
            torch.quantize_per_tensor(torch.randn(3, 128), 0.1, 0, torch.qint8),
            "found a qint8 tensor of shape [3, 128]",
        ),
    ],
    ids=[
        "sparse",
        "sparse-csr",
        "int",
        "complex",
        "1-d",
        "3-d",
        "width",
        "4-d-not-1x1",
        "inf",
        "dict",
        "quantized",
    ],
)
def test_bad_latents(tmp_path: Path, latents, words: str) -> None:
    path = tmp_path / "latents.pth"
    torch.save(latents, path)
    with pytest.raises(FaganError) as info:
        check_latents(load_file(path), str(path), 128)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message, message
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize(
    "latents",
    [
        torch.randn(3, 128),
        torch.randn(3, 128, 1, 1),
        torch.randn(3, 128).half(),
        torch.randn(3, 128, dtype=torch.float64),
    ],
    ids=["2-d", "original-4-d", "float16", "float64"],
)
def test_good_latents(tmp_path: Path, latents: torch.Tensor) -> None:
    path = tmp_path / "latents.pth"
    torch.save(latents, path)
    out = check_latents(load_file(path), str(path), 128)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 128)
    torch.testing.assert_close(out, latents.reshape(3, 128).float())


# --------------------------------------------------------------------------- attn-gan-pytorch files
def test_legacy_fagan_1_generator_loads_into_fagan64(tmp_path: Path) -> None:
    reference = pytest.importorskip("reference")
    conf = reference.reference_configs_dir() / "fagan_1" / "gen.conf"
    torch.manual_seed(12)
    ref = reference.reference_generator(conf)
    reference.randomize_gammas(ref, 3)
    reference.randomize_batch_norms(ref, 4)
    saved = {k: v.clone() for k, v in ref.state_dict().items()}
    assert "model.0.residual_conv.module.weight_bar" in saved
    assert "model.0.batch_norm.running_var" in saved
    path = tmp_path / "GAN_GEN_10.pth"
    torch.save(ref.state_dict(), path)

    ours = Generator(load_config(CONFIGS / "fagan64" / "gen.yaml"))
    load_network(ours, path, "generator")
    mine = ours.state_dict()
    # renamed, not changed
    assert torch.equal(
        mine["model.0.residual_conv.parametrizations.weight.original"],
        saved["model.0.residual_conv.module.weight_bar"],
    )
    assert torch.equal(
        mine["model.0.residual_conv.bias"], saved["model.0.residual_conv.module.bias"]
    )
    assert torch.equal(
        mine["model.4.0.parametrizations.weight.original"], saved["model.4.0.module.weight_bar"]
    )
    assert torch.equal(mine["model.5.gamma"], saved["model.5.gamma"])
    assert torch.equal(mine["model.4.1.running_var"], saved["model.4.1.running_var"])
    assert ours.gammas()["model.0"] == pytest.approx(float(saved["model.0.gamma"]))
    # u is unit-norm after the emulated power iteration
    u = mine["model.0.residual_conv.parametrizations.weight.0._u"]
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-5)

    z = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = ref.eval()(z[:, :, None, None])
        out = ours.eval()(z)
    torch.testing.assert_close(out, theirs, rtol=1e-4, atol=1e-5)


def test_legacy_discriminator_into_the_wrong_architecture(tmp_path: Path) -> None:
    reference = pytest.importorskip("reference")
    conf = reference.reference_configs_dir() / "fagan_1" / "dis.conf"
    torch.manual_seed(13)
    path = tmp_path / "GAN_DIS_10.pth"
    torch.save(reference.reference_discriminator(conf).state_dict(), path)
    model = Discriminator(load_config(CONFIGS / "small32" / "dis.yaml"))
    with pytest.raises(FaganError) as info:
        load_network(model, path, "discriminator")
    # small32's first layer is a conv (model.0.0.*), fagan_1's a full attention (model.0.*)
    assert str(info.value).startswith(
        f"discriminator weights {path} does not fit the configured architecture: it lacks "
        "model.0.0.bias"
    )


def test_legacy_state_dict_without_spectral_norm_loads(tmp_path: Path) -> None:
    reference = pytest.importorskip("reference")
    text = (reference.reference_configs_dir() / "fagan_1" / "dis.conf").read_text()
    conf = tmp_path / "dis.conf"
    conf.write_text(text.replace("spectral_norm: True", "spectral_norm: False"))
    torch.manual_seed(14)
    ref = reference.reference_discriminator(conf)
    path = tmp_path / "GAN_DIS_1.pth"
    torch.save(ref.state_dict(), path)
    ours = Discriminator(load_config(conf))
    load_network(ours, path, "discriminator")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x).flatten(), rtol=1e-4, atol=1e-7)
