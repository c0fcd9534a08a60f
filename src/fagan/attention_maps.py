"""Where attention layers look: their maps for chosen query positions, as heat maps.

Every attention layer (FAGAN's full attention, SAGAN's self-attention) computes, for each
position ``i`` of ITS OUTPUT grid (``H_l x W_l``, ``N = H_l * W_l`` positions in
row-major order), a probability distribution over all ``N`` positions: row ``i`` of its
(N, N) map. A query given in image pixels ``(x, y)`` of an ``H x W`` image is the output
position ``(floor(y * H_l / H), floor(x * W_l / W))`` of a layer; its row, reshaped to
``H_l x W_l`` and upsampled to the image size, is drawn over the image.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot,
no global state, safe in threads and without a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fagan.checkpoint import (
    load_file,
    load_state_into,
    network_state_dict,
    save_file,
)
from fagan.errors import FaganError
from fagan.fileio import check_output_dir, check_output_file
from fagan.layers.attention import FullAttention, attention_layers, capture_attention
from fagan.networks import Discriminator
from fagan.sample import to_uint8

__all__ = [
    "MAX_QUERIES",
    "MAX_QUERY_GRID",
    "LayerAttention",
    "attention_maps",
    "capture_layers",
    "check_queries",
    "default_queries",
    "figure_name",
    "load_discriminator",
    "load_image",
    "query_cell",
    "query_heatmap",
    "render_layer",
    "write_attention_figures",
]

Query = tuple[int, int]

#: Most queries per side of a default query grid (``--query_grid``).
MAX_QUERY_GRID = 8
#: Most query positions in one figure (one panel each).
MAX_QUERIES = MAX_QUERY_GRID * MAX_QUERY_GRID


@dataclass
class LayerAttention:
    """One attention layer's maps from one forward pass.

    Attributes:
        name: the layer's qualified name in the model (``model.0``).
        kind: ``full attention`` or ``self-attention``.
        maps: attention probabilities (B, N, N), rows sum to 1.
        grid: the layer's output grid ``(H_l, W_l)``, ``H_l * W_l == N``.
        gamma: the layer's mixing scalar g.
    """

    name: str
    kind: str
    maps: Tensor
    grid: tuple[int, int]
    gamma: float


# --------------------------------------------------------------------------- capture
@torch.no_grad()
def capture_layers(
    model: nn.Module, inputs: Tensor, labels: Tensor | None = None
) -> tuple[dict[str, LayerAttention], Tensor]:
    """Runs ``model`` once on ``inputs`` and keeps every attention layer's map.

    Args:
        model: a network with FullAttention/SelfAttention layers (used as it is: put it
            in eval mode first for inference behaviour).
        inputs: its input batch.
        labels: the batch's class labels, for a class-conditional network.

    Returns:
        The layers by name (forward order) and the model's output.

    Raises:
        FaganError: when the model has no attention layer.
    """
    layers = attention_layers(model)
    if not layers:
        raise FaganError(f"{type(model).__name__} has no attention layers to show")
    grids: dict[str, tuple[int, int]] = {}

    def keep_grid(name: str):
        def hook(_layer: nn.Module, _inputs: object, output: Tensor) -> None:
            grids[name] = (int(output.shape[-2]), int(output.shape[-1]))

        return hook

    handles = [layer.register_forward_hook(keep_grid(name)) for name, layer in layers.items()]
    try:
        with capture_attention(model) as maps:
            output = model(inputs) if labels is None else model(inputs, labels)
            captured = dict(maps)
    finally:
        for handle in handles:
            handle.remove()
    result: dict[str, LayerAttention] = {}
    for name, layer in layers.items():
        if name not in captured or captured[name] is None:
            continue  # a layer the forward pass did not reach
        attention = captured[name].float().cpu()
        h, w = grids[name]
        if attention.shape[-1] != h * w:  # pragma: no cover - an internal invariant
            raise FaganError(
                f"{name}: attention over {attention.shape[-1]} positions, output grid {h}x{w}"
            )
        kind = "full attention" if isinstance(layer, FullAttention) else "self-attention"
        result[name] = LayerAttention(
            name, kind, attention, (h, w), float(layer.gamma.detach().float())
        )
    return result, output


def attention_maps(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """Every attention layer's probabilities (B, N, N) for ``inputs``, by layer name.

    Row ``i`` of a map is where output position ``i`` (row-major over the layer's output
    grid) looks; rows sum to 1. Computed in one forward pass with
    :func:`fagan.layers.attention.capture_attention`.
    """
    layers, _ = capture_layers(model, inputs)
    return {name: layer.maps for name, layer in layers.items()}


# --------------------------------------------------------------------------- queries
def default_queries(height: int, width: int | None = None, per_side: int = 3) -> list[Query]:
    """A ``per_side x per_side`` grid of queries at the centres of equal image cells.

    Returns ``(x, y)`` pixel positions, row by row (top to bottom, left to right).
    """
    width = height if width is None else width
    if per_side < 1:
        raise FaganError(f"the query grid needs at least 1 query per side, got {per_side}")
    if per_side > MAX_QUERY_GRID:
        raise FaganError(
            f"--query_grid must be from 1 to {MAX_QUERY_GRID} (a figure shows at "
            f"most {MAX_QUERIES} queries), got {per_side}"
        )
    xs = [min(width - 1, int((i + 0.5) * width / per_side)) for i in range(per_side)]
    ys = [min(height - 1, int((j + 0.5) * height / per_side)) for j in range(per_side)]
    return [(x, y) for y in ys for x in xs]


def check_queries(queries: Sequence[Query], image_hw: tuple[int, int]) -> list[Query]:
    """The queries, when there are 1 to :data:`MAX_QUERIES` of them, all inside the image.

    Raises:
        FaganError: no queries, too many, or one outside the image.
    """
    queries = list(queries)
    if not queries:
        raise FaganError("no query positions to show")
    if len(queries) > MAX_QUERIES:
        raise FaganError(
            f"at most {MAX_QUERIES} query positions fit in a figure, got {len(queries)}"
        )
    for query in queries:
        query_cell(query, image_hw, (1, 1))
    return queries


def query_cell(query: Query, image_hw: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """The output position ``(row, col)`` of a layer with ``grid`` for image pixel ``(x, y)``.

    ``row = floor(y * H_l / H)``, ``col = floor(x * W_l / W)``.

    Raises:
        FaganError: a query outside the image.
    """
    x, y = query
    height, width = image_hw
    if not (0 <= x < width and 0 <= y < height):
        raise FaganError(
            f"query {x},{y} is outside the {width}x{height} image "
            f"(x in 0..{width - 1}, y in 0..{height - 1})"
        )
    return (y * grid[0]) // height, (x * grid[1]) // width


def query_heatmap(
    attention: Tensor, grid: tuple[int, int], cell: tuple[int, int], image_hw: tuple[int, int]
) -> Tensor:
    """The row of ``attention`` (N, N) for ``cell``, as an ``H x W`` map over the image.

    The ``H_l x W_l`` row is upsampled bilinearly (``align_corners=False``) to the image.
    """
    row = attention[cell[0] * grid[1] + cell[1]].reshape(1, 1, *grid).float()
    return F.interpolate(row, size=image_hw, mode="bilinear", align_corners=False)[0, 0]


# --------------------------------------------------------------------------- figures
def figure_name(layer_name: str) -> str:
    """File name of a layer's figure: ``attention_<layer name>.png``."""
    return f"attention_{layer_name}.png"


