"""The browser's data layer without a browser: escaping of data files, block contents against the
statistics they came from, export report, run loading errors, path handling."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from features.browser import blocks, export_site
from features.browser.jsdata import js_literal, js_register
from features.browser.rundata import load_run, readable_tokens
from features.browser.server import site_path
from features.browser.site import Site
from features.browser.synthetic import HOSTILE, make_synthetic_run
from sae.errors import UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_synthetic_run(tmp_path_factory.mktemp("run") / "run", d_sae=96, d_in=32, hostile=True, images=False)


def _payload(data: bytes) -> object:
    """The JSON inside `EMOSAE_register("kind",key,{...});`."""
    text = data.decode("utf-8")
    m = re.fullmatch(r'EMOSAE_register\(("[a-z]+"),(\d+|"[^"]*"),(.*)\);\n', text, re.S)
    assert m, text[:200]
    return json.loads(m.group(3))


def test_js_literal_cannot_break_out_of_a_script():
    for s in HOSTILE + ["</SCRIPT >", "<!--<script>", "a\u2028b\u2029c", "&lt;"]:
        out = js_literal({"x": s, s: [s]})
        for bad in ("<", ">", "&", "\u2028", "\u2029"):
            assert bad not in out
        assert json.loads(out) == {"x": s, s: [s]}  # the escapes are plain JSON: the value is intact


def test_js_register_json_parse_form():
    obj = {"x": HOSTILE, "n": [1.5, None]}
    text = js_register("index", 0, obj, parse=True).decode()
    assert text.startswith('EMOSAE_register("index",0,JSON.parse("') and "<" not in text and "\u2028" not in text
    inner = json.loads(text[len('EMOSAE_register("index",0,JSON.parse('):-len(");\n") - 1])  # the JS string
    assert json.loads(inner) == obj


def test_js_register_nan_and_lone_surrogates():
    data = js_register("block", 3, {"v": [float("nan"), float("inf"), 1.5], "s": "bad \udc80 byte"})
    text = data.decode("utf-8")  # valid UTF-8 even with a lone surrogate in the data
    assert '"v":[null,null,1.5]' in text
    assert "\\udc80" in text


def test_readable_tokens_decodes_byte_level_bpe():
    vocab = ["Ġhello", "Ċ", "world", "Ġ", "<|im_start|>", "ĠcafÃ©"] + ["Ġx"] * 10
    out = readable_tokens(vocab)
    assert out[:6] == [" hello", "\n", "world", " ", "<|im_start|>", " café"]
    assert readable_tokens(["hello", " world"]) == ["hello", " world"]  # already decoded: unchanged


def test_index_matches_labels(run_dir):
    run = load_run(run_dir)
    ix = blocks.index_data(run)
    labels = json.loads((run_dir / "labels.json").read_text())
    assert ix["n"] == 96 and len(ix["label"]) == 96
    for k, v in labels["features"].items():
        i = int(k)
        got = ix["labels"][ix["label"][i]] if ix["label"][i] >= 0 else None
        assert got == v["label"]
        assert ix["score"][i] == pytest.approx(v["score"], rel=1e-3)
    for emotion, ranked in labels["emotions"].items():
        for r in ranked:
            assert ix["heldout"][r["feature"]] == pytest.approx(r["heldout_auroc"], rel=1e-3)
    stats = load_file(str(run_dir / "features" / "stats.safetensors"))
    assert np.allclose([x or 0 for x in ix["density"]], stats["density"], rtol=5e-3, atol=0)


def _unpack(s: str, w: int) -> list[int]:
    dec = {c: i for i, c in enumerate(blocks.B64.decode())}
    return [sum(dec[s[k * w + j]] * 64 ** (w - 1 - j) for j in range(w)) for k in range(len(s) // w)]


def test_feature_block_reproduces_statistics(run_dir):
    run = load_run(run_dir)
    opts = blocks.Options(block_size=32, max_top=5, max_per_bin=2)
    data = _payload(js_register("block", 1, blocks.feature_block(run, 1, opts)))
    stats = load_file(str(run_dir / "features" / "stats.safetensors"))
    vocab = json.loads((run_dir / "features" / "vocab.json").read_text())
    assert data["lo"] == 32 and len(data["features"]) == 32
    checked = 0
    for f in data["features"]:
        i = f["id"]
        order = np.argsort(-stats["top_acts"][i], kind="stable")
        order = [j for j in order if stats["top_index"][i, j] >= 0][:5]
        assert len(f["top"]["v"]) == len(order) <= 5
        for r, j in enumerate(order):
            assert f["top"]["v"][r] == pytest.approx(stats["top_acts"][i, j], rel=1e-3)
            toks = _unpack(f["top"]["t"][r], data["tw"])
            acts = [0] * len(toks)
            pairs = _unpack(f["top"]["a"][r], data["pw"] + 2)  # (position, value) of non-zero tokens
            for pv in pairs:
                acts[pv // 4096] = pv % 4096
            for t_enc, a_enc, t_true, a_true in zip(toks, acts, stats["top_tokens"][i, j], stats["top_token_acts"][i, j]):
                if t_true < 0:
                    assert t_enc == 0
                    continue
                assert data["strings"][t_enc - 1] == vocab[t_true]
                assert a_enc * f["sc"] / data["aq"] == pytest.approx(a_true, abs=f["sc"] / data["aq"])
            checked += 1
        assert f["hist"]["c"] == stats["hist_counts"][i].tolist()
        assert [p[0] for p in f["nb"]] == [j for j in stats["neighbor_ids"][i].tolist() if 0 <= j < 96]
        assert [data["strings"][p[0]] for p in f["lp"]] == [vocab[t] for t in stats["logit_pos_ids"][i]]
        assert len(f["q"]["bin"]) <= 2 * 8 and all(f["q"]["bin"].count(b) <= 2 for b in range(8))
        assert len(f["al"]) == 8  # 5 most and 3 least aligned emotion vectors
    assert checked > 50


def test_map_points_layouts():
    a = blocks.map_points({"emotions": ["joy", "fear"], "coords": [[1, 2], [3, 4]]})
    b = blocks.map_points({"points": {"joy": [1, 2], "fear": {"pc1": 3, "pc2": 4}}})
    c = blocks.map_points({"points": [{"emotion": "joy", "x": 1, "y": 2}, {"emotion": "fear", "x": 3, "y": 4}]})
    d = blocks.map_points({"emotions": ["joy", "fear"], "pc1": [1, 3], "pc2": [2, 4]})
    for m in (a, b, c, d):
        assert [(p["name"], p["x"], p["y"]) for p in m["points"]] == [("joy", 1, 2), ("fear", 3, 4)]
        assert (m["x_label"], m["y_label"]) == ("PC1", "PC2")
    va = blocks.map_points({"points": {"joy": {"pc1": 0, "pc2": 0, "valence": 0.9, "arousal": 0.6}}})
    assert (va["x_label"], va["points"][0]["x"], va["points"][0]["y"]) == ("valence", 0.9, 0.6)
    assert blocks.map_points(None) is None and blocks.map_points({"nothing": 1}) is None


def test_export_report_matches_files(run_dir, tmp_path):
    out = tmp_path / "site"
    rep = export_site(run_dir, out, blocks.Options(block_size=16))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert rep["n_files"] == len(files)
    assert rep["size_bytes"] == sum(p.stat().st_size for p in files)
    assert rep["n_blocks"] == 6 and len(list((out / "data" / "f").glob("*.js"))) == 6
    assert rep["first_load_bytes"] < rep["size_bytes"]
    for p in files:  # no data file can close a <script> or open a comment
        if p.suffix == ".js" and p.parent.name != "static":
            text = p.read_text(encoding="utf-8")
            assert "<" not in text and ">" not in text and "\u2028" not in text
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing from the network
    rep2 = export_site(run_dir, out)  # re-export replaces an earlier export
    assert rep2["n_blocks"] == 3


def test_export_refuses_foreign_folder(run_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(UserError, match="not an emosae export"):
        export_site(run_dir, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_load_run_errors(tmp_path, run_dir):
    with pytest.raises(UserError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="nothing to browse"):
        load_run(tmp_path / "empty")
    multi = tmp_path / "multi"
    multi.mkdir()
    (multi / "index.json").write_text(json.dumps({"saes": [{"name": "l15"}, {"name": "l20"}]}))
    with pytest.raises(UserError, match="several SAEs.*l15"):
        load_run(multi)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.json").write_text("{not json")
    with pytest.raises(UserError, match="labels"):
        load_run(bad)


def test_labels_only_run(tmp_path):
    d = tmp_path / "labels_only"
    d.mkdir()
    (d / "labels.json").write_text(json.dumps({"features": {"3": {"label": "joy", "score": 0.9, "auroc": 0.9, "evidence": []}}}))
    site = Site(load_run(d))
    assert site.run.d_sae == 4 and not site.run.has_stats
    block = _payload(site.get("data/f/0000.js"))
    assert block["features"][3]["lab"]["label"] == "joy" and "top" not in block["features"][3]


def test_site_paths_are_a_closed_set(run_dir):
    site = Site(load_run(run_dir), blocks.Options(block_size=32))
    for raw in ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd", "/%252e%252e/etc/passwd",
                "/static/../../../etc/passwd", "/data/f/../../labels.json", "//etc/passwd", "/labels.json",
                "/sae/cfg.json", "/assets/..%2fconfig.yaml", "/data/f/0003.js", "/data/f/00001.js", "/index.html%00",
                "/static/%2e%2e/__init__.py", "/..\\..\\etc\\passwd", "/%c0%ae%c0%ae/etc/passwd"]:
        rel = site_path(raw)
        assert rel is None or site.get(rel) is None, raw
    assert site_path("/") == "index.html" and site.get("index.html")
    assert site.get(site_path("/data/f/0002.js"))


def test_cli_export_json(run_dir, tmp_path, capsys):
    from sae.cli import main

    rc = main(["browse", str(run_dir), "--export", str(tmp_path / "cli_site"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["n_features"] == 96 and doc["size_bytes"] > 0
    assert Path(doc["entry"]).exists()
    rc = main(["browse", str(tmp_path / "missing"), "--export", str(tmp_path / "x")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_export_folder_is_readable_by_a_static_host(run_dir, tmp_path):
    """The site folder gets a plain mkdir's permissions, not mkdtemp's 0700 (a web server running
    as another user could not read it)."""
    import os

    umask = os.umask(0o022)
    try:
        out = tmp_path / "site"
        export_site(run_dir, out, blocks.Options(block_size=64))
        assert (out.stat().st_mode & 0o777) == 0o755
        assert all((p.stat().st_mode & 0o755) == 0o755 for p in out.rglob("*") if p.is_dir())
    finally:
        os.umask(umask)


def test_export_target_mistakes_are_one_line_errors(run_dir, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="cannot create the export folder"):
        export_site(run_dir, tmp_path / "a_file" / "site")
    here = tmp_path / "empty_here"
    here.mkdir()
    monkeypatch.chdir(here)
    for target in (".", str(here), ".."):  # renaming the folder one stands in away
        with pytest.raises(UserError, match="current folder|not an emosae export"):
            export_site(run_dir, target)
    assert here.is_dir() and list(here.iterdir()) == []
    rep = export_site(run_dir, "site")  # a new folder inside the current one is fine
    assert Path(rep["entry"]) == here / "site" / "index.html"


def test_cli_flag_mistakes_are_one_line_errors(run_dir, tmp_path, capsys):
    """Out-of-range ports, an empty --export, and flags that a static export or a model-less
    server would silently ignore: exit code 2 and one line naming the fix."""
    from sae.cli import main

    cases = [(["--port", "99999"], "--port 99999 is not a port"), (["--port", "-1"], "is not a port"),
             (["--export", ""], "--export needs a folder name"),
             (["--export", str(tmp_path / "s"), "--port", "9000"], "--port is for the server"),
             (["--export", str(tmp_path / "s"), "--host", "0.0.0.0"], "--host is for the server"),
             (["--device", "cpu"], "--device is where --model runs")]
    for extra, msg in cases:
        rc = main(["browse", str(run_dir), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "s").exists()


def test_saelens_sae_directories_are_browsable(run_dir, tmp_path):
    """A bare SAELens directory (cfg.json + weights, stats and labels beside them) and RUN/sae
    browse like the run, as the other verbs accept them."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(run_dir / "sae", bare)
    run = load_run(bare)
    assert run.d_sae == 96 and run.hook == "blocks.15.hook_resid_post" and not run.has_stats
    shutil.copytree(run_dir / "features", bare / "features")
    shutil.copy(run_dir / "labels.json", bare / "labels.json")
    run = load_run(bare)
    assert run.has_stats and run.labels and run.hook == "blocks.15.hook_resid_post"
    via_sae = load_run(run_dir / "sae")
    assert via_sae.dir == run_dir and via_sae.has_stats and via_sae.labels and via_sae.alignment_emotions


