"""`fagan explore`: the HTTP API against a live server with small32 networks.

Images are compared with `fagan generate`'s files, maps with the layers' own attention
probabilities captured by :func:`fagan.layers.capture_attention`, and every kind of bad
request must get a 4xx JSON answer while the server keeps serving.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import pytest
import torch
from conftest import write_lfw_faces
from PIL import Image

from fagan.attention_maps import load_discriminator, load_image
from fagan.cli import main
from fagan.config import load_config, resolve_config_path
from fagan.explore import Explorer, make_server
from fagan.explore.params import MAX_UPLOAD_BYTES
from fagan.generate import load_generator, make_latents, write_images
from fagan.latents import slerp
from fagan.layers import attention_layers, capture_attention
from fagan.networks import Discriminator, Generator

SRC = Path(__file__).resolve().parents[1] / "src"


# --------------------------------------------------------------------------- fixtures
def write_small_networks(folder: Path, seed: int = 11) -> tuple[Path, Path]:
    """Freshly initialised small32 weights (plain state dicts, ``--*_config small32``),
    with every attention layer's g set away from its initial 0."""
    torch.manual_seed(seed)
    generator = Generator(load_config(resolve_config_path("small32", "gen")))
    discriminator = Discriminator(load_config(resolve_config_path("small32", "dis")))
    with torch.no_grad():
        for index, layer in enumerate(
            [*attention_layers(generator).values(), *attention_layers(discriminator).values()]
        ):
            layer.gamma.fill_(0.2 + 0.1 * index)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(generator.state_dict(), folder / "GAN_GEN_1.pth")
    torch.save(discriminator.state_dict(), folder / "GAN_DIS_1.pth")
    return folder / "GAN_GEN_1.pth", folder / "GAN_DIS_1.pth"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_small_networks(tmp_path_factory.mktemp("explore_models"))


@pytest.fixture(scope="module")
def networks(files):
    return (load_generator(files[0], "small32"), load_discriminator(files[1], "small32"))


