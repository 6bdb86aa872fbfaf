"""The page in real headless Chromium: upload an image, find one card per model and the strip.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``make browser`` installs them)
and selenium; skips with the reason when they are absent.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from router.web import Limits, TimingConfig, WebService, create_app
from router.web.server import BackgroundServer
from test_serve import MODELS, add_routers, make_web_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1400"]


@contextmanager
def running_server(service: WebService, limits: Limits | None = None) -> Iterator[str]:
    """Serve the app on 127.0.0.1 on a free port in a thread, on waitress as `serve` does;
    yield its base URL."""
    server = BackgroundServer(create_app(service, limits), http_threads=8).start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def chromium() -> Iterator["object"]:
    """A headless Chromium driven by selenium, with a fresh profile directory."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(url: str, path: Path, height: int | None = None) -> Path:
    """Save a PNG of the page at ``url`` (how docs/img/serve.png was made)."""
    with chromium() as driver:
        driver.get(url)
        if height is None:
            height = driver.execute_script("return document.body.scrollHeight") + 40
        driver.set_window_size(1280, height)
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    return path


def test_upload_in_headless_chromium(fake_fmnist_dir, tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed: run `make browser` (Debian "
                    "packages chromium, chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    run = make_web_run(tmp_path / "run", fake_fmnist_dir, steps=1)  # answers do not matter here
    add_routers(run)
    service = WebService.load(run, TimingConfig(repeats=1))
    picture = tmp_path / "shirt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 60, 3), np.uint8)).save(picture)
    with running_server(service) as url, chromium() as driver:
        driver.get(url + "/")
        assert "Adaptive-inference router" in driver.title + driver.page_source
        driver.find_element(By.ID, "image").send_keys(str(picture))
        driver.find_element(By.ID, "upload").click()
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "cards")))
        cards = driver.find_elements(By.CSS_SELECTOR, ".model-card")
        assert sorted(c.get_attribute("data-model") for c in cards) == sorted(MODELS)
        strip = driver.find_element(By.ID, "router-strip")
        families = {e.get_attribute("data-family")
                    for e in strip.find_elements(By.CSS_SELECTOR, ".router-entry")}
        assert {"cascade", "dispatcher", "oracle"} <= families
        # a real choice with its answer and the why-table
        cascade = strip.find_element(By.CSS_SELECTOR, '.router-entry[data-family="cascade"]')
        assert "picks tiny_vgg1" in cascade.text and "threshold" in cascade.text
        assert "shirt.png" in driver.find_element(By.ID, "source").text

        # a bad upload shows the message and the page keeps working
        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        driver.find_element(By.ID, "image").send_keys(str(bad))
        driver.find_element(By.ID, "upload").click()
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "error")))
        assert "not an image" in driver.find_element(By.ID, "error").text
        driver.find_element(By.CSS_SELECTOR, "a.pick").click()  # a test sample, no upload
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "cards")))
        assert len(driver.find_elements(By.CSS_SELECTOR, ".model-card")) == len(MODELS)
        oracle = driver.find_element(By.CSS_SELECTOR, '.router-entry[data-family="oracle"]')
        assert "picks" in oracle.text
