"""The training options: one declaration for the flags, their help, and every check.

The command line and the library must accept the same values and say the same thing
about a bad one; a resumed run takes the saved run's options.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import fields

import pytest

from fagan.cli import build_parser, main, run_command
from fagan.errors import FaganError
from fagan.options import add_arguments, given_options, quote
from fagan.train_options import (
    BEYOND,
    ORIGINAL,
    RESUME_MAY_CHANGE,
    TrainOptions,
    default_num_workers,
    resumed_options,
)


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainOptions)
    return parser


def _flags(name: str) -> list[str]:
    """The flags of option ``name``."""
    f = next(f for f in fields(TrainOptions) if f.name == name)
    negative = f.metadata["negative_flag"]
    if f.default is True:
        return [f"--{negative}"]
    return [f"--{name}"] + ([f"--{negative}"] if negative else [])


def test_every_option_is_a_flag_with_help_text() -> None:
    actions = {
        flag: action
        for action in _train_parser()._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }
    expected = [flag for f in fields(TrainOptions) for flag in _flags(f.name)]
    assert sorted(actions) == sorted(expected)
    for flag, action in actions.items():
        assert action.help and len(action.help) > 10, flag


@pytest.mark.parametrize("entry", ["fagan train", "train.py"])
def test_help_lists_both_groups_and_the_defaults(entry: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        if entry == "train.py":
            run_command("train", ["--help"], prog="train.py")
        else:
            main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert f"{ORIGINAL}:" in text and f"{BEYOND}:" in text
    listed = text.index(f"{ORIGINAL}:")
    assert listed < text.index("--batch_size BATCH_SIZE images") < text.index(f"{BEYOND}:")
    for flag, default in [
        ("--batch_size BATCH_SIZE images per step", "32"),
        ("--g_lr G_LR generator learning rate", "0.0001"),
        ("--d_lr D_LR discriminator learning rate", "0.0004"),
        ("--seed SEED seed of", "0"),
    ]:
        start = text.index(flag)
        assert f"(default: {default})" in text[start : text.index("--", start + 2)], flag
    for flag in ("--no_tensorboard", "--channels_last", "--no_channels_last", "--resume"):
        assert f" {flag} " in text


def _kind_what(name: str) -> str:
    return next(f for f in fields(TrainOptions) if f.name == name).metadata["kind"].what


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("batch_size", "0", 0),
        ("num_epochs", "-2", -2),
        ("g_lr", "-0.001", -0.001),
        ("d_lr", "nan", math.nan),
        ("data_percentage", "100.5", 100.5),
        ("seed", str(2**64), 2**64),
        ("seed", "-1", -1),
        ("ema_decay", "1", 1.0),
        ("precision", "fp8", "fp8"),
        ("num_workers", "-1", -1),
    ],
)
def test_a_bad_value_is_named_alike_by_the_flags_and_the_library(
    name: str, text: str, value: object, capsys
) -> None:
    what = _kind_what(name)
    with pytest.raises(SystemExit) as info:
        main(["train", f"--{name}", text])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"fagan train: error: argument --{name}: expected {what}, got {quote(text)} (see --help)"
    ]
    with pytest.raises(FaganError) as library:
        TrainOptions(**{name: value}).validate()
    assert str(library.value) == f"--{name} must be {what}, got {quote(value)}"


@pytest.mark.parametrize(
    ("values", "argv", "message"),
    [
        (
            {"start": 5, "num_epochs": 3},
            ["--start", "5", "--num_epochs", "3"],
            "--start 5 is after --num_epochs 3: nothing to train",
        ),
        (
            {"eval_num_samples": 1},
            ["--eval_num_samples", "1"],
            "--eval_num_samples must be a whole number >= 2, got 1",
        ),
        ({"loss_function": "nope"}, ["--loss_function", "nope"], "unknown loss function 'nope'"),
        (
            {"augment": "colour"},
            ["--augment", "colour"],
            "unknown augmentation 'colour' in policy 'colour'",
        ),
    ],
)
def test_checks_of_the_options_together_say_the_same_everywhere(
    values: dict, argv: list[str], message: str, capsys, tmp_path
) -> None:
    with pytest.raises(FaganError) as library:
        TrainOptions(**values).validate()
    assert message in str(library.value)
    out = ["--model_dir", str(tmp_path / "m"), "--sample_dir", str(tmp_path / "s")]
    assert main(["train", *argv, *out]) == 2
    assert capsys.readouterr().err.splitlines() == [f"fagan train: error: {library.value}"]
    assert not (tmp_path / "m").exists()


def test_augment_none_is_valid() -> None:
    TrainOptions(augment="none").validate()
    TrainOptions(augment=" None ").validate()


def test_the_flags_given_are_known_apart_from_defaults() -> None:
    args = build_parser().parse_args(
        ["train", "--batch_size", "32", "--no_tensorboard", "--no_channels_last", "--seed", "4"]
    )
    assert given_options(args) == {"batch_size", "tensorboard", "channels_last", "seed"}
    assert (args.batch_size, args.tensorboard, args.channels_last) == (32, False, False)
    assert given_options(build_parser().parse_args(["train"])) == frozenset()


def test_default_num_workers_fits_the_machine() -> None:
    assert default_num_workers(in_memory=True) == 0
    cpus = len(os.sched_getaffinity(0))
    workers = default_num_workers(in_memory=False)
    assert workers == max(0, min(4, cpus - 1))  # never as many as the CPUs: none left over
    assert TrainOptions().num_workers is None  # derived when the run is set up


# ----------------------------------------------------------------------------- resuming
SAVED = {f.name: f.default for f in fields(TrainOptions)} | {
    "images_dir": "faces",
    "batch_size": 8,
    "num_epochs": 2,
    "seed": 3,
    "max_steps": 10,
    "generator_config": "small32",
    "generator_file": "start.pth",
}


def test_a_resumed_run_takes_the_saved_options() -> None:
    opts, notices = resumed_options(TrainOptions(resume=True, model_dir="m"), SAVED, set())
    assert (
        opts.images_dir,
        opts.batch_size,
        opts.num_epochs,
        opts.seed,
        opts.max_steps,
        opts.generator_config,
    ) == ("faces", 8, 2, 3, 10, "small32")
    assert opts.model_dir == "m" and opts.resume and notices == []
    assert opts.generator_file is None  # the state holds the weights; the file may be gone


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_epochs", 5),
        ("max_steps", 20),
        ("time_limit", 60.0),
        ("feedback_factor", 3),
        ("checkpoint_factor", 2),
        ("num_workers", 1),
        ("device", "cpu"),
        ("tensorboard", False),
        ("sample_dir", "other"),
        ("eval_every", 100),
        ("compile", True),
    ],
)
def test_a_resumed_run_applies_where_and_how_long_with_a_notice(name: str, value: object) -> None:
    assert name in RESUME_MAY_CHANGE
    opts, notices = resumed_options(TrainOptions(resume=True, **{name: value}), SAVED, {name})
    assert getattr(opts, name) == value and opts.batch_size == 8
    assert len(notices) == 1 and notices[0].startswith(f"--{name} ")
    assert "replaces the run's" in notices[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_size", 16),
        ("batch_size", 32),
        ("images_dir", "other"),
        ("seed", 0),
        ("loss_function", "hinge"),
        ("generator_config", "fagan64"),
        ("latent_size", 64),
        ("precision", "bf16"),
        ("n_critic", 2),
        ("augment", "color"),
        ("ema_decay", 0.0),
        ("g_lr", 0.001),
        ("d_lr", 0.001),
        ("data_percentage", 50.0),
        ("num_samples", 16),
        ("start", 2),
    ],
)
def test_a_resumed_run_refuses_what_would_break_exactness(name: str, value: object) -> None:
    with pytest.raises(FaganError) as info:
        resumed_options(TrainOptions(resume=True, **{name: value}), SAVED, {name})
    message = str(info.value)
    assert message.startswith(f"--{name} ") and "differs from the run's" in message
    assert "\n" not in message


def test_a_resumed_run_refuses_starting_weights() -> None:
    with pytest.raises(FaganError, match="--generator_file sets the weights a run starts from"):
        resumed_options(
            TrainOptions(resume=True, generator_file="other.pth"), SAVED, {"generator_file"}
        )


def test_an_option_given_with_the_saved_value_is_no_change() -> None:
    opts, notices = resumed_options(
        TrainOptions(resume=True, batch_size=8, num_epochs=2), SAVED, {"batch_size", "num_epochs"}
    )
    assert (opts.batch_size, opts.num_epochs, notices) == (8, 2, [])


def test_a_state_without_saved_options_resumes_with_the_given_ones() -> None:
    opts = TrainOptions(resume=True, batch_size=4)
    assert resumed_options(opts, None, {"batch_size"}) == (opts, [])
