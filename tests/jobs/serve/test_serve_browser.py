"""The web page in a real browser (Debian's chromium, headless, driven by Playwright): search and see each
result's mask drawn over it; upload an image and see its segmentation with a legend."""

from __future__ import annotations

import os

import pytest

from tests.support.service import png_bytes, scene_example

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Alpha of the mask canvas's pixels above zero: the drawn mask (the rest of the canvas stays transparent).
MASK_PIXELS = """(canvas) => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count++;
  return [count, canvas.width * canvas.height];
}"""


@pytest.fixture(scope="module")
def page(service):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        browser.close()
    assert not errors, errors


def test_search_shows_results_with_their_masks(service, page):
    page.goto(service.url + "/")
    page.fill("#search-text", "a cat")
    page.fill("#search-k", "3")
    page.click("#search-form button[type=submit]")
    page.wait_for_function("document.getElementById('search-status').textContent.endsWith('results')",
                           timeout=60_000)
    assert page.inner_text("#search-status") == "3 results"
    cards = page.query_selector_all(".result")
    assert len(cards) == 3
    for card in cards:
        painted, total = card.query_selector("canvas.mask").evaluate(MASK_PIXELS)
        region = service.get(f"/images/{card.get_attribute('data-image-id')}/regions").json()
        assert total == region["width"] * region["height"]
        assert 0 < painted <= total
        photo = card.query_selector("canvas.photo")
        assert photo.evaluate("(c) => [c.width, c.height]") == [region["width"], region["height"]]


def test_segment_an_upload_and_see_the_legend(service, page, tmp_path):
    for cls in range(2):
        assert service.add_support("browser", *scene_example(seed=40 + cls, must=cls)).status_code == 200
    upload = tmp_path / "scene.png"
    upload.write_bytes(png_bytes(scene_example(seed=50, must=1)[0]))
    page.goto(service.url + "/")
    page.wait_for_selector("#segment-set option[value=browser]", state="attached", timeout=30_000)
    page.select_option("#segment-set", "browser")
    page.set_input_files("#segment-file", str(upload))
    page.click("#segment-form button[type=submit]")
    page.wait_for_function("['done', 'no class had examples: zero-shot'].includes("
                           "document.getElementById('segment-status').textContent) || "
                           "document.getElementById('segment-status').className === 'error'", timeout=120_000)
    assert page.inner_text("#segment-status") == "done"
    legend = page.inner_text("#legend")
    assert "examples" in legend and legend.count("%") == len(page.query_selector_all("#legend li")) >= 2
    size = page.eval_on_selector("#segment-canvas", "(c) => [c.width, c.height]")
    assert size == [64, 64]
    colours = page.eval_on_selector("#segment-canvas", """(c) => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      return new Set(Array.from({length: d.length / 4}, (_, i) => d[4 * i] + ',' + d[4 * i + 1])).size;
    }""")
    assert colours > 1  # the photo under the class colours, not a blank canvas