@pytest.fixture(scope="module")
def server(networks):
    """A live server on a free port, serving from its own thread; yields its address."""
    httpd = make_server(Explorer(*networks), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[:2]
    httpd.shutdown()
    httpd.server_close()


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        assert self.headers["content-type"] == "application/json", self.body[:200]
        return json.loads(self.body)


def call(
    address,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One raw request (the path is sent as given, not normalised)."""
    connection = http.client.HTTPConnection(*address, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def model_flags(files: tuple[Path, Path], critic: bool = False) -> list[str]:
    flags = ["--generator_file", str(files[0]), "--generator_config", "small32"]
    if critic:
        flags += ["--discriminator_file", str(files[1]), "--discriminator_config", "small32"]
    return flags


def raw(address, request: bytes) -> bytes:
    """The server's whole reply to ``request`` sent as it is on a socket."""
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def get(address, path: str, **params) -> Answer:
    return call(address, "GET", f"{path}?{urlencode(params)}" if params else path)


def decode(b64: str, dtype: str, shape) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(b64), dtype={"float16": "<f2", "float32": "<f4"}[dtype])
    return torch.from_numpy(array.astype(np.float32)).reshape(shape)


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def data_url_array(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return png_array(base64.b64decode(url[len(prefix) :]))


def own_maps(model: torch.nn.Module, inputs: torch.Tensor):
    """The model's output and every attention layer's (N, N) probabilities."""
    with torch.no_grad(), capture_attention(model) as maps:
        output = model(inputs)
        return output, {name: m[0].clone() for name, m in maps.items()}


# --------------------------------------------------------------------------- answers
def test_info_lists_the_models_attention_layers(server, networks) -> None:
    info = get(server, "/api/info").json()
    generator, discriminator = networks
    assert info["image_size"] == 32 and info["latent_size"] == 128
    assert info["num_classes"] == 0 and info["has_discriminator"]
    assert [layer["name"] for layer in info["layers"]["generator"]] == ["model.0", "model.2"]
    assert [tuple(layer["grid"]) for layer in info["layers"]["generator"]] == [(4, 4), (16, 16)]
    assert [layer["name"] for layer in info["layers"]["discriminator"]] == ["model.1"]
    assert info["limits"]["seed_max"] == str(2**63 - 1)


def test_image_is_fagan_generates(server, networks, files, tmp_path: Path) -> None:
    assert (
        main(
            [
                "generate",
                "--generator_file",
                str(files[0]),
                "--generator_config",
                "small32",
                "--output_dir",
                str(tmp_path),
                "--num_samples",
                "1",
                "--seed",
                "123",
            ]
        )
        == 0
    )
    for extra in ({}, {"truncation": "0.7"}):
        if extra:  # what `fagan generate --truncation 0.7` writes, without a second process
            write_images(networks[0], make_latents(1, 128, 123, 0.7), tmp_path / "t")
        expected = np.asarray(Image.open(tmp_path / ("t" if extra else "") / "000000.png"))
        png = get(server, "/api/image.png", seed=123, **extra)
        assert png.status == 200 and png.headers["content-type"] == "image/png"
        assert np.array_equal(png_array(png.body), expected)
        answer = get(server, "/api/generate", seed=123, **extra).json()
        assert np.array_equal(data_url_array(answer["image"]), expected)
        assert answer["request"] == {"seed": "123", **({"truncation": 0.7} if extra else {})}


def test_maps_are_the_layers_own_probabilities(server, networks) -> None:
    generator, discriminator = networks
    image, g_maps = own_maps(generator, make_latents(1, 128, 77))
    score, d_maps = own_maps(discriminator, image)
    exact = get(server, "/api/generate", seed=77, dtype="float32").json()
    compact = get(server, "/api/generate", seed=77).json()
    assert compact["dtype"] == "float16"
    for net, maps in (("generator", g_maps), ("discriminator", d_maps)):
        layers = exact[net]["layers"]
        assert [layer["name"] for layer in layers] == list(maps)
        for layer, small in zip(layers, compact[net]["layers"], strict=True):
            n = layer["positions"]
            assert layer["inline"] and n == layer["grid"][0] * layer["grid"][1]
            sent = decode(layer["maps"], "float32", (n, n))
            assert torch.equal(sent, maps[layer["name"]]), layer["name"]
            assert torch.allclose(sent.sum(-1), torch.ones(n), atol=1e-5)
            # not uniform: the comparison has structure to see
            assert (sent - 1 / n).abs().max() > 1e-5
            half = decode(small["maps"], "float16", (n, n))
            assert torch.equal(half, sent.half().float())
            assert torch.allclose(half.sum(-1), torch.ones(n), atol=2e-3)
            assert layer["gamma"] == pytest.approx(
                float(
                    dict(
                        generator.named_modules()
                        if net == "generator"
                        else discriminator.named_modules()
                    )[layer["name"]].gamma.detach()
                )
            )
    assert exact["discriminator"]["score"] == pytest.approx(float(score[0]), abs=1e-6)


def test_query_rows_equal_the_maps(server, networks) -> None:
    generator, discriminator = networks
    image, g_maps = own_maps(generator, make_latents(1, 128, 5, 0.8))
    _, d_maps = own_maps(discriminator, image)
    for net, maps, grids in (
        ("generator", g_maps, {"model.0": 4, "model.2": 16}),
        ("discriminator", d_maps, {"model.1": 8}),
    ):
        for name, side in grids.items():
            for x, y in ((0, 0), (31, 0), (13, 22), (31, 31)):
                answer = get(
                    server,
                    "/api/query",
                    net=net,
                    layer=name,
                    x=x,
                    y=y,
                    seed=5,
                    truncation=0.8,
                    dtype="float32",
                ).json()
                cell = (y * side // 32, x * side // 32)
                assert answer["cell"] == list(cell) and answer["grid"] == [side, side]
                row = decode(answer["row"], "float32", (side * side,))
                expected = maps[name][cell[0] * side + cell[1]]
                assert torch.allclose(row, expected, atol=1e-6, rtol=1e-5), (net, name, x, y)


def test_large_layers_are_left_to_queries(networks) -> None:
    explorer = Explorer(*networks, inline_max_positions=64)
    from fagan.explore import ImageRequest

    answer = explorer.generate(ImageRequest(3))
    inline = {layer["name"]: layer["maps"] is not None for layer in answer["generator"]["layers"]}
    assert inline == {"model.0": True, "model.2": False}
    assert [layer["inline"] for layer in explorer.info()["layers"]["generator"]] == [True, False]


def test_interpolation_between_two_seeds(server, networks) -> None:
    generator, _ = networks

    def image(**params) -> np.ndarray:
        return png_array(get(server, "/api/image.png", **params).body)

    start, end = image(seed=1), image(seed=2)
    assert np.array_equal(image(seed=1, seed2=2, mix=0), start)
    assert np.array_equal(image(seed=1, seed2=2, mix=1), end)
    middle = image(seed=1, seed2=2, mix=0.5)
    z = slerp(make_latents(1, 128, 1), make_latents(1, 128, 2), 0.5)
    with torch.no_grad():
        expected = generator(z)[0]
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    assert np.array_equal(middle, expected.numpy())
    assert not np.array_equal(middle, start) and not np.array_equal(middle, end)


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_upload_to_the_critic(server, networks, tmp_path: Path, kind: str) -> None:
    _, discriminator = networks
    faces = write_lfw_faces(tmp_path / "faces", 48, count=1, start=3)
    path = tmp_path / f"face.{kind.lower()}"
    Image.open(next(faces.iterdir())).crop((0, 4, 48, 44)).save(path, format=kind)  # 48x40
    data = path.read_bytes()
    answer = call(
        server,
        "POST",
        "/api/discriminate?dtype=float32",
        data,
        {"Content-Type": f"image/{kind.lower()}"},
    ).json()
    seen = load_image(path, 32)  # what `fagan attention --image` shows the critic
    score, maps = own_maps(discriminator, seen[None])
    assert answer["discriminator"]["score"] == pytest.approx(float(score[0]), abs=1e-6)
    layer = answer["discriminator"]["layers"][0]
    assert torch.equal(decode(layer["maps"], "float32", (64, 64)), maps["model.1"])
    assert answer["generator"] is None
    assert answer["upload"] == __import__("hashlib").sha256(data).hexdigest()
    shown = data_url_array(answer["image"])
    assert shown.shape == (32, 32, 3)
    row = get(
        server,
        "/api/query",
        net="discriminator",
        layer="model.1",
        x=20,
        y=9,
        upload=answer["upload"],
        dtype="float32",
    ).json()
    assert row["cell"] == [9 * 8 // 32, 20 * 8 // 32] == [2, 5]
    assert torch.allclose(
        decode(row["row"], "float32", (64,)), maps["model.1"][2 * 8 + 5], atol=1e-6
    )


# --------------------------------------------------------------------------- refusals
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BAD_GETS = [
    ("/api/generate?seed=-1", 400, "seed must be a whole number"),
    (f"/api/generate?seed={2**63}", 400, "seed must be a whole number"),
    (f"/api/generate?seed={10**40}", 400, "seed must be"),
    ("/api/generate?seed=1e3", 400, "seed"),
    ("/api/generate?seed=0x10", 400, "seed"),
    ("/api/generate?seed=", 400, "seed"),
    ("/api/generate", 400, "missing parameter 'seed'"),
    ("/api/generate?seed=1&truncation=nan", 400, "truncation must be a number"),
    ("/api/generate?seed=1&truncation=inf", 400, "truncation"),
    ("/api/generate?seed=1&truncation=0", 400, "truncation"),
    ("/api/generate?seed=1&truncation=1e400", 400, "truncation"),
    ("/api/generate?seed=1&truncation=-1", 400, "truncation"),
    ("/api/generate?seed=1&mix=0.5", 400, "mix needs seed2"),
    ("/api/generate?seed=1&seed2=2&mix=1.5", 400, "mix must be"),
    ("/api/generate?seed=1&class=0", 400, "unconditional"),
    ("/api/generate?seed=1&seed=2", 400, "more than once"),
    ("/api/generate?seed=1&colour=red", 400, "unknown parameter"),
    ("/api/generate?seed=1&dtype=float64", 400, "unknown dtype"),
    ("/api/generate?seed=1&&", 400, "malformed"),
    ("/api/query?net=generator&layer=model.9&x=0&y=0&seed=1", 400, "unknown generator layer"),
    ("/api/query?net=generator&layer=model.1&x=0&y=0&seed=1", 400, "unknown generator layer"),
    ("/api/query?net=generator&layer=model.0&x=32&y=0&seed=1", 400, "x must be"),
    ("/api/query?net=generator&layer=model.0&x=0&y=-1&seed=1", 400, "y must be"),
    ("/api/query?net=critic&layer=model.0&x=0&y=0&seed=1", 400, "unknown net"),
    ("/api/query?net=generator&layer=model.0&x=0&y=0", 400, "seed"),
    ("/api/query?net=discriminator&layer=model.1&x=0&y=0&upload=abc", 400, "64 hex"),
    (
        "/api/query?net=discriminator&layer=model.1&x=0&y=0&upload=" + "a" * 64,
        404,
        "no longer kept",
    ),
    (
        "/api/query?net=discriminator&layer=model.1&x=0&y=0&seed=1&upload=" + "a" * 64,
        400,
        "either upload or seed",
    ),
    ("/../../etc/passwd", 404, "not found"),
    ("/%2e%2e/%2e%2e/etc/passwd", 404, "not found"),
    ("/explore.js/../../../../etc/passwd", 404, "not found"),
    ("//etc/passwd", 404, "not found"),
    ("/assets/explore.js", 404, "not found"),
    ("/explorer.py", 404, "not found"),
    ("/..%2f__init__.py", 404, "not found"),
    ("/api/discriminate", 405, "takes POST"),
    ("/api/info?x=1", 400, "unknown parameter"),
]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server) -> None:
    for path, status, message in BAD_GETS:
        answer = call(server, "GET", path)
        assert answer.status == status, (path, answer.body)
        assert message in answer.json()["error"], (path, answer.body)
    refusals = [
        (call(server, "PUT", "/api/info"), 405),
        (call(server, "DELETE", "/"), 405),
        (call(server, "POST", "/api/generate?seed=1", b""), 404),
        (call(server, "GET", "/api/info", headers={"Host": "attacker.example:80"}), 403),
        (
            call(server, "POST", "/api/discriminate", b"GIF89a....", {"Content-Type": "image/gif"}),
            415,
        ),
        (
            call(
                server,
                "POST",
                "/api/discriminate",
                b"\xff\xd8\xff\xe0 not a png",
                {"Content-Type": "image/png"},
            ),
            415,
        ),
        (
            call(
                server,
                "POST",
                "/api/discriminate",
                PNG_MAGIC + b"\x00" * 64,
                {"Content-Type": "image/png"},
            ),
            400,
        ),
        (call(server, "POST", "/api/discriminate", b"", {"Content-Type": "image/png"}), 400),
    ]
    for answer, status in refusals:
        assert answer.status == status, answer.body
        assert answer.json()["error"]
    # a body over the limit is refused from its Content-Length, before it is read
    for length in (MAX_UPLOAD_BYTES + 1, 10**12):
        reply = raw(
            server,
            b"POST /api/discriminate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % length + PNG_MAGIC * 8192,
        )
        assert reply.startswith(b"HTTP/1.0 413") and b"at most 10485760" in reply
    reply = raw(
        server,
        b"POST /api/discriminate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.0 411")
    assert raw(server, b"\x16\x03\x01 hi there\r\n\r\n").startswith(b"HTTP/1.0 400")  # not HTTP
    assert raw(server, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 414")
    assert get(server, "/api/info").status == 200
    assert get(server, "/api/generate", seed=2**63 - 1).status == 200


def test_assets_are_the_package_data(server) -> None:
    import fagan.explore

    assets = Path(fagan.explore.__file__).parent / "assets"
    for path, name in (
        ("/", "index.html"),
        ("/explore.js", "explore.js"),
        ("/explore.css", "explore.css"),
    ):
        answer = call(server, "GET", path)
        assert answer.status == 200 and answer.body == (assets / name).read_bytes()
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff"
    page = (
        (assets / "index.html").read_text()
        + (assets / "explore.js").read_text()
        + (assets / "explore.css").read_text()
    )
    assert not re.search(r"https?://|//cdn|@import|url\(", page)


def test_concurrent_requests_are_answered_as_alone(server) -> None:
    serial = {
        seed: get(server, "/api/generate", seed=seed, dtype="float32").json() for seed in (3, 4)
    }
    jobs = [("/api/generate", {"seed": 3 + i % 2, "dtype": "float32"}) for i in range(16)]
    jobs += [("/api/generate", {"seed": "-5"})] * 4
    jobs += [
        ("/api/query", {"net": "generator", "layer": "model.2", "x": i, "y": 31 - i, "seed": 3})
        for i in range(8)
    ]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda job: get(server, job[0], **job[1]), jobs))
    for (path, params), answer in zip(jobs, answers, strict=True):
        if params.get("seed") == "-5":
            assert answer.status == 400
        elif path == "/api/generate":
            assert answer.status == 200 and answer.json() == serial[params["seed"]]
        else:
            assert answer.status == 200 and answer.json()["layer"] == "model.2"


# --------------------------------------------------------------------------- command line
def test_export_writes_one_self_contained_page(files, networks, tmp_path: Path, capsys) -> None:
    page = tmp_path / "page.html"
    assert (
        main(
            [
                "explore",
                *model_flags(files, critic=True),
                "--export",
                str(page),
                "--seeds",
                "0,9",
                "--truncation",
                "1.5",
            ]
        )
        == 0
    )
    assert f"wrote {page}" in capsys.readouterr().out
    html = page.read_text()
    assert '<script src="' not in html and '<link rel="stylesheet"' not in html
    assert not re.search(r"(src|href)=\"https?:", html)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    data = json.loads(
        re.search(
            r'<script id="fagan-data" type="application/json">(.*?)'
            r"</script>",
            html,
            re.S,
        ).group(1)
    )
    assert [r["request"] for r in data["results"]] == [
        {"seed": "0", "truncation": 1.5},
        {"seed": "9", "truncation": 1.5},
    ]
    _, maps = own_maps(networks[0], make_latents(1, 128, 9, 1.5))
    layer = data["results"][1]["generator"]["layers"][1]
    assert torch.equal(decode(layer["maps"], "float16", (256, 256)), maps["model.2"].half().float())
    assert data["results"][0]["discriminator"]["layers"][0]["name"] == "model.1"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--generator_file", "missing.pth"], "file not found: missing.pth"),
        (["--port", "70000"], "expected a port from 0 to 65535"),
        (["--port", "-1"], "expected a port"),
        (["--seeds", "1,2"], "--seeds goes with --export"),
        (["--export", "page.txt"], "--export must end in .html"),
        (["--export", "page.html", "--seeds", "1,x"], "seed must be a whole number"),
        (["--export", "page.html", "--seeds", "1,1"], "repeats a seed"),
        (["--truncation", "50"], "--truncation must be from"),
        (["--discriminator_config", "small32"], "goes with --discriminator_file"),
        (["--host", "no.such.host.invalid"], "cannot listen on no.such.host.invalid"),
    ],
)
def test_bad_command_lines_fail_in_one_line(
    files, flags, message, capsys, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        status = main(["explore", *model_flags(files), "--port", "0", *flags])
    except SystemExit as exit_:  # argparse's own refusals
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert err.startswith("fagan explore: error: ")
    assert not (tmp_path / "page.html").exists()


def test_port_in_use_fails_in_one_line(files, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["explore", *model_flags(files), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fagan explore: error: cannot listen on 127.0.0.1:{port}: ")
    assert len(err.splitlines()) == 1


def _default_sigint() -> None:
    """The child starts with Ctrl-C as a terminal gives it (default, unblocked), whatever
    the test runner's own disposition is (an ignored or blocked SIGINT is inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_serves_until_ctrl_c(files) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen(
        [sys.executable, "-m", "fagan", "explore", *model_flags(files), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url, line + process.stderr.read()
        info = get(("127.0.0.1", int(url.group(1))), "/api/info").json()
        assert info["has_discriminator"] is False
        assert (
            get(
                ("127.0.0.1", int(url.group(1))),
                "/api/query",
                net="discriminator",
                layer="model.1",
                x=0,
                y=0,
                seed=0,
            ).status
            == 404
        )
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=90)  # a loaded machine is slow to exit
    finally:
        process.kill()
    assert process.returncode == 130
    assert err.strip() == "fagan explore: interrupted"
    assert urlsplit(url.group(0)).hostname == "127.0.0.1"
