"""The web page in a real browser: Playwright driving Debian's chromium (installed by .ci/run)."""

from __future__ import annotations

import shutil
import sqlite3

from playwright.sync_api import expect, sync_playwright
from serving_helpers import encode, serving


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the browser test needs Debian's chromium: apt-get install chromium (.ci/run does)"
    return path


def test_draw_predict_correct_and_upload_in_a_browser(mnist_run, mnist, tmp_path):
    db = tmp_path / "feedback.db"
    seven = tmp_path / "seven.png"
    seven.write_bytes(encode(mnist.splits["test"].images[0, 0].numpy()))
    with serving(mnist_run, feedback_db=str(db)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium())
        page = browser.new_page()
        page.goto(url + "/")
        expect(page.locator("#classes button")).to_have_count(10)
        box = page.locator("#pad").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.15)
        page.mouse.down()  # a vertical stroke down the middle: a 1
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.85, steps=12)
        page.mouse.up()
        page.click("#predict")
        expect(page.locator("#status")).to_contain_text("predicted", timeout=15_000)
        expect(page.locator("#bars .bar")).to_have_count(5)
        drawn = page.locator("#status").inner_text().split()[1]
        assert drawn == "1", page.locator("#status").inner_text()
        page.locator("#classes button", has_text="4").click()  # tell it the drawing was a 4
        expect(page.locator("#status")).to_contain_text("thanks: saved 4")
        page.set_input_files("#file", str(seven))
        expect(page.locator("#status")).to_contain_text("predicted 7", timeout=15_000)
        browser.close()
    with sqlite3.connect(db) as check:
        rows = check.execute("SELECT label, predicted FROM feedback").fetchall()
    assert rows == [("4", "1")]
