"""Hostile input to `fagan generate / interpolate / attention / make-gif / plot-losses`.

Every case runs the real command line (``python -m fagan ...``) in a subprocess with a
60 s timeout and 3 GiB of data memory (``RLIMIT_DATA``: heap and anonymous mappings;
``RLIMIT_AS`` cannot be used, as PyTorch's CUDA build maps more than 3 GiB of address
space on import). Each must end at once with exactly one stderr line
``fagan <command>: error: ...``, exit status 2 and no traceback; the runaway cases (a
billion samples, a million frames, ten thousand queries) must fail before they start.

The streaming paths are checked against the all-at-once computation they replace: the
same PNGs, grid, GIF, strip and latents, byte for byte.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fagan
from fagan.animation import make_progress_gif, sample_dir_frames, write_gif
from fagan.config import load_config, resolve_config_path
from fagan.errors import FaganError
from fagan.fileio import atomic_write, check_output_dir, check_output_file
from fagan.generate import (
    LATENT_BLOCK_ELEMENTS,
    generate_batches,
    latent_blocks,
    make_latents,
    read_latents,
    write_images,
    write_samples,
)
from fagan.interpolate import interpolate, write_interpolation
from fagan.latents import seeded_generator, truncated_normal
from fagan.networks import Discriminator, Generator
from fagan.plots import envelope
from fagan.sample import evenly_spaced, grid_uint8, grid_uint8_batches, to_uint8

MEMORY_LIMIT = 3 << 30
TIMEOUT_S = 60


# ----------------------------------------------------------------------------- fixtures
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels and holds none of them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _sample_dir(folder: Path, *bad: tuple[str, bytes | None]) -> Path:
    """One good 8x8 grid gen_1_1.png, then the given (name, bytes) files (None: a folder)."""
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "gen_1_1.png")
    for name, data in bad:
        if data is None:
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small32 generator and discriminator (random weights) and hostile input files."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    generator = Generator(load_config(resolve_config_path("small32", "gen")))
    torch.save(generator.state_dict(), root / "gen.pth")
    discriminator = Discriminator(load_config(resolve_config_path("small32", "dis")))
    torch.save(discriminator.state_dict(), root / "dis.pth")

    latents = torch.randn(4, 128)
    torch.save(latents.to_sparse(), root / "sparse.pt")
    torch.save(latents.to(torch.float8_e4m3fn), root / "float8.pt")
    torch.save(latents.long(), root / "int.pt")
    torch.save(latents.unsqueeze(-1), root / "rank3.pt")
    nan = latents.clone()
    nan[1, 2] = float("nan")
    torch.save(nan, root / "nan.pt")
    # ten million latents over one stored row: a small file, a huge tensor
    torch.save(torch.randn(1, 128).expand(10_000_000, 128), root / "huge_view.pt")
    torch.save(torch.empty(4, 128, device="meta"), root / "meta.pt")
    with open(root / "huge.pt", "wb") as handle:  # 2 GiB, sparse where the file system can
        handle.truncate(2 << 30)

    (root / "afile").write_text("a regular file")
    (root / "adir.png").mkdir()
    (root / "loss.log").write_text("1.0\t2.0\n0.5\t1.5\n")
    (root / "zero.png").write_bytes(_png_header_only(0, 0))
    (root / "bomb.png").write_bytes(_png_header_only(60000, 60000))
    (root / "72mp.png").write_bytes(_png_header_only(9000, 8000))
    (root / "90mp.png").write_bytes(_png_header_only(9500, 9500))
    (root / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "face.png")

    ok = _sample_dir(root / "s_ok")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(ok / "gen_1_2.png")
    _sample_dir(root / "s_empty_file", ("gen_1_2.png", b""))
    _sample_dir(root / "s_text", ("gen_1_2.png", b"not an image"))
    _sample_dir(root / "s_zero_size", ("gen_1_2.png", _png_header_only(0, 0)))
    _sample_dir(root / "s_bomb", ("gen_1_2.png", _png_header_only(60000, 60000)))
    _sample_dir(root / "s_25mp", ("gen_1_2.png", _png_header_only(5000, 5000)))
    sizes = _sample_dir(root / "s_sizes")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(sizes / "gen_1_2.png")
    return {"root": root}


def _memory_limit(limit: int) -> Callable[[], None]:
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return limit_memory


#: Cases run with less data memory than :data:`MEMORY_LIMIT`: whether 4096 images of
#: small32 fit in 3 GiB depends on the threads' convolution workspaces.
CASE_MEMORY = {"a batch too large for memory": 3 << 29}


def run_fagan(
    argv: list[str], cwd: Path, memory: int = MEMORY_LIMIT
) -> subprocess.CompletedProcess[str]:
    """``python -m fagan argv`` with this checkout's package, 3 GiB of data, 60 s."""
    source = str(Path(fagan.__file__).resolve().parents[1])
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([source, *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    return subprocess.run(
        [sys.executable, "-m", "fagan", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=_memory_limit(memory),
    )


GEN = ["--generator_file", "{root}/gen.pth", "--generator_config", "small32", "--device", "cpu"]
DIS = [
    "--discriminator_file",
    "{root}/dis.pth",
    "--discriminator_config",
    "small32",
    "--device",
    "cpu",
]
OUT = ["--output_dir", "{tmp}/out"]
WALK = [*GEN, "--seeds", "1,2", "--steps", "2", "--no_mp4"]

HOSTILE = {
    # generate
    "a billion samples": (
        ["generate", *GEN, *OUT, "--num_samples", "1000000000"],
        "expected a whole number from 1 to 1000000",
    ),
    "ten million samples": (
        ["generate", *GEN, *OUT, "--num_samples", "10000000"],
        "expected a whole number from 1 to 1000000",
    ),
    "a huge batch": (
        ["generate", *GEN, *OUT, "--num_samples", "2", "--batch_size", "100000000000"],
        "expected a whole number from 1 to 4096",
    ),
    "a huge grid": (
        ["generate", *GEN, *OUT, "--num_samples", "5000", "--grid"],
        "--grid holds at most 4096 images",
    ),
    "a batch too large for memory": (
        ["generate", *GEN, *OUT, "--num_samples", "4096", "--batch_size", "4096"],
        "out of memory generating 4096 images at once on cpu: give a smaller --batch_size",
    ),
    "output folder is a file": (
        ["generate", *GEN, "--output_dir", "{root}/afile", "--num_samples", "2"],
        "afile: it is a file, not a folder",
    ),
    "output folder inside a file": (
        ["generate", *GEN, "--output_dir", "{root}/afile/x", "--num_samples", "2"],
        "afile is a file, not a folder",
    ),
    "sparse latents": (
        ["generate", *GEN, *OUT, "--latents", "{root}/sparse.pt"],
        "must be a dense tensor, found a sparse_coo tensor",
    ),
    "float8 latents": (
        ["generate", *GEN, *OUT, "--latents", "{root}/float8.pt"],
        "must be floating point",
    ),
    "integer latents": (["generate", *GEN, *OUT, "--latents", "{root}/int.pt"], "found int64"),
    "rank-3 latents": (
        ["generate", *GEN, *OUT, "--latents", "{root}/rank3.pt"],
        "expected latents of shape N x 128, found [4, 128, 1]",
    ),
    "NaN latents": (["generate", *GEN, *OUT, "--latents", "{root}/nan.pt"], "NaN or infinite"),
    "meta latents": (
        ["generate", *GEN, *OUT, "--latents", "{root}/meta.pt"],
        "the latents hold no values (a meta tensor)",
    ),
    "ten million latents in a small file": (
        ["generate", *GEN, *OUT, "--latents", "{root}/huge_view.pt"],
        "holds 10,000,000 latents; at most 1,000,000",
    ),
    "a 2 GiB latents file": (
        ["generate", *GEN, *OUT, "--latents", "{root}/huge.pt"],
        "huge.pt is 2,147,483,648 bytes",
    ),
    # interpolate
    "a million steps": (
        ["interpolate", *GEN, "--seeds", "1,2", "--steps", "1000000", "--output", "{tmp}/w.gif"],
        "make 1,000,001 frames",
    ),
    "many seeds, many steps": (
        [
            "interpolate",
            *GEN,
            "--seeds",
            "1,2,3,4,5",
            "--steps",
            "5000",
            "--loop",
            "--output",
            "{tmp}/w.gif",
        ],
        "make 25,000 frames",
    ),
    "fps 1e-300": (
        ["interpolate", *WALK, "--fps", "1e-300", "--output", "{tmp}/w.gif"],
        "frames per second must be a number from 0.1 to 100",
    ),
    "fps 1e300": (
        ["interpolate", *WALK, "--fps", "1e300", "--output", "{tmp}/w.gif"],
        "frames per second must be a number from 0.1 to 100",
    ),
    "a seed beyond 64 bits": (
        ["interpolate", *GEN, "--seeds", "1,99999999999999999999999", "--output", "{tmp}/w.gif"],
        "out of range",
    ),
    "animation inside a file": (
        ["interpolate", *WALK, "--output", "{root}/afile/w.gif"],
        "cannot write {root}/afile/w.gif: {root}/afile is a file",
    ),
    "strip inside a file": (
        ["interpolate", *WALK, "--output", "{tmp}/w.gif", "--strip", "{root}/afile/s.png"],
        "afile is a file, not a folder",
    ),
    "a huge strip": (
        [
            "interpolate",
            *WALK,
            "--output",
            "{tmp}/w.gif",
            "--strip",
            "{tmp}/s.png",
            "--strip_frames",
            "100000000",
        ],
        "--strip_frames must be from 1 to 256",
    ),
    "an interpolation batch too large": (
        ["interpolate", *WALK, "--output", "{tmp}/w.gif", "--batch_size", "100000000000"],
        "--batch_size",
    ),
    # attention
    "a 100 x 100 query grid": (
        ["attention", *GEN, *OUT, "--query_grid", "100"],
        "--query_grid must be from 1 to 8",
    ),
    "a 100000 x 100000 query grid": (
        ["attention", *GEN, *OUT, "--query_grid", "100000"],
        "--query_grid must be from 1 to 8",
    ),
    "65 queries": (
        [
            "attention",
            *GEN,
            *OUT,
            *[a for i in range(65) for a in ("--query", f"{i % 32},{i // 32}")],
        ],
        "at most 64 query positions",
    ),
    "maps inside a file": (
        ["attention", *GEN, *OUT, "--query", "1,1", "--save_maps", "{root}/afile/x.pt"],
        "cannot write {root}/afile/x.pt: {root}/afile is a file, not a folder",
    ),
    "figures into a file": (
        ["attention", *GEN, "--output_dir", "{root}/afile", "--query", "1,1"],
        "it is a file, not a folder",
    ),
    "a zero-size image": (
        ["attention", *DIS, *OUT, "--image", "{root}/zero.png"],
        "cannot read image",
    ),
    "a decompression bomb": (
        ["attention", *DIS, *OUT, "--image", "{root}/bomb.png"],
        "cannot read image",
    ),
    "a 72-megapixel image": (
        ["attention", *DIS, *OUT, "--image", "{root}/72mp.png"],
        "cannot read image",
    ),
    "a 90-megapixel image": (
        ["attention", *DIS, *OUT, "--image", "{root}/90mp.png"],
        "cannot read image",
    ),
    "a query grid for a real image": (
        ["attention", *DIS, *OUT, "--image", "{root}/face.png", "--query_grid", "40"],
        "--query_grid",
    ),
    # make-gif
    "gif fps 1e-300": (
        ["make-gif", "--sample_dir", "{root}/s_ok", "--output", "{tmp}/g.gif", "--fps", "1e-300"],
        "from 0.1 to 100",
    ),
    "gif fps 1e300": (
        ["make-gif", "--sample_dir", "{root}/s_ok", "--output", "{tmp}/g.gif", "--fps", "1e300"],
        "from 0.1 to 100",
    ),
    "an empty sample file": (
        ["make-gif", "--sample_dir", "{root}/s_empty_file", "--output", "{tmp}/g.gif"],
        "cannot read frame image",
    ),
    "a text file as a sample": (
        ["make-gif", "--sample_dir", "{root}/s_text", "--output", "{tmp}/g.gif"],
        "cannot read frame image",
    ),
    "a zero-size sample": (
        ["make-gif", "--sample_dir", "{root}/s_zero_size", "--output", "{tmp}/g.gif"],
        "cannot read frame image",
    ),
    "a bomb among the samples": (
        ["make-gif", "--sample_dir", "{root}/s_bomb", "--output", "{tmp}/g.gif"],
        "cannot read frame image",
    ),
    "a 25-megapixel sample": (
        ["make-gif", "--sample_dir", "{root}/s_25mp", "--output", "{tmp}/g.gif"],
        "frames have at most 16,777,216 pixels",
    ),
    "samples of two sizes": (
        ["make-gif", "--sample_dir", "{root}/s_sizes", "--output", "{tmp}/g.gif"],
        "all frames must be the same size",
    ),
    "gif inside a file": (
        ["make-gif", "--sample_dir", "{root}/s_ok", "--output", "{root}/afile/g.gif"],
        "afile is a file, not a folder",
    ),
    # plot-losses
    "plot over a folder": (
        ["plot-losses", "--loss_file", "{root}/loss.log", "--plot_file", "{root}/adir.png"],
        "cannot write {root}/adir.png: it is a folder",
    ),
    "plot inside a file": (
        ["plot-losses", "--loss_file", "{root}/loss.log", "--plot_file", "{root}/afile/p.png"],
        "{root}/afile is a file, not a folder",
    ),
    "a 2 GiB loss log": (
        ["plot-losses", "--loss_file", "{root}/huge.pt", "--plot_file", "{tmp}/p.png"],
        "logs of at most",
    ),
    "a binary loss log": (
        ["plot-losses", "--loss_file", "{root}/gen.pth", "--plot_file", "{tmp}/p.png"],
        "gen.pth",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_gives_one_line_and_status_2(
    files: dict[str, Path], tmp_path: Path, case: str
) -> None:
    argv, message = HOSTILE[case]
    names = {"root": files["root"], "tmp": tmp_path}
    memory = CASE_MEMORY.get(case, MEMORY_LIMIT)
    result = run_fagan([arg.format(**names) for arg in argv], tmp_path, memory)
    command = argv[0]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fagan {command}: error: "), lines[0]
    assert message.format(**names) in lines[0]
    assert ".tmp" not in lines[0] and f"/.{Path(argv[-1]).name}." not in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------- streaming
@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(1)
    return Generator(load_config(resolve_config_path("small32", "gen"))).eval()


def _pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


@pytest.mark.parametrize("truncation", [None, 0.7])
def test_streamed_samples_equal_all_at_once(
    generator: Generator, tmp_path: Path, truncation: float | None
) -> None:
    # what generate did before: all latents from one draw, then batches of 4
    latents = truncated_normal(10, 128, truncation, seeded_generator(5))
    with torch.no_grad():
        images = [generator(latents[i : i + 4]) for i in range(0, 10, 4)]
    expected = to_uint8(torch.cat(images)).permute(0, 2, 3, 1).numpy()

    written = write_samples(
        generator, tmp_path / "s", 10, seed=5, truncation=truncation, batch_size=4
    )
    assert [p.name for p in written] == [f"{i:06d}.png" for i in range(10)]
    assert np.array_equal(np.stack(_pngs(tmp_path / "s")), expected)
    write_images(generator, make_latents(10, 128, 5, truncation), tmp_path / "m", batch_size=3)
    assert np.array_equal(np.stack(_pngs(tmp_path / "m")), expected)

    grid = write_samples(
        generator, tmp_path / "g", 10, seed=5, truncation=truncation, batch_size=4, grid=True
    )
    assert [p.name for p in grid] == ["grid.png"]
    reference = grid_uint8(torch.cat(images)).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(grid[0])), reference)


def test_latents_are_drawn_in_bounded_blocks_that_make_make_latents() -> None:
    rows = LATENT_BLOCK_ELEMENTS // 128
    # a count that fits in one block is one draw, as before
    assert torch.equal(
        make_latents(rows, 128, 3),
        torch.randn(rows, 128, generator=torch.Generator().manual_seed(3)),
    )
    blocks = list(latent_blocks(2 * rows + 5, 128, 3, 1.5))
    assert [b.shape[0] for b in blocks] == [rows, rows, 5]
    assert torch.equal(torch.cat(blocks), make_latents(2 * rows + 5, 128, 3, 1.5))
    assert torch.equal(blocks[0], make_latents(rows, 128, 3, 1.5))
    assert max(b.abs().max() for b in blocks) <= 1.5


def test_generate_batches_regroups_blocks_into_whole_batches(generator: Generator) -> None:
    latents = torch.randn(15, 128)
    blocks = [latents[:5], latents[5:8], latents[8:]]
    from_blocks = list(generate_batches(generator, blocks, batch_size=4))
    from_tensor = list(generate_batches(generator, latents, batch_size=4))
    assert [b.shape[0] for b in from_blocks] == [4, 4, 4, 3]
    assert all(torch.equal(a, b) for a, b in zip(from_blocks, from_tensor, strict=True))


@pytest.mark.parametrize(
    ("count", "nrow", "channels"), [(1, None, 3), (5, None, 3), (7, 3, 1), (6, 100, 4)]
)
def test_grid_from_batches_equals_grid_of_all(count: int, nrow: int | None, channels: int) -> None:
    images = torch.rand(count, channels, 6, 5, generator=torch.Generator().manual_seed(count))
    images = images * 2.2 - 1.1
    batched = grid_uint8_batches(images.split(2), count, nrow)
    assert torch.equal(batched, grid_uint8(images, nrow))
    with pytest.raises(FaganError, match="announced"):
        grid_uint8_batches(images.split(2), count + 1, nrow)


def _reference_gif(frames: list[np.ndarray], path: Path, fps: float) -> bytes:
    """The all-frames-in-memory GIF: a palette from 16 evenly spaced frames, Pillow's save."""
    stack = np.stack(frames)
    picks = evenly_spaced(list(range(len(stack))), 16)
    palette = Image.fromarray(np.concatenate([stack[k] for k in picks])).quantize(
        256, method=Image.Quantize.MEDIANCUT
    )
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in stack]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000.0 / fps)),
        loop=0,
        optimize=False,
    )
    return path.read_bytes()


