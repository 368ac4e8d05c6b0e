"""The web page in a real browser: Playwright driving Debian's chromium (installed by .ci/run), once per kind of
page: the drawing pad of a small single-channel model, the photo upload of an RGB one."""

from __future__ import annotations

import base64
import shutil
import sqlite3
from contextlib import contextmanager

import httpx
import numpy as np
from playwright.sync_api import expect, sync_playwright
from serving_helpers import encode, serving, tiny_run
from test_labelling import queued


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the browser test needs Debian's chromium: apt-get install chromium (.ci/run does)"
    return path


@contextmanager
def _page(url: str):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium())
        try:
            page = browser.new_page()
            page.goto(url + "/")
            yield page
        finally:
            browser.close()


def _photo(width: int, height: int, seed: int) -> bytes:
    return encode(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# Builds a File from base64 bytes and hands it to the page as a drop on the zone or a paste on the document,
# the way a browser delivers a dragged file or a copied image (both carry a DataTransfer).
_DELIVER = """([how, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], "photo.png", { type: "image/png" }));
  if (how === "drop") {
    document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true,
                                                                          cancelable: true }));
  } else {
    document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
  }
}"""


def test_draw_predict_correct_and_upload_in_a_browser(mnist_run, mnist, strangers, tmp_path):
    db = tmp_path / "feedback.db"
    seven = tmp_path / "seven.png"
    seven.write_bytes(encode(mnist.splits["test"].images[0, 0].numpy()))
    # 1% of validation digits answered unknown: a stroke drawn with a mouse is thicker than most MNIST digits
    with serving(mnist_run, feedback_db=str(db), unknown=True, unknown_rate=0.01) as url, _page(url) as page:
        expect(page.locator("#model")).to_contain_text("Draw white on black")
        expect(page.locator("#pad")).to_be_visible()
        expect(page.locator("#classes button")).to_have_count(10)
        expect(page.locator("#classes button").first).to_be_hidden()  # nothing to correct yet
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
        page.click("#tabs button[data-panel=upload]")  # the second tab
        expect(page.locator("#pad")).to_be_hidden()
        page.set_input_files("#file", str(seven))
        expect(page.locator("#status")).to_contain_text("predicted 7", timeout=15_000)
        expect(page.locator("#preview")).to_be_visible()
        page.set_input_files("#file", str(next((strangers / "photos" / "truck").iterdir())))  # no digit at all
        expect(page.locator("#status")).to_contain_text("unknown: unlike the training images", timeout=15_000)
        expect(page.locator("#bars .bar")).to_have_count(5)  # its guesses are still shown
    with sqlite3.connect(db) as check:
        rows = check.execute("SELECT label, predicted FROM feedback").fetchall()
    assert rows == [("4", "1")]


def test_upload_drop_paste_and_correct_a_photo_in_a_browser(tmp_path):
    classes = ["cat", "dog", "fox"]
    db, chosen = tmp_path / "feedback.db", tmp_path / "chosen.png"
    chosen.write_bytes(_photo(40, 30, seed=0))
    dropped, pasted = _photo(24, 24, seed=1), _photo(50, 20, seed=2)
    with serving(tiny_run(tmp_path / "run", classes, 3, 32), feedback_db=str(db)) as url, _page(url) as page:
        expect(page.locator("#model")).to_contain_text("Upload, drop or paste")
        expect(page.locator("#drop")).to_be_visible()
        expect(page.locator("#pad")).to_be_hidden()
        expect(page.locator("#tabs")).to_be_hidden()  # no drawing pad for photos, not even as a tab
        expect(page.locator("#classes button")).to_have_count(3)
        expect(page.locator("#classes button").first).to_be_hidden()  # nothing to correct yet
        page.set_input_files("#file", str(chosen))
        expect(page.locator("#status")).to_contain_text("predicted", timeout=15_000)
        expect(page.locator("#bars .bar")).to_have_count(3)
        expect(page.locator("#classes button").first).to_be_visible()
        assert page.eval_on_selector("#preview", "img => [img.naturalWidth, img.naturalHeight]") == [40, 30]
        for how, data, size in (("drop", dropped, [24, 24]), ("paste", pasted, [50, 20])):
            with page.expect_response("**/v1/predict") as response:
                page.evaluate(_DELIVER, [how, base64.b64encode(data).decode()])
            assert response.value.ok, how
            expect(page.locator("#classes button").first).to_be_visible()
            page.wait_for_function(f"document.getElementById('preview').naturalWidth === {size[0]}")
            assert page.eval_on_selector("#preview", "img => img.naturalHeight") == size[1], how
        predicted = page.locator("#status").inner_text().split()[1]
        label = next(c for c in classes if c != predicted)
        page.locator("#classes button", has_text=label).click()
        expect(page.locator("#status")).to_contain_text(f"thanks: saved {label}")
    with sqlite3.connect(db) as check:
        rows = check.execute("SELECT label, predicted, image FROM feedback").fetchall()
    assert rows == [(label, predicted, pasted)]  # the pasted image, as the page sent it


def test_correction_buttons_stay_hidden_when_feedback_needs_a_token(tmp_path):
    with (serving(tiny_run(tmp_path / "run", ["cat", "dog"], 3, 32), feedback_db=str(tmp_path / "feedback.db"),
                  feedback_token="t0ken") as url, _page(url) as page):
        expect(page.locator("#model")).to_contain_text("Corrections need a token on this server")
        page.set_input_files("#file", files=[{"name": "p.png", "mimeType": "image/png", "buffer": _photo(20, 20, 3)}])
        expect(page.locator("#status")).to_contain_text("predicted", timeout=15_000)
        expect(page.locator("#correct")).to_be_hidden()


def test_label_the_kept_images_from_the_queue_page(mnist_run, mnist, tmp_path):
    db = tmp_path / "feedback.db"
    with serving(mnist_run, feedback_db=str(db), keep_unlabelled=5) as url, _page(url) as page:
        with httpx.Client(base_url=url) as client:
            for i in range(3):
                client.post("/v1/predict", content=encode(mnist.splits["test"].images[i, 0].numpy()),
                            headers={"content-type": "image/png"})
            first = queued(client, 3)[0]
        page.click("#queue-link a")  # the classifier's page links to the queue when the server keeps images
        expect(page.locator(".item")).to_have_count(3)
        expect(page.locator(".item img").first).to_have_js_property("naturalWidth", 28)  # the kept digit shows
        page.locator(".item").first.locator("button", has_text="4").click()
        expect(page.locator("#status")).to_contain_text(f"saved 4 as the label of an image the model called "
                                                        f"{first['predicted']}")
        expect(page.locator(".item")).to_have_count(2)
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT label, prediction_id FROM feedback").fetchall() == [("4", first["prediction_id"])]
