"""Class-conditional training (``fagan train --conditioning``) on a small labelled set.

The set: scikit-learn's handwritten digits (8x8 grey) of a few classes, upscaled to 32x32
RGB PNGs in one sub-folder per class. The tests check what a conditional run writes
(training state and per-epoch network files with conditioning and class names, grids
with one row per class), that the loaders rebuild the conditional networks from those
files, that resume is bitwise exact, that bad requests are one-line errors, and (slow)
that the trained generator's images do depend on the class asked for.
"""

from __future__ import annotations

import copy
import json
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from fagan.attention_maps import load_discriminator
from fagan.checkpoint import (
    NETWORK_FILE_FORMAT,
    is_network_file,
    load_file,
    load_training_state,
    network_file,
    network_state_dict,
    validate_training_state,
)
from fagan.cli import main
from fagan.config import load_config
from fagan.errors import FaganError
from fagan.generate import load_generator
from fagan.losses import LOSSES, get_loss
from fagan.networks import Discriminator, Generator
from fagan.train import Precision, StopReason, TrainOptions, d_step, g_step, train
from fagan.train_conditioning import GRID_CLASSES, class_grid_inputs

CLASSES = (0, 1, 7)  # digits that look unlike each other
#: Generator steps and learning rate of the slow test.
STEPS = 1000
LR = 2e-4


def write_digits(folder: Path, classes=CLASSES, per_class: int = 16, size: int = 32) -> Path:
    """scikit-learn's digits of ``classes``, ``per_class`` each, as RGB PNGs of ``size`` in
    one sub-folder per class (named by the digit)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in classes:
        images = digits.images[digits.target == digit][:per_class]  # (n, 8, 8) in [0, 16]
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            grey = Image.fromarray((image * (255 / 16)).round().astype(np.uint8))
            picture = grey.resize((size, size), Image.BICUBIC).convert("RGB")
            picture.save(folder / str(digit) / f"{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 images of the digits 0, 1 and 7 (16 each), 32x32 RGB, one folder per class."""
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def one_step(tmp_path_factory: pytest.TempPathFactory, digits: Path) -> Path:
    """The folder of a projection-conditional run of one step on :func:`digits`."""
    folder = tmp_path_factory.mktemp("one_step")
    train(options(folder, digits, max_steps=1))
    return folder


def options(tmp: Path, images: Path | None, **overrides) -> TrainOptions:
    """A few CPU steps of small32 on ``images`` (48 images, batch 8: 6 batches an epoch)."""
    values = dict(
        images_dir=None if images is None else str(images),
        generator_config="small32",
        discriminator_config="small32",
        model_dir=str(tmp / "models"),
        sample_dir=str(tmp / "samples"),
        conditioning="projection",
        batch_size=8,
        num_workers=0,
        device="cpu",
        tensorboard=False,
        feedback_factor=1,
        num_epochs=1,
        num_samples=12,
        seed=1,
    )
    values.update(overrides)
    return TrainOptions(**values)


