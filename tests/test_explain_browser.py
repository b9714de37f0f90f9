"""The ``trueconv explain --html`` page in a real headless browser (Debian's chromium).

Driven by selenium's client with the system chromedriver; nothing is
downloaded at run time. The test types a kernel, steps through, and reads the
result tables from the DOM, comparing them with :func:`trueconv.conv2d`.
Skipped only where no chromium / chromedriver binary is installed
(``apt-get install -y chromium chromium-driver``; .ci/run installs them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest

import trueconv
from trueconv.cli import main
from trueconv.cli._kernels import parse_matrix

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"no browser: {CHROMIUM} and {CHROMEDRIVER} are needed "
    f"(apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("html") / "explain.html"
    assert main(["explain", "--html", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # never let selenium-manager reach the network
        browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(20)
    yield browser
    browser.quit()


def open_page(driver, page: Path, **params) -> None:
    query = ("?" + urlencode(params)) if params else ""
    driver.get(page.as_uri() + query)


def table(driver, kind: str) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tr'))"
        ".map(tr => Array.from(tr.cells).map(td => td.textContent));",
        f"#{kind}-result",
    )


def as_numbers(cells: list[list[str]]) -> np.ndarray:
    return np.array([[float(c) if c else np.nan for c in row] for row in cells])


def expected(image: str, kernel: str, padding: int = 0, stride: int = 1) -> dict[str, np.ndarray]:
    x = parse_matrix(image)[np.newaxis, np.newaxis]
    w = parse_matrix(kernel)[np.newaxis, np.newaxis]
    return {kind: trueconv.conv2d(x, w, stride=stride, padding=padding, kind=kind)[0, 0]
            for kind in ("correlation", "convolution")}


def step_through(driver, count: int) -> None:
    button = driver.find_element("id", "step")
    for _ in range(count):
        button.click()


def test_defaults_are_the_seed_example(driver, page):
    open_page(driver, page)
    driver.find_element("id", "finish").click()
    np.testing.assert_array_equal(as_numbers(table(driver, "correlation")), [[60, 56, 52], [39, 61, 66], [54, 78, 82]])
    np.testing.assert_array_equal(as_numbers(table(driver, "convolution")), [[76, 72, 52], [81, 75, 62], [42, 42, 54]])


def test_type_a_kernel_and_step_through(driver, page):
    image = "3,1,4,1,5;9,2,6,5,3;5,8,9,7,9;3,2,3,8,4"
    open_page(driver, page, image=image, kernel="0,1;1,0")
    assert driver.find_element("id", "image").get_property("value") == image
    assert driver.find_element("id", "kernel").get_property("value") == "0,1;1,0"
    kernel_box = driver.find_element("id", "kernel")
    kernel_box.clear()
    kernel = "1,0,-1;2,0,-3"
    kernel_box.send_keys(kernel)
    want = expected(image, kernel)
    cells = want["correlation"].size
    assert cells == 3 * 3
    for done in range(1, cells + 1):
        step_through(driver, 1)
        shown = as_numbers(table(driver, "correlation"))
        assert shown.shape == want["correlation"].shape
        assert np.count_nonzero(~np.isnan(shown)) == done  # the output fills one cell per step
    for kind in ("correlation", "convolution"):
        np.testing.assert_array_equal(as_numbers(table(driver, kind)), want[kind])
    assert not np.array_equal(want["correlation"], want["convolution"])  # the flip is visible
    assert driver.find_element("tag name", "body").get_attribute("data-complete") == "true"


def test_url_padding_stride_and_play(driver, page):
    from selenium.webdriver.support.ui import WebDriverWait

    image, kernel = "1,2,3,4;5,6,7,8;9,10,11,12;13,14,15,16;17,18,19,20", "2,-1,0;0,1,3;-2,0,1"
    open_page(driver, page, image=image, kernel=kernel, padding=1, stride=2, delay=15)
    driver.find_element("id", "play").click()
    WebDriverWait(driver, 15).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-complete") == "true")
    want = expected(image, kernel, padding=1, stride=2)
    for kind in ("correlation", "convolution"):
        np.testing.assert_array_equal(as_numbers(table(driver, kind)), want[kind])


def test_fractions(driver, page):
    image, kernel = "0.5,1.25,2;3,-1.5,0.75;2,2,1", "0.1,0.2;0.3,-0.4"
    open_page(driver, page, image=image, kernel=kernel)
    driver.find_element("id", "finish").click()
    want = expected(image, kernel)
    for kind in ("correlation", "convolution"):
        np.testing.assert_allclose(as_numbers(table(driver, kind)), want[kind], atol=5e-4)


def test_bad_input_is_reported(driver, page):
    open_page(driver, page, kernel="1,x;2,3")
    assert "'x' is not a number" in driver.find_element("id", "error").text
    box = driver.find_element("id", "kernel")
    box.clear()
    box.send_keys("1,1;1,1")
    assert driver.find_element("id", "error").text == ""
    driver.find_element("id", "finish").click()
    np.testing.assert_array_equal(as_numbers(table(driver, "correlation")),
                                  expected("1,2,2,1,0;3,3,3,3,0;3,0,0,2,2;0,3,0,3,3;2,2,2,3,2", "1,1;1,1")["correlation"])
