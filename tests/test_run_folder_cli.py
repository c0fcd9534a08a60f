"""``fagan train`` and its run folder: a used folder is refused, ``--overwrite`` starts clean,
a folder in use by another run is refused at once, a stopped run says how to continue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_lfw_faces


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real 32x32 faces: 5 batches of 8 per epoch."""
    return write_lfw_faces(tmp_path_factory.mktemp("faces"), 32, count=40)


def train_command(tmp: Path, faces: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fagan",
        "train",
        "--images_dir",
        str(faces),
        "--generator_config",
        "small32",
        "--discriminator_config",
        "small32",
        "--model_dir",
        str(tmp / "models"),
        "--sample_dir",
        str(tmp / "samples"),
        "--batch_size",
        "8",
        "--num_workers",
        "0",
        "--no_tensorboard",
        "--device",
        "cpu",
        "--num_samples",
        "4",
        "--num_epochs",
        "2",
        *extra,
    ]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )
    result.stderr = result.stderr.replace("\r", "\n")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def files_of(tmp: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(tmp)): p.read_bytes()
        for folder in ("models", "samples")
        for p in sorted((tmp / folder).rglob("*"))
        if p.is_file()
    }


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": error: " in line]


def test_used_folder_is_refused_unchanged_and_overwrite_starts_clean(
    tmp_path: Path, faces: Path
) -> None:
    first = run(train_command(tmp_path, faces, "--max_steps", "2"), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # 5 batches per epoch, 2 epochs: 10 steps planned
    assert (
        f"stopped by --max_steps at step 2 of 10 planned (epoch 1 of 2); training state "
        f"saved to {tmp_path / 'models' / 'training_state.pth'}; continue with: fagan train "
        f"--resume --model_dir {tmp_path / 'models'} --sample_dir {tmp_path / 'samples'}"
    ) in first.stderr
    before = files_of(tmp_path)
    assert "models/training_state.pth" in before and "samples/gen_1_1.png" in before

    again = run(train_command(tmp_path, faces, "--max_steps", "2", "--seed", "1"), tmp_path)
    assert again.returncode == 2
    [line] = error_lines(again.stderr)
    assert line.startswith(
        f"fagan train: error: {tmp_path / 'models'} already holds a training run ("
    )
    assert "--resume" in line and "--overwrite" in line
    assert files_of(tmp_path) == before  # every file of the first run, byte for byte

    clean = run(train_command(tmp_path, faces, "--max_steps", "1", "--overwrite"), tmp_path)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "--overwrite: removed " in clean.stderr
    stats = (tmp_path / "models" / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in stats] == [1]  # nothing of the first run
    assert len((tmp_path / "models" / "loss.log").read_text().splitlines()) == 1


def test_finished_run_says_done(tmp_path: Path, faces: Path) -> None:
    result = run(
        train_command(tmp_path, faces, "--num_epochs", "1", "--data_percentage", "40"), tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"done: 2 steps; weights and training state in {tmp_path / 'models'}, samples in "
        f"{tmp_path / 'samples'}"
    ) in result.stderr


def test_a_folder_in_use_is_refused_at_once_naming_the_pid(tmp_path: Path, faces: Path) -> None:
    holder = subprocess.Popen(
        train_command(tmp_path, faces, "--num_epochs", "1000"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        loss_log = tmp_path / "models" / "loss.log"
        deadline = time.monotonic() + 120
        while not (loss_log.is_file() and loss_log.read_text()):
            assert holder.poll() is None, holder.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no loss.log line in 120 s"
            time.sleep(0.05)
        before = (tmp_path / "models" / "options.json").read_bytes()
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = run(train_command(tmp_path, faces, *extra), tmp_path)
            assert second.returncode == 2, second.stderr[-3000:]
            [line] = error_lines(second.stderr)
            assert f"pid {holder.pid}" in line, line
        assert (tmp_path / "models" / "options.json").read_bytes() == before
        assert holder.poll() is None  # the first run trains on
        holder.send_signal(signal.SIGINT)
        _, err = holder.communicate(timeout=120)
        assert holder.returncode == 130, err[-3000:]
        assert "continue with: fagan train --resume" in err
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
