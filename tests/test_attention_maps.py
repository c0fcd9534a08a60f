"""`fagan attention`: one figure per attention layer, and maps that are the layers' own.

The saved maps are checked against an independent recomputation, softmax(Q^T K) from each
layer's own query and key convolutions applied to the input the layer received (grabbed
with a forward pre-hook), not against the fused path the layers run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_small_run
from PIL import Image

from fagan.attention_maps import (
    LayerAttention,
    attention_maps,
    capture_layers,
    default_queries,
    load_discriminator,
    load_image,
    query_cell,
    query_heatmap,
    render_layer,
)
from fagan.cli import main
from fagan.errors import FaganError
from fagan.generate import load_generator, make_latents
from fagan.layers.attention import attention_layers


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory of a 2-step small32 run on 100 real 32x32 faces."""
    return train_small_run(tmp_path_factory.mktemp("run"), max_steps=2, seed=5)


def _independent_maps(model: torch.nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """softmax_j(q_i . k_j) from each layer's query_conv/key_conv on its captured input."""
    layer_inputs: dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda _m, args, name=name: layer_inputs.__setitem__(name, args[0].detach())
        )
        for name, layer in attention_layers(model).items()
    ]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    maps = {}
    with torch.no_grad():
        for name, layer in attention_layers(model).items():
            x = layer_inputs[name].double()
            q = copy.deepcopy(layer.query_conv).double()(x).flatten(2)  # (B, Cq, N)
            k = copy.deepcopy(layer.key_conv).double()(x).flatten(2)
            maps[name] = torch.softmax(q.transpose(1, 2) @ k, dim=-1)[0].float()
    return maps


def _check_maps(
    saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], grids: dict[str, int]
) -> None:
    assert set(saved) == set(expected) == set(grids)
    for name, attention in saved.items():
        n = grids[name]
        assert attention.shape == (n, n), name
        assert torch.allclose(attention.sum(-1), torch.ones(n), atol=1e-5), name
        assert (attention >= 0).all()
        assert torch.allclose(attention, expected[name], atol=1e-5, rtol=0), name
        # barely trained layers attend almost uniformly (all entries near 1/N), so also
        # ask the error to be tiny next to the map's own departure from uniform
        structure = (expected[name] - 1 / n).abs().max()
        assert structure > 3e-5, name
        assert (attention - expected[name]).abs().max() < 1e-3 * structure, name


