"""Command-line plumbing: one-line errors with status 2, one-line warnings, entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fagan.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"{prog}: error: "), err
    return err[0]


def test_output_path_that_is_a_file_is_a_one_line_error(tmp_path, capsys) -> None:
    (tmp_path / "loss.log").write_text("1.0\t2.0\n0.5\t1.5\n")
    (tmp_path / "afile").write_text("")
    code = main(
        [
            "plot-losses",
            "--loss_file",
            str(tmp_path / "loss.log"),
            "--plot_file",
            str(tmp_path / "afile" / "loss.png"),
        ]
    )
    assert code == 2
    assert "afile" in one_error_line(capsys, "fagan plot-losses")


def test_unknown_flag_is_named_by_the_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--no_such_flag", "3"])
    assert info.value.code == 2
    line = one_error_line(capsys, "fagan train")
    assert "unrecognized arguments: --no_such_flag 3" in line


def test_channels_last_flags_are_exclusive(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--channels_last", "--no_channels_last"])
    assert info.value.code == 2
    assert "not allowed with argument" in one_error_line(capsys, "fagan train")


def test_missing_subcommand_and_bad_choice(capsys) -> None:
    for argv in ([], ["bogus"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        one_error_line(capsys, "fagan")


def test_warnings_are_one_line_named_by_the_command(tmp_path, faces32) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for face in sorted(faces32.iterdir())[:20]:
        (images / face.name).write_bytes(face.read_bytes())
    (images / "broken.png").write_bytes(b"")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fagan",
            "train",
            "--images_dir",
            str(images),
            "--generator_config",
            "small32",
            "--discriminator_config",
            "small32",
            "--batch_size",
            "8",
            "--max_steps",
            "1",
            "--num_workers",
            "0",
            "--no_tensorboard",
            "--device",
            "cpu",
            "--model_dir",
            str(tmp_path / "m"),
            "--sample_dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert any(line.startswith("fagan train: warning: skipped 1 of 21 files") for line in warnings)
    assert "warnings.warn" not in err and "UserWarning" not in err


@pytest.mark.parametrize(
    "entry", [[sys.executable, "-m", "fagan"], [sys.executable, str(REPO / "train.py")]]
)
def test_entry_points_reject_bad_values_with_status_2(entry) -> None:
    argv = entry + (["train"] if entry[-1] == "fagan" else []) + ["--batch_size", "0"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch_size: expected a whole number >= 1, got '0'" in lines[0]
    assert "Traceback" not in result.stderr


def test_training_with_loader_workers_exits_when_done(tmp_path) -> None:
    # loader workers ignore SIGTERM; without an explicit shutdown the interpreter's exit
    # handler (terminate, then join) would wait for them forever
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fagan",
            "train",
            "--max_steps",
            "2",
            "--batch_size",
            "8",
            "--num_workers",
            "2",
            "--no_tensorboard",
            "--device",
            "cpu",
            "--model_dir",
            str(tmp_path / "m"),
            "--sample_dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "stopped by --max_steps at step 2 of 4,800 planned (epoch 1 of 12)" in result.stderr


def test_resume_takes_the_runs_own_options(tmp_path, faces32, capsys) -> None:
    models, samples = tmp_path / "m", tmp_path / "s"
    where = ["--model_dir", str(models), "--sample_dir", str(samples)]
    # 100 faces, 16% of them per epoch at batch 8: 2 batches per epoch
    assert (
        main(
            [
                "train",
                "--images_dir",
                str(faces32),
                "--generator_config",
                "small32",
                "--discriminator_config",
                "small32",
                "--batch_size",
                "8",
                "--data_percentage",
                "16",
                "--num_epochs",
                "1",
                "--num_workers",
                "0",
                "--no_tensorboard",
                "--device",
                "cpu",
                "--num_samples",
                "4",
                *where,
            ]
        )
        == 0
    )
    capsys.readouterr()

    # what would not continue the run exactly is refused, the default value too
    for flag, value, saved in [
        ("--batch_size", "16", "8"),
        ("--batch_size", "32", "8"),
        ("--images_dir", str(tmp_path), repr(str(faces32))),
    ]:
        assert main(["train", "--resume", *where, flag, value]) == 2
        value = repr(value) if flag == "--images_dir" else value
        assert one_error_line(capsys, "fagan train") == (
            f"fagan train: error: {flag} {value} differs from the run's {saved}: a resumed run "
            f"keeps its {flag} to continue exactly (leave it out, or start a new run in another "
            "--model_dir)"
        )

    # a longer run is applied, with a notice; it trains on the same folder
    assert main(["train", "--resume", *where, "--num_epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "note: --num_epochs 2 replaces the run's 1" in err
    assert f"resuming from {models / 'training_state.pth'}: epoch 2, batch 0, step 2" in err
    assert "100 images, 2 batches per epoch" in err and "embedded demo" not in err
    assert "done: 4 steps" in err
    assert (models / "GAN_GEN_2.pth").is_file()

    # with nothing but where the run is: the same folder, nothing left to train
    assert main(["train", "--resume", *where]) == 0
    err = capsys.readouterr().err
    assert "100 images, 2 batches per epoch" in err and "done: 4 steps" in err
    assert json.loads((models / "options.json").read_text())["images_dir"] == str(faces32)


@pytest.mark.parametrize("command", ["train", "generate", "plot-losses", "make-gif"])
def test_declared_subcommands_give_every_flag_help_text(command) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert flags
    for action in flags:
        assert action.help, action.option_strings


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--latents", __file__, "--num_samples", "3"],
            "--latents and --num_samples exclude each other",
        ),
        (
            ["--latents", __file__, "--truncation", "0.5"],
            "--truncation applies to sampled latents, not to a --latents file",
        ),
    ],
)
def test_generate_checks_its_options_together(tmp_path, capsys, extra, message) -> None:
    code = main(
        ["generate", "--generator_file", __file__, "--output_dir", str(tmp_path / "out"), *extra]
    )
    assert code == 2
    assert message in one_error_line(capsys, "fagan generate")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command", [["train"], ["generate", "--generator_file", __file__, "--output_dir", "out"]]
)
def test_seeds_beyond_64_bits_are_one_line_errors(command, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--seed", str(2**64)])
    assert info.value.code == 2
    assert "--seed: expected a whole number in [0, 2^63)" in one_error_line(
        capsys, f"fagan {command[0]}"
    )


def test_an_internal_error_is_one_line_and_a_crash_log(tmp_path) -> None:
    # torch failing inside training (not a bad input): one line naming the error and the log
    script = (
        "import sys, torch\n"
        "from fagan.cli import main\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('randn broke ' + 'x' * 2000)\n"
        "torch.randn = broken\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "train",
            "--max_steps",
            "1",
            "--no_tensorboard",
            "--device",
            "cpu",
            "--num_workers",
            "0",
            "--model_dir",
            str(tmp_path / "m"),
            "--sample_dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = lines[0]
    assert line.startswith("fagan train: error: internal error: RuntimeError: randn broke xxx")
    assert len(line) < 600  # the message is bounded
    log = Path(line.rsplit("; details in ", 1)[1])
    try:
        text = log.read_text()
        assert "Traceback" in text and "randn broke" in text
        assert "fagan/train.py" in text  # where in fagan it failed
    finally:
        log.unlink()
