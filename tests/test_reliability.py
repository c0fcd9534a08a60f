"""Reliability, tried from the command line as a new user would: bad images, bad configs,
bad flags, signals mid-run, SIGKILL mid-write, a full disk, divergence and untrusted files.

Every case runs ``python -m fagan ...`` (or the root ``train.py``) in a subprocess and
checks the exit status, the one-line message, that no traceback reaches the user, and that
nothing written before the fault was lost. Training runs use a tiny 16x16 architecture
(written here as a user's config files) so that a run takes a few seconds on a CPU;
independent commands of one test run side by side.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_lfw_faces

from fagan.checkpoint import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# A 16x16 FAGAN: one full attention layer in each network, a few thousand parameters.
TINY_GEN = """\
architecture:
  - {name: conv_transpose, channels: [16, 32], kernel_dims: [4, 4], stride: [1, 1], padding: [0, 0], bias: true, batch_norm: true, spectral_norm: false, activation: relu}
  - {name: full_attention, channels: [32, 16], kernel_dims: [4, 4], stride: [2, 2], padding: [1, 1], bias: true, use_spectral_norm: true, use_batch_norm: true, squeeze_factor: 4, transpose_conv: true, activation: lrelu(0.2)}
  - {name: conv_transpose, channels: [16, 3], kernel_dims: [4, 4], stride: [2, 2], padding: [1, 1], bias: true, batch_norm: false, spectral_norm: false, activation: tanh}
"""
TINY_DIS = """\
architecture:
  - {name: conv, channels: [3, 16], kernel_dims: [4, 4], stride: [2, 2], padding: [1, 1], bias: true, batch_norm: false, spectral_norm: true, activation: lrelu(0.2)}
  - {name: full_attention, channels: [16, 32], kernel_dims: [4, 4], stride: [2, 2], padding: [1, 1], bias: true, use_spectral_norm: true, use_batch_norm: false, squeeze_factor: 4, transpose_conv: false, activation: lrelu(0.2)}
  - {name: conv, channels: [32, 1], kernel_dims: [4, 4], stride: [1, 1], padding: [0, 0], bias: true, batch_norm: false, spectral_norm: false, activation: lrelu(1.0)}
"""


# ----------------------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def fagan(*args: object) -> list[str]:
    """The command line of ``python -m fagan ARGS``."""
    return [sys.executable, "-m", "fagan", *map(str, args)]


def train_py(*args: object) -> list[str]:
    """The command line of the original entry point, ``python train.py ARGS``."""
    return [sys.executable, str(REPO / "train.py"), *map(str, args)]


def run(
    command: Sequence[str],
    cwd: Path,
    *,
    timeout: float = 120,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def run_all(commands: Sequence[Sequence[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Runs independent commands side by side (each mostly imports torch, on one core)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda command: run(command, cwd), commands))


# Runs several command lines in one fresh interpreter, each through the same entry points
# (fagan.cli.main; run_command for train.py) with its own stderr: the error cases below
# then pay torch's import once. Their `isolated` variants (slow) run one process each.
_BATCH_DRIVER = r"""
import contextlib, io, json, sys, traceback
from fagan.cli import main, run_command
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if argv[1] == "-m":
                code = main(argv[3:])
            else:
                code = run_command("train", argv[2:], prog="train.py")
        except SystemExit as exit:
            code = exit.code
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def run_cases(
    commands: Sequence[Sequence[str]], cwd: Path, isolated: bool
) -> list[subprocess.CompletedProcess[str]]:
    """Each command line in a process of its own, or all in one fresh interpreter."""
    if isolated:
        return run_all(commands, cwd)
    batch = run(
        [sys.executable, "-c", _BATCH_DRIVER, json.dumps([list(c) for c in commands])],
        cwd,
        timeout=300,
    )
    assert batch.returncode == 0, batch.stderr[-3000:]
    return [
        subprocess.CompletedProcess(list(command), code, "", err)
        for command, (code, err) in zip(commands, json.loads(batch.stdout), strict=True)
    ]


