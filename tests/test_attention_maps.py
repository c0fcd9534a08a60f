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
    query_cell,
    query_heatmap,
    render_layer,
)
from fagan.cli import main
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
            lambda _m, args, name=name: layer_inputs.__setitem__(name, args[0].detach()))
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


def _check_maps(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                grids: dict[str, int]) -> None:
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
    assert main(["attention", "--generator_file", str(state), "--seed", "11",
                 "--output_dir", str(out), "--save_maps", str(maps_file),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention_model.0.png",
                                                     "attention_model.2.png"]
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
    _check_maps(saved, _independent_maps(generator, latent),
                {"model.0": 4 * 4, "model.2": 16 * 16})
    # the library function gives the same maps, with the batch dimension
    for name, attention in attention_maps(generator, latent).items():
        assert attention.shape[0] == 1 and torch.equal(attention[0], saved[name])


def test_discriminator_attention_on_a_real_image(run: Path, tmp_path: Path) -> None:
    models, face = run / "models", run / "faces32" / "face_007.png"
    out, maps_file = tmp_path / "figs", tmp_path / "maps.pt"
    assert main(["attention", "--discriminator_file", str(models / "GAN_DIS_1.pth"),
                 "--discriminator_config", "small32", "--image", str(face),
                 "--query", "3,4", "--query", "30,20", "--output_dir", str(out),
                 "--save_maps", str(maps_file), "--device", "cpu"]) == 0
    assert [p.name for p in out.iterdir()] == ["attention_model.1.png"]
    Image.open(out / "attention_model.1.png").verify()

    # the training state holds the same discriminator and its config
    out2 = tmp_path / "figs2"
    assert main(["attention", "--discriminator_file", str(models / "training_state.pth"),
                 "--image", str(face), "--output_dir", str(out2),
                 "--save_maps", str(tmp_path / "maps2.pt"), "--device", "cpu"]) == 0
    saved = torch.load(maps_file, weights_only=True)
    assert torch.equal(saved["model.1"], torch.load(tmp_path / "maps2.pt",
                                                    weights_only=True)["model.1"])

    # the image as PIL reads it (32x32 already: fagan's decoding only rescales it)
    pixels = np.asarray(Image.open(face).convert("RGB"), dtype=np.float32)
    image = torch.from_numpy(pixels / 255 * 2 - 1).permute(2, 0, 1)[None]
    discriminator = load_discriminator(models / "GAN_DIS_1.pth", "small32")
    _check_maps(saved, _independent_maps(discriminator, image), {"model.1": 8 * 8})


def test_query_positions_map_to_each_layers_output_grid() -> None:
    # a query at image pixel (x, y) is position (floor(y H_l / S), floor(x W_l / S))
    assert query_cell((31, 0), (32, 32), (4, 4)) == (0, 3)
    assert query_cell((0, 31), (32, 32), (4, 4)) == (3, 0)
    assert query_cell((16, 7), (32, 32), (16, 16)) == (3, 8)
    assert query_cell((7, 16), (32, 32), (8, 8)) == (4, 1)
    assert default_queries(32) == [(x, y) for y in (5, 16, 26) for x in (5, 16, 26)]
    assert default_queries(32, per_side=1) == [(16, 16)]

    # with attention that looks only at itself, each query's heat map peaks in its own cell
    grid = (4, 4)
    layer = LayerAttention("model.0", "full attention", torch.eye(16)[None], grid, 0.25)
    for x, y in [(0, 0), (31, 31), (13, 22), (20, 3)]:
        row, col = query_cell((x, y), (32, 32), grid)
        heat = query_heatmap(layer.maps[0], grid, (row, col), (32, 32))
        assert heat.shape == (32, 32)
        peak_y, peak_x = divmod(int(heat.argmax()), 32)
        assert (peak_y // 8, peak_x // 8) == (row, col)
    fig = render_layer(np.zeros((32, 32, 3), np.uint8), layer, [(0, 0), (31, 31), (5, 9)])
    assert len(fig.axes) == 3
    assert "g = 0.25" in fig._suptitle.get_text()
    assert "4x4 positions" in fig._suptitle.get_text()


def test_capture_needs_attention_layers() -> None:
    from fagan.errors import FaganError

    with pytest.raises(FaganError, match="no attention layers"):
        capture_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), torch.zeros(1, 3, 8, 8))


def test_attention_user_errors(run: Path, tmp_path: Path, capsys) -> None:
    models = run / "models"
    state, dis = str(models / "training_state.pth"), str(models / "GAN_DIS_1.pth")
    out = str(tmp_path / "o")

    def one_line() -> str:
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("fagan attention: error: "), err
        return err

    assert main(["attention", "--generator_file", state, "--query", "32,0",
                 "--output_dir", out]) == 2
    assert "query 32,0 is outside the 32x32 image" in one_line()
    assert main(["attention", "--discriminator_file", dis, "--discriminator_config",
                 "small32", "--image", str(tmp_path / "missing.png"), "--output_dir", out]) == 2
    assert "image not found" in one_line()
    assert main(["attention", "--discriminator_file", dis, "--discriminator_config",
                 "small32", "--output_dir", out]) == 2
    assert "--image" in one_line()
    assert main(["attention", "--discriminator_file", dis, "--image",
                 str(run / "faces32" / "face_000.png"), "--output_dir", out]) == 2
    assert "--discriminator_config" in one_line()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main(["attention", "--discriminator_file", dis, "--discriminator_config",
                 "small32", "--image", str(tmp_path / "broken.png"), "--output_dir", out]) == 2
    assert "cannot read image" in one_line()
    for argv in (["--generator_file", str(tmp_path / "missing.pth")],
                 ["--generator_file", state, "--query", "3"],
                 ["--generator_file", state, "--discriminator_file", dis]):
        with pytest.raises(SystemExit) as exit_info:
            main(["attention", *argv, "--output_dir", out])
        assert exit_info.value.code == 2
        one_line()
    assert not Path(out).exists()  # nothing written by any failed command


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
    assert main(["attention", "--generator_file", str(tmp_path / "GAN_GEN_1.pth"),
                 "--generator_config", "sagan64", "--seed", "2", "--query", "63,0",
                 "--output_dir", str(out), "--save_maps", str(maps_file),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention_model.3.png",
                                                     "attention_model.5.png"]
    layers, _ = capture_layers(generator, make_latents(1, 128, 2))
    assert [(layer.kind, layer.grid) for layer in layers.values()] == [
        ("self-attention", (16, 16)), ("self-attention", (32, 32))]
    _check_maps(torch.load(maps_file, weights_only=True),
                _independent_maps(generator, make_latents(1, 128, 2)),
                {"model.3": 16 * 16, "model.5": 32 * 32})
