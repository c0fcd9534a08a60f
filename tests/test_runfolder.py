"""Run folders: the lock (real processes, SIGKILL included), refusing, resuming, overwriting."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fagan
from fagan.errors import FaganError
from fagan.runfolder import (
    LOCK_NAME,
    RunLock,
    claim_run_folder,
    clear_run,
    existing_run,
    run_files,
)

SRC = str(Path(fagan.__file__).resolve().parents[1])

# What a run at step 338 of epoch 4 leaves (the names train.py, runlog.py and
# fileio.atomic_write's temporary files use).
RUN_MODEL_FILES = [
    "training_state.pth",
    "GAN_GEN_1.pth",
    "GAN_DIS_1.pth",
    "GAN_GEN_EMA_1.pth",
    "GAN_GEN_4.pth",
    "GAN_DIS_4.pth",
    "GAN_GEN_EMA_4.pth",
    "loss.log",
    "loss.png",
    "stats.jsonl",
    "options.json",
    "gen.yaml",
    "dis.yaml",
    "tensorboard/events.out.tfevents.1717000000.host.1234.0",
    ".training_state.pth.k3j_x9qa.pth",
    ".GAN_GEN_4.pth.a1b2c3d4.pth",
    ".loss.png.zz9yy8xx.png",
]
RUN_SAMPLE_FILES = [
    "gen_1_1.png",
    "gen_1_84.png",
    "gen_4_338.png",
    "progress.gif",
    "progress.mp4",
    ".gen_4_338.png.qwer1234.png",
    ".progress.gif.abcdefgh.gif",
]
# A user's own files beside them, some named much like outputs: all must stay.
USER_MODEL_FILES = [
    "notes.txt",
    "GAN_GEN_OPTIM_1.pth",
    "my_GAN_GEN_1.pth",
    "GAN_GEN_final.pth",
    "gen.yaml.bak",
    "stats.jsonl.old",
    ".training_state.pth.short.pth",
    "tensorboard/my_notes.txt",
    "old/training_state.pth",
]
USER_SAMPLE_FILES = ["gen_best.png", "gen_1_1.jpg", "progress.webm", "picked/gen_1_1.png"]


def write_files(folder: Path, names: list[str], state_step: int = 338) -> None:
    """Writes ``names`` under ``folder``, with real content where the name has a format."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "training_state.pth":
            torch.save(
                {
                    "format": "fagan-training-state",
                    "step": state_step,
                    "epoch": 4,
                    "batch": 86,
                    "generator": {"w": torch.zeros(3, 3)},
                },
                path,
            )
        elif path.name == "stats.jsonl":
            lines = [
                {"step": s, "epoch": 1 + s // 84, "batch": 1 + s % 84, "d_loss": 1.0}
                for s in range(1, 336, 5)
            ]
            path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
        elif path.suffix == ".pth" and not path.name.startswith("."):
            torch.save({"w": torch.full((2,), float(len(name)))}, path)
        else:
            path.write_bytes(f"{name}\n".encode() * 3)


def make_run(tmp_path: Path, *, user_files: bool = True) -> tuple[Path, Path]:
    model_dir, sample_dir = tmp_path / "models" / "run", tmp_path / "samples" / "run"
    write_files(model_dir, RUN_MODEL_FILES)
    write_files(sample_dir, RUN_SAMPLE_FILES)
    if user_files:
        write_files(model_dir, USER_MODEL_FILES)
        write_files(sample_dir, USER_SAMPLE_FILES)
    return model_dir, sample_dir


def digest(*folders: Path) -> dict[str, str]:
    """Every file under the folders (lock files aside) -> its SHA-256."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        if folder.exists()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def start_holder(folder: Path) -> subprocess.Popen:
    """Another process that takes the lock on ``folder`` and sleeps; returns once it holds it."""
    script = (
        "import sys, time\nfrom fagan.runfolder import RunLock\n"
        "RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


@pytest.fixture
def holders():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


# --------------------------------------------------------------------------- finding a run
@pytest.mark.parametrize("layout", ["missing", "empty", "user files", "extras only"])
def test_no_run_found(tmp_path: Path, layout: str) -> None:
    model_dir, sample_dir = tmp_path / "m", tmp_path / "s"
    if layout != "missing":
        model_dir.mkdir()
        sample_dir.mkdir()
    if layout == "user files":
        write_files(model_dir, USER_MODEL_FILES)
        write_files(sample_dir, USER_SAMPLE_FILES)
    if layout == "extras only":  # written by runs, but alone not a run (gen.yaml may be a config)
        write_files(model_dir, ["gen.yaml", "dis.yaml", "loss.png", ".GAN_GEN_4.pth.a1b2c3d4.pth"])
        write_files(sample_dir, ["progress.gif", "progress.mp4"])
    assert existing_run(model_dir, sample_dir) is None


@pytest.mark.parametrize(
    ("remove", "damage", "expected"),
    [
        ([], None, "step 338, epoch 4"),  # from the training state
        (["training_state.pth"], None, "step 331, epoch 4"),  # stats.jsonl's last line
        ([], "training_state.pth", "step 331, epoch 4"),  # damaged state: stats
        ([], "stats.jsonl", "step 338, epoch 4"),
        (["training_state.pth"], "stats.jsonl", "step 326, epoch 4"),  # truncated last line
        (["training_state.pth", "stats.jsonl"], None, "epoch 4"),  # only file names
    ],
)
def test_existing_run_says_how_far(
    tmp_path: Path, remove: list[str], damage: str | None, expected: str
) -> None:
    model_dir, sample_dir = make_run(tmp_path)
    for name in remove:
        (model_dir / name).unlink()
    if damage == "training_state.pth":
        (model_dir / damage).write_bytes(b"\x00not a zip" * 100)
    elif damage == "stats.jsonl":
        text = (model_dir / damage).read_text(encoding="utf-8")
        (model_dir / damage).write_text(text[:-20], encoding="utf-8")  # killed mid-line
    summary = existing_run(model_dir, sample_dir)
    assert summary is not None
    assert summary.describe() == expected
    assert summary.in_model_dir


def test_run_files_are_exactly_the_outputs(tmp_path: Path) -> None:
    model_dir, sample_dir = make_run(tmp_path)
    expected = sorted(
        [model_dir / n for n in RUN_MODEL_FILES] + [sample_dir / n for n in RUN_SAMPLE_FILES]
    )
    assert run_files(model_dir, sample_dir) == expected


# --------------------------------------------------------------------------- refusing
@pytest.mark.parametrize(
    ("model_names", "sample_names", "hint"),
    [
        (RUN_MODEL_FILES, RUN_SAMPLE_FILES, "already holds a training run (step 338, epoch 4)"),
        (["loss.log"], [], "already holds a training run (1 file)"),
        (["GAN_GEN_3.pth", "GAN_DIS_3.pth"], [], "already holds a training run (epoch 3)"),
        (["tensorboard/events.out.tfevents.1.h.2.0"], [], "already holds a training run (1 file)"),
        ([], ["gen_2_10.png"], "already holds the sample grids of another training run (epoch 2)"),
    ],
)
def test_fresh_run_over_a_run_is_refused_and_nothing_changes(
    tmp_path: Path, model_names: list[str], sample_names: list[str], hint: str
) -> None:
    model_dir, sample_dir = tmp_path / "models" / "run", tmp_path / "samples" / "run"
    write_files(model_dir, model_names + USER_MODEL_FILES)
    write_files(sample_dir, sample_names + USER_SAMPLE_FILES)
    before = digest(model_dir, sample_dir)
    with pytest.raises(FaganError) as caught:
        claim_run_folder(model_dir, sample_dir, resume=False, overwrite=False)
    message = str(caught.value)
    assert "\n" not in message and hint in message and "--overwrite" in message
    if not model_names:
        assert message.startswith(str(sample_dir)) and "--sample_dir" in message
    else:
        assert message.startswith(str(model_dir)) and "--resume" in message
    assert digest(model_dir, sample_dir) == before
    with RunLock(model_dir), RunLock(sample_dir):  # the refusal left nothing locked
        pass


# --------------------------------------------------------------------------- overwrite
@pytest.mark.parametrize("same_folder", [False, True])
def test_overwrite_removes_exactly_the_run(tmp_path: Path, same_folder: bool) -> None:
    model_dir, sample_dir = make_run(tmp_path)
    if same_folder:  # --model_dir and --sample_dir the same folder
        write_files(model_dir, RUN_SAMPLE_FILES + USER_SAMPLE_FILES)
        sample_dir = model_dir
    before = digest(model_dir, sample_dir)
    users = {str(model_dir / n) for n in USER_MODEL_FILES} | {
        str(sample_dir / n) for n in USER_SAMPLE_FILES
    }
    run = {str(model_dir / n) for n in RUN_MODEL_FILES} | {
        str(sample_dir / n) for n in RUN_SAMPLE_FILES
    }
    said: list[str] = []
    with claim_run_folder(
        model_dir, sample_dir, resume=False, overwrite=True, say=said.append
    ) as claim:
        assert {str(p) for p in claim.removed if p.name != "tensorboard"} == run
        after = digest(model_dir, sample_dir)
        assert after == {k: v for k, v in before.items() if k in users}
        assert set(after) == users
        assert claim.previous is not None and claim.previous.step == 338
        assert len(said) == 1 and f"removed {len(run)} file(s)" in said[0]
        assert "step 338, epoch 4" in said[0]
        assert (model_dir / "tensorboard").is_dir()  # it holds the user's notes
    assert existing_run(model_dir, sample_dir) is None


def test_overwrite_keeps_the_run_inputs_and_empty_tensorboard_goes(tmp_path: Path) -> None:
    model_dir, sample_dir = make_run(tmp_path, user_files=False)
    start_from = model_dir / "GAN_GEN_4.pth"
    content = start_from.read_bytes()
    removed = clear_run(model_dir, sample_dir, keep=[start_from, None])
    assert start_from.read_bytes() == content and start_from not in removed
    assert model_dir / "tensorboard" in removed and not (model_dir / "tensorboard").exists()
    assert [p.name for p in model_dir.iterdir()] == ["GAN_GEN_4.pth"]
    assert list(sample_dir.iterdir()) == []


def test_overwrite_of_an_empty_folder_removes_nothing(tmp_path: Path) -> None:
    model_dir, sample_dir = tmp_path / "new" / "m", tmp_path / "new" / "s"
    write_files(model_dir, ["gen.yaml"])  # a user's config, not a run
    said: list[str] = []
    with claim_run_folder(
        model_dir, sample_dir, resume=False, overwrite=True, say=said.append
    ) as claim:
        assert claim.previous is None and claim.removed == [] and said == []
        assert sample_dir.is_dir() and (model_dir / "gen.yaml").is_file()


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("layout", ["no folder", "run without state", "empty folder"])
def test_resume_without_a_training_state_fails(tmp_path: Path, layout: str) -> None:
    model_dir, sample_dir = tmp_path / "m", tmp_path / "s"
    if layout == "run without state":
        write_files(model_dir, ["stats.jsonl", "GAN_GEN_1.pth"])
    elif layout == "empty folder":
        model_dir.mkdir()
    before = digest(model_dir, sample_dir)
    with pytest.raises(FaganError, match=r"^--resume: no training state in .*training_state\.pth"):
        claim_run_folder(model_dir, sample_dir, resume=True, overwrite=False)
    assert digest(model_dir, sample_dir) == before
    if layout == "no folder":
        assert not model_dir.exists() and not sample_dir.exists()


def test_resume_keeps_every_file(tmp_path: Path) -> None:
    model_dir, sample_dir = make_run(tmp_path)
    before = digest(model_dir, sample_dir)
    with claim_run_folder(model_dir, sample_dir, resume=True, overwrite=False) as claim:
        assert claim.previous is not None and claim.previous.describe() == "step 338, epoch 4"
        assert claim.removed == []
        assert all(lock.held for lock in claim.locks) and len(claim.locks) == 2
    assert digest(model_dir, sample_dir) == before


@pytest.mark.parametrize("exists", [False, True])
def test_resume_and_overwrite_together_fail_before_anything(tmp_path: Path, exists: bool) -> None:
    model_dir, sample_dir = make_run(tmp_path) if exists else (tmp_path / "m", tmp_path / "s")
    before = digest(model_dir, sample_dir)
    with pytest.raises(FaganError, match="--resume and --overwrite"):
        claim_run_folder(model_dir, sample_dir, resume=True, overwrite=True)
    assert digest(model_dir, sample_dir) == before
    assert exists or not model_dir.exists()
    assert not (model_dir / LOCK_NAME).exists()


# --------------------------------------------------------------------------- the lock
@pytest.mark.parametrize("held", ["model_dir", "sample_dir"])
def test_a_folder_in_use_is_refused_with_the_holders_pid(
    tmp_path: Path, holders: list, held: str
) -> None:
    model_dir, sample_dir = make_run(tmp_path)
    holder = start_holder(model_dir if held == "model_dir" else sample_dir)
    holders.append(holder)
    before = digest(model_dir, sample_dir)
    for resume, overwrite in ((False, False), (True, False), (False, True)):
        with pytest.raises(FaganError) as caught:
            claim_run_folder(model_dir, sample_dir, resume=resume, overwrite=overwrite)
        message = str(caught.value)
        folder = model_dir if held == "model_dir" else sample_dir
        assert message.startswith(f"--{held} {folder} is in use by another fagan train ")
        assert f"(pid {holder.pid} on host {socket.gethostname()}, since " in message
        assert "\n" not in message
        assert digest(model_dir, sample_dir) == before  # --overwrite removed nothing
    if held == "sample_dir":  # the model folder's lock was given back
        with RunLock(model_dir):
            pass


def test_a_killed_holders_lock_is_taken(tmp_path: Path, holders: list) -> None:
    model_dir, sample_dir = tmp_path / "m", tmp_path / "s"
    model_dir.mkdir()
    holder = start_holder(model_dir)
    holders.append(holder)
    with pytest.raises(FaganError, match=f"pid {holder.pid} "):
        claim_run_folder(model_dir, sample_dir, resume=False, overwrite=False)
    holder.send_signal(signal.SIGKILL)  # no clean-up: the file still names the dead pid
    holder.wait(timeout=30)
    assert f"pid {holder.pid}\n" in (model_dir / LOCK_NAME).read_text()
    with claim_run_folder(model_dir, sample_dir, resume=False, overwrite=False) as claim:
        assert all(lock.held for lock in claim.locks)
        text = (model_dir / LOCK_NAME).read_text()
        assert text.startswith(f"pid {os.getpid()}\nhost {socket.gethostname()}\nsince ")
    assert (model_dir / LOCK_NAME).read_text() == ""  # released: stays, emptied


def test_lock_is_released_on_exit_and_on_error(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    lock = RunLock(folder)
    with lock:
        assert lock.held
        with pytest.raises(FaganError, match=f"pid {os.getpid()} "):  # a second open conflicts
            RunLock(folder).acquire()
    assert not lock.held
    with pytest.raises(RuntimeError), RunLock(folder):
        raise RuntimeError("a failing run")
    probe = subprocess.run(  # another process can take it now
        [
            sys.executable,
            "-c",
            "import sys\nfrom fagan.runfolder import RunLock\n"
            "RunLock(sys.argv[1]).acquire()\nprint('ok')",
            str(folder),
        ],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr


@pytest.mark.parametrize("flag", ["--model_dir", "--sample_dir"])
def test_a_folder_that_cannot_be_created_is_one_line(tmp_path: Path, flag: str) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    model_dir = blocker / "m" if flag == "--model_dir" else tmp_path / "m"
    sample_dir = blocker / "s" if flag == "--sample_dir" else tmp_path / "s"
    with pytest.raises(FaganError, match=f"^{flag}: cannot create folder "):
        claim_run_folder(model_dir, sample_dir, resume=False, overwrite=False)
    if flag == "--sample_dir":
        with RunLock(model_dir):  # the model folder's lock was given back
            pass


# --------------------------------------------------------------------------- a real run
@pytest.mark.slow
def test_overwrite_removes_everything_a_real_run_wrote(tmp_path: Path, faces32: Path) -> None:
    from fagan.train import TrainOptions, train

    model_dir, sample_dir = tmp_path / "models", tmp_path / "samples"
    write_files(model_dir, ["notes.txt"])
    train(
        TrainOptions(
            images_dir=str(faces32),
            generator_config="small32",
            discriminator_config="small32",
            model_dir=str(model_dir),
            sample_dir=str(sample_dir),
            batch_size=8,
            num_workers=0,
            device="cpu",
            tensorboard=True,
            feedback_factor=1,
            num_epochs=1,
            max_steps=2,
            num_samples=4,
            seed=0,
        )
    )
    written = {
        p
        for p in [*model_dir.rglob("*"), *sample_dir.rglob("*")]
        if p.is_file() and p.name != LOCK_NAME
    }  # the claim's locks, not outputs
    assert set(run_files(model_dir, sample_dir)) == written - {model_dir / "notes.txt"}
    assert any(p.parent.name == "tensorboard" for p in written)
    summary = existing_run(model_dir, sample_dir)
    assert summary is not None and summary.describe() == "step 2, epoch 1"
    with pytest.raises(FaganError, match="already holds a training run"):
        claim_run_folder(model_dir, sample_dir, resume=False, overwrite=False)
    with claim_run_folder(model_dir, sample_dir, resume=False, overwrite=True):
        assert sorted(p.name for p in model_dir.iterdir()) == [LOCK_NAME, "notes.txt"]
        assert [p.name for p in sample_dir.iterdir()] == [LOCK_NAME]
