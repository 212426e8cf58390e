"""The web page in a real browser: headless Chromium (Debian's chromium + chromium-driver) uploads a
photo through the file input, and the label and a non-blank Grad-CAM overlay appear; with a
calibration whose sets hold both classes, the page says the model cannot tell them apart.

Without Chromium the test is skipped, except under CI (``$CI`` set), where it fails: CI installs it.
``$RESNEXUS_SCREENSHOT=PATH`` also copies the screenshot there (how docs/serve.png was made).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromedriver")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the browser test needs Chromium under CI: {reason} (apt-get install chromium chromium-driver)")
    pytest.skip(reason)


@pytest.fixture
def server_url(live_server) -> str:
    return live_server(create_app_kwargs={})[0]


@pytest.fixture
def browser() -> Iterator:
    missing = [path for path in CHROMIUM if shutil.which(path) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM[0]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1000,1250",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMIUM[1]))
    except Exception as error:
        _unavailable(f"Chromium did not start: {error}")
    yield driver
    driver.quit()


def _photo(path: Path) -> Path:
    """A bright 240x320 'photo': a gradient with some noise."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:240, 0:320]
    base = 140 + 60 * np.stack([x / 320, y / 240, 1 - x / 320], axis=-1)
    Image.fromarray((base + rng.integers(0, 25, (240, 320, 3))).clip(0, 255).astype(np.uint8)).save(path)
    return path


OVERLAY_VARIANCE = """
const img = document.getElementById('overlay');
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0, sum = 0, sq = 0;
for (let i = 0; i < d.length; i += 4) { const v = d[i] + d[i + 1] + d[i + 2]; n++; sum += v; sq += v * v; }
return sq / n - (sum / n) ** 2;
"""


def test_page_uploads_a_photo_and_shows_label_bars_and_overlay(server_url, browser, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = _photo(tmp_path / "lesion.png")
    expected = httpx.post(
        f"{server_url}/v1/predict", files=[("files", (photo.name, photo.read_bytes(), "image/png"))]
    ).json()["predictions"][0]["label"]

    browser.get(server_url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "not a diagnosis; for research use" in d.find_element(By.ID, "card").text)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
    wait.until(
        lambda d: d.execute_script(
            "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth > 0"
        )
    )

    assert browser.find_element(By.ID, "label").text == expected
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 2
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    assert browser.execute_script("return document.getElementById('overlay').naturalWidth") == 256
    assert browser.execute_script(OVERLAY_VARIANCE) > 10.0  # a rendered overlay, not a blank image
    card = browser.find_element(By.ID, "card").text
    assert "resnet20_cifar" in card and "bright, dark" in card
    assert "trained on\n7 images from photos (5 more held back for validation and test)" in card
    assert browser.find_element(By.ID, "set").get_attribute("hidden") is not None  # no calibration, no set
    assert browser.find_element(By.ID, "bars-caption").text == "probabilities (not calibrated)"

    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot))
    if target := os.environ.get("RESNEXUS_SCREENSHOT"):  # a 256-colour copy: small enough to commit
        Image.open(shot).convert("RGB").quantize(256).save(target, optimize=True)


def test_page_says_when_the_model_cannot_tell_the_classes_apart(live_server, unsure_cv_dir, browser, tmp_path):
    """A calibration from 6 out-of-fold images has no finite 90 % threshold: the set holds both classes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = live_server(create_app_kwargs={}, checkpoint=unsure_cv_dir)[0]
    browser.get(url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "not a diagnosis; for research use" in d.find_element(By.ID, "card").text)
    card = browser.find_element(By.ID, "card").text
    assert "cross-validated accuracy\n62 % (95 % CI 52–71 %), 4 folds" in card
    assert "prediction sets\nhold the true class for 90 % of images like the training ones" in card
    assert "operating point\ndark from a calibrated probability of 0." in card
    browser.find_element(By.ID, "file").send_keys(str(_photo(tmp_path / "lesion.png")))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
    assert browser.find_element(By.ID, "set").text == (
        "could be either: bright or dark (the model cannot tell these apart at 90 % coverage)"
    )
    assert browser.find_element(By.ID, "bars-caption").text.startswith("calibrated probabilities")