# --------------------------------------------------------------------------- checkpoint contract
@pytest.mark.parametrize(
    ("scheme", "embedding_dim", "resolved_dim"),
    [
        ("projection", None, 128),
        ("projection", 0, None),
        ("concat", None, None),
        ("projection", 16, 16),
    ],
)
def test_conditional_run_writes_its_conditioning_and_classes(
    tmp_path: Path, digits: Path, scheme: str, embedding_dim: int | None, resolved_dim: int | None
) -> None:
    said: list[str] = []
    run = options(tmp_path, digits, conditioning=scheme, embedding_dim=embedding_dim, max_steps=2)
    result = train(run, log=said.append)
    assert result.stopped is StopReason.MAX_STEPS
    models = tmp_path / "models"
    # the start of the run names the classes and their counts, and the conditioning
    assert any("3 classes: 0 16, 1 16, 7 16" in line for line in said)
    embedded = f", class embedding of {resolved_dim}" if resolved_dim else ""
    assert (
        f"class-conditional training, {scheme} conditioning{embedded}, on 3 classes: 0, 1, 7 "
        "(sample grids: one row per class)" in said
    )
    resolved = json.loads((models / "options.json").read_text())
    assert resolved["conditioning"] == scheme and resolved["class_names"] == ["0", "1", "7"]
    # the grid: one row per class (3 rows of 4 columns of 32x32 with 2-pixel borders)
    with Image.open(tmp_path / "samples" / "gen_1_1.png") as grid:
        assert grid.size == (4 * 34 + 2, 3 * 34 + 2)
        cells = np.asarray(grid)
    rows = [cells[2 + 34 * r : 34 * (r + 1), 2:34] for r in range(3)]  # first column
    assert not np.array_equal(rows[0], rows[1])  # one latent, two classes: other images
    expected = {"num_classes": 3, "conditioning": scheme, "embedding_dim": resolved_dim}

    state = load_training_state(models / "training_state.pth")
    assert state["conditioning"] == expected
    assert state["conditioning"] == result.generator.conditioning_options
    assert state["class_names"] == ["0", "1", "7"]
    assert state["options"]["conditioning"] == scheme
    # the grid: 12 samples over 3 classes -> 3 rows of the same 4 latents
    assert state["fixed_labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(state["fixed_latents"][:4], state["fixed_latents"][8:])

    for name, role in (
        ("GAN_GEN_1.pth", "generator"),
        ("GAN_GEN_EMA_1.pth", "generator"),
        ("GAN_DIS_1.pth", "discriminator"),
    ):
        saved = load_file(models / name)
        assert is_network_file(saved) and saved["format"] == NETWORK_FILE_FORMAT
        assert set(saved) == {
            "format",
            "role",
            "weights",
            "config",
            "latent_size",
            "image_size",
            "conditioning",
            "class_names",
        }
        assert (saved["role"], saved["latent_size"], saved["image_size"]) == (role, 128, 32)
        assert saved["conditioning"] == expected and saved["class_names"] == ["0", "1", "7"]
        net = result.generator if name == "GAN_GEN_1.pth" else None
        net = result.discriminator if role == "discriminator" else net
        if net is not None:
            weights = network_state_dict(saved, role)
            assert weights.keys() == net.state_dict().keys()
            assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())

    z = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    for source in ("GAN_GEN_EMA_1.pth", "training_state.pth"):  # both: the EMA generator
        generator = load_generator(models / source)
        assert generator.conditioning_options == expected
        assert generator.class_names == ("0", "1", "7")
        with torch.no_grad():
            assert torch.equal(generator(z, y), result.ema_generator.eval()(z, y))
    discriminator = load_discriminator(models / "GAN_DIS_1.pth")
    assert discriminator.class_names == ("0", "1", "7")
    assert discriminator.num_classes == 3 and discriminator.conditioning == scheme
    with pytest.raises(FaganError, match="holds 'discriminator' weights, not generator"):
        load_generator(models / "GAN_DIS_1.pth")


def test_unconditional_run_keeps_plain_weights_files(tmp_path: Path, digits: Path) -> None:
    result = train(options(tmp_path, digits, conditioning="none", max_steps=1))
    models = tmp_path / "models"
    saved = load_file(models / "GAN_GEN_1.pth")
    assert not is_network_file(saved)
    assert saved.keys() == result.generator.state_dict().keys()  # a plain state dict
    state = load_file(models / "training_state.pth")
    assert state["conditioning"] is None and state["class_names"] is None
    assert "fixed_labels" not in state
    generator = load_generator(models / "training_state.pth")
    assert generator.class_names is None and generator.num_classes is None


def test_old_training_states_without_the_keys_load_as_unconditional(
    tmp_path: Path, digits: Path
) -> None:
    train(options(tmp_path, digits, conditioning="none", max_steps=1))
    state = load_file(tmp_path / "models" / "training_state.pth")
    for key in ("conditioning", "class_names"):
        del state[key]
    validate_training_state(state, "old.pth")
    torch.save(state, tmp_path / "old.pth")
    assert load_generator(tmp_path / "old.pth").class_names is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conditioning": {"num_classes": 3}}, "expected None or a mapping of num_classes"),
        ({"class_names": ["0", "1"]}, "expected a list of 3 class names"),
        ({"class_names": None}, "expected a list of 3 class names"),
        ({"fixed_labels": torch.tensor([0, 1, 5] * 4)}, "labels outside \\[0, 3\\)"),
        ({"fixed_labels": torch.zeros(5, dtype=torch.int64)}, "one label per fixed latent"),
    ],
)
def test_validation_names_the_wrong_conditioning_field(
    one_step: Path, change: dict, message: str
) -> None:
    state = load_file(one_step / "models" / "training_state.pth")
    validate_training_state(state, "run.pth")
    state.update(change)
    with pytest.raises(FaganError, match=message):
        validate_training_state(state, "run.pth")


