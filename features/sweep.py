"""Dose-response of a clamp: signed strengths x a prompt set x samples, judged independently.

Per strength: the valence of the continuation by VADER (compound, -1..1), the shift from the
unsteered baseline, the monitor's score for the target emotion (when features/monitor.py is
there), coherence (mean KL of the steered next-token distribution from the unsteered one along the
continuation; perplexity of the continuation under the unsteered model, and its ratio to the
baseline's), and a matched control: the same edit written along random directions of the same
norm, a different one for each of K row groups, so the control is an average over directions, not
one lucky or unlucky draw. Baseline, steered and control runs share per-row seeds, so differences
are paired.

Confidence intervals are 95% t-intervals over prompts (per-prompt means of the samples, or of
paired differences): prompts, not samples, are the independent unit."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from features.units import Strength, parse_strength, parse_strengths
from sae.errors import UserError
from sae.io import atomic_path, output_dir, write_json_atomic, write_text_atomic

log = logging.getLogger("emosae")
DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "labeling" / "data" / "steer_prompts.jsonl"
DEFAULT_STRENGTHS = "-0.1r,-0.05r,0,0.05r,0.1r"
UNIT_NAMES = {"abs": "absolute", "x": "x max_act", "r": "x mean residual norm"}
CI_METHOD = "95% t-interval over per-prompt means (prompts are the unit)"
CSV_FIELDS = ("target", "kind", "strength", "value", "residual_norm", "n", "vader", "vader_lo", "vader_hi",
              "delta", "delta_lo", "delta_hi", "control_delta", "control_delta_lo", "control_delta_hi",
              "kl", "kl_lo", "kl_hi", "control_kl", "ppl", "ppl_ratio", "control_ppl_ratio", "monitor", "monitor_delta")


@dataclass
class Target:
    """What a sweep turns: one or several features (index or label, joined by "+", each clamped
    at the strength) in some mode, or an emotion vector."""

    name: str  # as given: "happy", "812", "2905+1167", "vector:happy"
    kind: str  # "feature" | "vector"
    key: str  # the feature key(s) or emotion name
    mode: str = "set"

    @classmethod
    def parse(cls, target: Any, mode: str = "set") -> "Target":
        text = str(target).strip()
        if text.lower().startswith("vector:"):
            return cls(text, "vector", text.split(":", 1)[1].strip(), "add")
        m = re.fullmatch(r"(.+?):(set|add|scale)", text)
        key, mode = (m.group(1), m.group(2)) if m else (text, mode)
        keys = [k.strip() for k in key.split("+")]
        if not all(keys) or len(set(keys)) != len(keys):
            raise UserError(f"target {text!r}: join distinct features with '+', e.g. 2905+1167 or sad+afraid")
        return cls(text, "feature", key, mode)

    @property
    def keys(self) -> list[str]:
        return [self.key] if self.kind == "vector" else [k.strip() for k in self.key.split("+")]

    def unsteered(self, strength: Strength) -> bool:
        """The strength that leaves the model alone, whose row is the shared baseline: 0, or a
        factor of 1 in scale mode (where 0 ablates)."""
        return strength.value == 1 if self.kind == "feature" and self.mode == "scale" else strength.is_zero

    def clamp_kwargs(self, strength: Strength) -> dict:
        if self.kind == "vector":
            return {"vectors": {self.key: str(strength)}}
        return {"features": {k: f"{self.mode}={strength}" for k in self.keys}}


# --- statistics ------------------------------------------------------------------------------------
def prompt_ci(values: Sequence[float], groups: Sequence[int]) -> tuple[float, float, float]:
    """(mean, lo, hi): mean over prompts of per-prompt means, with a 95% t-interval."""
    from scipy import stats

    v, g = np.asarray(values, dtype=float), np.asarray(groups)
    per = np.array([v[g == k].mean() for k in np.unique(g)])
    mean = float(per.mean())
    if len(per) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(per) - 1) * per.std(ddof=1) / math.sqrt(len(per)))
    return mean, mean - half, mean + half


def vader_scores(texts: Sequence[str]) -> list[float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def monitor_scorer(assets, lm, emotion: str | None):
    """The monitor's score for `emotion` on each text (mean over its kept tokens; the emotion
    vector's projection when the run has vectors, else the labeled feature's activation), or None
    when features/monitor.py, the labels or this emotion are not there (the monitor is optional)."""
    if not emotion:
        return None
    try:
        from features.monitor import Monitor
    except ImportError:
        return None
    try:
        mon = Monitor.from_run(assets.path, emotions=[emotion], lm=lm, require_vectors=False)
    except UserError as e:
        log.info("sweep: no monitor score for %s (%s)", emotion, e)
        return None
    source = "vectors" if emotion in mon.vectors else "features"

    def score(texts: list[str]) -> list[float]:
        rows = mon.score(texts, position="mean")
        return [float("nan") if r[source].get(emotion) is None else float(r[source][emotion]) for r in rows]
    score.source = f"{source[:-1]} {emotion}"
    return score


# --- the sweep -------------------------------------------------------------------------------------
def run_sweep(run_dir: str | Path, target: Any = "happy", strengths: Sequence | str = DEFAULT_STRENGTHS,
              **kwargs) -> dict:
    """One target; see `run_sweeps` for the arguments. Returns its result dict."""
    return run_sweeps(run_dir, [target], strengths, **kwargs)[0]


def run_sweeps(run_dir: str | Path, targets: Sequence[Any], strengths: Sequence | str = DEFAULT_STRENGTHS,
               prompts: Sequence[str] | str | Path | None = None, samples: int = 8, seed: int = 0,
               mode: str = "set", scope: str = "all", max_new_tokens: int = 40, temperature: float = 0.7,
               top_p: float = 0.95, control: str = "all", control_seed: int = 1234, control_kind: str = "direction",
               control_directions: int = 8, lm=None,
               model: str | None = None, device: str | None = None, out_dir: str | Path | None = None,
               batch_size: int = 128, chat: bool | None = None, examples: int = 3,
               target_strengths: Sequence[Sequence | str] | None = None, kl: bool = True,
               baselines: dict | None = None) -> list[dict]:
    """Sweep each target over `strengths` (e.g. "-0.1r,0,0.1r") on prompts x samples, one shared
    baseline. control: "all" (a random-direction run at every non-zero strength), "max" (at the
    largest |strength| of each sign) or "none"; control_kind "direction" (isotropic) or "feature"
    (a random other SAE feature's decoder row, same norm); control_directions K: row r's control
    draws its direction with seed control_seed + (r mod K), so the control is an average over K
    random directions, not one draw (single directions differ a lot: at 0.25r on the demo SAE four
    seeds gave VADER shifts from -0.06 to -0.32). Writes CSV/PNG/JSON per target under `out_dir`
    (default RUN/sweeps/) and returns one dict per target with "rows" (one per strength).
    target_strengths: one strength list per target, in place of `strengths` (e.g. pairs screened at
    their own per-feature strength), still against the one shared baseline. kl=False skips the
    KL (a second, steered forward per row; screening only needs the perplexity). baselines: a dict
    shared by several calls on one model (screening calls this once per candidate group): a baseline
    with the same prompt ids, seeds and generation settings is taken from it, not generated again
    (generation is seeded per row, so it would come out the same)."""
    from features.clamp import clamp, load_run
    from features.clamp_cli import load_prompt_file
    from features.generation import check_sampling, format_prompts, generate, score, tokenize_prompts
    from labeling.scoring import default_device, load_model_for

    check_sampling(temperature, top_p)
    if samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise UserError("samples, max_new_tokens and batch_size must be >= 1")
    if control_directions < 1:
        raise UserError(f"control_directions must be >= 1, not {control_directions}")
    if control not in ("all", "max", "none"):
        raise UserError(f"control must be all, max or none, not {control!r}")
    torch.set_flush_denormal(True)
    device = device or default_device()
    assets = load_run(run_dir, device)
    lm = lm or load_model_for(assets.sae, model, device)
    targets = [Target.parse(t, mode) for t in targets]
    if not targets:
        raise UserError("no target to sweep; give a feature label/index or vector:EMOTION")
    slugs = [_slug(t.name) for t in targets]
    twice = next((s for s in slugs if slugs.count(s) > 1), None)
    if twice is not None and out_dir is not False:  # the second would overwrite the first's files
        raise UserError(f"two targets would both write sweep_{twice}.*; give each target once")
    if target_strengths is not None and len(target_strengths) != len(targets):
        raise UserError(f"{len(target_strengths)} strength lists for {len(targets)} targets; give one per target")
    per_target = [_strength_list(x) for x in (target_strengths or [strengths] * len(targets))]
    prompt_texts = _prompts(prompts)
    # validate every target and strength before spending minutes generating
    for t, strength_list in zip(targets, per_target):
        for s in strength_list:
            clamp(lm.model, assets, scope=scope, **t.clamp_kwargs(s))
            if control != "none":
                clamp(lm.model, assets, scope=scope, random_control=control_seed, control_kind=control_kind,
                      **t.clamp_kwargs(s))

    texts, templated = format_prompts(lm.tokenizer, prompt_texts, chat)
    ids = tokenize_prompts(lm.tokenizer, texts, templated)
    rows = [(i, j) for i in range(len(prompt_texts)) for j in range(samples)]
    groups = [i for i, _ in rows]
    row_ids = [ids[i] for i, _ in rows]
    seeds = [seed + j for _, j in rows]
    gen_kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size)
    log.info("sweep: %d prompts x %d samples, strengths %s", len(prompt_texts), samples,
             "; ".join(", ".join(str(s) for s in x) for x in dict.fromkeys(tuple(x) for x in per_target)))

    key = (id(lm.model), tuple(map(tuple, row_ids)), tuple(seeds), tuple(sorted(gen_kw.items())))
    if baselines is not None and key in baselines:
        base, base_vader, base_scores = baselines[key]
    else:
        base = generate(lm.model, lm.tokenizer, row_ids, seeds, progress="baseline", **gen_kw)
        base_vader = vader_scores(base.texts)
        base_scores = score(lm.model, lm.tokenizer, base, batch_size=batch_size // 2 or 1)
        if baselines is not None:
            baselines[key] = (base, base_vader, base_scores)
    base_ppl = _ppl(base_scores)
    settings = {"prompts": len(prompt_texts), "samples": samples, "seed": seed, "scope": scope,
                "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                "chat_template": templated, "control": control, "control_seed": control_seed,
                "control_kind": control_kind, "control_directions": control_directions,
                "model": lm.model_id, "ci": CI_METHOD}
    stacked: dict = {}
    if not kl:  # screening: every target's steered rows share generate() calls (features.clamp.stack)
        jobs = [(ti, s, dict(scope=scope, **t.clamp_kwargs(s))) for ti, (t, sl) in enumerate(zip(targets, per_target))
                for s in sl if not t.unsteered(s)]
        if len(jobs) > 1:
            outs = _generate_stacked(lm, assets, [kw for _, _, kw in jobs], row_ids, seeds, gen_kw,
                                     progress=f"{len(jobs)} settings")
            stacked = {(ti, s): o for (ti, s, _), o in zip(jobs, outs)}
    results = []
    for ti, (t, strength_list) in enumerate(zip(targets, per_target)):
        label_key = next((k for k in t.keys if not k.lstrip("-").isdigit()), None)
        emotion = label_key.split("#")[0].lower() if label_key else None
        mon = monitor_scorer(assets, lm, emotion)
        mon_base = mon(base.texts) if mon else None
        control_at = _control_strengths([s for s in strength_list if not t.unsteered(s)], control)
        out_rows, ex = [], {}
        for s in strength_list:
            steer_kw = dict(scope=scope, **t.clamp_kwargs(s))
            edits = clamp(lm.model, assets, **steer_kw).edits
            edit = edits[0]
            row = {"target": t.name, "kind": t.kind, "strength": str(s), "value": edit.value,
                   "residual_norm": _nominal_norm(edits), "n": len(rows)}
            if t.unsteered(s):
                batch, vader, scores = base, base_vader, {**base_scores, "kl": [0.0] * len(rows)}
            elif (ti, s) in stacked:
                batch, scores = stacked[ti, s]
                vader = vader_scores(batch.texts)
                scores["kl"] = [float("nan")] * len(rows)
            else:
                batch = generate(lm.model, lm.tokenizer, row_ids, seeds, progress=f"{t.name} {s}",
                                 context=lambda kw=steer_kw: clamp(lm.model, assets, **kw), **gen_kw)
                vader = vader_scores(batch.texts)
                scores = score(lm.model, lm.tokenizer, batch, batch_size=batch_size // 2 or 1,
                               steer=(lambda p, kw=steer_kw: clamp(lm.model, assets, prompt_len=p, **kw)) if kl else None)
                if not kl:
                    scores["kl"] = [float("nan")] * len(rows)
            row.update(_valence(vader, base_vader, groups))
            row.update(_coherence(scores, groups, base_ppl))
            if mon:
                m = mon(batch.texts) if not t.unsteered(s) else mon_base
                row["monitor"] = _nanmean(m)
                row["monitor_delta"] = _nanmean(np.subtract(m, mon_base))
            if s in control_at:
                cb, cs = _control_run(lm, assets, steer_kw, row_ids, seeds, control_seed, control_kind,
                                      control_directions, gen_kw, progress=f"control {s}")
                cv = _valence(vader_scores(cb.texts), base_vader, groups)
                cc = _coherence(cs, groups, base_ppl)
                row.update(control_delta=cv["delta"], control_delta_lo=cv["delta_lo"],
                           control_delta_hi=cv["delta_hi"], control_kl=cc["kl"],
                           control_ppl_ratio=cc["ppl_ratio"])
            ex[str(s)] = batch.texts[:examples]
            out_rows.append(row)
            log.info("%s", _row_line(row))
        result = {"target": t.name, "kind": t.kind, "mode": t.mode if t.kind == "feature" else "add",
                  "feature": edit.feature if len(edits) == 1 else [e.feature for e in edits],
                  "label": edit.label if len(edits) == 1 else [e.label for e in edits], "hook": clamp(lm.model, assets).hook.name,
                  "run": str(assets.path), "settings": settings,
                  "baseline": {"vader": prompt_ci(base_vader, groups)[0], "ppl": base_ppl},
                  "monitor": getattr(mon, "source", None), "rows": out_rows, "examples": ex}
        result = _finite(result)
        if out_dir is not False:
            result["files"] = write_outputs(result, Path(out_dir) if out_dir else Path(assets.path) / "sweeps")
        results.append(result)
    return results


def _prompts(prompts) -> list[str]:
    from features.clamp_cli import load_prompt_file

    if prompts is None:
        return load_prompt_file(DEFAULT_PROMPTS)
    if isinstance(prompts, (str, Path)):
        return load_prompt_file(prompts)
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise UserError("the prompt set is empty")
    return prompts


def _strength_list(strengths: Sequence | str) -> list[Strength]:
    out = parse_strengths(strengths) if isinstance(strengths, str) else [parse_strength(s) for s in strengths]
    units = {s.unit for s in out if not s.is_zero}
    if len(units) > 1:
        raise UserError(f"strengths mix units ({', '.join(sorted(units))}); use one unit per sweep")
    return out


def _nominal_norm(edits) -> float | None:
    """Norm of the summed edit where every clamped feature is silent (set/add): for one edit its
    residual_norm, for several the norm of the sum (their directions need not be orthogonal)."""
    if any(e.mode not in ("set", "add") for e in edits):
        return None
    return float(torch.stack([e.value * e.direction.float() for e in edits]).sum(0).norm())


def _control_run(lm, assets, steer_kw: dict, row_ids: list, seeds: list, control_seed: int, control_kind: str,
                 k: int, gen_kw: dict, progress: str):
    """The matched control's continuations and scores, rows in order: row r written along the
    random direction(s) of seed control_seed + (r mod k), each row its own (clamp's per-row seeds),
    generated and scored in the same batches as the steered run."""
    from features.clamp import clamp
    from features.generation import Batch, generate, score

    bs, n = gen_kw["batch_size"], len(row_ids)
    sub = bs // 2 or 1  # scoring holds two sets of full-vocabulary logits
    conts, texts, sc = [], [], {"nll": [], "n_tokens": [], "kl": []}
    for start in range(0, n, bs):
        rows = list(range(start, min(start + bs, n)))
        row_seeds = [control_seed + r % k for r in rows]
        b = generate(lm.model, lm.tokenizer, [row_ids[r] for r in rows], [seeds[r] for r in rows], progress=progress,
                     context=lambda rs=row_seeds: clamp(lm.model, assets, random_control=rs, control_kind=control_kind,
                                                        **steer_kw), **gen_kw)
        conts += b.continuation_ids
        texts += b.texts
        for s0 in range(0, len(rows), sub):
            part = Batch(b.prompt_ids[s0:s0 + sub], b.continuation_ids[s0:s0 + sub], b.texts[s0:s0 + sub])
            rs = row_seeds[s0:s0 + sub]
            out = score(lm.model, lm.tokenizer, part, batch_size=len(rs),
                        steer=lambda p, rs=rs: clamp(lm.model, assets, prompt_len=p, random_control=rs,
                                                     control_kind=control_kind, **steer_kw))
            for key in sc:
                sc[key] += out[key]
    return Batch(prompt_ids=[list(r) for r in row_ids], continuation_ids=conts, texts=texts), sc


def _generate_stacked(lm, assets, steer_kws: list[dict], row_ids: list, seeds: list, gen_kw: dict,
                      progress: str) -> list[tuple]:
    """[(Batch, scores without KL)] per steer setting, the same rows and seeds for each, generated in
    shared batches under one stacked clamp: on CPU a batch of 64 rows costs about 2.2x one of 16, so
    screening K candidates this way is close to twice as fast as K separate calls. Each row keeps its
    own seeded sampler and its own edits, so it comes out as if its setting had run alone."""
    from features.clamp import clamp, stack
    from features.generation import Batch, generate, score

    n, bs = len(row_ids), gen_kw["batch_size"]
    clamps = [clamp(lm.model, assets, **kw) for kw in steer_kws]
    owner = [j for j in range(len(clamps)) for _ in range(n)]  # the setting of each stacked row
    all_ids, all_seeds = list(row_ids) * len(clamps), list(seeds) * len(clamps)
    conts, texts = [], []
    for start in range(0, len(owner), bs):
        block = owner[start:start + bs]
        present = list(dict.fromkeys(block))
        counts = [block.count(j) for j in present]
        b = generate(lm.model, lm.tokenizer, all_ids[start:start + bs], all_seeds[start:start + bs], progress=progress,
                     context=lambda p=present, c=counts: stack([clamps[j] for j in p], c), **gen_kw)
        conts += b.continuation_ids
        texts += b.texts
    sc = score(lm.model, lm.tokenizer, Batch([list(r) for r in all_ids], conts, texts), batch_size=bs // 2 or 1)
    return [(Batch([list(r) for r in row_ids], conts[j * n:(j + 1) * n], texts[j * n:(j + 1) * n]),
             {k: v[j * n:(j + 1) * n] for k, v in sc.items()}) for j in range(len(clamps))]


def _nanmean(x) -> float | None:
    x = np.asarray(x, dtype=float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def _control_strengths(nonzero: list[Strength], control: str) -> set[Strength]:
    """Where the random control runs, among the steered (not unsteered) strengths."""
    if control == "none":
        return set()
    if control == "all":
        return set(nonzero)
    out = set()
    for sign in (1, -1):
        side = [s for s in nonzero if s.value * sign > 0]
        if side:
            out.add(max(side, key=lambda s: abs(s.value)))
    return out


def _valence(vader: list[float], base: list[float], groups: list[int]) -> dict:
    m, lo, hi = prompt_ci(vader, groups)
    d, dlo, dhi = prompt_ci(np.subtract(vader, base), groups)
    return {"vader": m, "vader_lo": lo, "vader_hi": hi, "delta": d, "delta_lo": dlo, "delta_hi": dhi}


def _finite(obj):
    """NaN/inf -> None, so the JSON document stays valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _ppl(scores: dict) -> float:
    n = sum(scores["n_tokens"])
    return float(math.exp(sum(scores["nll"]) / n)) if n else float("nan")


def _coherence(scores: dict, groups: list[int], base_ppl: float) -> dict:
    kl, lo, hi = prompt_ci(scores["kl"], groups)
    ppl = _ppl(scores)
    return {"kl": kl, "kl_lo": lo, "kl_hi": hi, "ppl": ppl, "ppl_ratio": ppl / base_ppl}


# --- outputs ---------------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "target"


def write_outputs(result: dict, out_dir: Path) -> dict:
    """sweep_<target>.csv, .png and .json in out_dir, each written atomically."""
    stem = out_dir / f"sweep_{_slug(result['target'])}"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
        w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    write_text_atomic(stem.with_suffix(".csv"), buf.getvalue())
    plot(result, stem.with_suffix(".png"))
    files = {"csv": str(stem.with_suffix(".csv")), "png": str(stem.with_suffix(".png")),
             "json": str(stem.with_suffix(".json"))}
    write_json_atomic(stem.with_suffix(".json"), {**result, "files": files})
    return files


def plot(result: dict, path: Path) -> None:
    """VADER shift with CI bars (target and random control) and coherence, against strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    x = np.array([parse_strength(r["strength"]).value for r in rows])
    unit = next((parse_strength(r["strength"]).unit for r in rows if parse_strength(r["strength"]).value), "abs")
    get = lambda key, rs=rows: np.array([np.nan if r.get(key) is None else r[key] for r in rs], dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))

    def bars(prefix: str, **style):
        y, lo, hi = get(prefix), get(f"{prefix}_lo"), get(f"{prefix}_hi")
        ok = np.isfinite(y)
        a.errorbar(x[ok], y[ok], yerr=np.nan_to_num(np.stack([y - lo, hi - y])[:, ok]), marker="o", capsize=3, **style)

    bars("delta", label=result["target"])
    if np.isfinite(get("control_delta")).any():
        bars("control_delta", linestyle="--", color="gray", label="random direction, same norm")
    a.axhline(0, color="k", lw=0.5)
    a.set_xlabel(f"strength ({UNIT_NAMES[unit]})")
    a.set_ylabel("VADER compound - baseline (95% CI)")
    a.set_title(f"{result['target']} at {result['hook']}")
    a.legend(fontsize=8)
    b.plot(x, get("ppl_ratio"), marker="o", label="perplexity / baseline")
    b.plot(x, get("kl"), marker="^", label="KL(steered || unsteered), nats/token")
    b.axhline(1, color="k", lw=0.5)
    b.set_xlabel(a.get_xlabel())
    b.set_title("coherence")
    b.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _fmt(v: Any, spec: str = "+.2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _row_line(r: dict) -> str:
    ctl = (f"  control {_fmt(r['control_delta'])} [{_fmt(r['control_delta_lo'])}, {_fmt(r['control_delta_hi'])}]"
           if "control_delta" in r else "")
    return (f"{r['target']} {r['strength']}: vader {_fmt(r['vader'])} delta {_fmt(r['delta'])} "
            f"[{_fmt(r['delta_lo'])}, {_fmt(r['delta_hi'])}] kl {_fmt(r['kl'], '.3f')} "
            f"ppl x{_fmt(r['ppl_ratio'], '.2f')}{ctl}")


def table(results: list[dict]) -> str:
    """A short terminal table: one line per target and strength."""
    head = (f"{'target':<16} {'strength':>8} {'value':>8} {'VADER':>6} {'delta [95% CI]':>22} "
            f"{'control delta [95% CI]':>24} {'KL':>6} {'ppl x':>6} {'monitor':>7}")
    lines = [head, "-" * len(head)]
    for res in results:
        for r in res["rows"]:
            ci = f"{_fmt(r['delta'])} [{_fmt(r['delta_lo'])}, {_fmt(r['delta_hi'])}]"
            cci = (f"{_fmt(r['control_delta'])} [{_fmt(r['control_delta_lo'])}, {_fmt(r['control_delta_hi'])}]"
                   if "control_delta" in r else "-")
            lines.append(f"{res['target'][:16]:<16} {r['strength']:>8} {_fmt(r['value'], '.3g'):>8} "
                         f"{_fmt(r['vader']):>6} {ci:>22} {cci:>24} {_fmt(r['kl'], '.3f'):>6} "
                         f"{_fmt(r['ppl_ratio'], '.2f'):>6} {_fmt(r.get('monitor'), '.3f'):>7}")
        b = res["baseline"]
        lines.append(f"{'':<16} baseline VADER {_fmt(b['vader'])}, perplexity {_fmt(b['ppl'], '.2f')}")
    return "\n".join(lines)


# --- CLI -------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from features.clamp import CONTROL_KINDS

    p.add_argument("run", help="run directory (or any SAELens SAE directory)")
    p.add_argument("--target", action="append", required=True,
                   help="feature label|index (optionally LABEL:add), several joined by + (2905+1167: each clamped at the "
                        "strength), or vector:EMOTION; repeatable (one shared baseline)")
    p.add_argument("--strengths", default=DEFAULT_STRENGTHS, help=f"comma-separated, one unit (default {DEFAULT_STRENGTHS})")
    p.add_argument("--mode", default=None, choices=["set", "add", "scale"], help="feature mode (default set; vectors always add)")
    p.add_argument("--scope", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--prompts", default=None, help=f"JSONL with a \"prompt\" per line (default: the shipped {DEFAULT_PROMPTS.name})")
    p.add_argument("--samples", type=int, default=8, help="samples per prompt (seeds S..S+N-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--control", default="all", choices=["all", "max", "none"],
                   help="random-direction control at every non-zero strength, at the extremes, or not at all")
    p.add_argument("--control-seed", type=int, default=None, help="first seed of the control's directions (default 1234)")
    p.add_argument("--control-kind", default=None, choices=list(CONTROL_KINDS),
                   help="the control's direction: isotropic random (default), or a random other SAE feature (same norm)")
    p.add_argument("--control-directions", type=int, default=None,
                   help="random directions the control averages over (default 8; row r uses seed control-seed + r mod K)")
    p.add_argument("--batch-size", type=int, default=128, help="rows per generate() call")
    p.add_argument("--out", default=None, help="output directory (default RUN/sweeps)")
    p.add_argument("--model", default=None, help="model spec (default: the SAE's model)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print {\"sweeps\": [...]} on stdout; the table goes to stderr")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="dose-response of a feature or emotion vector: VADER, coherence, random control")
    add_arguments(p)
    p.set_defaults(func=cli)


def cli(args: argparse.Namespace) -> int:
    from sae.cli import flags, print_json, typed

    output_dir(args.out)
    # a flag that would change nothing is an error, not silently ignored
    control_flags = flags(typed(args, "control_seed", "control_kind", "control_directions"))
    if args.control == "none" and control_flags:
        raise UserError(f"{control_flags[0]} sets the random control, which --control none turns off; drop one of them")
    if args.mode is not None and all(Target.parse(t).kind == "vector" for t in args.target):
        raise UserError("--mode applies to feature targets; an emotion vector is always added (drop --mode)")
    given = typed(args, "mode", "control_seed", "control_kind", "control_directions")  # else run_sweeps's defaults
    results = run_sweeps(args.run, args.target, args.strengths, prompts=args.prompts, samples=args.samples,
                         seed=args.seed, scope=args.scope, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_p=args.top_p, control=args.control, model=args.model,
                         device=args.device, out_dir=args.out, batch_size=args.batch_size, **given)
    text = table(results)
    if args.json:
        print(text, file=sys.stderr)
        print_json({"sweeps": results})
    else:
        print(text)
        for r in results:
            print(f"wrote {r['files']['csv']} and {r['files']['png']}")
    return 0
