"""`emosae demo`: the whole mission on the embedded model, one step after another, each step
skipped when its output is already there (so an interrupted demo resumes and a re-run is quick):

  train (harvest into the run's activation cache, then the SAE) -> statistics from that cache ->
  labels on the emotion corpus, scored on the held-out topics -> emotion vectors at the run's
  layer + alignment with the SAE -> geometry (PC1 vs valence) -> the acetaminophen dose template
  through the monitor -> screen a positive and a negative emotion's features (singles and pairs)
  for the one that steers, then clamp it on separate prompts, with a random-direction control ->
  browser export -> a summary table (stderr) and RUN/summary.json (stdout with --json)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from sae.errors import UserError
from sae.io import read_json, write_json_atomic

log = logging.getLogger("emosae")

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo-cpu.yaml"
# one positive and one negative emotion group, with the way each should move valence
CLAMP_TARGETS = (("happy", "blissful"), ("sad", "afraid"))
CLAMP_SIGNS = (1, -1)
SCREEN_SAMPLES = 2  # per screening prompt: enough to rank candidates, kept small for the demo's time
SCREEN_TOP, SCREEN_ALIGNED = 3, 2  # candidates per emotion: fewer than `emosae screen` (5, 3), for the demo's time


def clamp_targets(labels: dict) -> list[str]:
    """Of each pair, the emotion whose labeled feature has the higher held-out AUROC (the more
    trustworthy detector): the fallback when screening finds no feature that steers."""
    chosen = {e for e, v in (labels.get("emotions") or {}).items() if v}
    held = (labels.get("heldout") or {}).get("per_emotion") or {}
    out = []
    for group in CLAMP_TARGETS:
        cands = [e for e in group if e in chosen]
        if cands:
            out.append(max(cands, key=lambda e: (held.get(e) or {}).get("auroc") or 0.0))
    return out


def screened_targets(run: Path, labels: dict, lm) -> tuple[list[tuple[str, str]], list[str], list[dict]]:
    """([(target, strength)], their emotions, screen documents): per group, the candidate feature or
    pair that moved VADER furthest the group's way on the screening prompts (features/screen.py);
    the evaluation then runs on the separate sweep prompts, so the pick's reported effect is unbiased."""
    from features.screen import DEFAULT_STRENGTH, screen, target_name

    fallback = clamp_targets(labels)
    chosen = {e for e, v in (labels.get("emotions") or {}).items() if v}
    targets, emotions, docs = [], [], []
    baselines: dict = {}  # both groups screen on the same prompts: one baseline
    for group, sign in zip(CLAMP_TARGETS, CLAMP_SIGNS):
        emos = [e for e in group if e in chosen]
        if not emos:
            continue
        doc = screen(run, emos, sign, top=SCREEN_TOP, aligned=SCREEN_ALIGNED, samples=SCREEN_SAMPLES, lm=lm,
                     baselines=baselines)  # its strength and pairs
        docs.append(doc)
        if doc["pick"] is not None:
            targets.append((target_name(doc["pick"]), doc["pick_strength"]))
            emotions.append(next(c["emotion"] for c in doc["candidates"] if c["feature"] == doc["pick"]))
        else:  # nothing steered: show the best detector's effect, whatever it is
            e = next(e for e in fallback if e in emos)
            targets.append((e, DEFAULT_STRENGTH))
            emotions.append(e)
    return targets, emotions, docs


def _config_path() -> Path:
    if DEMO_CONFIG.exists():
        return DEMO_CONFIG
    raise UserError(f"demo config {DEMO_CONFIG} is missing; run the demo from an emosae checkout")


