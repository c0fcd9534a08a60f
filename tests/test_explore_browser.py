"""`fagan explore` in a real browser: headless Chromium driven by Selenium.

The page is loaded from a live server and, exported, from disk (file://) with no server.
Chromium runs with every host name unresolvable but the server's address, and the test
checks that the page fetched nothing from anywhere else. Hovering two pixels must draw
different attention overlays, and the strongest position the page reports for a query
must be the one in the layer's own map.
"""

from __future__ import annotations

import base64
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_lfw_faces
from test_explore import own_maps, write_small_networks

from fagan.attention_maps import load_discriminator, load_image
from fagan.explore import Explorer, ImageRequest, export_page, make_server
from fagan.generate import load_generator, make_latents

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver); no browser is downloaded",
)

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

# the displayed image is 32 x 32 pixels of the model; these two fall in different cells of
# every layer (4x4, 8x8 and 16x16 grids)
QUERIES = ((3, 4), (27, 22))


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory):
    gen, dis = write_small_networks(tmp_path_factory.mktemp("browser_models"), seed=3)
    return load_generator(gen, "small32"), load_discriminator(dis, "small32")


@pytest.fixture(scope="module")
def explorer(networks) -> Explorer:
    return Explorer(*networks)


@pytest.fixture(scope="module")
def live_explorer(networks) -> Explorer:
    """Sends the 4x4 and 8x8 layers' maps with each image; the 16x16 layer's rows are
    fetched per query."""
    return Explorer(*networks, inline_max_positions=64)


@pytest.fixture(scope="module")
def server_url(live_explorer: Explorer):
    httpd = make_server(live_explorer, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    status = driver.execute_script("return document.getElementById('status').textContent")
    raise AssertionError(f"timed out waiting for {script!r}; page status: {status!r}")


def hover(driver, x: int, y: int) -> None:
    """Moves the pointer over pixel (x, y) of the displayed image."""
    canvas = driver.find_element(By.ID, "image")
    rect = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas
    )
    size = driver.execute_script("return arguments[0].width;", canvas)
    dx = (x + 0.5) * rect[0] / size - rect[0] / 2  # offsets from the element's centre
    dy = (y + 0.5) * rect[1] / size - rect[1] / 2
    ActionChains(driver).move_to_element_with_offset(canvas, round(dx), round(dy)).perform()
    wait_for(
        driver,
        "return [...document.querySelectorAll('canvas[data-layer]')]"
        f".every(c => c.dataset.query === '{x},{y}')",
    )


PANELS = """
return [...document.querySelectorAll('canvas[data-layer]')].map(c => {
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0; for (let i = 0; i < px.length; i += 4) sum += px[i] + 2 * px[i + 1] + 3 * px[i + 2];
  const stats = c.closest('.panel').querySelector('.stats').textContent;
  return [c.dataset.net + '/' + c.dataset.layer, sum, stats];
});
"""


