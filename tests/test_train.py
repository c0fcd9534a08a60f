"""Training: exact resume, DDP agreement, outputs of a run, stopping and divergence."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fagan.checkpoint import load_file
from fagan.errors import FaganError
from fagan.train import StopReason, TrainOptions, train

# What training_state.pth holds.
STATE_KEYS = {
    "format",
    "format_version",
    "fagan_version",
    "generator",
    "discriminator",
    "ema_generator",
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
    "latent_size",
    "image_size",
    "options",
    "conditioning",
    "class_names",
}


def small_options(tmp: Path, **overrides) -> TrainOptions:
    """The embedded demo (small32 on the LFW faces, DiffAugment on) for a few CPU steps."""
    values = dict(
        model_dir=str(tmp / "models"),
        sample_dir=str(tmp / "samples"),
        batch_size=8,
        num_workers=0,
        device="cpu",
        tensorboard=False,
        feedback_factor=2,
        data_percentage=1.0,
        num_epochs=3,
        seed=3,
    )
    values.update(overrides)
    return TrainOptions(**values)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    # 32 images per epoch at batch 8: 4 batches; 6 steps cross an epoch boundary.
    whole = train(small_options(tmp_path / "whole", max_steps=6))
    assert whole.step == 6

    first = train(small_options(tmp_path / "split", max_steps=3))
    assert first.step == 3 and first.stopped_early is StopReason.MAX_STEPS
    state = load_file(tmp_path / "split" / "models" / "training_state.pth")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 3, 3)
    assert set(state) == STATE_KEYS  # the format states written before still resume from
    # the run's own options (batch size, seed, data, device, ...): only where and how long
    split = tmp_path / "split"
    resumed = train(
        TrainOptions(
            resume=True,
            model_dir=str(split / "models"),
            sample_dir=str(split / "samples"),
            max_steps=6,
        )
    )
    assert resumed.step == 6 and resumed.stopped is StopReason.MAX_STEPS

    assert_same_state(whole.generator.state_dict(), resumed.generator.state_dict())
    assert_same_state(whole.discriminator.state_dict(), resumed.discriminator.state_dict())
    assert_same_state(whole.ema_generator.state_dict(), resumed.ema_generator.state_dict())
    # and the weights did move: the comparison is not between two untouched networks
    fresh = train(small_options(tmp_path / "fresh", max_steps=1))
    assert not torch.equal(
        fresh.generator.state_dict()["model.0.value_conv.weight"],
        whole.generator.state_dict()["model.0.value_conv.weight"],
    )


def test_resume_after_the_data_changed_continues_from_the_next_epoch(
    tmp_path: Path, faces32: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for face in sorted(faces32.iterdir())[:24]:
        (images / face.name).write_bytes(face.read_bytes())
    options = small_options(
        tmp_path,
        images_dir=str(images),
        generator_config="small32",
        discriminator_config="small32",
        data_percentage=100.0,
        num_epochs=2,
        max_steps=2,
        num_samples=4,
    )
    # 24 images at batch 8: 3 batches per epoch; stopped in epoch 1 after batch 2
    assert train(options).step == 2
    for face in sorted(images.iterdir())[:8]:  # now 2 batches per epoch: another order
        face.unlink()
    with pytest.warns(UserWarning, match="continuing from the start of epoch 2, not exactly"):
        resumed = train(replace(options, resume=True, max_steps=100))
    assert (resumed.step, resumed.epoch, resumed.stopped) == (4, 3, StopReason.DONE)
    state = load_file(tmp_path / "models" / "training_state.pth")
    assert (state["epoch"], state["batch"], state["step"]) == (2, 2, 4)
    assert (tmp_path / "models" / "GAN_GEN_2.pth").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ranks_agree(tmp_path: Path) -> None:
    from ddp_worker import run_rank

    options = dict(
        model_dir=str(tmp_path / "models"),
        sample_dir=str(tmp_path / "samples"),
        batch_size=4,
        num_workers=0,
        device="cpu",
        tensorboard=False,
        feedback_factor=4,
        data_percentage=1.0,
        max_steps=3,
        seed=5,
    )
    mp.spawn(run_rank, args=(2, _free_port(), options, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["step"] == rank1["step"] == 3
    for part in ("generator", "discriminator", "ema"):
        assert_same_state(rank0[part], rank1[part])
    # each rank saw its own half of every global batch, yet they hold one model;
    # only rank 0 wrote the run's files
    assert (tmp_path / "models" / "training_state.pth").is_file()
    lines = (tmp_path / "models" / "loss.log").read_text().splitlines()
    assert len(lines) == 3  # feedback at every batch, written once (rank 0)


def test_run_outputs_on_image_folder(tmp_path: Path, faces32: Path) -> None:
    result = train(
        small_options(
            tmp_path,
            images_dir=str(faces32),
            generator_config="small32",
            discriminator_config="small32",
            data_percentage=100.0,
            batch_size=16,
            num_epochs=1,
            feedback_factor=3,
            num_samples=16,
        )
    )
    models, samples = tmp_path / "models", tmp_path / "samples"
    # 100 images at batch 16: 6 batches; feedback every 2 batches and at batch 1
    assert result.step == 6
    log_lines = (models / "loss.log").read_text().splitlines()
    assert len(log_lines) == 4
    d, g = (float(v) for v in log_lines[0].split("\t"))
    stats = [json.loads(line) for line in (models / "stats.jsonl").read_text().splitlines()]
    assert [s["batch"] for s in stats] == [1, 2, 4, 6]
    assert stats[0]["d_loss"] == pytest.approx(d) and stats[0]["g_loss"] == pytest.approx(g)
    assert set(stats[-1]["gamma"]) == {"model.0", "model.2", "D.model.1"}
    assert stats[-1]["images_per_s"] > 0 and stats[-1]["g_lr"] == 1e-4
    # a grid goes with the first record, then with a record 20 steps (MIN_GRID_STEPS) or
    # more after the last grid: none more in 6 steps
    assert sorted(p.name for p in samples.glob("gen_*.png")) == ["gen_1_1.png"]
    for name in (
        "GAN_GEN_1.pth",
        "GAN_DIS_1.pth",
        "GAN_GEN_EMA_1.pth",
        "loss.png",
        "options.json",
        "gen.yaml",
        "dis.yaml",
        "training_state.pth",
    ):
        assert (models / name).is_file(), name
    assert (samples / "progress.gif").is_file()
    options = json.loads((models / "options.json").read_text())
    assert options["images_dir"] == str(faces32) and options["image_size"] == 32
    assert options["augment"] == "none"


def test_feedback_factor_larger_than_batches_does_not_crash(tmp_path: Path) -> None:
    result = train(small_options(tmp_path, feedback_factor=1000, num_epochs=1))
    assert result.step == 4
    assert len((tmp_path / "models" / "loss.log").read_text().splitlines()) == 4


def test_divergence_stops_without_overwriting_checkpoint(tmp_path: Path) -> None:
    train(small_options(tmp_path, num_epochs=1))
    models = tmp_path / "models"
    # a used folder is trained on again with --resume only: its state is poisoned, so the
    # first losses of the continued run (step 5, epoch 2) are NaN
    state = load_file(models / "training_state.pth")
    state["generator"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in state["generator"].items()
    }
    torch.save(state, models / "training_state.pth")
    kept = {
        name: (models / name).read_bytes()
        for name in ("training_state.pth", "GAN_GEN_1.pth", "GAN_DIS_1.pth")
    }
    log_before = (models / "loss.log").read_text()
    with pytest.raises(FaganError, match=r"diverged at step 5 \(epoch 2, batch 1\)"):
        train(
            TrainOptions(
                resume=True,
                model_dir=str(models),
                sample_dir=str(tmp_path / "samples"),
                num_epochs=2,
            )
        )
    for name, data in kept.items():
        assert (models / name).read_bytes() == data, name
    assert (models / "loss.log").read_text() == log_before


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    for overrides, pattern in [
        ({"batch_size": 0}, "--batch_size"),
        ({"g_lr": -1.0}, "--g_lr"),
        ({"data_percentage": 0.0}, "--data_percentage"),
        ({"precision": "fp8"}, "--precision"),
        ({"loss_function": "nope"}, "unknown loss function"),
        ({"images_dir": str(tmp_path / "missing")}, "--images_dir"),
        ({"image_size": 64}, "--image_size 64 differs"),
    ]:
        with pytest.raises(FaganError, match=pattern):
            train(small_options(tmp_path, **overrides))
    with pytest.raises(FaganError, match="no training state"):
        train(small_options(tmp_path / "empty", resume=True))


def test_bf16_training_runs_and_logs_finite_losses(tmp_path: Path) -> None:
    result = train(small_options(tmp_path, precision="bf16", max_steps=2))
    assert result.step == 2
    for line in (tmp_path / "models" / "loss.log").read_text().splitlines():
        d, g = (float(v) for v in line.split("\t"))
        assert torch.isfinite(torch.tensor([d, g])).all()
    # bf16 trains channels-last unless told otherwise; options.json says which was used
    options = json.loads((tmp_path / "models" / "options.json").read_text())
    assert options["channels_last"] is True


@pytest.mark.parametrize(
    ("precision", "flag", "expected"),
    [
        ("fp32", None, False),
        ("bf16", None, True),
        ("fp16", None, True),
        ("bf16", False, False),
        ("fp32", True, True),
    ],
)
def test_channels_last_default_follows_precision(precision, flag, expected) -> None:
    from fagan.train import uses_channels_last

    assert uses_channels_last(precision, flag) is expected


def test_eval_every_logs_swd_and_its_floor(tmp_path: Path) -> None:
    train(small_options(tmp_path, max_steps=4, eval_every=2, eval_num_samples=40))
    records = [
        json.loads(line) for line in (tmp_path / "models" / "stats.jsonl").read_text().splitlines()
    ]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    first, second = evals[0]["eval"], evals[1]["eval"]
    assert {"swd_avg", "swd_32", "swd_16", "swd_floor_avg"} <= set(first)
    assert "swd_floor_avg" not in second  # the floor is measured once
    assert 0 < first["swd_floor_avg"] < first["swd_avg"]  # untrained: far from the faces
    assert first["swd_avg"] != second["swd_avg"]


def test_eval_with_fid_but_no_weights_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAGAN_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FaganError, match="weights-inception-2015-12-05-6726825d.pth"):
        train(small_options(tmp_path, max_steps=2, eval_every=1, eval_metrics="swd,fid"))
    assert not (tmp_path / "models").exists()


def test_ema_decay_warms_up_to_the_asked_decay() -> None:
    from fagan.train import ema_decay_at

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 100_000) == 0.999
    assert ema_decay_at(0.5, 100) == 0.5


def test_tensorboard_sample_image_is_the_saved_grid(tmp_path: Path) -> None:
    """The grid logged to TensorBoard is the very grid written as gen_<epoch>_<batch>.png."""
    import io

    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(small_options(tmp_path, max_steps=2, tensorboard=True))
    events = EventAccumulator(str(tmp_path / "models" / "tensorboard"))
    events.Reload()
    logged = events.Images("samples")
    pngs = sorted((tmp_path / "samples").glob("gen_*.png"))
    assert len(logged) == len(pngs) >= 1
    with Image.open(io.BytesIO(logged[-1].encoded_image_string)) as a, Image.open(pngs[-1]) as b:
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_sample_grid_larger_than_a_batch_is_drawn_in_batches(tmp_path: Path) -> None:
    from PIL import Image

    from fagan.train_options import MAX_GRID_SAMPLES

    # 20 grid images at batch 8: three forward passes (8, 8, 4) make one grid
    train(small_options(tmp_path, max_steps=1, num_samples=20))
    [grid] = (tmp_path / "samples").glob("gen_*.png")
    with Image.open(grid) as image:
        assert image.width > 32 * 4 and image.height > 32 * 2
    with pytest.raises(
        FaganError,
        match=rf"--num_samples must be a whole number in "
        rf"\[1, {MAX_GRID_SAMPLES}\], got 100000",
    ):
        train(small_options(tmp_path / "big", num_samples=100_000))