def _config_changes(run: Path, cfg) -> list[str]:
    """What differs between the config RUN was trained with and the one this demo would train
    ("key: then -> now"); the log section, the cache folder and the dataset's spelling do not count."""
    import copy

    from sae.config import load_config
    from sae.models import resolve_autocast
    from sae.trainer import CONFIG_FILE, resolve

    now = resolve(copy.deepcopy(cfg))
    now.model.autocast = resolve_autocast(now.model.autocast, now.model.device)
    then, now = load_config(run / CONFIG_FILE).to_dict(), now.to_dict()

    def leaves(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    a, b = leaves(then), leaves(now)
    changes = []
    for k in sorted(set(a) | set(b)):
        if k.startswith("log.") or k == "data.cache" or a.get(k) == b.get(k):  # the cache is always RUN/cache
            continue
        if k == "data.dataset" and a.get(k) and b.get(k) and Path(a[k]).resolve() == Path(b[k]).resolve():
            continue
        changes.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return changes


def _step(name: str, done: bool, fn, timings: dict):
    if done:
        log.info("demo: %s — already done, reusing it", name)
        timings[name] = 0.0
        return None
    log.info("demo: %s ...", name)
    t = time.time()
    out = fn()
    timings[name] = round(time.time() - t, 1)
    log.info("demo: %s done in %.0fs", name, timings[name])
    return out


def run_demo(run_dir: str | Path = "runs/demo", fresh: bool = False, overrides: list[str] | None = None,
             clamp_prompts: int = 8, clamp_samples: int = 4) -> dict:
    import torch

    from sae.config import load_config
    from sae.trainer import train

    torch.set_flush_denormal(True)
    run = Path(run_dir).resolve()
    if fresh and run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = _config_path()
    overrides = [f"data.cache={run / 'cache'}", *(overrides or [])]
    cfg = load_config(cfg_path, overrides)
    if (run / "config.yaml").exists():
        changes = _config_changes(run, cfg)
        if changes:
            raise UserError(f"{run} holds a demo trained with another config ({'; '.join(changes[:4])}"
                            f"{'; ...' if len(changes) > 4 else ''}); run `emosae demo --fresh` to start it over, "
                            "or give another --run")
    timings: dict[str, float] = {}
    summary_path = run / "summary.json"
    metrics_path = run / "metrics.json"

    def do_train():
        resume = (run / "checkpoints").exists() and any((run / "checkpoints").iterdir())
        return train(cfg, run, resume=resume or (run / "config.yaml").exists())
    _step("train", metrics_path.exists(), do_train, timings)
    metrics = read_json(metrics_path)

    from labeling.scoring import load_model_for
    from sae.architectures import load_sae
    sae = load_sae(run)
    lm = load_model_for(sae, device="cpu")  # at the precision the SAE was trained at (the preset's model.autocast)

    from sae.layout import find_sae_dir, recorded_fingerprint, sae_fingerprint
    fingerprint = sae_fingerprint(find_sae_dir(run))
    stale = [p.name for p in (run / "features" / "meta.json", run / "labels.json")
             if recorded_fingerprint(p) not in (None, fingerprint)]
    if stale:  # the SAE was replaced since: what was made from the old one is redone, not reused
        log.info("demo: %s were made from another SAE than %s/sae; redoing the steps that use it",
                 " and ".join(stale), run)

    from features.stats import compute_stats
    cache_train = run / "cache" / "train"
    _step("statistics", (run / "features" / "stats.safetensors").exists() and not stale,
          lambda: compute_stats(run, cache_dir=cache_train if cache_train.exists() else None, lm=lm), timings)

    from labeling.label import label_run, read_labels
    labels_done = (run / "labels.json").exists() and "emotions" in read_labels(run) and not stale
    _step("labels", labels_done, lambda: label_run(run, lm=lm), timings)
    labels = read_labels(run)

    from features.vectors import alignment_report, compute_vectors, merge_into_labels
    from sae.hooks import parse_hook
    layer = parse_hook(sae.hook_name, lm.model).layer

    def do_vectors():
        result = compute_vectors(lm, [layer], cached_hooks=[sae.hook_name], cache_dir=run / "labeling")
        result.save(run / "vectors")
        rep = alignment_report(result, sae, sae.hook_name, run, lm)
        merge_into_labels(run, rep["aligned"], rep["summary"])
    _step("emotion vectors", (run / "vectors" / "vectors.safetensors").exists()
          and "aligned" in read_labels(run) and not stale, do_vectors, timings)

    from labeling.geometry import run_geometry
    geo_path = run / "geometry.json"
    _step("geometry", geo_path.exists(), lambda: run_geometry(run, out=run), timings)
    geo = read_json(geo_path)

    from features.dose import dose_response, load_templates
    from features.monitor import Monitor
    dose_path = run / "dose" / "dose.json"

    def do_dose():
        mon = Monitor.from_run(run, ["afraid", "calm"], lm=lm, require_vectors=False)
        templates = [t for t in load_templates() if t["name"] in ("acetaminophen",) or t.get("control")]
        doc = dose_response(mon, templates)
        write_json_atomic(dose_path, doc)
    _step("dose template", dose_path.exists() and not stale, do_dose, timings)
    dose = read_json(dose_path)

    from features.sweep import run_sweeps
    clamp_path = run / "clamp" / "clamp.json"

    def do_clamp():
        from features.clamp_cli import load_prompt_file
        from features.sweep import DEFAULT_PROMPTS
        targets, emotions, screens = screened_targets(run, labels, lm)
        write_json_atomic(run / "clamp" / "screen.json", screens)
        if not targets:
            return
        prompts = load_prompt_file(DEFAULT_PROMPTS)[:clamp_prompts]
        results = run_sweeps(run, [t for t, _ in targets], ["0"], prompts=prompts, samples=clamp_samples,
                             control="max", lm=lm, out_dir=run / "clamp",
                             target_strengths=[["0", s] for _, s in targets])  # pairs: per-feature strength
        for res, e in zip(results, emotions):
            res["emotion"] = e
        write_json_atomic(clamp_path, results)
    _step("clamp", (clamp_path.exists() and not stale) or not clamp_targets(labels), do_clamp, timings)
    clamp_results = read_json(clamp_path) if clamp_path.exists() else []

    from features.browser.export import export_site
    export_dir = run / "browser"
    _step("browser export", (export_dir / "index.html").exists() and not stale, lambda: export_site(run, export_dir), timings)

    vec_held = (read_json(run / "vectors" / "vectors.json").get("heldout") or {}).get(str(layer)) or {}
    summary = _summary(run, metrics, read_labels(run), vec_held, geo, dose, clamp_results, export_dir,
                       timings)  # after "aligned" was merged
    write_json_atomic(summary_path, summary)
    return summary


def _rho(dose: dict, emotion: str, kind: str = "features") -> float | None:
    for t in dose.get("templates", []):
        if t.get("name") == "acetaminophen":
            return (t.get("rho", {}).get(kind) or {}).get(emotion)
    return None


def _summary(run: Path, metrics: dict, labels: dict, vec_held: dict, geo: dict, dose: dict, clamp_results: list,
             export_dir: Path, timings: dict) -> dict:
    held = labels.get("heldout") or {}
    per = held.get("per_emotion") or {}
    n_ok = held.get("n_at_threshold")
    if n_ok is None:
        n_ok = sum(1 for v in per.values() if (v.get("auroc") or 0) >= 0.9)
    aligned_held = ((labels.get("aligned_summary") or {}).get("heldout") or {})
    ceiling = held.get("ceiling") or {}
    clamp = {}
    for res in clamp_results:
        rows = [r for r in res.get("rows", []) if r.get("strength") not in ("0", "0.0")]
        if rows:
            r = rows[-1]
            clamp[res.get("emotion") or res.get("label") or res.get("target")] = {
                "feature": res.get("feature"), "strength": r.get("strength"), "delta_vader": r.get("delta"),
                "delta_ci": [r.get("delta_lo"), r.get("delta_hi")], "control_delta_vader": r.get("control_delta"),
                "control_ci": [r.get("control_delta_lo"), r.get("control_delta_hi")], "ppl_ratio": r.get("ppl_ratio")}
    control = next((t for t in dose.get("templates", []) if t.get("control")), {})
    return {
        "run_dir": str(run), "fve": metrics.get("fve"), "l0": metrics.get("l0"), "dead": metrics.get("dead"),
        "ce_loss_score": metrics.get("ce_loss_score"), "tokens": metrics.get("tokens"),
        "n_auroc_ge_0_9": n_ok, "n_emotions": len(per) or len(labels.get("emotions") or {}),
        "macro_auroc": held.get("macro_auroc"),
        "null_macro_auroc": (labels.get("null") or {}).get("heldout_macro_auroc_mean"),
        "aligned_n_auroc_ge_0_9": aligned_held.get("n_at_threshold"), "aligned_macro_auroc": aligned_held.get("macro_auroc"),
        "vectors_n_auroc_ge_0_9": vec_held.get("n_at_threshold"), "vectors_macro_auroc": vec_held.get("macro_auroc"),
        "ceiling_n_auroc_ge_0_9": ceiling.get("n_at_threshold"), "ceiling_macro_auroc": ceiling.get("macro_auroc"),
        "pc1_valence_r": geo.get("pc1_valence_r"), "pc1_valence_n": geo.get("n"),
        "named_pc1_valence_r": (geo.get("named") or {}).get("pc1_valence_r"),
        "story_on_named_pc1_r": (geo.get("named") or {}).get("story_on_named_pc1_r"),
        "afraid_dose_rho": _rho(dose, "afraid"), "calm_dose_rho": _rho(dose, "calm"),
        "afraid_dose_rho_vector": _rho(dose, "afraid", "vectors"), "calm_dose_rho_vector": _rho(dose, "calm", "vectors"),
        "control_dose_rho": (control.get("rho", {}).get("features") or {}) if control else None,
        "clamp": clamp, "export_dir": str(export_dir), "serve": f"emosae browse {run}",
        "seconds": timings,
    }


def format_table(s: dict) -> str:
    def f(v, spec=".3f"):
        return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)
    n = f(s['n_emotions'], 'd')
    lines = [
        "emosae demo summary",
        f"  SAE            FVE {f(s['fve'])}   L0 {f(s['l0'], '.1f')}   dead {f(s['dead'])}   CE-loss score {f(s['ce_loss_score'])}",
        f"  labels         {f(s['n_auroc_ge_0_9'], 'd')}/{f(s['n_emotions'], 'd')} emotions with held-out AUROC >= 0.9"
        f"   macro {f(s['macro_auroc'])}   (shuffled-label null {f(s['null_macro_auroc'])})",
        f"  compare        emotion vectors {f(s.get('vectors_n_auroc_ge_0_9'), 'd')}/{n}, macro {f(s.get('vectors_macro_auroc'))};"
        f" best-aligned features {f(s.get('aligned_n_auroc_ge_0_9'), 'd')}/{n}, {f(s.get('aligned_macro_auroc'))};"
        f" ceiling {f(s.get('ceiling_n_auroc_ge_0_9'), 'd')}/{n}, {f(s.get('ceiling_macro_auroc'))} (best feature picked on held-out)",
        f"  geometry       PC1 vs valence r = {f(s['pc1_valence_r'])} (n = {f(s['pc1_valence_n'], 'd')});"
        f" named-emotion control: PC1 r = {f(s.get('named_pc1_valence_r'))}, stories on it r = {f(s.get('story_on_named_pc1_r'))}",
        f"  dose           acetaminophen: afraid rho {f(s['afraid_dose_rho'])}, calm rho {f(s['calm_dose_rho'])} (feature);"
        f" {f(s['afraid_dose_rho_vector'])}, {f(s['calm_dose_rho_vector'])} (vector)",
    ]
    for e, c in s["clamp"].items():
        who = "features " + "+".join(map(str, c["feature"])) if isinstance(c["feature"], list) else f"feature {c['feature']}"
        lines.append(f"  clamp {e:<9}{who} at {c['strength']}: VADER {f(c['delta_vader'], '+.3f')}"
                     f" [{f(c['delta_ci'][0], '+.2f')}, {f(c['delta_ci'][1], '+.2f')}]"
                     f"   random control {f(c['control_delta_vader'], '+.3f')}"
                     f" [{f(c['control_ci'][0], '+.2f')}, {f(c['control_ci'][1], '+.2f')}]")
    lines.append(f"  browser        {s['export_dir']}/index.html   serve: {s['serve']}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the embedded model, with a summary")
    p.add_argument("--run", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--fresh", action="store_true", help="delete the run directory and start over")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data.tokens=50000")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from sae.cli import print_json

    summary = run_demo(args.run, args.fresh, args.set)
    import sys
    print(format_table(summary), file=sys.stderr)
    if args.json:
        print_json(summary)
    return 0
