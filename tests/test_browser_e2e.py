"""End to end in headless Chromium (Debian's /usr/bin/chromium; Playwright never downloads one):
the feature list, filters, sorting, a feature page with highlighted tokens and a histogram, the
emotion and run pages — served over HTTP and as a static export from file:// — then hostile text
(nothing runs, everything shows literally) and path traversal against the server."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect
from safetensors.numpy import load_file

from features.browser import export_site, serve
from features.browser.synthetic import HOSTILE, HOSTILE_LABELS, make_synthetic_run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_synthetic_run(tmp_path_factory.mktemp("e2e") / "run", d_sae=200, d_in=32, seed=1)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    return make_synthetic_run(tmp_path_factory.mktemp("hostile") / "run", d_sae=64, d_in=32, hostile=True, seed=2)


class Watch:
    """A page plus everything it reported: console errors, uncaught exceptions, dialogs."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def clean(self) -> None:
        assert self.errors == [] and self.dialogs == []
        assert self.page.evaluate("window.__pwned") is None

    def close(self):
        self.page.close()


def _site_urls(run: Path, tmp: Path, mode: str):
    if mode == "server":
        srv = serve(run, port=0)
        return srv.url, srv.shutdown
    rep = export_site(run, tmp / "site")
    return Path(rep["entry"]).as_uri(), lambda: None


@pytest.mark.parametrize("mode", ["server", "file"])
def test_list_filter_and_feature_page(browser, run_dir, tmp_path, mode):
    base, stop = _site_urls(run_dir, tmp_path, mode)
    labels = json.loads((run_dir / "labels.json").read_text())
    stats = load_file(str(run_dir / "features" / "stats.safetensors"))
    w = Watch(browser)
    pg = w.page
    try:
        pg.goto(base)
        pg.wait_for_selector(".vrow")
        assert pg.title() == "emosae · features"
        assert pg.text_content("#f-count") == "200 of 200 shown"
        assert pg.locator("#fire-text").count() == 0  # no model: no live panel, and no fetch

        # filter by label
        feats = labels["features"]
        emotion = sorted({v["label"] for v in feats.values() if v["label"]})[0]
        n_lab = sum(1 for v in feats.values() if v["label"] == emotion)
        pg.select_option("#f-label", "=" + emotion)
        assert pg.text_content("#f-count") == f"{n_lab} of 200 shown"
        assert set(pg.locator(".vrow span.lab").all_text_contents()) == {emotion}
        pg.select_option("#f-label", "__all")
        # search by id and by label text
        pg.fill("#f-search", "#17")
        assert pg.locator(".vrow").count() == 1 and pg.locator(".vrow").get_attribute("data-id") == "17"
        pg.fill("#f-search", emotion[1:4].upper())
        n_sub = sum(1 for v in feats.values() if v["label"] and emotion[1:4] in v["label"])
        assert pg.text_content("#f-count") == f"{n_sub} of 200 shown"
        pg.fill("#f-search", "")
        # score and density filters
        pg.fill("#f-minscore", "0.9")
        n_hi = sum(1 for v in feats.values() if v["score"] >= 0.9)
        assert pg.text_content("#f-count") == f"{n_hi} of 200 shown"
        pg.fill("#f-minscore", "")
        pg.fill("#f-maxdens", "0.001")
        n_low = int((stats["density"] <= 0.001).sum())
        assert abs(int(pg.text_content("#f-count").split()[0]) - n_low) <= 2  # 3-digit rounding at the edge
        pg.fill("#f-maxdens", "")
        # sort by density (descending on first click)
        pg.click(".vhead span[data-key=density]")
        first = int(pg.locator(".vrow").first.get_attribute("data-id"))
        assert first == int(np.argmax(stats["density"]))

        # into a feature page
        pg.locator(".vrow").first.click()
        pg.wait_for_selector("#top-contexts .tok")
        assert pg.title() == f"emosae · feature {first}"
        assert pg.url.endswith(f"#/feature/{first}")
        hot = pg.locator("#top-contexts .tok.center").first
        assert "rgba(255, 122, 0" in hot.evaluate("e => getComputedStyle(e).backgroundColor")
        top = float(np.max(stats["top_acts"][first]))
        assert float(hot.get_attribute("data-act")) == pytest.approx(top, rel=0.01)
        assert hot.get_attribute("title").startswith("activation ")
        hot.hover()
        assert pg.locator("#tip").is_visible() and "act " in pg.text_content("#tip")
        assert pg.locator("#histogram rect.bar").count() == 32
        assert pg.locator("#logits tr").count() == 22 and pg.locator("#neighbors tr").count() >= 2
        assert pg.locator("#alignment tr").count() == 9
        assert pg.locator("#quantiles .ctxrow").count() > 0
        assert pg.locator("#clamp-panel").count() == 0
        # a neighbor link leads to another feature
        nb = pg.locator("#neighbors a").first
        target = nb.text_content().lstrip("#")
        nb.click()
        # waits through Playwright's expect, not wait_for_function: a string predicate polled in the page
        # is an eval, which the page's CSP (script-src 'self') rightly refuses
        expect(pg).to_have_title(f"emosae · feature {target}")
        pg.wait_for_selector("#feature-title")

        # emotions and run pages
        pg.click("#nav-emotions")
        pg.wait_for_selector("#emotion-table")
        assert pg.locator("#emotion-table tr").count() == 1 + len(labels["emotions"])
        assert pg.locator("#emotion-map circle.emo").count() == len(labels["emotions"])
        pg.locator("#emotion-table a").first.click()
        pg.wait_for_selector("#ranked")
        assert pg.locator("#emotion-map circle.emo.sel").count() == 1
        pg.click("#nav-run")
        pg.wait_for_selector("#config")
        assert "d_sae: 200" in pg.text_content("#config")
        # the image loads asynchronously: wait for it (a broken image never gets a width)
        img = pg.locator("img[src='assets/curves.png']")
        expect(img).to_have_js_property("complete", True, timeout=15000)
        assert img.evaluate("e => e.naturalWidth") > 0
        w.clean()
    finally:
        w.close()
        stop()


