"""Security headers, docs and the Host check against a real server (point 8 of issue 19)."""

from __future__ import annotations

import argparse
import shutil

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from serving_helpers import serving, tiny_run

from imgclf.commands.serve import _allowed_hosts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"), ["a", "b"], 1, 8)


def test_every_answer_carries_the_security_headers(run):
    with serving(run) as url, httpx.Client(base_url=url) as client:
        page, model = client.get("/"), client.get("/v1/model")
        error = client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"})
        missing = client.get("/nowhere")
    assert (page.status_code, model.status_code, error.status_code, missing.status_code) == (200, 200, 415, 404)
    for answer in (page, model, error, missing):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    assert model.headers["content-security-policy"].startswith("default-src 'none'")


def test_the_page_runs_under_its_policy_in_a_browser(run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser test needs Debian's chromium: apt-get install chromium (.ci/run does)"
    with serving(run) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page()
            refused = []
            page.on("console", lambda message: refused.append(message.text) if "Content Security" in message.text
                    else None)
            page.goto(url + "/")
            expect(page.locator("#model")).to_contain_text("2 classes")  # the script ran
            assert page.eval_on_selector("body", "b => getComputedStyle(b).maxWidth") == "760px"  # the style applied
        finally:
            browser.close()
    assert refused == []


def test_docs_are_off_unless_asked_for(run):
    with serving(run) as url:
        assert httpx.get(f"{url}/docs").status_code == 404 and httpx.get(f"{url}/redoc").status_code == 404
        assert "/v1/predict" in httpx.get(f"{url}/openapi.json").json()["paths"]
    with serving(run, docs=True) as url:
        docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and docs.headers["content-security-policy"] == "frame-ancestors 'none'"


def test_a_host_not_allowed_gets_400(run):
    with serving(run, allowed_hosts=("imgclf.example", "::1")) as url, httpx.Client(base_url=url) as client:
        wrong = client.get("/v1/model", headers={"host": "rebound.attacker.example"})
        assert wrong.status_code == 400 and "rebound.attacker.example" in wrong.json()["error"]
        assert wrong.headers["x-content-type-options"] == "nosniff"
        assert client.get("/v1/model", headers={"host": "IMGCLF.example:8000"}).status_code == 200
        assert client.get("/v1/model", headers={"host": "[::1]:8000"}).status_code == 200
        assert client.get("/v1/model").status_code == 400  # 127.0.0.1 is not in the list


@pytest.mark.parametrize(("host", "flag", "allowed"), [
    ("127.0.0.1", None, ("localhost", "127.0.0.1", "::1")), ("localhost", None, ("localhost", "127.0.0.1", "::1")),
    ("0.0.0.0", None, None), ("127.0.0.1", "*", None), ("0.0.0.0", "a.example, b.example", ("a.example", "b.example"))])
def test_imgclf_serve_answers_only_loopback_names_on_a_loopback_address_by_default(host, flag, allowed):
    assert _allowed_hosts(argparse.Namespace(host=host, allowed_hosts=flag)) == allowed