def test_alignment_uses_vectors_at_exactly_the_sae_hook(tmp_path):
    """A resid_pre SAE is compared with the resid_pre vectors (`hook_resid_pre_L`), never with the
    resid_post ones that share its layer number (`layer_L`)."""
    from safetensors.numpy import load_file as load_np, save_file as save_np

    run = make_synthetic_run(tmp_path / "pre", d_sae=32, d_in=16, images=False, hook="blocks.15.hook_resid_pre")
    vf = run / "vectors" / "vectors.safetensors"
    assert set(load_np(str(vf))) == {"layer_15"}
    assert load_run(run).alignment_emotions == []  # no vectors at this hook: none shown
    vecs = load_np(str(vf))["layer_15"]
    from safetensors import safe_open

    with safe_open(str(vf), framework="np") as f:
        meta = f.metadata()
    save_np({"layer_15": vecs, "hook_resid_pre_15": -vecs}, str(vf), metadata=meta)
    r = load_run(run)
    w = load_np(str(run / "sae" / "sae_weights.safetensors"))["W_dec"][:4].astype(np.float64)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    assert np.allclose(r.alignment_block(0, 4), w @ (-vecs.astype(np.float64)).T, atol=1e-5)
    from features.browser.rundata import _vector_key

    from features.vectors import vector_key

    assert [_vector_key(h) for h in ("blocks.3.hook_resid_post", "model.layers.15", "blocks.2.hook_mlp_out",
                                     "model.layers.15.mlp")] == ["layer_3", "layer_15", "hook_mlp_out_2", None]
    for hook in ("blocks.0.hook_resid_pre", "blocks.29.hook_resid_post", "blocks.7.hook_attn_out"):
        assert _vector_key(hook) == vector_key(hook)  # the browser's torch-free copy of the contract


def test_malformed_labels_are_one_line_errors(tmp_path):
    """labels.json whose "features"/"emotions" are not objects, or has no numeric feature key:
    a UserError naming the file, not an AttributeError or max() of nothing."""
    d = tmp_path / "r"
    d.mkdir()
    for doc, msg in (({"features": [1, 2]}, '"features" is not a JSON object'),
                     ({"features": {"1": {"label": "x"}}, "emotions": ["x"]}, '"emotions" is not a JSON object'),
                     ({"features": {"abc": {"label": "x"}}}, "nothing to browse")):
        (d / "labels.json").write_text(json.dumps(doc))
        with pytest.raises(UserError, match=msg):
            load_run(d)


def test_a_port_in_use_fails_before_a_model_loads(run_dir, monkeypatch):
    """`browse RUN --model` on a busy port: the one-line port error comes first, not after the
    model has loaded."""
    import socket

    import features.browser.live
    from features.browser import serve

    def no_model(*a, **kw):
        raise AssertionError("the model loaded before the port was checked")

    monkeypatch.setattr(features.browser.live, "Live", no_model)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen.*pick another --port"):
            serve(run_dir, port=busy.getsockname()[1], model="smollm2-135m")
