"""The demo's summary: the keys the issue names, the table, and the clamp-target rule (of each pair,
the emotion whose labeled feature has the higher held-out AUROC). The end-to-end demo is run by
`make demo` (minutes); these check the pieces it assembles from the stage outputs."""

from __future__ import annotations

from pathlib import Path

from features.demo import _summary, clamp_targets, format_table

LABELS = {
    "emotions": {"happy": [{"feature": 1}], "blissful": [{"feature": 2}], "sad": [{"feature": 3}], "afraid": []},
    "heldout": {"per_emotion": {"happy": {"feature": 1, "auroc": 0.7}, "blissful": {"feature": 2, "auroc": 0.95},
                                "sad": {"feature": 3, "auroc": 0.6}},
                "n_at_threshold": 1, "macro_auroc": 0.75,
                "ceiling": {"n_at_threshold": 2, "macro_auroc": 0.88}},
    "aligned_summary": {"heldout": {"n_at_threshold": 0, "macro_auroc": 0.66}},
    "null": {"heldout_macro_auroc_mean": 0.51},
}


def test_clamp_targets_pick_the_better_heldout_detector():
    assert clamp_targets(LABELS) == ["blissful", "sad"]  # afraid has no feature: sad is the negative one
    assert clamp_targets({"emotions": {}}) == []


def test_summary_has_the_documented_keys_and_table(tmp_path: Path):
    clamp = [{"label": "blissful", "feature": 2, "rows": [
        {"strength": "0", "delta": 0.0},
        {"strength": "1x", "delta": 0.31, "delta_lo": 0.1, "delta_hi": 0.5, "control_delta": -0.02,
         "control_delta_lo": -0.1, "control_delta_hi": 0.06, "ppl_ratio": 2.0}]}]
    dose = {"templates": [{"name": "acetaminophen", "rho": {"features": {"afraid": 0.9, "calm": -0.8},
                                                             "vectors": {"afraid": 0.5, "calm": -0.4}}},
                          {"name": "pages", "control": True, "rho": {"features": {"afraid": 0.1}}}]}
    s = _summary(tmp_path, {"fve": 0.8, "l0": 32.0, "dead": 0.01, "ce_loss_score": 0.97}, LABELS,
                 {"n_at_threshold": 3, "macro_auroc": 0.93},
                 {"pc1_valence_r": 0.5, "n": 26, "named": {"pc1_valence_r": 0.91, "story_on_named_pc1_r": 0.66}},
                 dose, clamp, tmp_path / "browser", {"train": 1.0})
    for key in ("run_dir", "fve", "l0", "dead", "ce_loss_score", "n_auroc_ge_0_9", "n_emotions", "pc1_valence_r",
                "afraid_dose_rho", "calm_dose_rho", "clamp", "export_dir"):
        assert key in s, key
    assert s["n_auroc_ge_0_9"] == 1 and s["n_emotions"] == 3
    assert s["clamp"]["blissful"] == {"feature": 2, "strength": "1x", "delta_vader": 0.31, "delta_ci": [0.1, 0.5],
                                      "control_delta_vader": -0.02, "control_ci": [-0.1, 0.06], "ppl_ratio": 2.0}
    table = format_table(s)
    assert "1/3 emotions" in table and "clamp blissful" in table and "+0.310" in table
    assert s["named_pc1_valence_r"] == 0.91 and "PC1 r = 0.910, stories on it r = 0.660" in table
    # the acceptance's comparison: vectors, best-aligned features, and what the dictionary allows at best
    assert (s["vectors_n_auroc_ge_0_9"], s["aligned_n_auroc_ge_0_9"], s["ceiling_n_auroc_ge_0_9"]) == (3, 0, 2)
    assert "emotion vectors 3/3, macro 0.930; best-aligned features 0/3, 0.660; ceiling 2/3, 0.880 (" in table


def test_screened_targets_take_the_screen_pick_else_the_best_detector(monkeypatch, tmp_path: Path):
    import features.screen
    from features.demo import screened_targets

    calls = []

    def fake_screen(run, emotions, sign, **kw):
        calls.append((tuple(emotions), sign, kw.get("samples"), kw.get("top"), kw.get("aligned")))
        if sign > 0:  # the positive group steers best with a pair; nothing steers negative
            return {"pick": [1, 40], "pick_strength": "0.14r", "candidates": [
                {"feature": 1, "why": "blissful label #1", "emotion": "blissful"},
                {"feature": [1, 40], "why": "pair blissful label #1 + happy aligned #2", "emotion": "blissful"}]}
        return {"pick": None, "pick_strength": None, "candidates": [{"feature": 3, "why": "sad label #1", "emotion": "sad"}]}

    monkeypatch.setattr(features.screen, "screen", fake_screen)
    targets, emotions, docs = screened_targets(tmp_path, LABELS, lm=None)
    assert calls == [(("happy", "blissful"), 1, 2, 3, 2), (("sad",), -1, 2, 3, 2)]  # afraid has no feature; narrow screen
    assert targets == [("1+40", "0.14r"), ("sad", "0.2r")] and emotions == ["blissful", "sad"] and len(docs) == 2


def test_summary_table_names_a_clamped_pair(tmp_path: Path):
    clamp = [{"emotion": "sad", "feature": [7, 9], "rows": [
        {"strength": "0", "delta": 0.0}, {"strength": "0.1342r", "delta": -0.4, "delta_lo": -0.5, "delta_hi": -0.3}]}]
    s = _summary(tmp_path, {}, LABELS, {}, {}, {}, clamp, tmp_path / "browser", {})
    assert s["clamp"]["sad"]["feature"] == [7, 9]
    assert "clamp sad      features 7+9 at 0.1342r: VADER -0.400" in format_table(s)


def test_a_demo_run_with_another_config_is_refused(tmp_path: Path, capsys):
    """`emosae demo --set ...` on a run trained with other settings must not reuse its results."""
    from sae.cli import main
    from sae.config import load_config
    from features.demo import DEMO_CONFIG

    run = tmp_path / "demo"
    run.mkdir()
    cfg = load_config(DEMO_CONFIG, [f"data.cache={tmp_path / 'elsewhere'}", "model.device=cpu"])
    (run / "config.yaml").write_text(cfg.to_yaml())  # as the trainer writes it (the cache path does not count)
    assert main(["demo", "--run", str(run), "--set", "train.seed=7"]) == 2
    err = capsys.readouterr().err
    assert "train.seed: 0 -> 7" in err and "--fresh" in err and "data.cache" not in err