def test_generator_attention_figures_and_maps(run: Path, tmp_path: Path, capsys) -> None:
    state = run / "models" / "training_state.pth"
    out, maps_file = tmp_path / "figs", tmp_path / "maps.pt"
    assert (
        main(
            [
                "attention",
                "--generator_file",
                str(state),
                "--seed",
                "11",
                "--output_dir",
                str(out),
                "--save_maps",
                str(maps_file),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "attention_model.0.png",
        "attention_model.2.png",
    ]
    for path in out.iterdir():
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200
            assert np.asarray(image.convert("L")).std() > 10  # something is drawn
    generator = load_generator(state)
    printed = capsys.readouterr().out
    for name, gamma in generator.gammas().items():
        assert f"{name}: full attention" in printed and f"g = {gamma:.4g}" in printed

    saved = torch.load(maps_file, weights_only=True)
    latent = make_latents(1, 128, 11)
    _check_maps(saved, _independent_maps(generator, latent), {"model.0": 4 * 4, "model.2": 16 * 16})
    # the library function gives the same maps, with the batch dimension
    for name, attention in attention_maps(generator, latent).items():
        assert attention.shape[0] == 1 and torch.equal(attention[0], saved[name])


def test_discriminator_attention_on_a_real_image(run: Path, tmp_path: Path) -> None:
    models, face = run / "models", run / "faces32" / "face_007.png"
    out, maps_file = tmp_path / "figs", tmp_path / "maps.pt"
    assert (
        main(
            [
                "attention",
                "--discriminator_file",
                str(models / "GAN_DIS_1.pth"),
                "--discriminator_config",
                "small32",
                "--image",
                str(face),
                "--query",
                "3,4",
                "--query",
                "30,20",
                "--output_dir",
                str(out),
                "--save_maps",
                str(maps_file),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert [p.name for p in out.iterdir()] == ["attention_model.1.png"]
    Image.open(out / "attention_model.1.png").verify()

    # the training state holds the same discriminator and its config
    out2 = tmp_path / "figs2"
    assert (
        main(
            [
                "attention",
                "--discriminator_file",
                str(models / "training_state.pth"),
                "--image",
                str(face),
                "--output_dir",
                str(out2),
                "--save_maps",
                str(tmp_path / "maps2.pt"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    saved = torch.load(maps_file, weights_only=True)
    assert torch.equal(
        saved["model.1"], torch.load(tmp_path / "maps2.pt", weights_only=True)["model.1"]
    )

    # the image as PIL reads it (32x32 already: fagan's decoding only rescales it)
    pixels = np.asarray(Image.open(face).convert("RGB"), dtype=np.float32)
    image = torch.from_numpy(pixels / 255 * 2 - 1).permute(2, 0, 1)[None]
    discriminator = load_discriminator(models / "GAN_DIS_1.pth", "small32")
    _check_maps(saved, _independent_maps(discriminator, image), {"model.1": 8 * 8})


@pytest.mark.parametrize(
    ("query", "image_hw", "grid", "cell"),
    [
        ((31, 0), (32, 32), (4, 4), (0, 3)),
        ((0, 31), (32, 32), (4, 4), (3, 0)),
        ((16, 7), (32, 32), (16, 16), (3, 8)),
        ((7, 16), (32, 32), (8, 8), (4, 1)),
        ((63, 10), (32, 64), (4, 8), (1, 7)),
    ],
)
def test_query_positions_map_to_each_layers_output_grid(
    query: tuple[int, int],
    image_hw: tuple[int, int],
    grid: tuple[int, int],
    cell: tuple[int, int],
) -> None:
    # a query at image pixel (x, y) is position (floor(y H_l / H), floor(x W_l / W))
    assert query_cell(query, image_hw, grid) == cell


def test_default_queries_are_cell_centres() -> None:
    assert default_queries(32) == [(x, y) for y in (5, 16, 26) for x in (5, 16, 26)]
    assert default_queries(32, per_side=1) == [(16, 16)]
    assert default_queries(16, 32, per_side=2) == [(8, 4), (24, 4), (8, 12), (24, 12)]


def _self_looking_layer(grid: tuple[int, int] = (4, 4)) -> LayerAttention:
    """A layer whose every position attends only to itself."""
    n = grid[0] * grid[1]
    return LayerAttention("model.0", "full attention", torch.eye(n)[None], grid, 0.25)


@pytest.mark.parametrize("query", [(0, 0), (31, 31), (13, 22), (20, 3)])
def test_heatmap_of_self_attention_peaks_in_the_querys_cell(query: tuple[int, int]) -> None:
    layer = _self_looking_layer()
    row, col = query_cell(query, (32, 32), layer.grid)
    heat = query_heatmap(layer.maps[0], layer.grid, (row, col), (32, 32))
    assert heat.shape == (32, 32)
    peak_y, peak_x = divmod(int(heat.argmax()), 32)
    assert (peak_y // 8, peak_x // 8) == (row, col)


def test_render_layer_one_panel_per_query_and_the_layer_in_the_title() -> None:
    fig = render_layer(
        np.zeros((32, 32, 3), np.uint8), _self_looking_layer(), [(0, 0), (31, 31), (5, 9)]
    )
    assert len(fig.axes) == 3
    title = fig._suptitle.get_text()
    assert title.startswith("model.0: full attention")
    assert "4x4 positions" in title and "g = 0.25" in title
    with pytest.raises(FaganError, match="no query positions"):
        render_layer(np.zeros((32, 32, 3), np.uint8), _self_looking_layer(), [])


@pytest.mark.parametrize(
    ("queries", "title"),
    [
        ([(3, 4)], None),  # one narrow panel: the default title is wider than the figure
        (default_queries(32), None),
        ([(3, 4)], "a custom title that is much longer than one panel of the figure is wide"),
    ],
)
def test_rendered_titles_fit_inside_the_figure(
    queries: list[tuple[int, int]], title: str | None
) -> None:
    layer = LayerAttention(
        "model.12.attention", "self-attention", torch.eye(64)[None], (8, 8), 0.123456
    )
    fig = render_layer(np.zeros((32, 32, 3), np.uint8), layer, queries, title=title)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    texts = [fig._suptitle] + [ax.title for ax in fig.axes]
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.width > 0 and box.height > 0
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, (text.get_text(), box)
        assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1, (text.get_text(), box)
    # the whole title is drawn (wrapped onto more lines where needed), name and g included
    drawn = fig._suptitle._get_wrapped_text()
    assert " ".join(drawn.split()) == " ".join(fig._suptitle.get_text().split())
    if title is None:
        assert "model.12.attention" in drawn and "g = 0.1235" in drawn
    # panels do not overlap the title
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    assert all(ax.get_window_extent(renderer).y1 <= title_bottom for ax in fig.axes)


def _write_image(path: Path, mode: str) -> None:
    """A 40x52 (W x H) image of ``mode`` with structure in every channel, saved at ``path``."""
    rng = np.random.default_rng(len(mode))
    y, x = np.mgrid[0:52, 0:40]
    rgb = np.stack([x * 6, y * 4, (x + y) * 3], axis=-1).astype(np.uint8)
    if mode in ("RGB", "CMYK"):
        image = Image.fromarray(rgb).convert(mode)
    elif mode in ("RGBA", "LA"):
        alpha = rng.integers(0, 256, (52, 40), dtype=np.uint8)
        image = Image.fromarray(np.dstack([rgb, alpha])).convert(mode)
    elif mode == "P":
        image = Image.fromarray(rgb).quantize(16)
        image.info["transparency"] = 3
    elif mode == "L":
        image = Image.fromarray(rgb).convert("L")
    elif mode == "I;16":
        image = Image.fromarray((x * 1500 + y * 40).astype(np.uint16))
    elif mode == "F":
        image = Image.fromarray((x / 39.0 * y / 51.0).astype(np.float32))
    else:  # pragma: no cover
        raise AssertionError(mode)
    if path.suffix == ".jpg":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated: the upright image is 52 x 40
        image.save(path, exif=exif)
    else:
        image.save(path)


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("RGB", ".jpg"),
        ("CMYK", ".jpg"),
        ("RGB", ".png"),
        ("RGBA", ".png"),
        ("LA", ".png"),
        ("P", ".png"),
        ("L", ".png"),
        ("I;16", ".png"),
        ("F", ".tif"),
    ],
)
@pytest.mark.parametrize("size", [32, 48])
def test_load_image_decodes_as_the_training_data_does(
    tmp_path: Path, mode: str, suffix: str, size: int
) -> None:
    from fagan.data import ImageFolderDataset

    folder = tmp_path / "one"
    folder.mkdir()
    _write_image(folder / f"image{suffix}", mode)
    image = load_image(folder / f"image{suffix}", size)
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image.std() > 0.05
    assert torch.equal(image, ImageFolderDataset(folder, size)[0])


def test_load_image_applies_the_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.png"
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = 255  # left half white, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the white half on top
    Image.fromarray(pixels).save(path, exif=exif)
    image = load_image(path, 32)
    assert (image[:, :16] > 0.9).all() and (image[:, 16:] < -0.9).all()


def test_capture_needs_attention_layers() -> None:
    with pytest.raises(FaganError, match="no attention layers"):
        capture_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), torch.zeros(1, 3, 8, 8))


#: Bad ``fagan attention`` command lines and the error each gives; ``{state}``, ``{dis}``,
#: ``{face}`` and ``{tmp}`` are filled in with the run's files and a scratch folder.
USER_ERRORS = [
    (["--generator_file", "{state}", "--query", "32,0"], "query 32,0 is outside the 32x32 image"),
    (
        [
            "--discriminator_file",
            "{dis}",
            "--discriminator_config",
            "small32",
            "--image",
            "{tmp}/missing.png",
        ],
        "image not found",
    ),
    (["--discriminator_file", "{dis}", "--discriminator_config", "small32"], "--image"),
    (["--discriminator_file", "{dis}", "--image", "{face}"], "--discriminator_config"),
    (
        [
            "--discriminator_file",
            "{dis}",
            "--discriminator_config",
            "small32",
            "--image",
            "{tmp}/broken.png",
        ],
        "cannot read image",
    ),
    (["--generator_file", "{tmp}/missing.pth"], "missing.pth"),
    (["--generator_file", "{state}", "--query", "3"], "--query"),
    (["--generator_file", "{state}", "--discriminator_file", "{dis}"], "not allowed with"),
]


@pytest.mark.parametrize(("argv", "message"), USER_ERRORS)
def test_attention_user_errors(
    run: Path, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    models = run / "models"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    names = {
        "state": models / "training_state.pth",
        "dis": models / "GAN_DIS_1.pth",
        "face": run / "faces32" / "face_000.png",
        "tmp": tmp_path,
    }
    out = tmp_path / "o"
    try:
        status = main(
            ["attention", *(arg.format(**names) for arg in argv), "--output_dir", str(out)]
        )
    except SystemExit as exit_info:  # argparse's own checks
        status = exit_info.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fagan attention: error: "), err
    assert message in err
    assert not out.exists()  # nothing written by a failed command


def test_self_attention_layers_of_a_sagan_generator(tmp_path: Path) -> None:
    from fagan.config import load_config, resolve_config_path
    from fagan.networks import Generator

    torch.manual_seed(0)
    generator = Generator(load_config(resolve_config_path("sagan64", "gen"))).eval()
    with torch.no_grad():  # sharpen the (at initialisation almost uniform) attention
        for layer in attention_layers(generator).values():
            layer.query_conv.weight.mul_(30)
            layer.key_conv.weight.mul_(30)
            layer.gamma.fill_(0.5)
    torch.save(generator.state_dict(), tmp_path / "GAN_GEN_1.pth")
    out, maps_file = tmp_path / "figs", tmp_path / "maps.pt"
    assert (
        main(
            [
                "attention",
                "--generator_file",
                str(tmp_path / "GAN_GEN_1.pth"),
                "--generator_config",
                "sagan64",
                "--seed",
                "2",
                "--query",
                "63,0",
                "--output_dir",
                str(out),
                "--save_maps",
                str(maps_file),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "attention_model.3.png",
        "attention_model.5.png",
    ]
    layers, _ = capture_layers(generator, make_latents(1, 128, 2))
    assert [(layer.kind, layer.grid) for layer in layers.values()] == [
        ("self-attention", (16, 16)),
        ("self-attention", (32, 32)),
    ]
    _check_maps(
        torch.load(maps_file, weights_only=True),
        _independent_maps(generator, make_latents(1, 128, 2)),
        {"model.3": 16 * 16, "model.5": 32 * 32},
    )