def image_pixels(driver) -> np.ndarray:
    data = driver.execute_script(
        "const c = document.getElementById('image');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);"
    )
    side = int(round((len(data) // 4) ** 0.5))
    return np.array(data, dtype=np.uint8).reshape(side, side, 4)[..., :3]


def expected_peaks(
    networks, seed: int, truncation: float | None, query, fetched: Explorer | None = None
) -> tuple[dict[str, tuple], torch.Tensor]:
    """For each layer: the (row, col) of the largest probability in the query's row (the
    first one on ties, as the page reports it), and the generated image.

    Rows come from the layers' own maps, or for layers that ``fetched`` leaves to per-query
    requests, from its answer to that query.
    """
    generator, discriminator = networks
    image, g_maps = own_maps(generator, make_latents(1, 128, seed, truncation))
    _, d_maps = own_maps(discriminator, image)
    peaks = {}
    for net, maps in (("generator", g_maps), ("discriminator", d_maps)):
        for name, attention in maps.items():
            side = int(round(attention.shape[0] ** 0.5))
            row = attention[(query[1] * side // 32) * side + query[0] * side // 32]
            if fetched is not None and side * side > fetched.inline_max_positions:
                answer = fetched.query(net, name, *query, request=ImageRequest(seed, truncation))
                row = torch.from_numpy(
                    np.frombuffer(base64.b64decode(answer["row"]), "<f2").astype(np.float32)
                )
            # the page gets float16 values: near-uniform rows can tie there
            index = int(torch.argmax(row.half().float()))
            peaks[f"{net}/{name}"] = (index // side, index % side)
    return peaks, image


def check_page(
    driver, networks, seed: int, truncation: float | None, fetched: Explorer | None = None
) -> None:
    """The image is the model's, and hovering draws each layer's own map for the query."""
    _, image = expected_peaks(networks, seed, truncation, QUERIES[0])
    expected_image = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert np.array_equal(image_pixels(driver), expected_image.permute(1, 2, 0).numpy())
    drawn = []
    for x, y in QUERIES:
        hover(driver, x, y)
        panels = driver.execute_script(PANELS)
        assert [name for name, _, _ in panels] == [
            "generator/model.0",
            "generator/model.2",
            "discriminator/model.1",
        ]
        peaks, _ = expected_peaks(networks, seed, truncation, (x, y), fetched)
        for name, _, stats in panels:
            assert f"at {peaks[name][0]},{peaks[name][1]} " in stats, (name, stats, peaks[name])
        drawn.append({name: total for name, total, _ in panels})
    for name in drawn[0]:
        assert drawn[0][name] != drawn[1][name], f"{name}: the overlay did not change"


def fetched_elsewhere(driver, allowed_prefix: str) -> list[str]:
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [u for u in urls if not (u.startswith(allowed_prefix) or u.startswith("data:"))]


def test_served_page_shows_the_image_and_each_layers_attention(
    browser, server_url, networks, live_explorer: Explorer, tmp_path: Path
) -> None:
    browser.get(server_url)
    wait_for(browser, "return document.body.dataset.ready")
    assert "2 attention layers" in browser.find_element(By.ID, "model-info").text
    check_page(browser, networks, seed=0, truncation=None, fetched=live_explorer)
    # a new seed and a truncation: the page asks the server again
    seed_box = browser.find_element(By.ID, "seed")
    seed_box.clear()
    seed_box.send_keys("42")
    browser.find_element(By.ID, "truncation-on").click()
    wait_for(
        browser, "return document.getElementById('status').textContent === 'seed 42, truncation 1'"
    )
    check_page(browser, networks, seed=42, truncation=1.0, fetched=live_explorer)
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert any("/api/query?" in url and "layer=model.2" in url for url in fetched)
    assert "data:image/png;base64," in browser.find_element(By.ID, "download").get_attribute("href")
    # an image opened for the critic: its score, its layer, no generator layers
    face = write_lfw_faces(tmp_path, 32, count=1, start=7) / "face_007.png"
    browser.find_element(By.ID, "upload").send_keys(str(face))
    wait_for(
        browser,
        "return document.getElementById('status').textContent"
        ".startsWith('face_007.png as the critic sees it')",
    )
    score = own_maps(networks[1], load_image(face, 32)[None])[0]
    assert f"D(x) = {float(score[0]):.4f}" in browser.find_element(By.ID, "score").text
    hover(browser, 20, 9)
    panels = browser.execute_script(PANELS)
    assert [name for name, _, _ in panels] == ["discriminator/model.1"]
    assert fetched_elsewhere(browser, server_url) == []


def test_exported_page_works_from_disk_without_a_server(
    browser, explorer, networks, tmp_path: Path
) -> None:
    page = export_page(explorer, [5, 6], tmp_path / "explore.html")
    browser.get(page.as_uri())
    wait_for(browser, "return document.body.dataset.ready")
    assert browser.find_element(By.ID, "seed").is_displayed() is False
    check_page(browser, networks, seed=5, truncation=None)
    browser.execute_script(
        "const s = document.getElementById('seed-select'); s.value = '1';"
        "s.dispatchEvent(new Event('change'));"
    )
    wait_for(browser, "return document.getElementById('status').textContent === 'seed 6'")
    browser.execute_script(
        "document.querySelectorAll('canvas[data-layer]').forEach(c => delete c.dataset.query)"
    )
    check_page(browser, networks, seed=6, truncation=None)
    assert fetched_elsewhere(browser, "file://") == []
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_class_picker_of_a_conditional_generator(browser, tmp_path: Path) -> None:
    """The page lists the classes by name, starts with the explorer's class, and asks for
    (live) or shows (exported) the image of the class picked."""
    from test_conditional_cli import CLASSES, conditional_networks

    generator, discriminator = conditional_networks()
    generator.class_names = tuple(CLASSES)
    explorer = Explorer(generator, discriminator, label=1)

    def expected(seed: int, label: int) -> np.ndarray:
        with torch.no_grad():
            image = generator(make_latents(1, 128, seed), torch.tensor([label]))
        return (
            ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        )

    def pick(label: int, status: str) -> None:
        browser.execute_script(
            f"const s = document.getElementById('class'); s.value = '{label}';"
            "s.dispatchEvent(new Event('change'));"
        )
        wait_for(browser, f"return document.getElementById('status').textContent === '{status}'")

    options = "return [...document.getElementById('class').options].map(o => o.textContent)"
    httpd = make_server(explorer, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(httpd.url)
        wait_for(browser, "return document.body.dataset.ready")
        assert browser.execute_script(options) == ["0 \u00b7 cat", "1 \u00b7 dog", "2 \u00b7 bird"]
        assert browser.find_element(By.ID, "class-row").is_displayed()
        wait_for(
            browser,
            "return document.getElementById('status').textContent === 'seed 0, class 1 \u00b7 dog'",
        )
        assert np.array_equal(image_pixels(browser), expected(0, 1))
        pick(2, "seed 0, class 2 \u00b7 bird")
        assert np.array_equal(image_pixels(browser), expected(0, 2))
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert any("/api/generate?" in url and "class=2" in url for url in fetched)
    finally:
        httpd.shutdown()
        httpd.server_close()
    page = export_page(explorer, [3], tmp_path / "classes.html", classes=[2, 0])
    browser.get(page.as_uri())
    wait_for(browser, "return document.body.dataset.ready")
    assert browser.execute_script(options) == ["0 \u00b7 cat", "2 \u00b7 bird"]
    wait_for(
        browser,
        "return document.getElementById('status').textContent === 'seed 3, class 0 \u00b7 cat'",
    )
    assert np.array_equal(image_pixels(browser), expected(3, 0))
    pick(2, "seed 3, class 2 \u00b7 bird")
    assert np.array_equal(image_pixels(browser), expected(3, 2))
    assert fetched_elsewhere(browser, "file://") == []
