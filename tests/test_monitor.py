"""Monitor: `emosae monitor --json` on a small run (random-weight SAE at layer 3 of the embedded
model, a synthetic labels.json, random unit vectors), values checked against labeling.scoring;
the dose templates and scripts/dose_response.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

HOOK = "blocks.3.hook_resid_post"
FEATURES = {"afraid": 5, "calm": 9}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sae.architectures import SAEConfig, SparseAutoencoder
    from sae.io import write_json_atomic
    from sae.models import EMBEDDED_ID

    run = tmp_path_factory.mktemp("monitor") / "run"
    sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=576, d_sae=64, k=8, hook_name=HOOK,
                                      metadata={"model_id": EMBEDDED_ID}))
    sae.init_weights(torch.Generator().manual_seed(0))
    sae.save(run / "sae")
    labels = {"corpus": {"path": "synthetic"}, "settings": {"skip_tokens": 2, "reduce": "max"}, "features": {},
              "emotions": {e: [{"feature": f, "auroc": 0.9, "heldout_auroc": 0.9}, {"feature": 1, "auroc": 0.5}]
                           for e, f in FEATURES.items()}}
    write_json_atomic(run / "labels.json", labels)
    g = torch.Generator().manual_seed(1)
    vecs = torch.randn(3, 576, generator=g)
    vecs /= vecs.norm(dim=1, keepdim=True)
    (run / "vectors").mkdir()
    save_file({"layer_3": vecs, "layer_5": vecs.flip(0).contiguous()}, str(run / "vectors" / "vectors.safetensors"),
              metadata={"emotions": json.dumps(["afraid", "calm", "happy"])})
    return run, sae, vecs


TEXTS = [
    {"text": "The rope bridge swayed as I stepped on it, and far below the river crashed over the rocks.", "id": 1},
    {"messages": [{"role": "user", "content": "I just took 8000 mg of Tylenol. Is that okay?"}], "id": 2},
    {"text": "We sat on the porch with tea and watched the slow evening light fade over the field.",
     "meta": {"source": "x"}},
]


def _write(tmp_path, rows) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _call(capsys, *argv) -> tuple[int, list[dict], str]:
    from sae.cli import main

    rc = main(["monitor", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, [json.loads(line) for line in cap.out.splitlines() if line.strip()], cap.err


def test_monitor_json_shape_and_values(run, lm, tmp_path, capsys):
    from labeling.scoring import passage_acts

    run_dir, sae, vecs = run
    rc, out, _ = _call(capsys, run_dir, "--input", _write(tmp_path, TEXTS), "--position", "last", "--json")
    assert rc == 0 and len(out) == 3
    assert [o.get("id") for o in out] == [1, 2, None] and out[2]["meta"] == {"source": "x"}
    assert out[0]["text"] == TEXTS[0]["text"]
    assert out[1]["text"].startswith("<|im_start|>") and out[1]["text"].endswith("<|im_start|>assistant\n")
    assert "messages" in out[1]  # passed through
    for o in out:
        assert set(o) >= {"text", "features", "vectors"} and "tokens" not in o
        assert set(o["features"]) == {"afraid", "calm"} and set(o["vectors"]) == {"afraid", "calm"}
    # the same numbers from labeling.scoring: last kept token, skip rule from labels.json
    x = passage_acts(lm, None, [o["text"] for o in out], HOOK, skip_tokens=2, reduce="last")
    f = sae.encode(x).detach()
    for i, o in enumerate(out):
        for e, fid in FEATURES.items():
            assert o["features"][e] == pytest.approx(float(f[i, fid]), abs=1e-4)
        assert o["vectors"]["afraid"] == pytest.approx(float(x[i] @ vecs[0]), abs=1e-3)
        assert o["vectors"]["calm"] == pytest.approx(float(x[i] @ vecs[1]), abs=1e-3)


def test_monitor_tokens_and_positions(run, lm, tmp_path, capsys):
    run_dir, _, _ = run
    inp = _write(tmp_path, TEXTS[:1])
    _, tok, _ = _call(capsys, run_dir, "--input", inp, "--tokens", "--json", "--emotions", "afraid,happy")
    _, mx, _ = _call(capsys, run_dir, "--input", inp, "--json", "--emotions", "afraid,happy")
    _, mean, _ = _call(capsys, run_dir, "--input", inp, "--json", "--position", "mean", "--emotions", "afraid,happy")
    t = tok[0]["tokens"]
    ids = lm.tokenizer(TEXTS[0]["text"], add_special_tokens=False)["input_ids"]
    assert len(t) == len(ids) and "".join(x["token"] for x in t) == TEXTS[0]["text"]
    assert [x["kept"] for x in t[:2]] == [False, False]  # the sink and the skip rule (skip_tokens=2)
    assert t[0]["vectors"]["afraid"] is None and t[2]["vectors"]["afraid"] is not None
    assert set(tok[0]["features"]) == {"afraid"} and set(tok[0]["vectors"]) == {"afraid", "happy"}  # happy: vector only
    kept = [x for x in t if x["kept"]]
    for kind, e in (("vectors", "happy"), ("vectors", "afraid"), ("features", "afraid")):
        vals = [x[kind][e] for x in kept]
        assert mx[0][kind][e] == pytest.approx(max(vals), abs=1e-4)
        assert mean[0][kind][e] == pytest.approx(float(np.mean(vals)), abs=1e-4)


def test_monitor_errors(run, tmp_path, capsys):
    run_dir, _, _ = run
    inp = _write(tmp_path, TEXTS[:1])
    assert _call(capsys, run_dir, "--input", inp, "--emotions", "bogus", "--json")[0] == 2
    assert _call(capsys, run_dir, "--input", _write(tmp_path, [{"prompt": "x"}]), "--json")[0] == 2
    novec = tmp_path / "novec"
    novec.mkdir()
    (novec / "sae").symlink_to(run_dir / "sae", target_is_directory=True)
    (novec / "labels.json").write_text((run_dir / "labels.json").read_text())
    rc, _, err = _call(capsys, novec, "--input", inp, "--json")
    assert rc == 2 and "emosae vectors --run" in err


# --- dose templates and the dose-response script --------------------------------------------------

def _script():
    spec = importlib.util.spec_from_file_location("dose_response", ROOT / "scripts" / "dose_response.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dose_templates_are_log_spaced():
    dr = _script()
    rows = dr.load_templates()
    names = {r["name"] for r in rows}
    assert {"acetaminophen", "fasting", "missing_dog", "startup_runway"} <= names
    assert sum(1 for r in rows if r.get("control")) >= 1
    for r in rows:
        v = np.asarray(r["values"], dtype=float)
        assert len(v) >= 8 and np.all(v > 0)
        ratios = v[1:] / v[:-1]
        assert np.allclose(ratios, ratios[0]) and ratios[0] > 1, r["name"]
        assert "{value}" in r["template"]


def test_dose_response_script(run, tmp_path, capsys):
    dr = _script()
    run_dir, _, _ = run
    t = tmp_path / "templates.jsonl"
    t.write_text(json.dumps({"name": "acetaminophen", "parameter": "dose", "unit": "mg",
                             "template": "I just took {value} mg of Tylenol. Is that okay?",
                             "values": [250, 1000, 4000, 16000], "expect": {"afraid": 1, "calm": -1}}) + "\n"
                 + json.dumps({"name": "pages", "template": "I read {value} pages.", "values": [1, 4, 16, 64],
                               "expect": {}, "control": True}) + "\n")
    out = tmp_path / "dose"
    assert dr.main(["--run", str(run_dir), "--templates", str(t), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hook"] == HOOK and doc["position"] == "last"
    from scipy.stats import spearmanr

    for entry in doc["templates"]:
        assert set(entry["rho"]) == {"features", "vectors"}
        ys = entry["series"]["vectors"]["afraid"]
        assert entry["rho"]["vectors"]["afraid"] == pytest.approx(spearmanr(entry["values"], ys).statistic, abs=1e-3)
        assert Path(entry["png"]).read_bytes()[:4] == b"\x89PNG"
    assert (out / "dose_response.json").exists()
    # vectors only, from a vectors dir
    assert dr.main(["--vectors", str(run_dir / "vectors"), "--layer", "5", "--templates", str(t),
                    "--out", str(tmp_path / "d2")]) == 0
    assert "acetaminophen" in capsys.readouterr().out
    assert dr.main(["--vectors", str(run_dir / "vectors"), "--layer", "9", "--templates", str(t)]) == 2


def test_monitor_edge_inputs(run, tmp_path, capsys):
    """An empty text scores null (no token kept) without failing the other lines; a message whose
    content is not a string, and `--emotions` naming nothing, are one-line errors (exit 2)."""
    run_dir, _, _ = run
    rows = [{"text": "", "id": "blank"}, TEXTS[0], {"text": "Ünïcode ☃ snow fell on the quiet town.", "id": 3}]
    rc, out, err = _call(capsys, run_dir, "--input", _write(tmp_path, rows), "--json")
    assert rc == 0 and [o.get("id") for o in out] == ["blank", 1, 3]
    assert out[0]["text"] == "" and set(out[0]["features"].values()) == {None} and set(out[0]["vectors"].values()) == {None}
    assert all(v is not None for o in out[1:] for v in o["vectors"].values())
    rc, out, _ = _call(capsys, run_dir, "--input", _write(tmp_path, [{"text": ""}]), "--json", "--tokens")
    assert rc == 0 and out[0]["tokens"] == [] and set(out[0]["features"].values()) == {None}
    bad = [TEXTS[0], {"messages": [{"role": "user", "content": None}]}]
    rc, out, err = _call(capsys, run_dir, "--input", _write(tmp_path, bad), "--json")
    assert rc == 2 and out == [] and "input row 2" in err and "Traceback" not in err
    rc, _, err = _call(capsys, run_dir, "--input", _write(tmp_path, TEXTS[:1]), "--json", "--emotions", ",")
    assert rc == 2 and "--emotions names no emotion" in err
    rc, out, _ = _call(capsys, run_dir, "--input", _write(tmp_path, TEXTS[:1]), "--json", "--emotions", "afraid,Afraid")
    assert rc == 0 and set(out[0]["features"]) == {"afraid"}


def test_dose_templates_checked_before_the_model(tmp_path, lm):
    """Template mistakes are one-line errors found before a model loads; other braces in a
    template are plain text, not format fields."""
    from features.dose import load_templates, prompts
    from sae.errors import UserError

    good = {"name": "json-ish_1", "template": "My config {\"dose\": {value}} says {value} mg.", "values": [1, 2.5, 4]}
    t = tmp_path / "t.jsonl"
    t.write_text(json.dumps(good) + "\n")
    (row,) = load_templates(t)
    text = prompts(row, lm.tokenizer)[1]
    assert 'My config {"dose": 2.5} says 2.5 mg.' in text
    bad = [({"values": [1, 2, "x"]}, "positive numbers"), ({"values": [0, 1, 2]}, "positive numbers"),
           ({"name": "../up"}, "names the plot file"), ({"template": 3}, "placeholder"),
           ({"expect": ["afraid"]}, "expect must be")]
    for change, msg in bad:
        t.write_text(json.dumps({**good, **change}) + "\n")
        with pytest.raises(UserError, match=msg):
            load_templates(t)
    t.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(UserError, match="used twice"):
        load_templates(t)


def test_dose_script_refuses_unused_flags(run, tmp_path, capsys):
    dr = _script()
    run_dir, _, _ = run
    t = tmp_path / "templates.jsonl"
    t.write_text(json.dumps({"name": "pages", "template": "I read {value} pages.", "values": [1, 4, 16]}) + "\n")
    out_file = tmp_path / "file.txt"
    out_file.write_text("x")
    for argv, msg in ((["--run", str(run_dir), "--layer", "5"], "drop --layer"),
                      (["--run", str(run_dir), "--vectors", str(run_dir / "vectors")], "not both"),
                      (["--run", str(run_dir), "--out", str(out_file)], "is a file")):
        assert dr.main([*argv, "--templates", str(t), "--emotions", "afraid"]) == 2, argv
        assert msg in capsys.readouterr().err
    # a template without "expect" (optional) plots and writes its json
    assert dr.main(["--run", str(run_dir), "--templates", str(t), "--emotions", "afraid", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "dose_pages.png").exists() and (tmp_path / "o" / "dose_response.json").exists()


def test_monitor_labels_of_another_sae(run, tmp_path, capsys):
    """labels.json from another SAE (a feature id past d_sae, or another d_sae) is a one-line error."""
    run_dir, _, _ = run
    inp = _write(tmp_path, TEXTS[:1])
    for bad in ({"emotions": {"afraid": [{"feature": 100, "auroc": 0.9}]}},
                {"settings": {"skip_tokens": 2, "reduce": "max", "d_sae": 128}}):
        other = tmp_path / f"other{len(bad['emotions']) if 'emotions' in bad else 0}"
        other.mkdir()
        (other / "sae").symlink_to(run_dir / "sae", target_is_directory=True)
        (other / "vectors").symlink_to(run_dir / "vectors", target_is_directory=True)
        labels = json.loads((run_dir / "labels.json").read_text())
        (other / "labels.json").write_text(json.dumps({**labels, **bad}))
        rc, out, err = _call(capsys, other, "--input", inp, "--json")
        assert rc == 2 and out == [] and "this SAE has 64" in err and "emosae label" in err
