"""The web page in a real browser (Debian's chromium, headless, driven by Playwright), as a new user would use
it: empty and error states, search by words, a result's detail with its regions, "more like this", search
by an uploaded image with a drawn box and its COCO download, a support set made from uploads and used to
segment, and a phone-width window. Controls are found by their accessible names, as a screen reader would.
Each step leaves a screenshot under the test's tmp_path."""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import pytest

from tests.support.ports import free_port
from tests.support.service import Service, png_bytes, scene_example, service_config, wait_until_healthy

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLOW = 120_000  # ms: a search or a segmentation on a loaded two-core machine
# Pixels of a canvas that are not fully transparent.
PAINTED = """(canvas) => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count++;
  return count;
}"""
SHOTS = os.environ.get("MASKDEX_SHOTS")  # also copy the screenshots here (for a review of the page)


@pytest.fixture(scope="module")
def service(serve_db, ray_local, tmp_path_factory):
    """The service over a copy of the index without support sets, so the page starts from a clean slate."""
    from ray import serve

    from maskdex.jobs.serve.app import start
    from maskdex.jobs.serve.config import parse_config

    source, photos = serve_db
    db = str(tmp_path_factory.mktemp("browser_db") / "db")
    shutil.copytree(source, db, ignore=shutil.ignore_patterns("supports.lance", "segmentations.lance"))
    url = start(parse_config(service_config(db)), host="127.0.0.1", port=free_port())
    wait_until_healthy(url, 120)
    yield Service(url, db, photos)
    serve.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, service):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(service.url + "/")
    yield page
    context.close()
    assert not errors, errors