def _literal_text_everywhere(w: Watch, base: str, hostile_run: Path) -> None:
    """Visit every page that shows hostile data and check nothing ran or became markup."""
    pg = w.page
    labels = json.loads((hostile_run / "labels.json").read_text())
    bad_ev = [int(k) for k, v in labels["features"].items() if v["evidence"] and v["evidence"][0]["text"] == " ".join(HOSTILE)]
    assert bad_ev
    checks = 0

    def assert_inert(expected_title: str):
        nonlocal checks
        assert pg.title() == expected_title
        assert pg.evaluate("document.querySelectorAll('[onload],[onerror],[onclick],script:not([src]),iframe,object,embed').length") == 0
        assert pg.evaluate("document.querySelectorAll('img[src=\"x\"], body svg[onload]').length") == 0
        hrefs = pg.evaluate("Array.from(document.querySelectorAll('[href]')).map(e => e.getAttribute('href'))")
        assert all(h.startswith("#/") or h.startswith("static/") for h in hrefs), hrefs
        w.clean()
        checks += 1

    pg.goto(base)
    pg.wait_for_selector(".vrow")
    assert_inert("emosae · features")
    for hl in HOSTILE_LABELS:  # hostile label text is an option, a row label and a search target
        pg.select_option("#f-label", "=" + hl)
        assert pg.locator(".vrow span.lab").first.text_content() == hl
        pg.select_option("#f-label", "__all")
        pg.fill("#f-search", hl)
        assert pg.locator(".vrow").count() >= 1
        pg.fill("#f-search", "")
        assert_inert("emosae · features")
    for i in bad_ev[:3] + [0, 1, 2]:
        pg.goto(f"{base}#/feature/{i}")
        pg.wait_for_selector("#feature-title")
        pg.wait_for_selector("#top-contexts")
        body = pg.text_content("main")
        if i in bad_ev:
            assert HOSTILE[0] in pg.text_content("#evidence") and HOSTILE[3] in body
        payload = HOSTILE[i % len(HOSTILE)].replace("\n", "↵")
        assert payload in pg.locator("#top-contexts .tok.center").first.text_content()
        assert_inert(f"emosae · feature {i}")
    pg.goto(f"{base}#/emotions")
    pg.wait_for_selector("#emotion-table")
    assert HOSTILE_LABELS[0] in pg.text_content("#emotion-table")
    assert HOSTILE[3] in pg.text_content("main")  # labeling settings note
    assert_inert("emosae · emotions")
    for hl in HOSTILE_LABELS:
        pg.locator("#emotion-table a", has_text=hl).first.click()
        pg.wait_for_selector("#ranked")
        assert pg.text_content("#emotion-title") == "Emotion: " + hl
        assert_inert("emosae · emotion")
        pg.click("#nav-emotions")
        pg.wait_for_selector("#emotion-table")
    pg.goto(f"{base}#/run")
    pg.wait_for_selector("#config")
    assert HOSTILE[1] in pg.text_content("main") and HOSTILE[0] in pg.text_content("#config")
    assert "__proto__ is a key" in pg.text_content("main")  # a key named __proto__ is shown, not dropped
    assert pg.evaluate("({}).polluted") is None
    assert_inert("emosae · run")
    # a hostile route is just "not found"
    pg.goto(f"{base}#/emotion/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    pg.wait_for_selector("#emotion-title")
    assert_inert("emosae · emotion")
    pg.goto(f"{base}#/emotion/%E0%A4%A")  # a broken %-escape: no such page, not "URI malformed"
    pg.wait_for_selector("text=No such page")
    assert "malformed" not in pg.text_content("main")
    assert checks >= 12


def test_hostile_text_is_inert_file(browser, hostile_run, tmp_path):
    base, _ = _site_urls(hostile_run, tmp_path, "file")
    w = Watch(browser)
    try:
        _literal_text_everywhere(w, base, hostile_run)
    finally:
        w.close()


def test_hostile_text_is_inert_server(browser, hostile_run, tmp_path):
    base, stop = _site_urls(hostile_run, tmp_path, "server")
    w = Watch(browser)
    try:
        _literal_text_everywhere(w, base, hostile_run)
    finally:
        w.close()
        stop()


def _raw_get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    """GET over a bare socket, so no client normalises the path first."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head


def test_path_traversal_is_404(run_dir):
    srv = serve(run_dir, port=0)
    try:
        assert srv.host == "127.0.0.1"
        status, head = _raw_get(srv.port, "/")
        assert status == 200 and b"Content-Security-Policy" in head
        assert _raw_get(srv.port, "/data/f/0000.js")[0] == 200
        for path in ["/../../etc/passwd", "/../../../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                     "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/..%2f..%2f..%2fetc%2fpasswd", "/%252e%252e%252fetc%252fpasswd",
                     "/static/../../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd", "/data/f/../../labels.json",
                     "//etc/passwd", "/..\\..\\etc\\passwd", "/%c0%ae%c0%ae/etc/passwd", "/index.html%00.js",
                     "/labels.json", "/config.yaml", "/sae/sae_weights.safetensors", "/features/stats.safetensors",
                     "/assets/..%2fconfig.yaml", "/static/__init__.py", "/static/../__init__.py", "/data/f/9999.js",
                     "/api/fire", "http://127.0.0.1/../../etc/passwd"]:
            assert _raw_get(srv.port, path)[0] == 404, path
    finally:
        srv.shutdown()


def test_very_long_tokens_and_labels_wrap_instead_of_widening_the_page(browser, tmp_path):
    """A 3,000-character token, a 600-character label and a long evidence passage wrap inside the
    page: nothing is wider than the window (tokens were `white-space: pre` and the label <select>
    grew with its longest option)."""
    from safetensors.numpy import load_file as load_np

    run = make_synthetic_run(tmp_path / "long", d_sae=16, d_in=16, images=False, sae=False, seed=4)
    vocab = json.loads((run / "features" / "vocab.json").read_text())
    tokens = load_np(str(run / "features" / "stats.safetensors"))["top_tokens"]
    center = tokens.shape[-1] // 2
    vocab[int(tokens[0, 0, center])] = "X" * 3000
    (run / "features" / "vocab.json").write_text(json.dumps(vocab))
    labels = json.loads((run / "labels.json").read_text())
    long_label = "`${window.__pwned=1}`\u2028" + "Y" * 600
    labels["features"]["0"] = {"label": long_label, "score": 0.9, "auroc": 0.9,
                               "evidence": [{"text": "Z" * 5000, "emotion": long_label, "act": 1.0}]}
    labels["emotions"][long_label] = [{"feature": 0, "auroc": 0.9, "heldout_auroc": 0.8}]
    (run / "labels.json").write_text(json.dumps(labels))
    base = Path(export_site(run, tmp_path / "site")["entry"]).as_uri()
    w = Watch(browser)
    pg = w.page
    try:
        for route, ready in (("#/", ".vrow"), ("#/feature/0", "#top-contexts .tok"), ("#/emotions", "#emotion-table")):
            pg.goto(base + route)
            pg.wait_for_selector(ready)
            width = pg.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert width[0] <= width[1], (route, width)
        w.clean()
    finally:
        w.close()


def test_ipv6_host_serves(run_dir):
    """--host ::1 listens (the stdlib server binds IPv4 only) and answers the site, bracketed URL."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    srv = serve(run_dir, host="::1", port=0)
    try:
        assert srv.url == f"http://[::1]:{srv.port}/"
        with socket.create_connection(("::1", srv.port), timeout=10) as s:
            s.sendall(f"GET /data/site.js HTTP/1.1\r\nHost: [::1]:{srv.port}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(65536).split(b"\r\n", 1)[0]
        assert head == b"HTTP/1.1 200 OK"
    finally:
        srv.shutdown()


def test_large_list_is_virtual(browser, tmp_path):
    run = make_synthetic_run(tmp_path / "big", d_sae=5000, d_in=16, images=False, sae=False, seed=3)
    srv = serve(run, port=0)
    w = Watch(browser)
    pg = w.page
    try:
        pg.goto(srv.url)
        pg.wait_for_selector(".vrow")
        assert pg.text_content("#f-count") == "5,000 of 5,000 shown"
        assert pg.locator(".vrow").count() < 100  # only the visible window is in the DOM
        assert pg.evaluate("window.EMOSAE_FIRST_RENDER") > 0
        pg.click(".vhead span[data-key=id]")  # id ascending
        if pg.locator(".vrow").first.get_attribute("data-id") != "0":
            pg.click(".vhead span[data-key=id]")
        assert pg.locator(".vrow").first.get_attribute("data-id") == "0"
        pg.evaluate("document.getElementById('flist').scrollTop = 1e9")
        pg.wait_for_selector(".vrow[data-id='4999']")
        pg.click(".vrow[data-id='4999']")
        pg.wait_for_selector("#feature-title")
        assert pg.title() == "emosae · feature 4999"
        pg.go_back()
        pg.wait_for_selector(".vrow[data-id='4999']")  # the list keeps its place
        w.clean()
    finally:
        w.close()
        srv.shutdown()


def test_no_kept_contexts_is_not_called_never_fired(browser, run_dir, tmp_path):
    """`--max-contexts 0` keeps no contexts; a feature that did fire must not be called dead."""
    from features.browser.blocks import Options

    max_act = load_file(str(run_dir / "features" / "stats.safetensors"))["max_act"]
    fired, dead = int(np.argmax(max_act > 0)), (np.flatnonzero(max_act <= 0).tolist() or [None])[0]
    base = Path(export_site(run_dir, tmp_path / "site", Options(max_top=0))["entry"]).as_uri()
    w = Watch(browser)
    try:
        w.page.goto(base + f"#/feature/{fired}")
        expect(w.page.locator("text=No contexts kept")).to_be_visible()
        assert w.page.locator("text=never fired").count() == 0
        if dead is not None:
            w.page.goto(base + f"#/feature/{dead}")
            expect(w.page.locator("text=never fired")).to_be_visible()
        w.clean()
    finally:
        w.close()