def test_network_file_builder_refuses_inconsistent_metadata() -> None:
    weights = {"w": torch.zeros(1)}
    options_ = {"num_classes": 2, "conditioning": "projection", "embedding_dim": None}
    made = network_file("generator", weights, "architecture: []", 8, options_, ["a", "b"])
    assert made["format"] == NETWORK_FILE_FORMAT and "image_size" not in made
    with pytest.raises(ValueError, match="role"):
        network_file("critic", weights, "", 8, options_, ["a", "b"])
    with pytest.raises(ValueError, match="list of 2 class names"):
        network_file("generator", weights, "", 8, options_, ["a"])


# --------------------------------------------------------------------------- resume
def test_conditional_resume_is_bitwise_exact(tmp_path: Path, digits: Path) -> None:
    # 6 batches an epoch: 8 steps cross an epoch boundary; resumed after 4
    whole = train(options(tmp_path / "whole", digits, num_epochs=2, max_steps=8))
    split = tmp_path / "split"
    first = train(options(split, digits, num_epochs=2, max_steps=4))
    assert first.step == 4
    resumed = train(
        TrainOptions(
            model_dir=str(split / "models"),
            sample_dir=str(split / "samples"),
            resume=True,
            max_steps=8,
        )
    )
    assert resumed.step == whole.step == 8
    for a, b in (
        (whole.generator, resumed.generator),
        (whole.discriminator, resumed.discriminator),
        (whole.ema_generator, resumed.ema_generator),
    ):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert resumed.generator.conditioning_options["conditioning"] == "projection"
    a = load_file(tmp_path / "whole" / "models" / "training_state.pth")
    b = load_file(split / "models" / "training_state.pth")
    for key in ("fixed_latents", "fixed_labels"):
        assert torch.equal(a[key], b[key])
    assert a["class_names"] == b["class_names"] == ["0", "1", "7"]


@pytest.mark.parametrize("other", ["concat", "none"])
def test_resume_refuses_another_conditioning(one_step: Path, other: str) -> None:
    again = TrainOptions(
        model_dir=str(one_step / "models"),
        sample_dir=str(one_step / "samples"),
        resume=True,
        conditioning=other,
    )
    with pytest.raises(FaganError, match="--conditioning .* differs from the run's 'projection'"):
        train(again)


# --------------------------------------------------------------------------- errors
def _labels_zip(path: Path, faces: Path, labels: list[int]) -> Path:
    files = sorted(faces.glob("*.png"))[: len(labels)]
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            archive.write(file, file.name)
        pairs = [[file.name, label] for file, label in zip(files, labels, strict=True)]
        archive.writestr("dataset.json", json.dumps({"labels": pairs}))
    return path


def test_conditioning_needs_labelled_data_with_two_classes(tmp_path: Path, faces32: Path) -> None:
    with pytest.raises(FaganError, match="--conditioning projection needs class labels"):
        train(options(tmp_path / "a", faces32, max_steps=1))
    one_class = _labels_zip(tmp_path / "one.zip", faces32, [0] * 16)
    with pytest.raises(FaganError, match="needs at least 2 classes, and .* has 1"):
        train(options(tmp_path / "b", one_class, conditioning="concat", max_steps=1))
    with pytest.raises(FaganError, match="--embedding_dim 8 applies to class-conditional"):
        train(options(tmp_path / "c", faces32, conditioning=None, embedding_dim=8, max_steps=1))


