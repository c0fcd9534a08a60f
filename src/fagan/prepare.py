"""``fagan prepare``: a folder or zip of images -> a dataset zip in StyleGAN2-ADA's convention.

The zip is what NVlabs/stylegan2-ada-pytorch's ``dataset_tool.py`` writes and its
``ImageFolderDataset`` reads:

* uncompressed (``ZIP_STORED``) members, one PNG per image, all ``S`` x ``S`` RGB, named by
  their index ``i`` as ``f"{i:08d}"[:5] + "/img" + f"{i:08d}" + ".png"``
  (``00000/img00000000.png``, ``00000/img00000001.png``, ..., ``00001/img00001000.png``);
* ``dataset.json``: ``{"labels": [["00000/img00000000.png", 6], ...]}`` with one whole-number
  class label per image, or ``{"labels": null}`` for unlabelled images; labelled zips also
  carry ``"class_names": [...]`` (the name of each label; StyleGAN2-ADA ignores the key).

Pixels are :func:`fagan.sources.read_image`'s (the training data's): training from the
zip sees exactly the bytes training from the source folder would. Images are decoded in
parallel; files that are not usable images are skipped and counted. The zip is written
to a temporary file beside the output and renamed into place when complete, and its
bytes depend only on the source and the options (fixed member dates, sorted inputs).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from fagan.errors import FaganError
from fagan.fileio import atomic_write
from fagan.sources import (
    CROPS,
    _check_image_size,
    decode_images,
    open_source,
    skip_summary,
)

__all__ = ["PrepareResult", "archive_name", "prepare_dataset"]

#: The date stored for every member (zip dates start in 1980), so equal inputs give equal bytes.
_MEMBER_DATE = (1980, 1, 1, 0, 0, 0)


def archive_name(index: int) -> str:
    """The member name of image ``index``, as StyleGAN2-ADA's ``dataset_tool.py`` names it."""
    digits = f"{index:08d}"
    return f"{digits[:5]}/img{digits}.png"


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` wrote.

    Attributes:
        output: The zip.
        count: Images written.
        resolution: Their side.
        class_names: The classes' names by label, or None (unlabelled).
        label_counts: Images per label (empty when unlabelled).
        skipped: ``(name, reason)`` of every file left out.
        total: Image files considered.
        bytes: The zip's size.
    """

    output: Path
    count: int
    resolution: int
    class_names: tuple[str, ...] | None
    label_counts: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    bytes: int = 0

    def summary(self) -> str:
        """One line: what was written where."""
        s = self.resolution
        text = f"wrote {self.output}: {self.count:,} images at {s}x{s}"
        if self.class_names is None:
            text += ", unlabelled"
        else:
            shown = ", ".join(
                f"{name} {count:,}"
                for name, count in list(zip(self.class_names, self.label_counts, strict=True))[:12]
            )
            more = ", ..." if len(self.class_names) > 12 else ""
            text += f", {len(self.class_names)} classes ({shown}{more})"
        return text + f", {self.bytes / 2**20:,.1f} MB"


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    if output.suffix.lower() != ".zip":
        raise FaganError(f"--output must be a .zip file, got {output}")
    if output.is_dir():
        raise FaganError(f"--output {output} is a folder; give the .zip file to write")
    if output.exists() and not overwrite:
        raise FaganError(f"--output {output} exists; pass --overwrite to replace it")
    if output.exists() and source.is_file() and output.resolve() == source.resolve():
        raise FaganError(f"--output {output} is the --source zip; write to another file")


def prepare_dataset(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    resolution: int = 64,
    *,
    crop: str = "center",
    labels: str = "auto",
    max_images: int | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    compress_level: int = 0,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Write the images of ``source`` as a dataset zip (see the module docstring).

    Args:
        source: An images folder (flat, nested, or one sub-folder per class) or a zip (ours,
            StyleGAN2-ADA's, or any zip of images).
        output: The ``.zip`` to write.
        resolution: The side ``S`` of the square images written.
        crop: ``"center"``: resize the shorter side to ``S`` and keep the centre square
            (what training from a folder does); ``"none"``: resize the whole image to
            ``S`` x ``S`` (non-square images are stretched).
        labels: ``"auto"``: labels from class sub-folders (two or more, every image in
            one) or from a zip's ``dataset.json``; ``"none"``: an unlabelled zip.
        max_images: Write at most this many images (the first in sorted order).
        overwrite: Replace ``output`` if it exists.
        workers: Decoding processes (default: the usable cores).
        compress_level: zlib level of the PNGs, 0-9 (0, StyleGAN2-ADA's choice, decodes
            fastest; higher levels make a smaller zip).
        progress: Show a progress bar (None: when stderr is a terminal).
        log: Where the summary line goes (default: nowhere; the result holds it).

    Returns:
        What was written.

    Raises:
        FaganError: For a bad source or option, an existing output without ``overwrite``,
            or a source with no usable image. Nothing is left under ``output`` then.
    """
    size = _check_image_size(resolution)
    if crop not in CROPS:
        raise FaganError(f"--crop must be one of {', '.join(CROPS)}, got {crop!r}")
    if not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise FaganError(f"--compress_level must be 0-9, got {compress_level!r}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise FaganError(f"--max_images must be a whole number >= 1, got {max_images!r}")
    out = Path(output)
    src_path = Path(source)
    _check_output(out, src_path, overwrite)
    src = open_source(src_path, labels, flag="--source")
    class_names = src.class_names
    if src.labels is not None and class_names is None:  # a zip's labels without names
        class_names = tuple(str(k) for k in range(int(src.labels.max()) + 1))
    result = PrepareResult(out, 0, size, class_names, total=len(src))

    def write(tmp: Path) -> None:
        entries: list[list[str | int]] = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            items = decode_images(
                src,
                size,
                crop,
                workers=workers,
                png_level=compress_level,
                progress=progress,
                desc=f"preparing {out.name}",
            )
            with closing(items):  # leaving the loop (done, error, Ctrl-C) stops the workers
                for item in items:
                    if item.image is None:
                        result.skipped.append((src.names[item.index], item.reason or "unusable"))
                        continue
                    name = archive_name(len(entries))
                    zf.writestr(zipfile.ZipInfo(name, _MEMBER_DATE), item.image)
                    label = -1 if src.labels is None else int(src.labels[item.index])
                    entries.append([name, label])
                    if max_images is not None and len(entries) >= max_images:
                        break
            if not entries:
                raise FaganError(
                    f"no usable images in {src.path}: "
                    + skip_summary(src.path, result.skipped, len(src))
                )
            meta = (
                {"labels": None}
                if class_names is None
                else {"labels": entries, "class_names": list(class_names)}
            )
            zf.writestr(
                zipfile.ZipInfo("dataset.json", _MEMBER_DATE),
                json.dumps(meta, separators=(",", ":")),
            )
        result.count = len(entries)
        if class_names is not None:
            counts = [0] * len(class_names)
            for _, label in entries:
                counts[int(label)] += 1
            result.label_counts = counts

    atomic_write(out, write)
    result.bytes = out.stat().st_size
    if result.skipped:
        considered = result.count + len(result.skipped)
        warnings.warn(skip_summary(src.path, result.skipped, considered), UserWarning, stacklevel=2)
    if log is not None:
        log(result.summary())
    return result
