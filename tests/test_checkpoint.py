"""Tests for fagan.checkpoint: atomic saving, safe loading, fitting weights to architectures,
wrapper prefixes, and attn-gan-pytorch state dicts."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fagan.checkpoint import (
    TRAINING_STATE_FORMAT,
    load_file,
    load_network,
    load_state_into,
    network_state_dict,
    save_file,
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
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
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
    with pytest.raises(FaganError, match=r"^cannot write .*GAN_GEN_1\.pth: .*previous file is unchanged$"):
        save_file({"w": torch.ones(2)}, target)
    assert (target / "keep").read_text() == "x"
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores folder permissions")
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


# --------------------------------------------------------------------------- load_file
class RunsCode:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_load_file_refuses_code_and_runs_nothing(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "GAN_GEN_9.pth"
    payload = {"model.0.gamma": torch.zeros(1), "x": RunsCode(f"touch {marker}")}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(FaganError) as info:
        load_file(path)
    message = str(info.value)
    assert message.startswith(f"refusing to load {path}: ")
    assert "could run code" in message
    assert not marker.exists()
    with pytest.raises(FaganError, match="refusing"):
        load_network(small_generator(), path, "generator")
    assert not marker.exists()
    # the file really is malicious: an unsafe load runs the payload
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.3, 0.6, 0.95, 0.999])
def test_load_file_truncated(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.pth"
    save_file(small_generator().state_dict(), full)
    data = full.read_bytes()
    path = tmp_path / "GAN_GEN_2.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(FaganError) as info:
        load_file(path)
    message = str(info.value)
    assert message.startswith(f"cannot read {path}: not a complete PyTorch checkpoint (")
    assert "\n" not in message
    with pytest.raises(FaganError, match="not a complete PyTorch checkpoint"):
        load_network(small_generator(), path, "generator")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_load_file_truncated_legacy_format(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.pth"
    torch.save(small_generator().state_dict(), full, _use_new_zipfile_serialization=False)
    data = full.read_bytes()
    path = tmp_path / "old.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(FaganError) as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


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
    removed = list(state)[5:5 + count]
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
    state = {"format": TRAINING_STATE_FORMAT, "generator": live.state_dict(),
             "ema_generator": ema.state_dict(), "discriminator": None}
    path = save_file(state, tmp_path / "state.pth")
    target = small_generator(seed=9)
    load_network(target, path, "generator", prefer_ema=prefer_ema)
    want = ema if expected == "ema" else live
    assert state_equal(target.state_dict(), want.state_dict())
    with pytest.raises(FaganError) as info:
        load_network(Discriminator(load_config(CONFIGS / "small32" / "dis.yaml")), path,
                     "discriminator")
    assert str(info.value) == f"{path}: this training state holds no discriminator weights"


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
    assert torch.equal(mine["model.0.residual_conv.parametrizations.weight.original"],
                       saved["model.0.residual_conv.module.weight_bar"])
    assert torch.equal(mine["model.0.residual_conv.bias"], saved["model.0.residual_conv.module.bias"])
    assert torch.equal(mine["model.4.0.parametrizations.weight.original"],
                       saved["model.4.0.module.weight_bar"])
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
