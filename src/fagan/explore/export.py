"""``fagan explore --export``: one self-contained HTML file that needs no server.

The page's script and style are inlined, and the results for the chosen seeds (images as
PNG data URLs, attention maps as base64 float16) are embedded as JSON in a
``<script type="application/json">`` element. A Content-Security-Policy allows exactly
the inlined script and style (by hash) and data: images: the file fetches nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from fagan.errors import FaganError
from fagan.explore.explorer import Explorer
from fagan.explore.params import ImageRequest
from fagan.explore.server import read_asset
from fagan.fileio import atomic_write

__all__ = ["MAX_EXPORT_IMAGES", "export_page", "render_export"]

#: Most images (seeds times classes) one exported page embeds.
MAX_EXPORT_IMAGES = 256

_STYLE_TAG = '<link rel="stylesheet" href="explore.css">'
_SCRIPT_TAG = '<script src="explore.js"></script>'
_CSP_MARK = "<!-- fagan:csp -->"


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def render_export(
    explorer: Explorer, seeds: Sequence[int], *, classes: Sequence[int] | None = None
) -> str:
    """The exported page's HTML for ``seeds`` at the explorer's truncation.

    For a class-conditional generator every seed is embedded once per class of
    ``classes`` (default: every class), and the page offers both choices. Layers with
    more positions than the explorer's ``inline_max_positions`` are listed without maps
    (the page says so).

    Raises:
        FaganError: classes for an unconditional generator or out of range, more than
            :data:`MAX_EXPORT_IMAGES` images (seeds times classes).
    """
    html = read_asset("index.html").decode()
    script = read_asset("explore.js").decode()
    style = read_asset("explore.css").decode()
    for tag in (_STYLE_TAG, _SCRIPT_TAG, _CSP_MARK):
        if tag not in html:  # pragma: no cover - the shipped template has them
            raise FaganError(f"the page template lacks {tag}")
    if "</script" in script.lower() or "</style" in style.lower():  # pragma: no cover
        raise FaganError("the page's script or style cannot be inlined")
    labels = _export_labels(explorer, classes)
    if len(seeds) * len(labels) > MAX_EXPORT_IMAGES:
        raise FaganError(
            f"the page would embed {len(seeds) * len(labels)} images ({len(seeds)} seeds x "
            f"{len(labels)} classes); at most {MAX_EXPORT_IMAGES}: give fewer --seeds"
            + (" or choose classes with --class" if explorer.num_classes else "")
        )
    results = [
        explorer.generate(ImageRequest(seed, explorer.truncation, label=label))
        for label in labels
        for seed in seeds
    ]
    data = json.dumps(
        {"info": explorer.info(), "results": results}, allow_nan=False, separators=(",", ":")
    )
    data = data.replace("<", "\\u003c")  # no "</script>" can close the element early
    csp = (
        f"default-src 'none'; script-src '{_sha256(script)}'; style-src "
        f"'{_sha256(style)}'; img-src data: blob:; base-uri 'none'; form-action 'none'"
    )
    return (
        html.replace(_CSP_MARK, f'<meta http-equiv="Content-Security-Policy" content="{csp}">')
        .replace(_STYLE_TAG, f"<style>{style}</style>")
        .replace(
            _SCRIPT_TAG,
            f'<script id="fagan-data" type="application/json">{data}'
            f"</script>\n<script>{script}</script>",
        )
    )


def _export_labels(explorer: Explorer, classes: Sequence[int] | None) -> list[int | None]:
    """The classes embedded: ``classes`` (checked), every class, or None (unconditional)."""
    if not explorer.num_classes:
        if classes:
            raise FaganError("the generator is unconditional: it takes no class")
        return [None]
    if classes is None:
        return list(range(explorer.num_classes))
    if not classes:
        raise FaganError("no class to embed")
    for label in classes:
        if not 0 <= label < explorer.num_classes:
            raise FaganError(f"class {label} is out of range (0 to {explorer.num_classes - 1})")
    return list(dict.fromkeys(classes))


def export_page(
    explorer: Explorer,
    seeds: Sequence[int],
    path: str | os.PathLike[str],
    *,
    classes: Sequence[int] | None = None,
) -> Path:
    """Writes :func:`render_export`'s page to ``path`` (atomically) and returns the path."""
    page = render_export(explorer, seeds, classes=classes)
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
