"""Sampling and scoring throughput of `features.generation` (the per-row-seeded sampler and the
continuation scorer every clamp, sweep and screen uses) against baselines measured in the same run,
on the same rows:

- `reference`: the same rule computed over the whole vocabulary (a full sort and a full CDF per row
  and step, as emosae sampled before: `reference_choice`, the rule the fast path is tested
  against). Its texts must be identical to emosae's; the script reports whether they are.
- `hf`: Hugging Face's own `generate(do_sample=True)` with the same temperature and top-p (one
  global seed, so not row-for-row comparable with ours; a yardstick for speed only).
- scoring (`score`, the continuations' NLL under the model) against `whole_rows`: one forward over
  every row's prompt and continuation, as emosae scored before. `score` runs each distinct prompt
  once and copies its KV cache to the rows that share it; the script reports the largest relative
  NLL difference (float rounding only).
- `--prepack`: emosae's sampler on the same model with plain F.linear (`model.prepack: off`, the
  weights not prepacked for oneDNN), against the default prepacked one; texts should stay equal.
- `--bf16`: emosae's sampler with the model under bf16 autocast (`model.autocast: bf16`), against
  the float32 one; its texts differ (other logits), so the script counts the rows that stay equal.

    .venv/bin/python scripts/bench_generate.py [--prompts 8] [--samples 8] [--repeat 2] [--prepack] [--bf16] [--json]

The tools alternate over `--repeat` rounds (a shared machine's speed drifts); each speed is the
median round, each ratio the median of the per-round ratios."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from features import generation  # noqa: E402
from features.clamp_cli import load_prompt_file  # noqa: E402
from features.sweep import DEFAULT_PROMPTS  # noqa: E402
from sae.models import load_model  # noqa: E402


@contextlib.contextmanager
def whole_row_scoring():
    orig = generation._continuation_logits_shared
    generation._continuation_logits_shared = lambda model, prompt_ids, *a: generation._continuation_logits(model, *a)
    try:
        yield
    finally:
        generation._continuation_logits_shared = orig


def run_score(lm, rows, conts, batch_size: int) -> tuple[float, list[float]]:
    t = time.perf_counter()
    out = generation.score(lm.model, lm.tokenizer, generation.Batch(rows, conts, [""] * len(rows)), batch_size=batch_size)
    return time.perf_counter() - t, out["nll"]


@contextlib.contextmanager
def full_vocabulary_sampler():
    orig = generation.SeededSampler.choose
    generation.SeededSampler.choose = lambda self, logits: generation.reference_choice(self, logits)
    try:
        yield
    finally:
        generation.SeededSampler.choose = orig


def run_ours(lm, rows, seeds, kw: dict) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    batch = generation.generate(lm.model, lm.tokenizer, rows, seeds, **kw)
    return time.perf_counter() - t, batch.continuation_ids


def run_hf(lm, rows, kw: dict) -> tuple[float, list[list[int]]]:
    """HF's sampler on the same left-padded batches (one seed for the whole call)."""
    from transformers import GenerationConfig

    tok = lm.tokenizer
    cfg = GenerationConfig(max_new_tokens=kw["max_new_tokens"], do_sample=True, temperature=kw["temperature"],
                           top_p=kw["top_p"], top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    conts = []
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(rows), kw["batch_size"]):
            part = rows[s:s + kw["batch_size"]]
            ids, mask = generation.left_padded(part, tok.pad_token_id)
            out = lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
            for row in out[:, ids.shape[1]:].tolist():
                conts.append(row[:row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return time.perf_counter() - t, conts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=8, help="prompts from the shipped steering set")
    p.add_argument("--samples", type=int, default=8, help="seeded samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--bf16", action="store_true",
                   help="also sample with the model under bf16 autocast (model.autocast: bf16): speed vs float32")
    p.add_argument("--prepack", action="store_true",
                   help="also sample with plain F.linear (model.prepack: off): the prepacked sampler's speed against it")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    lm = load_model(args.model)
    texts, templated = generation.format_prompts(lm.tokenizer, load_prompt_file(DEFAULT_PROMPTS)[:args.prompts])
    ids = generation.tokenize_prompts(lm.tokenizer, texts, templated)
    rows = [ids[i] for i in range(len(ids)) for _ in range(args.samples)]
    seeds = [j for _ in range(len(ids)) for j in range(args.samples)]
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95, batch_size=args.batch_size)
    lm16 = load_model(args.model, autocast="bf16") if args.bf16 else None
    if lm16 is not None and lm16.autocast != "bf16":
        print("bf16 autocast: this CPU has no native bf16; skipped", file=sys.stderr)
        lm16 = None
    plain = load_model(args.model, prepack="off") if args.prepack else None
    for model in [m for m in (lm, lm16, plain) if m is not None]:
        run_ours(model, rows[:4], seeds[:4], kw)  # warm-up
    rounds, identical, nll_rel = [], True, 0.0
    for r in range(args.repeat):
        res = {}
        secs, ours = run_ours(lm, rows, seeds, kw)
        res["emosae"] = {"seconds": secs, "new_tokens": sum(map(len, ours))}
        with full_vocabulary_sampler():
            secs, ref = run_ours(lm, rows, seeds, kw)
        res["reference"] = {"seconds": secs, "new_tokens": sum(map(len, ref))}
        identical &= ours == ref
        secs, hf = run_hf(lm, rows, kw)
        res["hf"] = {"seconds": secs, "new_tokens": sum(map(len, hf))}
        if plain is not None:
            secs, unpacked = run_ours(plain, rows, seeds, kw)
            res["emosae_plain"] = {"seconds": secs, "new_tokens": sum(map(len, unpacked)),
                                   "same_text_rows": sum(x == y for x, y in zip(ours, unpacked))}
        if lm16 is not None:
            secs, b16 = run_ours(lm16, rows, seeds, kw)
            res["emosae_bf16"] = {"seconds": secs, "new_tokens": sum(map(len, b16)),
                                  "same_text_rows": sum(x == y for x, y in zip(ours, b16))}
        for v in res.values():
            v["new_tokens_per_s"] = v["new_tokens"] / v["seconds"]
        secs, nll = run_score(lm, rows, ours, args.batch_size // 2)
        res["score"] = {"seconds": secs}
        with whole_row_scoring():
            secs, ref_nll = run_score(lm, rows, ours, args.batch_size // 2)
        res["score_whole_rows"] = {"seconds": secs}
        nll_rel = max(nll_rel, max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(nll, ref_nll)))
        rounds.append(res)
        print(f"round {r}: " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in res.items()), file=sys.stderr)
    out = {"rows": len(rows), "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
           "identical_to_reference": identical, "score_max_rel_nll_diff": nll_rel}
    samplers = (("emosae", "reference", "hf") + (("emosae_plain",) if plain is not None else ())
                + (("emosae_bf16",) if lm16 is not None else ()))
    for name in samplers:
        runs = sorted((res[name] for res in rounds), key=lambda v: v["new_tokens_per_s"])
        out[name] = runs[(len(runs) - 1) // 2] | {"rounds_s": [res[name]["seconds"] for res in rounds]}
    out["ratios"] = {f"emosae_vs_{b}": statistics.median(res["emosae"]["new_tokens_per_s"] / res[b]["new_tokens_per_s"]
                                                         for res in rounds) for b in ("reference", "hf")}
    if plain is not None:
        out["ratios"]["emosae_vs_plain"] = statistics.median(res["emosae"]["new_tokens_per_s"]
                                                             / res["emosae_plain"]["new_tokens_per_s"] for res in rounds)
    if lm16 is not None:
        out["ratios"]["bf16_vs_emosae"] = statistics.median(res["emosae_bf16"]["new_tokens_per_s"]
                                                            / res["emosae"]["new_tokens_per_s"] for res in rounds)
    for name in ("score", "score_whole_rows"):
        out[name] = {"seconds": statistics.median(res[name]["seconds"] for res in rounds),
                     "rounds_s": [res[name]["seconds"] for res in rounds]}
    out["ratios"]["score_vs_whole_rows"] = statistics.median(res["score_whole_rows"]["seconds"] / res["score"]["seconds"]
                                                             for res in rounds)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['rows']} rows x {args.max_new_tokens} new tokens, {out['threads']} threads")
        for name in samplers:
            v = out[name]
            print(f"{name:>10}: {v['new_tokens_per_s']:7.1f} new tok/s  ({v['seconds']:.1f} s, rounds "
                  + " / ".join(f"{s:.1f}" for s in v["rounds_s"]) + ")")
        for k, v in out["ratios"].items():
            print(f"{k}: {v:.2f}x")
        print(f"texts identical to the full-vocabulary sampler: {identical}")
        if plain is not None:
            print(f"plain F.linear rows whose text equals the prepacked model's: "
                  f"{out['emosae_plain']['same_text_rows']} of {out['rows']}")
        if lm16 is not None:
            print(f"bf16 rows whose text equals float32's: {out['emosae_bf16']['same_text_rows']} of {out['rows']}")
        for name in ("score", "score_whole_rows"):
            v = out[name]
            print(f"{name:>16}: {v['seconds']:.1f} s (rounds " + " / ".join(f"{s:.1f}" for s in v["rounds_s"]) + ")")
        print(f"score vs whole rows: {out['ratios']['score_vs_whole_rows']:.2f}x, "
              f"largest relative NLL difference {nll_rel:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