def shot(page, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        shutil.copy(path, os.path.join(SHOTS, path.name))


def wait_for_results(page) -> str:
    page.wait_for_function("() => /results for|Nothing matched|error/.test("
                           "document.getElementById('search-status').textContent + "
                           "document.getElementById('search-status').className)", timeout=SLOW)
    return page.locator("#search-status").inner_text()


def result_buttons(page):
    return page.get_by_role("button", name=re.compile(r"^Result \d+: "))


def test_empty_and_error_states_speak_plainly(page, service, tmp_path):
    page.get_by_role("button", name="Search", exact=True).click()
    assert "Type some words or add an example image" in page.locator("#search-status").inner_text()
    shot(page, tmp_path, "01-empty-search")
    page.get_by_role("tab", name="Segment").click()
    assert page.get_by_role("button", name="Segment", exact=True).is_disabled()
    assert page.get_by_text("No support sets yet").first.is_visible()
    shot(page, tmp_path, "02-segment-nothing-to-segment")
    page.get_by_role("tab", name="Support sets").click()
    assert page.get_by_text("No support sets yet. A support set is").is_visible()
    image, labels, classes = scene_example(seed=40, must=0)
    (tmp_path / "image.png").write_bytes(png_bytes(image))
    (tmp_path / "labels.png").write_bytes(png_bytes(labels.astype("uint8")))
    page.get_by_label("Set name").fill("scenes")
    page.get_by_label("Image", exact=True).set_input_files(str(tmp_path / "image.png"))
    page.get_by_label("Label map (PNG)").set_input_files(str(tmp_path / "labels.png"))
    page.get_by_label("Class names, in order").fill(",".join(classes))
    page.get_by_role("button", name="Add example").click()  # no token: the service refuses the write
    status = page.locator("#set-status")
    status.filter(has_text="token").wait_for(timeout=SLOW)
    assert status.inner_text() == "The service asks for its token: enter it under Support sets."
    page.get_by_role("tab", name="Search").click()
    (tmp_path / "notes.png").write_bytes(b"these are notes, not a picture")
    page.get_by_label("Example image", exact=True).set_input_files(str(tmp_path / "notes.png"))
    page.locator("#search-status").filter(has_text="could not be shown").wait_for()
    assert page.locator("#search-status").inner_text() == "That file could not be shown as an image."
    # This service has no re-ranker, so the page does not offer one.
    assert not page.get_by_label("Double-check the top results with a vision-language model").is_visible()
    shot(page, tmp_path, "03-errors-in-plain-words")
    for text in (page.locator("#search-status").inner_text(), status.inner_text()):
        assert service.db not in text and "?set=" not in text


def test_search_by_words_then_a_result_its_regions_and_more_like_this(page, service, tmp_path):
    page.get_by_label("Describe what to find").fill("a cat")
    page.get_by_label("Describe what to find").press("Enter")  # the keyboard submits
    assert re.fullmatch(r"3 results for “a cat”\.", wait_for_results(page))
    buttons = result_buttons(page)
    assert buttons.count() == 3
    first = buttons.first
    assert re.search(r"Result 1: \w+\.jpg, match \d\.\d\d\. Open its regions\.", first.get_attribute("aria-label"))
    mask = first.locator("canvas.mask")
    assert mask.evaluate("(c) => getComputedStyle(c).opacity") == "0"
    first.hover()
    page.wait_for_function("(c) => getComputedStyle(c).opacity === '1'", arg=mask.element_handle())
    assert mask.evaluate(PAINTED) > 0  # the matched region, shown over the photo on hover
    assert page.locator(".result .score").first.get_attribute("title").startswith("How close")
    shot(page, tmp_path, "04-results-with-mask-on-hover")

    first.click()
    dialog = page.get_by_role("dialog")
    toggles = dialog.get_by_role("checkbox")
    toggles.first.wait_for(timeout=SLOW)
    name = dialog.get_by_role("heading", level=2).inner_text()
    assert name.endswith(".jpg") and name in first.get_attribute("aria-label")
    labels = [dialog.locator(f"label[for='{t.get_attribute('id')}']").inner_text() for t in toggles.all()]
    assert labels[0].endswith("(the match)") and all("(the match)" not in label for label in labels[1:])
    assert [t.is_checked() for t in toggles.all()] == [True] + [False] * (len(labels) - 1)
    canvas = page.locator("#detail-canvas")
    assert canvas.get_attribute("data-regions-shown") == "1"
    shot(page, tmp_path, "05-detail-matched-region")
    dialog.get_by_role("checkbox", name=labels[1]).check()
    assert canvas.get_attribute("data-regions-shown") == "2"
    dialog.get_by_role("checkbox", name=labels[0]).uncheck()
    assert canvas.get_attribute("data-regions-shown") == "1"
    shot(page, tmp_path, "06-detail-regions-toggled")

    number = labels[0].split()[1]
    dialog.get_by_role("button", name=f"More like region {number}").click()
    assert not dialog.is_visible()
    status = wait_for_results(page)
    assert f"like region {number} of {name}" in status
    assert page.get_by_text(f"Searching like region {number} of {name}.").is_visible()
    # The example's own image is left out by default; with it kept, its region comes first.
    assert name not in [b.get_attribute("aria-label") for b in result_buttons(page).all()][0]
    page.get_by_label("Leave out the example's own image").uncheck()
    page.get_by_role("button", name="Search", exact=True).click()
    wait_for_results(page)
    assert f": {name}, match 1.00" in result_buttons(page).first.get_attribute("aria-label")
    shot(page, tmp_path, "07-more-like-this")


def test_search_by_an_uploaded_image_with_a_drawn_box_and_download_coco(page, service, tmp_path):
    from pycocotools.coco import COCO

    photo = service.photos["astronaut"]
    page.get_by_label("Example image", exact=True).set_input_files(str(photo))
    canvas = page.get_by_role("img", name=re.compile("Example image: drag to draw a box"))
    canvas.wait_for()
    assert page.get_by_text("Drag on the image to search for just one part of it.").is_visible()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.1)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    drawn = page.locator("#example-box-label").inner_text()
    assert re.fullmatch(r"Box: x \d+, y \d+, \d+ by \d+ pixels\.", drawn)
    assert page.get_by_role("button", name="Clear box").is_visible()
    shot(page, tmp_path, "08-example-with-a-drawn-box")
    page.get_by_role("button", name="Search", exact=True).click()
    status = wait_for_results(page)
    assert status == f"2 results for like {photo.name} (the box)."  # its own image is left out
    own = hashlib.sha256(photo.read_bytes()).hexdigest()
    assert own not in [item.get_attribute("data-image-id") for item in page.locator(".result").all()]
    shot(page, tmp_path, "09-results-for-the-box")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download as COCO").click()
    path = tmp_path / "results.json"
    download.value.save_as(path)
    coco = COCO(str(path))
    assert len(coco.getAnnIds()) == 2
    for annotation in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(annotation["image_id"])[0]
        assert coco.annToMask(annotation).shape == (image["height"], image["width"])


