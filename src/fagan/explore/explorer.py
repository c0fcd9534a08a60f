"""The model side of ``fagan explore``: images, scores and attention maps as JSON-ready dicts.

An :class:`Explorer` holds a generator (and optionally a discriminator) in eval mode and
answers three questions, each with plain Python values that the server sends as JSON
and the exported page embeds as they are:

* :meth:`Explorer.generate`: the image of a seed (or of a point between two seeds), the
  generator's attention maps for it, and the discriminator's score and maps for it;
* :meth:`Explorer.discriminate_upload`: the discriminator's score and maps for an image
  a user gives (PNG or JPEG, preprocessed as ``fagan attention --image`` does);
* :meth:`Explorer.query`: one query position's row of one layer, for layers whose full
  (N, N) map is too large to send (``N > inline_max_positions``).

Maps are the layers' own probabilities, captured with
:func:`fagan.attention_maps.capture_layers`; each is sent as the base64 of its (N, N)
row-major little-endian float16 (or float32) values, row ``i`` being where output
position ``i`` (row-major over the layer's ``H_l x W_l`` grid) looks.

Every forward pass runs under one lock: capturing maps switches the layers' map-keeping
on and off, so two passes must not overlap.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from fagan.attention_maps import LayerAttention, capture_layers, load_image
from fagan.classes import generator_classes
from fagan.errors import FaganError
from fagan.explore.params import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    SEED_MAX,
    TRUNCATION_RANGE,
    ImageRequest,
    RequestError,
    check_upload,
)
from fagan.latents import latents_for_seeds, slerp
from fagan.layers.attention import attention_layers
from fagan.networks import Discriminator, Generator
from fagan.sample import to_uint8

__all__ = ["DEFAULT_INLINE_MAX_POSITIONS", "Explorer", "encode_array", "png_bytes"]

#: Layers with at most this many positions N send their whole (N, N) map with the image
#: (1024 positions: 2 MiB as float16); larger ones are asked for one query at a time.
DEFAULT_INLINE_MAX_POSITIONS = 1024

#: Uploaded images kept for per-query requests, most recent first.
_UPLOADS_KEPT = 16

_NUMPY_DTYPES = {"float16": "<f2", "float32": "<f4"}


def encode_array(values: Tensor, dtype: str) -> str:
    """The base64 of ``values`` flattened to little-endian ``float16`` or ``float32``."""
    array = values.detach().float().cpu().numpy().astype(_NUMPY_DTYPES[dtype])
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def png_bytes(image: Tensor) -> bytes:
    """An image (3, S, S) in [-1, 1] as PNG bytes (through :func:`fagan.sample.to_uint8`)."""
    array = to_uint8(image).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class Explorer:
    """A generator (and optional discriminator) ready to answer the page's requests.

    Args:
        generator: the generator, in eval mode (as :func:`fagan.generate.load_generator`
            returns it).
        discriminator: the discriminator, in eval mode, or None.
        inline_max_positions: layers with more positions than this are left out of
            :meth:`generate` and answered per query.
        truncation: the truncation the page starts with (None: off).
        label: the class the page starts with, for a class-conditional generator
            (default its first class).

    Raises:
        FaganError: a discriminator for another image size than the generator's, a
            class out of range or given to an unconditional generator.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator | None = None,
        *,
        inline_max_positions: int = DEFAULT_INLINE_MAX_POSITIONS,
        truncation: float | None = None,
        label: int | None = None,
    ) -> None:
        if discriminator is not None and discriminator.image_size != generator.image_size:
            raise FaganError(
                f"the discriminator takes {discriminator.image_size}x"
                f"{discriminator.image_size} images but the generator makes "
                f"{generator.image_size}x{generator.image_size}"
            )
        if discriminator is not None and (discriminator.num_classes or 0) != (
            generator.num_classes or 0
        ):
            raise FaganError(
                f"the discriminator has {discriminator.num_classes or 0} classes and the "
                f"generator {generator.num_classes or 0}: they are not of one run"
            )
        self.generator = generator.eval()
        self.discriminator = discriminator.eval() if discriminator is not None else None
        self.inline_max_positions = inline_max_positions
        self.truncation = truncation
        self.image_size = generator.image_size
        self.num_classes, self.class_names = generator_classes(generator)
        if label is not None and not 0 <= label < self.num_classes:
            raise FaganError(
                f"class {label} is out of range (0 to {self.num_classes - 1})"
                if self.num_classes
                else "the generator is unconditional: it takes no class"
            )
        self.label = label if label is not None or not self.num_classes else 0
        self._lock = threading.Lock()
        self._uploads: OrderedDict[str, Tensor] = OrderedDict()
        self._device = next(generator.parameters()).device
        # the layers' names, kinds and grids, from one forward pass
        first = ImageRequest(0, label=self.label)
        _, g_layers, _, d_layers = self._forward(first)
        self._layer_meta = {"generator": self._describe(g_layers)}
        if self.discriminator is not None:
            self._layer_meta["discriminator"] = self._describe(d_layers or {})

    # ------------------------------------------------------------------ description
    def _describe(self, layers: dict[str, LayerAttention]) -> list[dict[str, object]]:
        return [
            {
                "name": layer.name,
                "kind": layer.kind,
                "grid": list(layer.grid),
                "positions": layer.grid[0] * layer.grid[1],
                "inline": layer.grid[0] * layer.grid[1] <= self.inline_max_positions,
            }
            for layer in layers.values()
        ]

    def layer_names(self, net: str) -> list[str]:
        """The attention layers of ``generator`` or ``discriminator``, in forward order."""
        return [str(layer["name"]) for layer in self._layer_meta.get(net, [])]

    def info(self) -> dict[str, object]:
        """What the page needs before the first image: sizes, layers, limits."""
        return {
            "image_size": self.image_size,
            "latent_size": self.generator.latent_size,
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "class": self.label,
            "truncation": self.truncation,
            "layers": self._layer_meta,
            "has_discriminator": self.discriminator is not None,
            "limits": {
                "seed_max": str(SEED_MAX),
                "truncation": list(TRUNCATION_RANGE),
                "upload_bytes": MAX_UPLOAD_BYTES,
            },
        }

    # ------------------------------------------------------------------ forward passes
    def latent(self, request: ImageRequest) -> Tensor:
        """The (1, latent_size) latent of ``request``: the seed's, or a slerp of two."""
        size = self.generator.latent_size
        z = latents_for_seeds([request.seed], size, request.truncation)
        if request.seed2 is not None:
            z2 = latents_for_seeds([request.seed2], size, request.truncation)
            z = slerp(z, z2, request.mix).to(z.dtype)
        return z

    def _labels(self, label: int | None) -> Tensor | None:
        """A batch of one class label for the networks, None when they are unconditional.

        A conditional critic's attention maps do not depend on the class (projection
        adds it after the last convolution's input, concat at the last layer), so a
        query on an upload runs it with class 0; its score does depend on it.
        """
        if not self.num_classes:
            return None
        return torch.tensor([label or 0], device=self._device)

    def _generate_image(self, z: Tensor, label: int | None) -> tuple[Tensor, dict]:
        layers, images = capture_layers(self.generator, z.to(self._device), self._labels(label))
        return images, layers

    @torch.no_grad()
    def _discriminate(
        self, images: Tensor, label: int | None = None
    ) -> tuple[float | None, dict[str, LayerAttention]]:
        """The critic on a batch of one image (the generator's output as it is), for
        ``label`` when it is class-conditional; the score is None when not finite (JSON
        has no NaN)."""
        assert self.discriminator is not None
        layers, logits = capture_layers(
            self.discriminator, images.to(self._device), self._labels(label)
        )
        score = float(logits[0])
        return (score if math.isfinite(score) else None), layers

    @torch.no_grad()
    def _forward(self, request: ImageRequest) -> tuple[Tensor, dict, float | None, dict | None]:
        with self._lock:
            images, g_layers = self._generate_image(self.latent(request), request.label)
            d_score = d_layers = None
            if self.discriminator is not None:
                d_score, d_layers = self._discriminate(images, request.label)
        return images[0].float().cpu(), g_layers, d_score, d_layers

    def _layers_json(self, layers: dict[str, LayerAttention], dtype: str) -> list[dict]:
        out = []
        for layer in layers.values():
            n = layer.grid[0] * layer.grid[1]
            inline = n <= self.inline_max_positions
            out.append(
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "grid": list(layer.grid),
                    "gamma": layer.gamma,
                    "positions": n,
                    "inline": inline,
                    "maps": encode_array(layer.maps[0], dtype) if inline else None,
                }
            )
        return out

    # ------------------------------------------------------------------ answers
    def image_png(self, request: ImageRequest) -> bytes:
        """The generated image of ``request`` as PNG bytes."""
        with torch.no_grad(), self._lock:
            image = self._call_generator(request)[0]
        return png_bytes(image.float().cpu())

    def _call_generator(self, request: ImageRequest) -> Tensor:
        z = self.latent(request).to(self._device)
        labels = self._labels(request.label)
        return self.generator(z) if labels is None else self.generator(z, labels)

    def _call_critic(self, images: Tensor, label: int | None) -> Tensor:
        assert self.discriminator is not None
        labels = self._labels(label)
        return self.discriminator(images) if labels is None else self.discriminator(images, labels)

    def generate(self, request: ImageRequest, dtype: str = "float16") -> dict[str, object]:
        """The image of ``request`` with every attention layer's maps and the critic's view.

        Returns:
            ``{"request", "image" (PNG data URL), "size", "dtype", "generator":
            {"layers": [...]}, "discriminator": {"score", "layers"} or None}``; each
            layer ``{"name", "kind", "grid", "gamma", "positions", "inline", "maps"}``
            with ``maps`` the base64 (N, N) probabilities, or None when not inline.
        """
        image, g_layers, d_score, d_layers = self._forward(request)
        return {
            "request": request.as_dict(),
            "image": _data_url(png_bytes(image)),
            "size": self.image_size,
            "dtype": dtype,
            "generator": {"layers": self._layers_json(g_layers, dtype)},
            "discriminator": None
            if d_layers is None
            else {"score": d_score, "layers": self._layers_json(d_layers, dtype)},
        }

    def _need_discriminator(self) -> Discriminator:
        if self.discriminator is None:
            raise RequestError(
                "no discriminator is loaded (start fagan explore with --discriminator_file)", 404
            )
        return self.discriminator

    def discriminate_upload(
        self, data: bytes, content_type: str, dtype: str = "float16", label: int | None = None
    ) -> dict[str, object]:
        """The discriminator's score and maps for an uploaded PNG or JPEG.

        The image is read as ``fagan attention --image`` reads it (RGB, EXIF orientation,
        shorter side resized to the model's size, centre crop). A class-conditional
        critic scores it as an image of class ``label``.

        Returns:
            ``{"upload" (its SHA-256, for :meth:`query`), "image" (the S x S image the
            discriminator saw, as a PNG data URL), "size", "dtype", "generator": None,
            "discriminator": {"score", "layers"}}``.

        Raises:
            RequestError: no discriminator (404), too large (413), not PNG/JPEG (415),
                undecodable or too many pixels (400).
        """
        self._need_discriminator()
        if self.num_classes and label is None:
            raise RequestError(
                f"the critic is class-conditional: give class (0 to {self.num_classes - 1})"
            )
        if label is not None and not 0 <= label < self.num_classes:
            raise RequestError(
                "the critic is unconditional: it takes no class"
                if not self.num_classes
                else f"class must be from 0 to {self.num_classes - 1}"
            )
        check_upload(data, content_type)
        key = hashlib.sha256(data).hexdigest()
        image = self._decode_upload(data)
        with torch.no_grad(), self._lock:
            score, layers = self._discriminate(image[None], label)
            self._uploads[key] = image
            self._uploads.move_to_end(key)
            while len(self._uploads) > _UPLOADS_KEPT:
                self._uploads.popitem(last=False)
        return {
            "upload": key,
            "image": _data_url(png_bytes(image)),
            "size": self.image_size,
            "dtype": dtype,
            "generator": None,
            "discriminator": {"score": score, "layers": self._layers_json(layers, dtype)},
            **({"class": label} if label is not None else {}),
        }

    def _decode_upload(self, data: bytes) -> Tensor:
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if im.format not in ("PNG", "JPEG"):
                    raise RequestError(f"uploads must be PNG or JPEG, this is {im.format}", 415)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise RequestError(f"cannot read the uploaded image: {error}") from None
        if width * height > MAX_UPLOAD_PIXELS:
            raise RequestError(
                f"the uploaded image has {width}x{height} pixels; at most "
                f"{MAX_UPLOAD_PIXELS} are accepted",
                413,
            )
        with tempfile.TemporaryDirectory(prefix="fagan-explore-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            try:
                return load_image(path, self.image_size)
            except FaganError as error:
                raise RequestError(str(error).replace(str(path), "the uploaded image")) from None

    def query(
        self,
        net: str,
        layer_name: str,
        x: int,
        y: int,
        *,
        request: ImageRequest | None = None,
        upload: str | None = None,
        dtype: str = "float16",
    ) -> dict[str, object]:
        """One query's row of one layer: where the layer's output cell under pixel (x, y) looks.

        The network runs without keeping any (N, N) map; the layer's input is caught on
        the way and the row is ``softmax_j(q_i . k_j)`` from the layer's own query and
        key convolutions, the computation the layer performs for that position.

        Args:
            net: ``generator`` or ``discriminator``.
            layer_name: one of :meth:`layer_names` for ``net``.
            x: the query's image column (0..S-1).
            y: the query's image row (0..S-1).
            request: the generated image (for the generator, and for the
                discriminator looking at a generated image).
            upload: instead, an uploaded image's key (discriminator only).
            dtype: ``float16`` or ``float32`` for ``row``.

        Returns:
            ``{"layer", "grid", "cell": [row, col], "row" (base64 of N values)}``.

        Raises:
            RequestError: an unknown layer, an expired upload, a missing image.
        """
        model: nn.Module = self.generator if net == "generator" else self._need_discriminator()
        if layer_name not in self.layer_names(net):
            raise RequestError(
                f"unknown {net} layer {layer_name[:80]!r} (expected one of "
                f"{', '.join(self.layer_names(net))})"
            )
        layer = attention_layers(model)[layer_name]
        caught: dict[str, Tensor] = {}
        handle = layer.register_forward_pre_hook(
            lambda _m, args: caught.__setitem__("x", args[0].detach())
        )
        try:
            with torch.no_grad(), self._lock:
                if upload is not None:
                    if net != "discriminator":
                        raise RequestError("an upload goes with net=discriminator")
                    if upload not in self._uploads:
                        raise RequestError("that upload is no longer kept: upload it again", 404)
                    self._call_critic(self._uploads[upload][None].to(self._device), None)
                elif request is None:
                    raise RequestError(
                        "give the image: seed (and truncation, seed2, mix) or upload"
                    )
                else:
                    image = self._call_generator(request)
                    if net == "discriminator":
                        self._call_critic(image, request.label)
                q = layer.query_conv(caught["x"]).float()  # (1, Cq, H_l, W_l)
                k = layer.key_conv(caught["x"]).float()
        finally:
            handle.remove()
        grid = (int(q.shape[-2]), int(q.shape[-1]))
        cell = ((y * grid[0]) // self.image_size, (x * grid[1]) // self.image_size)
        q_i = q.flatten(2)[0, :, cell[0] * grid[1] + cell[1]]  # (Cq,)
        row = (q_i @ k.flatten(2)[0]).softmax(dim=-1)  # (N,)
        return {
            "layer": layer_name,
            "grid": list(grid),
            "cell": list(cell),
            "row": encode_array(row, dtype),
        }
