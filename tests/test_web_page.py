"""The web page in a real headless browser (Debian's chromium + chromedriver): start a job, watch its
live progress through the event stream, see the winner and the ranked images with their costs.

Skipped, saying why, when chromium, chromedriver or selenium is missing (`.ci/run` installs them).
Set BATCH_PIPELINE_SCREENSHOT=path to keep a screenshot of the finished page (docs/web-page.png).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from batch_pipeline.api.app import create_app
from openai_simulator import Simulator, SimulatorConfig
from openai_simulator.serving import serve_in_thread
from tests.integration.support import runtime_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401 - only probes that it is installed
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[dev]')"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def wait_until(predicate, timeout: float = 120, interval: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    # An explicit driver path: selenium downloads nothing.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_starts_a_job_and_shows_its_live_progress_and_ranked_images(browser, tmp_path):
    from selenium.webdriver.common.by import By

    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as sim_url:
        runtime = runtime_for(sim_url, tmp_path / "home")
        with serve_in_thread(
            create_app(runtime, worker_interval_s=0.05, events_interval_s=0.2), lifespan="on", name="api"
        ) as url:
            browser.get(url + "/")
            prompt = browser.find_element(By.NAME, "prompt")
            prompt.clear()
            prompt.send_keys("a koi pond in autumn")
            for name, value in (("n", "4"), ("m", "2"), ("iterations", "2"), ("ensembleSize", "1")):
                field = browser.find_element(By.NAME, name)
                field.clear()
                field.send_keys(value)
            browser.find_element(By.ID, "start-button").click()

            # The job appears in the list and its stream reports each step as it happens.
            wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs li.selected"))
            wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#events li[data-event=batch_created]"))
            wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#events li[data-event=end]"))
            assert browser.find_element(By.ID, "job-status").get_attribute("data-status") == "completed"
            seen = {li.get_attribute("data-event") for li in browser.find_elements(By.CSS_SELECTOR, "#events li")}
            assert {"round_queued", "batch_created", "batch_progress", "round_applied", "cost", "winner", "end"} <= seen
            assert browser.find_element(By.ID, "winner").is_displayed()

            # Ranked images of the last iteration, drawn, and the job's costs.
            def images_loaded():
                imgs = browser.find_elements(By.CSS_SELECTOR, "#ranked li.candidate img")
                drawn = [i for i in imgs if browser.execute_script("return arguments[0].naturalWidth", i) > 0]
                return len(imgs) == 6 and len(drawn) == 6  # 4 new + 2 survivors re-ranked

            wait_until(images_loaded)
            wait_until(
                lambda: browser.execute_script("return document.getElementById('winner-image').naturalWidth") > 0
            )
            ranks = [li.text.split()[0] for li in browser.find_elements(By.CSS_SELECTOR, "#ranked li.candidate")]
            assert ranks == [f"#{k}" for k in range(1, 7)]
            assert "paid $" in browser.find_element(By.ID, "job-cost").text
            assert "saved $" in browser.find_element(By.ID, "job-cost").text

            screenshot = os.environ.get("BATCH_PIPELINE_SCREENSHOT")
            target = Path(screenshot) if screenshot else tmp_path / "web-page.png"
            browser.execute_script("window.scrollTo(0, 0)")
            assert browser.save_screenshot(str(target))