def test_cli_errors_are_one_line_and_exit_2(
    tmp_path: Path, faces32: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["train", "--images_dir", str(faces32), "--model_dir", str(tmp_path / "m")]
    common += ["--sample_dir", str(tmp_path / "s"), "--device", "cpu", "--max_steps", "1"]
    common += ["--generator_config", "small32", "--discriminator_config", "small32"]
    assert main([*common, "--conditioning", "projection"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # the data's summary line (progress output), then the error, one line
    assert err[0].startswith("data: ") and err[0].endswith("unlabelled") and len(err) == 2
    assert err[1].startswith("fagan train: error: --conditioning projection needs class labels")
    assert not (tmp_path / "m").exists()  # refused before the run folder was claimed
    with pytest.raises(SystemExit) as exited:
        main([*common, "--conditioning", "classes"])
    assert exited.value.code == 2
    assert "--conditioning" in capsys.readouterr().err


# --------------------------------------------------------------------------- the config key
def test_config_key_sets_the_conditioning(tmp_path: Path, digits: Path) -> None:
    text = (Path(load_config("small32").source)).read_text()
    conf = tmp_path / "gen_conditional.yaml"
    conf.write_text("conditioning: concat\n" + text)
    run = options(tmp_path, digits, conditioning=None, generator_config=str(conf), max_steps=1)
    result = train(run)
    assert result.generator.conditioning == "concat"
    assert result.discriminator.conditioning == "concat"
    state = load_file(tmp_path / "models" / "training_state.pth")
    assert state["generator_config"]["conditioning"] == "concat"
    # --conditioning none overrides the file
    plain = train(replace_options(run, tmp_path / "none", conditioning="none"))
    assert plain.generator.num_classes is None


def replace_options(opts: TrainOptions, tmp: Path, **changes) -> TrainOptions:
    from dataclasses import replace

    return replace(opts, model_dir=str(tmp / "models"), sample_dir=str(tmp / "samples"), **changes)


# --------------------------------------------------------------------------- steps
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_every_loss_trains_both_networks_conditionally(loss_name: str) -> None:
    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "conditioning": "projection"}
    G = Generator(load_config("small32"), 128, **kwargs)
    D = Discriminator(load_config("small32", "dis"), 32, **kwargs)
    g_opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.9))
    d_opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.9))
    prec = Precision.create("fp32", torch.device("cpu"))
    real = torch.rand(6, 3, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    rng = torch.Generator().manual_seed(0)
    loss = get_loss(loss_name)
    embed = {k: v.clone() for k, v in D.projection.state_dict().items() if "original" in k}
    cbn = {k: v.clone() for k, v in G.state_dict().items() if ".embed." in k}
    d_loss = d_step(G, D, real, torch.randn(6, 128), loss, d_opt, prec, lambda x: x, rng, labels)
    g_loss = g_step(G, D, real, torch.randn(6, 128), loss, g_opt, prec, lambda x: x, labels)
    assert np.isfinite(d_loss) and np.isfinite(g_loss)
    # the class-dependent parameters of both networks were trained
    assert any(not torch.equal(v, D.projection.state_dict()[k]) for k, v in embed.items())
    assert cbn and any(not torch.equal(v, G.state_dict()[k]) for k, v in cbn.items())


def test_bf16_conditional_training(tmp_path: Path, digits: Path) -> None:
    result = train(options(tmp_path, digits, precision="bf16", max_steps=1))
    assert result.step == 1
    weights = result.generator.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_grid_of_many_classes_shows_the_first_ten() -> None:
    latents = torch.randn(64, 8)
    z, y = class_grid_inputs(latents, 12)
    assert GRID_CLASSES == 10
    assert y.tolist() == [k for k in range(10) for _ in range(6)]
    assert torch.equal(z[:6], latents[:6]) and torch.equal(z[54:], latents[:6])


def test_eval_every_measures_a_conditional_generator(tmp_path: Path, digits: Path) -> None:
    train(options(tmp_path, digits, max_steps=2, eval_every=2, eval_num_samples=48))
    stats = [json.loads(x) for x in (tmp_path / "models" / "stats.jsonl").read_text().splitlines()]
    evals = [s for s in stats if "eval" in s]
    assert len(evals) == 1 and evals[0]["eval"]["swd_avg"] > 0


# --------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_conditional_ranks_agree(tmp_path: Path, digits: Path) -> None:
    from ddp_worker import run_rank

    run = options(tmp_path, digits, batch_size=4, max_steps=2)
    mp.spawn(run_rank, args=(2, _free_port(), vars(run), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["step"] == rank1["step"] == 2
    for part in ("generator", "discriminator", "ema"):
        assert rank0[part].keys() == rank1[part].keys()
        assert all(torch.equal(v, rank1[part][k]) for k, v in rank0[part].items())
    assert any("embed" in key for key in rank0["generator"])  # conditional batch norms
    assert load_file(tmp_path / "models" / "GAN_GEN_1.pth")["class_names"] == ["0", "1", "7"]


# --------------------------------------------------------------------------- it conditions
#: A small convolutional GAN for 16x16 images (the slow test's: its subject is the
#: conditioning, not the attention layers; a thousand CPU steps of it are quick).
GEN16 = """
architecture:
  - {name: conv_transpose, channels: [32, 128], kernel_dims: [4, 4], stride: [1, 1],
     padding: [0, 0], bias: true, batch_norm: true, spectral_norm: false, activation: relu}
  - {name: conv_transpose, channels: [128, 64], kernel_dims: [4, 4], stride: [2, 2],
     padding: [1, 1], bias: true, batch_norm: true, spectral_norm: false, activation: relu}
  - {name: conv_transpose, channels: [64, 3], kernel_dims: [4, 4], stride: [2, 2],
     padding: [1, 1], bias: true, batch_norm: false, spectral_norm: false, activation: tanh}
"""
DIS16 = """
architecture:
  - {name: conv, channels: [3, 64], kernel_dims: [4, 4], stride: [2, 2], padding: [1, 1],
     bias: true, batch_norm: false, spectral_norm: true, activation: lrelu(0.2)}
  - {name: conv, channels: [64, 128], kernel_dims: [4, 4], stride: [2, 2], padding: [1, 1],
     bias: true, batch_norm: false, spectral_norm: true, activation: lrelu(0.2)}
  - {name: conv, channels: [128, 1], kernel_dims: [4, 4], stride: [1, 1], padding: [0, 0],
     bias: true, batch_norm: false, spectral_norm: true, activation: lrelu(1.0)}
"""


def _downscaled(images_u8: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) uint8 -> (N, 64): grey, averaged over blocks back to the digits' 8x8."""
    grey = images_u8.float().mean(dim=1, keepdim=True)
    return torch.nn.functional.avg_pool2d(grey, images_u8.shape[-1] // 8).flatten(1).numpy() / 255


@pytest.mark.slow
def test_conditioning_really_conditions(tmp_path: Path) -> None:
    """A projection-conditional run on three digit classes: what it generates for class c
    is recognised as c by a classifier trained on the real images, and is closer (SWD)
    to class c's real images than to the other classes'."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small network: one thread is faster, on a busy CPU by far
    try:
        _train_and_judge(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _train_and_judge(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from fagan.data import open_training_data
    from fagan.metrics.swd import swd
    from fagan.sample import to_uint8

    started = time.perf_counter()
    images = write_digits(tmp_path / "digits", per_class=170, size=16)
    (tmp_path / "gen16.yaml").write_text(GEN16)
    (tmp_path / "dis16.yaml").write_text(DIS16)
    run = options(
        tmp_path,
        images,
        generator_config=str(tmp_path / "gen16.yaml"),
        discriminator_config=str(tmp_path / "dis16.yaml"),
        batch_size=32,
        max_steps=STEPS,
        num_epochs=1000,
        loss_function="hinge",
        g_lr=LR,
        d_lr=LR,
        feedback_factor=1,
        checkpoint_factor=1000,
    )
    train(run)
    trained = time.perf_counter()

    data = open_training_data(str(images), 16, progress=False)
    real = torch.from_numpy(data.images).permute(0, 3, 1, 2)  # (N, 3, 16, 16) uint8
    labels = torch.from_numpy(data.labels)
    classifier = LogisticRegression(max_iter=2000).fit(_downscaled(real), labels.numpy())

    generator = load_generator(tmp_path / "models" / "training_state.pth")  # the EMA one
    per_class = 150
    z = torch.randn(3 * per_class, 32, generator=torch.Generator().manual_seed(7))
    y = torch.arange(3).repeat_interleave(per_class)
    with torch.no_grad():
        fake = to_uint8(generator(z, y))
    accuracy = float((classifier.predict(_downscaled(fake)) == y.numpy()).mean())

    distances = np.zeros((3, 3))  # [generated class, real class]
    for c in range(3):
        for r in range(3):
            distances[c, r] = swd(real[labels == r], fake[y == c], seed=c)["avg"]
    elapsed = time.perf_counter() - started
    print(
        f"\n{STEPS} steps: train {trained - started:.0f} s, all {elapsed:.0f} s; "
        f"accuracy {accuracy:.3f}; SWD x1e3 [generated class, real class]:\n"
        f"{np.array2string(distances, precision=1)}"
    )
    assert accuracy > 0.6  # chance: 1/3
    for c in range(3):
        assert distances[c, c] < min(distances[c, r] for r in range(3) if r != c)


def test_concat_config_that_takes_the_condition_channels(tmp_path: Path, digits: Path) -> None:
    """A generator config written for concat conditioning (its first layer takes the latent
    size plus the classes, as attn-gan-pytorch's conditional configs): --latent_size says
    how many of those channels are the latent."""
    text = Path(load_config("small32").source).read_text()
    assert "channels: [128, 128]" in text
    conf = tmp_path / "gen_concat.yaml"
    conf.write_text(text.replace("channels: [128, 128]", "channels: [131, 128]", 1))
    run = options(
        tmp_path, digits, conditioning="concat", generator_config=str(conf), latent_size=128
    )
    result = train(replace_options(run, tmp_path, max_steps=1))
    assert result.generator.model[0].query_conv.in_channels == 131  # not widened again
    state = load_training_state(tmp_path / "models" / "training_state.pth")
    assert state["latent_size"] == 128 and state["fixed_latents"].shape[1] == 128
    generator = load_generator(tmp_path / "models" / "GAN_GEN_1.pth")
    assert generator.latent_size == 128 and generator.class_names == ("0", "1", "7")


# --------------------------------------------------------------------------- matching-aware
@pytest.mark.parametrize("loss_name", ["hinge", "relativistic-hinge"])
def test_matching_aware_d_step_scores_wrong_labels_as_fake(loss_name: str) -> None:
    from fagan.losses import matching_aware_d, mismatched_labels

    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "conditioning": "projection"}
    G = Generator(load_config("small32"), 128, **kwargs).train()
    D = Discriminator(load_config("small32", "dis"), 32, **kwargs).train()
    real = torch.rand(6, 3, 32, 32) * 2 - 1
    z = torch.randn(6, 128)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = get_loss(loss_name)
    prec = Precision.create("fp32", torch.device("cpu"))
    # by hand, on copies in the same state (the spectral norms' power iterations included)
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    with torch.no_grad():
        fake = G2(z, labels)
        r, f = D2(real, labels), D2(fake, labels)
        wrong = mismatched_labels(labels, 3, torch.Generator().manual_seed(5))
        m = D2(real, wrong)
        expected = float(matching_aware_d(loss.d, r, f, m))
    assert (wrong != labels).all()
    opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9))
    rng = torch.Generator().manual_seed(5)
    got = d_step(G, D, real, z, loss, opt, prec, lambda x: x, rng, labels, 3)
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(float(loss.d(r, f)), rel=1e-3)  # the mismatch term counts


def test_matching_aware_run_trains_and_resume_keeps_it(tmp_path: Path, digits: Path) -> None:
    state = train(options(tmp_path, digits, max_steps=2, matching_aware=True))
    assert state.step == 2
    saved = json.loads((tmp_path / "models" / "options.json").read_text())
    assert saved["matching_aware"] is True
    resumed = train(options(tmp_path, digits, max_steps=3, resume=True))  # flag not given
    assert resumed.step == 3
    saved = json.loads((tmp_path / "models" / "options.json").read_text())
    assert saved["matching_aware"] is True


def test_matching_aware_needs_conditioning(tmp_path: Path, digits: Path) -> None:
    with pytest.raises(FaganError, match="--matching_aware applies to class-conditional"):
        train(options(tmp_path, digits, max_steps=1, conditioning="none", matching_aware=True))