def render_layer(
    image: Tensor | np.ndarray,
    layer: LayerAttention,
    queries: Sequence[Query],
    *,
    index: int = 0,
    columns: int | None = None,
    title: str | None = None,
):
    """One figure: the image with the layer's attention for each query as a heat map.

    Args:
        image: the image, uint8 ``H x W x 3`` (or float (3, H, W) in [-1, 1]).
        layer: the layer's maps and grid (from :func:`capture_layers`).
        queries: ``(x, y)`` image pixels; each gets a panel with the query marked (a cross
            at the pixel, a box around its output cell).
        index: which image of the batch the maps belong to.
        columns: panels per row (default: a square-ish layout).
        title: text above the panels; by default the layer's name, kind, grid and g.

    Returns:
        A :class:`matplotlib.figure.Figure` on an Agg canvas.

    Raises:
        FaganError: a query outside the image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if isinstance(image, Tensor):
        image = (
            to_uint8(image).permute(1, 2, 0).numpy()
            if image.is_floating_point()
            else image.cpu().numpy()
        )
    image = np.asarray(image)
    height, width = image.shape[:2]
    check_queries(queries, (height, width))
    cells = [query_cell(q, (height, width), layer.grid) for q in queries]
    cols = columns or int(np.ceil(np.sqrt(len(queries))))
    rows = int(np.ceil(len(queries) / cols))
    # constrained layout keeps the (wrapped) suptitle and the panel titles inside the figure
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    h_l, w_l = layer.grid
    cell_w, cell_h = width / w_l, height / h_l
    attention = layer.maps[index]
    for k, ((x, y), cell) in enumerate(zip(queries, cells, strict=True)):
        ax = fig.add_subplot(rows, cols, k + 1)
        heat = query_heatmap(attention, layer.grid, cell, (height, width)).numpy()
        ax.imshow(image, interpolation="nearest")
        ax.imshow(
            heat,
            cmap="inferno",
            alpha=0.6,
            interpolation="nearest",
            vmin=0.0,
            vmax=max(float(heat.max()), 1e-12),
        )
        ax.add_patch(
            Rectangle(
                (cell[1] * cell_w - 0.5, cell[0] * cell_h - 0.5),
                cell_w,
                cell_h,
                fill=False,
                edgecolor="cyan",
                linewidth=1.2,
            )
        )
        ax.plot([x], [y], marker="+", color="cyan", markersize=10, markeredgewidth=2)
        peak = float(attention[cell[0] * w_l + cell[1]].max())
        ax.set_title(f"({x},{y}) -> cell {cell[0]},{cell[1]}  max {peak:.3f}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        title
        or f"{layer.name}: {layer.kind}, {h_l}x{w_l} positions "
        f"(uniform {1 / (h_l * w_l):.3g}), g = {layer.gamma:.4g}",
        fontsize=9,
        wrap=True,
    )
    return fig


def write_attention_figures(
    layers: dict[str, LayerAttention],
    image: Tensor | np.ndarray,
    output_dir: str | os.PathLike[str],
    queries: Sequence[Query],
    *,
    save_maps: str | os.PathLike[str] | None = None,
    columns: int | None = None,
) -> list[Path]:
    """Writes one PNG per layer (:func:`figure_name`) and optionally the raw maps.

    Args:
        layers: from :func:`capture_layers` (batch of one image).
        image: that image (uint8 ``H x W x 3`` or float (3, H, W) in [-1, 1]).
        output_dir: where the PNGs go (created).
        queries: ``(x, y)`` image pixels.
        save_maps: a ``.pt`` file for ``{layer name: (N, N) float32 tensor}`` (the first
            image's maps), loadable with ``torch.load(weights_only=True)``.
        columns: panels per row.

    Returns:
        The figure paths, in layer order.

    Raises:
        FaganError: no queries, more than :data:`MAX_QUERIES`, one outside the image, or
            an output that cannot be written (checked before any figure is drawn).
    """
    output_dir = check_output_dir(output_dir)
    for name in layers:
        check_output_file(output_dir / figure_name(name))
    if save_maps is not None:
        check_output_file(save_maps)
    if layers:
        first = (
            image.shape[-2:]
            if isinstance(image, Tensor) and image.is_floating_point()
            else np.asarray(image).shape[:2]
        )
        check_queries(queries, (int(first[0]), int(first[1])))
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, layer in layers.items():
        fig = render_layer(image, layer, queries, columns=columns)
        path = output_dir / figure_name(name)
        fig.savefig(path, format="png")
        written.append(path)
    if save_maps is not None:
        save_file({name: layer.maps[0].contiguous() for name, layer in layers.items()}, save_maps)
    return written


# --------------------------------------------------------------------------- inputs
def load_discriminator(
    discriminator_file: str | os.PathLike[str],
    discriminator_config: str | None = None,
    *,
    device: torch.device | str = "cpu",
) -> Discriminator:
    """Builds a discriminator and loads its weights, in eval mode.

    A class-conditional discriminator is built with the conditioning its file states;
    ``discriminator.class_names`` is set to its class names, or None when unconditional.

    Args:
        discriminator_file: a plain state dict (``GAN_DIS_<epoch>.pth``, ours or
            attn-gan-pytorch's), a class-conditional run's ``GAN_DIS_<epoch>.pth`` (a
            network file) or a training state.
        discriminator_config: the architecture (optional for a training state).
        device: where to put it.

    Raises:
        FaganError: unreadable file, missing config, weights that do not fit.
    """
    from fagan.generate import stored_network

    obj = load_file(discriminator_file)
    spec, _, image_size, conditioning, class_names = stored_network(
        obj, discriminator_file, "discriminator", discriminator_config
    )
    if discriminator_config is not None:
        image_size = None
    discriminator = Discriminator(spec, image_size, **conditioning)
    state = network_state_dict(obj, "discriminator", source=str(discriminator_file))
    load_state_into(discriminator, state, f"discriminator weights {discriminator_file}")
    discriminator.class_names = class_names
    return discriminator.to(device).eval()


def load_image(path: str | os.PathLike[str], image_size: int) -> Tensor:
    """Reads one image as the training data does: (3, S, S) float in [-1, 1].

    The decoding is the training data's own (:func:`fagan.data.decode_image`): EXIF
    orientation applied, transparency over white, RGB, shorter side resized to S and the
    centre square kept, rounded to bytes as training sees it.

    Raises:
        FaganError: missing or unreadable file, or one too large to decode.
    """
    from fagan.data import decode_image

    return decode_image(path, image_size)