def test_a_support_set_made_on_the_page_segments_an_upload_and_can_be_removed(page, service, tmp_path):
    from tests.support.service import TOKEN

    page.get_by_role("tab", name="Support sets").click()
    page.get_by_label("Service token (if the service asks for one)").fill(TOKEN)
    for seed, must in ((40, 0), (41, 1)):
        image, labels, classes = scene_example(seed=seed, must=must)
        (tmp_path / f"image{seed}.png").write_bytes(png_bytes(image))
        (tmp_path / f"labels{seed}.png").write_bytes(png_bytes(labels.astype("uint8")))
        page.get_by_label("Set name").fill("scenes")
        page.get_by_label("Image", exact=True).set_input_files(str(tmp_path / f"image{seed}.png"))
        page.get_by_label("Label map (PNG)").set_input_files(str(tmp_path / f"labels{seed}.png"))
        page.get_by_label("Class names, in order").fill(",".join(classes))
        page.get_by_role("button", name="Add example").click()
        page.locator("#set-status").filter(has_text="Added to").wait_for(timeout=SLOW)
    counts = page.get_by_role("list", name="Classes of scenes")
    counts.wait_for()
    assert re.search(r"\w+: [12] examples?", counts.inner_text())
    assert not page.get_by_text("No support sets yet. A support set is").is_visible()
    shot(page, tmp_path, "10-support-set-made-on-the-page")

    page.get_by_role("tab", name="Segment").click()
    segment = page.get_by_role("button", name="Segment", exact=True)
    assert segment.is_disabled()  # a set, but nothing to segment yet
    upload = tmp_path / "scene.png"
    upload.write_bytes(png_bytes(scene_example(seed=50, must=1)[0]))
    page.get_by_label("Image to segment").set_input_files(str(upload))
    page.get_by_label("Support set", exact=True).select_option("scenes")
    assert segment.is_enabled()
    segment.click()
    page.locator("#segment-status").filter(has_text=re.compile("Done|class names alone|error")).wait_for(timeout=SLOW)
    assert page.locator("#segment-status").inner_text() == "Done."
    legend = page.get_by_role("list", name="Classes found").get_by_role("listitem")
    assert legend.count() >= 2 and all("% of the image (from " in item.inner_text() for item in legend.all())
    # The picture sits beside the form, in the first screen.
    picture, form = page.locator("#segment-canvas").bounding_box(), page.get_by_role("form", name="Segment an image").bounding_box()
    assert picture["x"] + picture["width"] <= form["x"] and picture["y"] < 800 and form["y"] < 800
    shot(page, tmp_path, "11-segmented-with-the-set")

    # A search result, picked from its detail view, is segmented beside its picture too; the corpus has no
    # stored segmentation yet, and the page says so in words.
    page.get_by_role("tab", name="Search").click()
    page.get_by_label("Describe what to find").fill("a cat")
    page.get_by_label("Describe what to find").press("Enter")
    wait_for_results(page)
    result_buttons(page).first.click()
    page.get_by_role("dialog").get_by_role("button", name="Segment this image").click()
    assert page.get_by_role("tabpanel", name="Segment").is_visible()
    assert page.locator("#segment-picked").inner_text().startswith("Segmenting ")
    page.get_by_role("button", name="Show the stored segmentation").click()
    page.locator("#segment-status.error").wait_for(timeout=SLOW)
    assert "the corpus has not been segmented with it yet" in page.locator("#segment-status").inner_text()
    segment.click()
    page.locator("#segment-status").filter(has_text=re.compile("^Done")).wait_for(timeout=SLOW)
    shot(page, tmp_path, "12-a-result-segmented")

    page.get_by_role("tab", name="Support sets").click()
    remove = page.get_by_role("button", name="Remove set scenes")
    remove.click()
    page.get_by_role("button", name="Remove set scenes: press again to confirm").click()
    page.get_by_text("No support sets yet. A support set is").wait_for(timeout=SLOW)
    assert service.get("/supports").json()["sets"] == {}
    shot(page, tmp_path, "13-set-removed")


def test_the_page_works_at_phone_width(browser, service, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(service.url + "/")
    page.get_by_label("Describe what to find").fill("a cup of coffee")
    page.get_by_label("Describe what to find").press("Enter")
    assert wait_for_results(page).startswith("3 results")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    first = result_buttons(page).first.bounding_box()
    assert first["x"] >= 0 and first["x"] + first["width"] <= 390
    shot(page, tmp_path, "14-phone-width")
    context.close()
