"""The search's report.html, rendered by headless Chromium: the charts and the tables show,
and the page logs no console error."""

from __future__ import annotations

import html
import os
import shutil

import pytest

from modelzip.report.html import pareto_front, render_report
from modelzip.search import SearchConfig, parse_budget, search
from tests.search_tiny import make

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def test_pareto_front_keeps_the_undominated_points():
    points = [(10, 90.0), (5, 80.0), (20, 95.0), (15, 85.0), (5, 70.0), (30, 94.0)]
    assert pareto_front(points) == [(5, 80.0), (10, 90.0), (20, 95.0)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    model, ctx = make()
    folder = tmp_path_factory.mktemp("report")
    result = search(model, parse_budget("size=2.4KB", max_drop=5), ctx=ctx,
                    config=SearchConfig(strategy="random", trials=4, progress=False,
                                        storage=f"sqlite:///{folder}/s.db",
                                        quant_finetune=None,
                                        report=str(folder / "report.html")))
    return result, folder / "report.html"


def test_report_is_self_contained(report):
    result, path = report
    text = path.read_text()
    assert text == render_report(result)
    assert text.count('src="data:image/png;base64,') >= 3  # bytes, MACs, per-layer
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert html.escape(result.message) in text


def _browser():
    if not (CHROMIUM and DRIVER):
        reason = "chromium and chromedriver are not installed (scripts/setup_search_services.sh)"
        if os.environ.get("MODELZIP_REQUIRE_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1600"):
        opts.add_argument(flag)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(DRIVER))


def test_report_renders_in_chromium(report):
    from selenium.webdriver.common.by import By

    _, path = report
    driver = _browser()
    try:
        driver.get(path.resolve().as_uri())
        charts = driver.find_elements(By.CSS_SELECTOR, "img.chart")
        assert len(charts) >= 3
        for img in charts:  # decoded and laid out, not a broken image
            assert img.is_displayed()
            assert driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", img) > 100
        table = driver.find_element(By.ID, "before-after")
        assert table.is_displayed()
        cells = [c.text for c in table.find_elements(By.TAG_NAME, "td")]
        assert "test error %" in cells and "non-zero" in cells
        trials = driver.find_element(By.ID, "trials").find_elements(By.TAG_NAME, "tr")
        assert len(trials) == 1 + 4
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        driver.quit()