def user_error(result: subprocess.CompletedProcess[str], prog: str = "fagan train") -> str:
    """Checks exit status 2, no traceback, and one ``PROG: error: ...`` line, the last one."""
    err = result.stderr.replace("\r", "\n")
    assert result.returncode == 2, (result.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err[-3000:]
    assert [line for line in err.splitlines() if line.strip()][-1] == errors[0], err[-3000:]
    assert errors[0].startswith(f"{prog}: error: "), errors[0]
    return errors[0]


def clean_exit(result: subprocess.CompletedProcess[str]) -> str:
    err = result.stderr.replace("\r", "\n")
    assert result.returncode == 0, (result.returncode, err[-3000:])
    assert "Traceback" not in err and ": error: " not in err, err[-3000:]
    return err


def train_args(tmp: Path, configs: Path, *extra: object) -> list[object]:
    """``train`` on the tiny architecture, a few CPU steps; ``extra`` flags override."""
    return [
        "train",
        "--generator_config",
        configs / "gen.yaml",
        "--discriminator_config",
        configs / "dis.yaml",
        "--model_dir",
        tmp / "models",
        "--sample_dir",
        tmp / "samples",
        "--batch_size",
        8,
        "--num_workers",
        0,
        "--no_tensorboard",
        "--device",
        "cpu",
        "--num_samples",
        8,
        "--feedback_factor",
        2,
        "--data_percentage",
        1,
        *extra,
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    """The hidden temporary siblings atomic writes use (``.<name>.XXXX...``)."""
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".fagan.lock"
    )


class RunsCode:
    """Unpickling this runs ``touch MARKER``: what a malicious ``.pth`` holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("configs")
    (folder / "gen.yaml").write_text(TINY_GEN)
    (folder / "dis.yaml").write_text(TINY_DIS)
    return folder


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, configs: Path) -> Path:
    """A finished 3-step CLI run on the embedded demo: models/ holds epoch-1 weights and a
    training state at step 3. Tests copy it before changing anything."""
    tmp = tmp_path_factory.mktemp("base_run")
    clean_exit(run(fagan(*train_args(tmp, configs, "--max_steps", 3)), tmp))
    state = load_file(tmp / "models" / "training_state.pth")
    assert state["step"] == 3
    return tmp


def copy_run(base: Path, tmp: Path) -> Path:
    shutil.copytree(base / "models", tmp / "models")
    shutil.copytree(base / "samples", tmp / "samples")
    return tmp


# ----------------------------------------------------------------------------- bad images
def test_bad_images_are_skipped_counted_and_training_finishes(
    tmp_path: Path, configs: Path
) -> None:
    # 16 usable files either way (as root, chmod 000 does not stop reads): 2 whole batches
    # of 8; every unusable file, the truncated one too, is skipped once when decoding
    good = 15 if IS_ROOT else 16
    images = write_lfw_faces(tmp_path / "images", 16, count=good)
    face = (images / "face_000.png").read_bytes()
    (images / "truncated.png").write_bytes(face[: len(face) // 2])
    (images / "zero.png").write_bytes(b"")
    (images / "notes.jpg").write_text("not an image, whatever the suffix says")
    (images / "dangling.png").symlink_to(tmp_path / "gone.png")  # unreadable, even as root
    (images / "locked.png").write_bytes(face)
    (images / "locked.png").chmod(0)
    skipped = 4 if IS_ROOT else 5

    result = run(
        fagan(
            *train_args(
                tmp_path,
                configs,
                "--images_dir",
                images,
                "--num_epochs",
                1,
                "--data_percentage",
                100,
            )
        ),
        tmp_path,
    )
    err = clean_exit(result)
    assert f"skipped {skipped} of {good + 5} files in {images}" in err, err
    assert "dangling.png: cannot read" in err and "notes.jpg: not an image" in err
    assert "truncated.png: truncated" in err  # the summary names the first three
    assert "16 images, 2 batches per epoch" in err
    models, samples = tmp_path / "models", tmp_path / "samples"
    for name in ("GAN_GEN_1.pth", "GAN_DIS_1.pth", "training_state.pth", "loss.png"):
        assert (models / name).is_file(), name
    assert (samples / "progress.gif").is_file()
    assert load_file(models / "training_state.pth")["step"] == 2


def test_no_usable_images_is_an_error_before_any_work(tmp_path: Path, configs: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here")
    all_bad = tmp_path / "all_bad"
    all_bad.mkdir()
    (all_bad / "zero.png").write_bytes(b"")
    (all_bad / "notes.jpg").write_text("text")
    few = write_lfw_faces(tmp_path / "few", 16, count=5)
    cases = [
        (empty, ["no image files in", str(empty)]),
        (all_bad, ["no usable images in", str(all_bad)]),
        (few, ["5 images is fewer than one batch of 8"]),
    ]
    results = run_all(
        [
            fagan(
                *train_args(
                    tmp_path / folder.name,
                    configs,
                    "--images_dir",
                    folder,
                    "--data_percentage",
                    100,
                )
            )
            for folder, _ in cases
        ],
        tmp_path,
    )
    for (folder, words), result in zip(cases, results, strict=True):
        message = user_error(result)
        for word in words:
            assert word in message, message
        assert not (tmp_path / folder.name / "models").exists(), "files written before the error"
        assert not (tmp_path / folder.name / "samples").exists()


# ----------------------------------------------------------------------------- bad flags
FLAG_CASES = [
    (["--g_lr", "-0.001"], "argument --g_lr: expected a positive number, got '-0.001'"),
    (["--g_lr", "0"], "argument --g_lr: expected a positive number"),
    (["--d_lr", "nan"], "argument --d_lr: expected a positive number, got 'nan'"),
    (["--d_lr", "-1"], "argument --d_lr"),
    (["--batch_size", "0"], "argument --batch_size: expected a whole number >= 1, got '0'"),
    (["--batch_size", "-8"], "argument --batch_size"),
    (["--batch_size", "eight"], "argument --batch_size"),
    (["--num_epochs", "0"], "argument --num_epochs: expected a whole number >= 1"),
    (["--num_epochs", "-2"], "argument --num_epochs"),
    (["--data_percentage", "0"], "argument --data_percentage: expected a percentage in (0, 100]"),
    (["--data_percentage", "100.5"], "argument --data_percentage"),
    (["--data_percentage", "-10"], "argument --data_percentage"),
    (
        ["--generator_file", "no_such.pth"],
        "argument --generator_file: expected an existing file, got 'no_such.pth'",
    ),
    (
        ["--discriminator_file", "no_such.pth"],
        "argument --discriminator_file: expected an existing file",
    ),
    (["--precision", "fp8"], "argument --precision: expected one of fp32, bf16, fp16, got 'fp8'"),
    (["--num_workers", "-1"], "argument --num_workers"),
    (
        ["--seed", str(2**64)],
        f"argument --seed: expected a whole number in [0, 2^63), got '{2**64}'",
    ),
    (["--seed", "-1"], "argument --seed: expected a whole number in [0, 2^63)"),
    (["--ema_decay", "1"], "argument --ema_decay: expected a number in [0, 1), got '1'"),
]
# These pass argparse and are caught when the options are checked (importing torch).
LATE_FLAG_CASES = [
    (["--start", "5", "--num_epochs", "3"], "--start 5 is after --num_epochs 3: nothing to train"),
    (["--eval_num_samples", "1"], "--eval_num_samples must be a whole number >= 2, got 1"),
    (["--augment", "colour"], "unknown augmentation 'colour' in policy 'colour'"),
    (["--images_dir", "no/such/folder"], "--images_dir: no/such/folder does not exist"),
]


def test_bad_flags_are_one_line_errors_for_fagan_train_and_train_py(tmp_path: Path) -> None:
    out = ["--model_dir", str(tmp_path / "models"), "--sample_dir", str(tmp_path / "samples")]
    cases = FLAG_CASES + LATE_FLAG_CASES
    commands = [fagan("train", *flags, *out) for flags, _ in cases] + [
        train_py(*flags, *out) for flags, _ in cases
    ]
    results = run_all(commands, tmp_path)
    for index, result in enumerate(results):
        flags, expected = cases[index % len(cases)]
        prog = "fagan train" if index < len(cases) else "train.py"
        message = user_error(result, prog)
        assert expected in message, (flags, message)
    assert not (tmp_path / "models").exists() and not (tmp_path / "samples").exists()


def test_model_dir_that_is_a_file_is_a_one_line_error(tmp_path: Path, configs: Path) -> None:
    (tmp_path / "models").write_text("a file where the model folder should go")
    result = run(fagan(*train_args(tmp_path, configs, "--max_steps", 1)), tmp_path)
    message = user_error(result)
    assert f"--model_dir: cannot create folder {tmp_path / 'models'}: File exists" in message
    assert (tmp_path / "models").read_text() == "a file where the model folder should go"


# ----------------------------------------------------------------------------- bad configs
def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# name: (role, old, new, words in the message besides the file's path)
CONFIG_CASES = {
    "unknown_layer": (
        "gen",
        "name: full_attention",
        "name: fancy_attention",
        ["architecture[1]", "field 'name'", "unknown layer 'fancy_attention'"],
    ),
    "unknown_key": (
        "gen",
        "squeeze_factor: 4,",
        "squeeze_factor: 4, dilation: 2,",
        ["architecture[1] (full_attention)", "field 'dilation'", "unknown key"],
    ),
    "missing_key": (
        "gen",
        "bias: true, use_spectral_norm",
        "use_spectral_norm",
        ["architecture[1] (full_attention)", "field 'bias'", "missing"],
    ),
    "malformed_tuple": (
        "gen",
        "channels: [32, 16], kernel_dims: [4, 4]",
        'channels: [32, 16], kernel_dims: "(4, 4, 4)"',
        ["architecture[1] (full_attention)", "field 'kernel_dims'", "malformed tuple '(4, 4, 4)'"],
    ),
    "bad_activation": (
        "gen",
        "activation: lrelu(0.2)",
        "activation: swish",
        [
            "architecture[1] (full_attention)",
            "field 'activation'",
            "cannot parse activation 'swish'",
        ],
    ),
    "channel_mismatch": (
        "gen",
        "channels: [16, 3]",
        "channels: [24, 3]",
        [
            "architecture[2]",
            "field 'channels'",
            "expects 24 input channels but the previous layer gives 16",
        ],
    ),
    "gen_not_rgb": (
        "gen",
        "channels: [16, 3]",
        "channels: [16, 4]",
        [
            "architecture[2]",
            "field 'channels'",
            "the generator's output is not an "
            "image: a latent vector becomes 4x16x16, expected 3xSxS",
        ],
    ),
    "gen_not_square": (
        "gen",
        "stride: [2, 2], padding: [1, 1], bias: true, batch_norm: false",
        "stride: [2, 2], padding: [1, 0], bias: true, batch_norm: false",
        ["architecture[2]", "field 'padding'", "3x16x18"],
    ),
    "dis_two_logits": (
        "dis",
        "channels: [32, 1]",
        "channels: [32, 2]",
        [
            "architecture[2]",
            "field 'channels'",
            "does not reduce a 3x16x16 image to logits: it gives 2x1x1, expected 1x1x1",
        ],
    ),
    "dis_not_reducing": (
        "dis",
        "stride: [1, 1], padding: [0, 0]",
        "stride: [1, 1], padding: [1, 1]",
        ["architecture[2]", "field 'kernel_dims'", "it gives 1x3x3"],
    ),
    "dis_not_rgb": (
        "dis",
        "channels: [3, 16]",
        "channels: [4, 16]",
        ["architecture[0]", "field 'channels'", "takes 4 channels; images have 3"],
    ),
    "invalid_yaml": (
        "gen",
        "- {name: full_attention",
        "- {name: full_attention:: [",
        ["invalid YAML at line 3"],
    ),
}


@pytest.mark.parametrize(
    "isolated",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["one-interpreter", "one-process-each"],
)
def test_every_kind_of_bad_config_names_file_layer_and_field(
    tmp_path: Path, configs: Path, isolated: bool
) -> None:
    commands, paths = [], []
    for name, (role, old, new, _) in CONFIG_CASES.items():
        folder = tmp_path / name
        folder.mkdir()
        for part in ("gen", "dis"):
            text = (configs / f"{part}.yaml").read_text()
            (folder / f"{part}.yaml").write_text(_edit(text, old, new) if part == role else text)
        paths.append(folder / f"{role}.yaml")
        commands.append(fagan(*train_args(folder, folder)))
    results = run_cases(commands, tmp_path, isolated)
    for (name, (*_, words)), path, result in zip(CONFIG_CASES.items(), paths, results, strict=True):
        message = user_error(result)
        assert message.startswith(f"fagan train: error: {path}: "), (name, message)
        for word in words:
            assert word in message, (name, message)
        assert not (tmp_path / name / "models").exists(), name


def test_weights_that_do_not_fit_name_the_layer_and_both_shapes(
    tmp_path: Path, configs: Path, base_run: Path
) -> None:
    weights = base_run / "models" / "GAN_GEN_1.pth"
    narrower = tmp_path / "narrower"  # the attention layer gives 24 channels, not 16
    narrower.mkdir()
    text = _edit(
        _edit(TINY_GEN, "channels: [32, 16]", "channels: [32, 24]"),
        "channels: [16, 3]",
        "channels: [24, 3]",
    )
    (narrower / "gen.yaml").write_text(text)
    (narrower / "dis.yaml").write_text(TINY_DIS)
    results = run_all(
        [
            fagan(*train_args(tmp_path / "a", narrower, "--generator_file", weights)),
            fagan(
                *train_args(
                    tmp_path / "b",
                    configs,
                    "--generator_config",
                    "small32",
                    "--discriminator_config",
                    "small32",
                    "--generator_file",
                    weights,
                )
            ),
            fagan(
                "generate",
                "--generator_file",
                weights,
                "--generator_config",
                narrower / "gen.yaml",
                "--output_dir",
                tmp_path / "out",
            ),
        ],
        tmp_path,
    )
    same_kind = user_error(results[0])
    assert (
        f"generator weights {weights} does not fit the configured architecture: "
        "model.1.value_conv.weight has shape [32, 16, 4, 4] in the file but "
        "[32, 24, 4, 4] in the architecture" in same_kind
    ), same_kind
    other_kind = user_error(results[1])
    assert (
        f"generator weights {weights} does not fit the configured architecture: it lacks "
        "model.0.gamma" in other_kind
    ), other_kind
    assert (
        "layer model.0 (architecture[0]) is another kind of layer in the file: it holds "
        "model.0.0.weight of shape [16, 32, 4, 4] where the architecture has model.0.gamma "
        "of shape [1]" in other_kind
    ), other_kind
    assert (
        "model.1.value_conv.weight has shape [32, 16, 4, 4] in the file but [32, 24, 4, 4]"
        in user_error(results[2], "fagan generate")
    )
    assert not (tmp_path / "a" / "models").exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- signals
def _train_until_signal(
    tmp: Path, configs: Path, workers: int, sig: signal.Signals, group: bool
) -> subprocess.CompletedProcess[str]:
    """Starts a long CLI run, waits for its first loss.log line, signals it as asked."""
    command = fagan(
        *train_args(
            tmp,
            configs,
            "--num_workers",
            workers,
            "--num_epochs",
            2,
            "--data_percentage",
            100,
            "--feedback_factor",
            1000,
        )
    )
    process = subprocess.Popen(
        command,
        cwd=tmp,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    loss_log = tmp / "models" / "loss.log"
    try:
        deadline = time.monotonic() + 90
        while not (loss_log.is_file() and loss_log.read_text()):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no loss.log line in 90 s"
            time.sleep(0.05)
        if group:  # as a terminal's Ctrl-C does: the main process and its loader workers
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _stop_and_resume(
    tmp: Path, configs: Path, workers: int, sig: signal.Signals, group: bool
) -> None:
    result = _train_until_signal(tmp, configs, workers, sig, group)
    err = result.stderr.replace("\r", "\n")
    # 128 + the signal's number, as a shell reports a process the signal ended: a
    # `fagan train && next` does not carry on
    assert result.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err[-3000:]
    assert "Traceback" not in err and ": error: " not in err, err[-3000:]
    models = tmp / "models"
    state = load_file(models / "training_state.pth")
    step = state["step"]
    assert step >= 1 and state["epoch"] == 1 and state["batch"] == step
    assert (
        f"stopped by {sig.name} at step {step} of " in err
        and f"(epoch 1 of 2); training state saved to {models / 'training_state.pth'}; "
        f"continue with: fagan train --resume --model_dir {models} --sample_dir "
        f"{tmp / 'samples'}"
        in err
    ), err[-2000:]
    # a stale temporary file of a save killed long ago goes; a fresh one (maybe being
    # written by another process) stays
    stale, fresh = models / ".training_state.pth.k1ll3d.tmp", models / ".GAN_GEN_1.pth.x.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    resumed = run(
        fagan(
            *train_args(
                tmp,
                configs,
                "--num_workers",
                workers,
                "--num_epochs",
                2,
                "--data_percentage",
                100,
                "--feedback_factor",
                1000,
                "--resume",
                "--max_steps",
                step + 2,
            )
        ),
        tmp,
    )
    err = clean_exit(resumed)
    assert (
        f"resuming from {models / 'training_state.pth'}: epoch 1, batch {step}, step {step}" in err
    ), err[-2000:]
    assert f"stopped by --max_steps at step {step + 2} of " in err
    assert load_file(models / "training_state.pth")["step"] == step + 2
    steps = [json.loads(line)["step"] for line in (models / "stats.jsonl").read_text().splitlines()]
    assert steps[-3:] == [step, step + 1, step + 2]  # counting on, not from 0
    assert "removed 1 temporary file(s)" in err and ".training_state.pth.k1ll3d.tmp" in err
    assert not stale.exists() and fresh.exists()


def test_sigterm_to_the_process_group_with_loader_workers_saves_and_resumes(
    tmp_path: Path, configs: Path
) -> None:
    # Regression: loader workers died of the signal and the main process failed with
    # "RuntimeError: DataLoader worker (pid N) is killed by signal: Terminated" mid-step.
    _stop_and_resume(tmp_path, configs, 2, signal.SIGTERM, group=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers,sig,group",
    [
        (0, signal.SIGINT, False),
        (2, signal.SIGINT, False),
        (0, signal.SIGTERM, False),
        (2, signal.SIGTERM, False),
        (0, signal.SIGINT, True),
        (2, signal.SIGINT, True),
    ],
    ids=["sigint-0", "sigint-2", "sigterm-0", "sigterm-2", "ctrl-c-group-0", "ctrl-c-group-2"],
)
def test_signals_save_a_resumable_state(
    tmp_path: Path, configs: Path, workers: int, sig: signal.Signals, group: bool
) -> None:
    _stop_and_resume(tmp_path, configs, workers, sig, group)


# ----------------------------------------------------------------------------- SIGKILL mid-write
def _save_forever(path: str, counter: Any) -> None:
    version = 0
    while True:  # numpy makes the data: torch's thread pool may not survive a fork
        save_file(
            {
                "version": torch.tensor(version),
                "w": torch.from_numpy(np.full(1_000_000, version, dtype=np.float32)),
            },
            path,
        )
        counter.value = version
        version += 1


def test_sigkill_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    """A process saving 4 MB checkpoints in a loop is SIGKILLed at random moments."""
    context = multiprocessing.get_context("fork")
    rng = random.Random(6)
    leftovers: list[str] = []
    for trial in range(6):
        path = tmp_path / f"state_{trial}.pth"
        counter = context.Value("q", -1, lock=False)  # a kill must not leave it locked
        process = context.Process(target=_save_forever, args=(str(path), counter), daemon=True)
        process.start()
        deadline = time.monotonic() + 60
        while counter.value < 0:
            assert process.is_alive() and time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        last_complete = counter.value
        saved = load_file(path)  # never a partial file
        version = int(saved["version"])
        # the last save reported complete, or the next one if the kill came between its
        # rename and its report
        assert version in (last_complete, last_complete + 1), (version, last_complete)
        assert torch.equal(saved["w"], torch.full((1_000_000,), float(version)))
        leftovers += [name for name in temp_files(tmp_path) if name not in leftovers]
    # a kill mid-write may leave a hidden .state_N.pth.XXXX... temporary file (no process
    # is left to remove it); the training loop removes such files when a later run starts
    assert all(name.startswith(".state_") for name in leftovers), leftovers


@pytest.mark.slow
def test_sigkill_during_training_leaves_a_resumable_state(tmp_path: Path, configs: Path) -> None:
    """One batch per epoch, so that a checkpoint is written at every step."""
    images = write_lfw_faces(tmp_path / "images", 16, count=8)
    args = train_args(
        tmp_path, configs, "--images_dir", images, "--num_epochs", 1000, "--data_percentage", 100
    )
    rng = random.Random(7)
    state_path = tmp_path / "models" / "training_state.pth"
    for trial in range(4):
        resume = ["--resume"] if state_path.is_file() else []
        process = subprocess.Popen(
            fagan(*args, *resume),
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 90
        while not (state_path.is_file() and state_path.stat().st_mtime > time.time() - 5):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        process.kill()
        process.wait()
        state = load_file(state_path)
        assert state["step"] >= 1, trial
    result = run(fagan(*args, "--resume", "--max_steps", state["step"] + 1), tmp_path)
    err = clean_exit(result)
    assert (
        f"step {state['step']}" in err
        and f"stopped by --max_steps at step {state['step'] + 1} of " in err
    )


# ----------------------------------------------------------------------------- full disk
def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_full_disk_fails_loudly_and_keeps_every_checkpoint(
    tmp_path: Path, configs: Path, base_run: Path
) -> None:
    state_size = (base_run / "models" / "training_state.pth").stat().st_size
    weights_size = (base_run / "models" / "GAN_GEN_1.pth").stat().st_size
    assert weights_size < state_size // 2
    cases = {  # limit: what cannot be written any more
        "state": (state_size // 2, "training_state.pth"),
        "options": (100, "options.json"),
    }
    results = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {}
        for name, (limit, _) in cases.items():
            tmp = copy_run(base_run, tmp_path / name)
            command = fagan(*train_args(tmp, configs, "--resume", "--max_steps", 5))
            futures[name] = pool.submit(run, command, tmp, preexec_fn=_file_size_limit(limit))
        results = {name: future.result() for name, future in futures.items()}
    before = snapshot(base_run / "models")
    for name, (_, file) in cases.items():
        models = tmp_path / name / "models"
        message = user_error(results[name])
        assert message == (
            f"fagan train: error: cannot write {models / file}: File too large; "
            "the previous file is unchanged"
        ), message
        after = snapshot(models)
        for kept in (
            "training_state.pth",
            "GAN_GEN_1.pth",
            "GAN_DIS_1.pth",
            "GAN_GEN_EMA_1.pth",
            "gen.yaml",
            "dis.yaml",
            "loss.png",
        ):
            assert after[kept] == before[kept], (name, kept)
        if name == "options":  # else the resumed run's options replaced it, whole
            assert after["options.json"] == before["options.json"]
        assert json.loads(after["options.json"])["generator_config"]
        assert after["loss.log"].startswith(before["loss.log"])  # appended to, never cut
        assert temp_files(models) == []
        assert load_file(models / "training_state.pth")["step"] == 3


# ----------------------------------------------------------------------------- divergence
def test_nan_weights_stop_naming_the_step_and_keep_the_last_checkpoint(
    tmp_path: Path, configs: Path, base_run: Path
) -> None:
    # a used folder is only trained on again with --resume: the resumed state is poisoned
    tmp = copy_run(base_run, tmp_path)
    models = tmp / "models"
    state = load_file(models / "training_state.pth")
    for net in ("generator", "ema_generator"):
        state[net] = {
            key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
            for key, value in state[net].items()
        }
    torch.save(state, models / "training_state.pth")
    before = snapshot(models)
    result = run(
        fagan(*train_args(tmp, configs, "--resume", "--num_epochs", 2, "--max_steps", 6)), tmp
    )
    message = user_error(result)
    assert f"training diverged at step {state['step'] + 1} (epoch " in message, message
    assert (
        f"d_loss=nan, g_loss=nan; the last checkpoint in {models} is left as it was" in message
    ), message
    after = snapshot(models)
    for name in (
        "training_state.pth",
        "GAN_GEN_1.pth",
        "GAN_DIS_1.pth",
        "GAN_GEN_EMA_1.pth",
        "loss.log",
        "stats.jsonl",
        "loss.png",
    ):
        assert after[name] == before[name], name


# ----------------------------------------------------------------------------- untrusted files
@pytest.mark.parametrize(
    "isolated",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["one-interpreter", "one-process-each"],
)
def test_files_that_would_run_code_are_refused_everywhere(
    tmp_path: Path, configs: Path, base_run: Path, isolated: bool
) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"  # torch's zip format, the payload inside a state dict
    torch.save({"model.0.0.weight": torch.zeros(2), "x": RunsCode(marker)}, evil)
    evil_pickle = tmp_path / "evil_pickle.pth"  # a bare pickle, as torch.load also reads
    evil_pickle.write_bytes(pickle.dumps(RunsCode(marker)))
    resume_dir = tmp_path / "resume"
    (resume_dir / "models").mkdir(parents=True)
    torch.save(
        {"format": "fagan-training-state", "generator": RunsCode(marker)},
        resume_dir / "models" / "training_state.pth",
    )
    tagged = tmp_path / "tagged"
    tagged.mkdir()
    (tagged / "gen.yaml").write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')
    (tagged / "dis.yaml").write_text(
        _edit(
            TINY_DIS,
            "activation: lrelu(1.0)",
            f'activation: !!python/object/apply:os.system ["touch {marker}"]',
        )
    )
    gen_config = configs / "gen.yaml"
    weights = base_run / "models" / "GAN_GEN_1.pth"
    cases = [
        (
            fagan(
                "generate",
                "--generator_file",
                evil,
                "--generator_config",
                gen_config,
                "--output_dir",
                tmp_path / "out",
            ),
            "fagan generate",
            f"refusing to load {evil}",
        ),
        (
            fagan("generate", "--generator_file", evil_pickle, "--output_dir", tmp_path / "out"),
            "fagan generate",
            f"refusing to load {evil_pickle}",
        ),
        (
            fagan(*train_args(tmp_path / "t1", configs, "--generator_file", evil)),
            "fagan train",
            f"refusing to load {evil}",
        ),
        (
            fagan(*train_args(tmp_path / "t2", configs, "--discriminator_file", evil_pickle)),
            "fagan train",
            f"refusing to load {evil_pickle}",
        ),
        (
            fagan(
                "generate",
                "--generator_file",
                weights,
                "--generator_config",
                gen_config,
                "--latents",
                evil,
                "--output_dir",
                tmp_path / "out",
            ),
            "fagan generate",
            f"refusing to load {evil}",
        ),
        (
            fagan(*train_args(resume_dir, configs, "--resume")),
            "fagan train",
            f"refusing to load {resume_dir / 'models' / 'training_state.pth'}",
        ),
        (
            train_py(*train_args(tmp_path / "t3", configs, "--generator_file", evil)[1:]),
            "train.py",
            f"refusing to load {evil}",
        ),
        (
            fagan(*train_args(tmp_path / "t4", tagged)),
            "fagan train",
            f"{tagged / 'gen.yaml'}: invalid YAML at line 1: could not determine a constructor "
            "for the tag 'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        (
            fagan(
                *train_args(tmp_path / "t5", configs, "--discriminator_config", tagged / "dis.yaml")
            ),
            "fagan train",
            f"{tagged / 'dis.yaml'}: invalid YAML at line 4",
        ),
    ]
    results = run_cases([command for command, _, _ in cases], tmp_path, isolated)
    for (command, prog, expected), result in zip(cases, results, strict=True):
        message = user_error(result, prog)
        assert expected in message, (command, message)
        if "refusing" in expected:
            assert "could run code when unpickled" in message
            assert "weights_only` set to `False`" not in message  # no advice to run it
        assert not marker.exists(), (command, "the payload ran")
    assert not (tmp_path / "out").exists()
    for folder in ("t1", "t2", "t3", "t4", "t5"):
        assert not (tmp_path / folder / "models").exists()
    # the files really are malicious: an unsafe load runs the payload
    torch.load(evil, weights_only=False)
    assert marker.exists()