@pytest.mark.parametrize(
    ("seeds", "steps", "loop", "batch_size"),
    [([1, 5, 9], 7, False, 4), ([3, 4], 20, True, 64), ([2, 8, 6, 1], 6, False, 5)],
)
def test_streamed_walk_equals_all_frames_at_once(
    generator: Generator, tmp_path: Path, seeds: list[int], steps: int, loop: bool, batch_size: int
) -> None:
    walk = interpolate(generator, seeds, steps=steps, loop=loop, batch_size=batch_size)
    images = walk.images  # all frames, generated in one go
    frames = list(to_uint8(images).permute(0, 2, 3, 1).numpy())
    assert len(frames) == (len(seeds) * steps if loop else (len(seeds) - 1) * steps + 1)
    # frames read at random (the palette pass) equal those of the writing pass
    picks = [0, 3, len(frames) - 1]
    assert all(
        np.array_equal(a, frames[k]) for a, k in zip(walk.frames_at(picks), picks, strict=True)
    )
    assert all(np.array_equal(a, b) for a, b in zip(walk, frames, strict=True))

    files = write_interpolation(
        walk, tmp_path / "w.gif", fps=12, mp4=False, strip=tmp_path / "s.png", strip_frames=5
    )
    assert files.gif.read_bytes() == _reference_gif(frames, tmp_path / "ref.gif", 12)
    shown = evenly_spaced(list(range(len(frames))), 5)
    assert files.strip_frames == shown and files.num_frames == len(frames)
    strip = grid_uint8(images[shown], nrow=len(shown)).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(files.strip)), strip)


