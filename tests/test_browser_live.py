"""`emosae browse RUN --model`: the "which features fire on this text" endpoint and box, the clamp
playground, and the endpoints' refusal of cross-site or malformed requests. Uses the embedded
model (SmolLM2-135M) with a random SAE on its layer-15 residual stream."""

from __future__ import annotations

import http.client
import json
import os
import sys

import pytest
import torch

from features.browser import serve
from features.browser.synthetic import make_synthetic_run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TEXT = "I was so happy when the letter finally arrived, I danced around the kitchen."


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("live") / "run", d_sae=128, d_in=576, images=False, seed=4)


@pytest.fixture(scope="module")
def server(run_dir):
    srv = serve(run_dir, port=0, model="smollm2-135m")
    yield srv
    srv.shutdown()


def _post(srv, path: str, body, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    conn.request("POST", path, body=data, headers=h)
    r = conn.getresponse()
    raw = r.read()
    out = r.status, (json.loads(raw) if r.getheader("Content-Type", "").startswith("application/json") else {})
    conn.close()
    return out


def test_fire_matches_a_direct_forward(server, run_dir):
    from sae.architectures import load_sae
    from sae.hooks import run_to_hooks

    status, res = _post(server, "/api/fire", {"text": TEXT})
    assert status == 200, res
    tok = server.live.lm.tokenizer
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert "".join(res["tokens"]) == tok.decode(ids) and res["masked"][0] is True  # first token: the sink
    sae = load_sae(run_dir)
    with torch.inference_mode():
        acts = run_to_hooks(server.live.lm.model, ["blocks.15.hook_resid_post"], input_ids=torch.tensor([ids]))
        f = sae.encode(acts["blocks.15.hook_resid_post"][0])[1:]  # positions after the masked first
    peak = f.max(0).values
    assert res["features"], "a TopK SAE fires on every kept token"
    top = res["features"][0]
    assert top["id"] == int(peak.argmax()) and top["max"] == pytest.approx(float(peak.max()), rel=1e-3)
    assert [x["max"] for x in res["features"]] == sorted((x["max"] for x in res["features"]), reverse=True)
    assert len(top["acts"]) == len(ids) and top["acts"][0] == 0


def test_endpoints_refuse_bad_requests(server):
    assert _post(server, "/api/fire", {"text": TEXT}, {"Content-Type": "text/plain"})[0] == 415
    assert _post(server, "/api/fire", {"text": TEXT}, {"Origin": "http://evil.example"})[0] == 403
    assert _post(server, "/api/fire", {"text": TEXT}, {"Host": "evil.example"})[0] == 403
    assert _post(server, "/api/fire", b"{not json")[0] == 400
    assert _post(server, "/api/fire", b"x" * 200_000)[0] == 413
    status, res = _post(server, "/api/fire", {"text": ""})
    assert status == 400 and "text" in res["error"]
    status, res = _post(server, "/api/clamp", {"feature": 10_000, "prompt": "hi"})
    assert status == 400 and "feature" in res["error"]
    assert _post(server, "/api/../api/fire", {"text": TEXT})[0] == 404


def test_fire_box_and_clamp_playground_in_the_page(server):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = b.new_page()
        errors = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server.url)
        pg.wait_for_selector("#fire-text")
        pg.fill("#fire-text", TEXT + " <script>window.__pwned=1</script>")
        pg.click("#fire-go")
        pg.wait_for_selector("#fire-tokens .tok", timeout=60_000)
        assert "<script>" in pg.text_content("#fire-tokens")
        lit = pg.locator("#fire-tokens .tok").evaluate_all(
            "es => es.filter(e => e.style.backgroundColor).length")
        assert lit >= 1
        buttons = pg.locator(".firelist button")
        assert buttons.count() >= 2
        second = buttons.nth(1).text_content().split()[0].lstrip("#")
        buttons.nth(1).click()
        assert pg.locator(f"#fire-out a[href='#/feature/{second}']").count() == 1
        has_clamp = server.live.clamp_mod is not None
        pg.goto(server.url + "#/feature/" + second)
        pg.wait_for_selector("#feature-title")
        assert pg.locator("#clamp-panel").count() == (1 if has_clamp else 0)
        if has_clamp:
            pg.fill("#clamp-ntok", "6")
            pg.fill("#clamp-strength", "8x")
            pg.click("#clamp-go")
            pg.wait_for_selector("#clamp-clamped", timeout=120_000)
            assert pg.text_content("#clamp-baseline").strip() and pg.text_content("#clamp-clamped").strip()
            assert f"feature {second}" in pg.text_content("#clamp-out")
        assert errors == [] and pg.evaluate("window.__pwned") is None
        b.close()


def test_clamp_playground_hidden_without_features_clamp(run_dir, monkeypatch):
    from features.browser.live import Live

    monkeypatch.setitem(sys.modules, "features.clamp", None)  # import now raises ImportError
    live = Live(run_dir, "auto")  # the model recorded in the SAE metadata
    assert live.caps()["clamp"] is False and live.caps()["fire"] is True
    with pytest.raises(Exception, match="not available"):
        live.clamp({"feature": 0, "prompt": "hi"})