def test_streamed_progress_gif_equals_all_frames_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (18, 26, 3), dtype=np.uint8) for _ in range(40)]
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"gen_1_{index}.png")
    out = make_progress_gif(folder, tmp_path / "p.gif", fps=5)
    assert out.read_bytes() == _reference_gif(frames, tmp_path / "ref.gif", 5)
    assert (
        write_gif(sample_dir_frames(folder), tmp_path / "q.gif", fps=5).read_bytes()
        == out.read_bytes()
    )


# ----------------------------------------------------------------------------- library bounds
def test_library_bounds_fail_before_any_work(generator: Generator, tmp_path: Path) -> None:
    with pytest.raises(FaganError, match="1,000,001 frames"):
        interpolate(generator, [1, 2], steps=1_000_000)
    with pytest.raises(FaganError, match="between 1 and 1,000,000"):
        make_latents(1_000_001, 128, 0)
    with pytest.raises(FaganError, match="between 1 and 1,000,000"):
        latent_blocks(10**12, 128, 0)
    walk = interpolate(generator, [1, 2], steps=2)
    for fps in (0.05, 101, float("inf"), float("nan")):
        with pytest.raises(FaganError, match="from 0.1 to 100"):
            write_interpolation(walk, tmp_path / "w.gif", fps=fps)
    assert not (tmp_path / "w.gif").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: torch.randn(3, 128).to_sparse_csr(), "sparse_csr"),
        (lambda: torch.randn(3, 128).to(torch.complex64), "found complex64"),
        (lambda: torch.zeros(3, 128, dtype=torch.bool), "found bool"),
        (lambda: torch.full((3, 128), float("inf")), "NaN or infinite"),
        (lambda: torch.randn(0, 128), r"found \[0, 128\]"),
    ],
)
def test_read_latents_refuses(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "z.pt"
    with warnings.catch_warnings():  # torch's remark that sparse CSR support is in beta
        warnings.simplefilter("ignore")
        torch.save(make(), path)
    with pytest.raises(FaganError, match=message):
        read_latents(path, 128)


def test_read_latents_accepts_half_precision_and_the_originals_shape(tmp_path: Path) -> None:
    latents = torch.randn(3, 128)
    torch.save(latents.half().view(3, 128, 1, 1), tmp_path / "z.pt")
    got = read_latents(tmp_path / "z.pt", 128)
    assert got.dtype == torch.float32 and torch.equal(got, latents.half().float())


def test_long_loss_curves_are_drawn_as_their_envelope() -> None:
    rng = np.random.default_rng(0)
    values = 2.0 * np.exp(-np.arange(50_000) / 9_000) + rng.normal(0, 0.05, 50_000)
    values[[123, 31_000]] = [9.0, -4.0]  # spikes
    values[40_000:40_500] = np.nan  # a diverged stretch
    x, y = envelope(list(values), max_points=2_000)
    assert len(x) <= 2_000 and np.all(np.diff(x) > 0)
    assert np.array_equal(y[np.isfinite(y)], values[x][np.isfinite(y)])
    assert 123 in x and 31_000 in x  # every spike kept
    assert np.nanmax(y) == 9.0 and np.nanmin(y) == -4.0
    assert np.isnan(y).any()  # the gap stays a gap
    short = list(values[:1_500])
    x, y = envelope(short, max_points=2_000)
    assert np.array_equal(x, np.arange(1_500)) and np.array_equal(y, short)


# ----------------------------------------------------------------------------- file paths
def test_output_checks_name_the_path_and_what_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(
        FaganError,
        match=r"cannot write .*afile/x\.pt: .*afile is a file, "
        r"not a folder$",
    ):
        check_output_file(tmp_path / "afile" / "x.pt")
    with pytest.raises(FaganError, match=r"cannot write .*adir: it is a folder$"):
        check_output_file(tmp_path / "adir")
    with pytest.raises(FaganError, match=r"cannot write into .*afile: it is a file"):
        check_output_dir(tmp_path / "afile")
    assert (
        check_output_file(tmp_path / "new" / "deeper" / "x.png")
        == tmp_path / "new" / "deeper" / "x.png"
    )
    assert check_output_dir(tmp_path / "adir" / "sub") == tmp_path / "adir" / "sub"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_atomic_write_errors_name_the_destination_not_the_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic_write(tmp_path / "adir.png", lambda tmp: tmp.write_bytes(b"x"))
    assert info.value.filename == str(tmp_path / "adir.png")

    def fails(tmp: Path) -> None:
        raise PermissionError(13, "Permission denied", str(tmp))

    with pytest.raises(PermissionError) as info:
        atomic_write(tmp_path / "p.png", fails)
    assert info.value.filename == str(tmp_path / "p.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png"]  # no temporary left
