"""Harvest throughput against the limit: a bare forward stopped at the same layer, on the same
batches of the embedded model, in one run; plus a full (untruncated) forward for scale, and peak
RSS of harvesting into the disk cache at 1x and 10x the tokens (memory must not grow with it).
`--prepack` adds the same harvest with plain F.linear (`model.prepack: off`): the default prepacked
harvest's speed against it, and how far apart their activations are.
`--bf16` adds the same harvest with the model under bf16 autocast (`model.autocast: bf16`): its
speed against the float32 harvest of the same run, and how far its activations are from float32's.

    .venv/bin/python scripts/bench_harvest.py [--tokens 16384] [--layer 15] [--prepack] [--bf16] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sae.data import token_batches  # noqa: E402
from sae.harvest import ShuffleBuffer, harvest  # noqa: E402
from sae.models import load_model  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "labeling" / "data"


def default_source() -> str:
    general = CORPUS / "general_corpus.jsonl.gz"
    return str(general if general.exists() else CORPUS / "corpus")


def bare_forward(model, batches, layer: int) -> float:
    """The limit: the decoder stack cut after `layer`, no hooks, no masking, no copies."""
    inner = model.model
    full = inner.layers
    inner.layers = full[: layer + 1]
    try:
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                inner(**b.forward_kwargs(), use_cache=False)
        return time.perf_counter() - t
    finally:
        inner.layers = full


def full_forward(model, batches) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(**b.forward_kwargs(), use_cache=False)
    return time.perf_counter() - t


def harvest_into_buffer(lm, batches, hook: str) -> float:
    buf = ShuffleBuffer(capacity=16384, batch_size=4096, seed=0)
    t = time.perf_counter()
    for chunk in harvest(lm.model, lm.tokenizer, batches, [hook]):
        for _ in buf.add(chunk.acts):
            pass
    return time.perf_counter() - t


def versus(lm, other, batches, hook: str, t_lm: float) -> tuple[float, float, float]:
    """(seconds of `other`'s harvest, of `lm`'s (the better of `t_lm` and a second run bracketing
    it), median relative distance of `other`'s activations from `lm`'s on the first batch)."""
    from sae.harvest import forward_acts

    harvest_into_buffer(other, batches[:1], hook)  # warm-up
    t_other = harvest_into_buffer(other, batches, hook)
    t_lm = min(t_lm, harvest_into_buffer(lm, batches, hook))
    a = forward_acts(lm.model, batches[0], [hook])[hook][:, 1:].float()
    b = forward_acts(other.model, batches[0], [hook])[hook][:, 1:].float()
    return t_other, t_lm, float(((b - a).norm(dim=-1) / a.norm(dim=-1)).median())


def bf16_harvest(lm, batches, hook: str, n: int, t_float32: float) -> dict:
    """The same harvest with the model under bf16 autocast, against the float32 one."""
    lm16 = load_model(autocast="bf16")
    if lm16.autocast != "bf16":
        return {"error": "this CPU has no native bf16 (avx512_bf16/amx_bf16): load_model falls back to float32"}
    t16, t32, err = versus(lm, lm16, batches, hook, t_float32)
    return {"harvest_tokens_per_s": n / t16, "ratio_vs_float32_harvest": t32 / t16, "median_rel_error": err}


def plain_harvest(lm, batches, hook: str, n: int, t_packed: float) -> dict:
    """The same harvest with plain F.linear, against the prepacked one."""
    t_plain, t_packed, err = versus(lm, load_model(prepack="off"), batches, hook, t_packed)
    return {"plain_tokens_per_s": n / t_plain, "ratio_prepacked_vs_plain": t_plain / t_packed, "median_rel_error": err}


def cache_peak_rss(tokens: int, layer: int, source: str) -> float:
    """Peak RSS (MiB) of a separate process harvesting `tokens` into a fresh disk cache."""
    code = ("import resource,sys;sys.path.insert(0,%r);from sae.harvest_cli import harvest_to_cache;"
            "harvest_to_cache('smollm2-135m',['blocks.%d.hook_resid_post'],%r,%r,tokens=%d);"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", code % (str(Path(__file__).resolve().parents[1]), layer, source,
                                                          tmp + "/cache", tokens)],
                             capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--context-size", type=int, default=256)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS at 1x and 10x tokens (slow)")
    ap.add_argument("--prepack", action="store_true", help="also harvest with plain F.linear (speed and error vs prepacked)")
    ap.add_argument("--bf16", action="store_true", help="also harvest under bf16 autocast (speed and error vs float32)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_flush_denormal(True)
    source = args.dataset or default_source()
    lm = load_model()
    hook = f"blocks.{args.layer}.hook_resid_post"
    batches = list(token_batches(source, lm.tokenizer, args.context_size, args.token_budget, limit_tokens=args.tokens))
    n = sum(b.n_tokens for b in batches)
    bare_forward(lm.model, batches[:1], args.layer)  # warm-up
    t_bare = bare_forward(lm.model, batches, args.layer)
    t_harvest = harvest_into_buffer(lm, batches, hook)
    t_bare2 = bare_forward(lm.model, batches, args.layer)  # again, to bracket machine noise
    t_full = full_forward(lm.model, batches)
    bare = n / min(t_bare, t_bare2)
    result = {"tokens": n, "layer": args.layer, "bare_truncated_tokens_per_s": bare,
              "harvest_tokens_per_s": n / t_harvest, "ratio": (n / t_harvest) / bare,
              "full_forward_tokens_per_s": n / t_full}
    if args.prepack:
        result["prepack"] = plain_harvest(lm, batches, hook, n, t_harvest)
    if args.bf16:
        result["bf16"] = bf16_harvest(lm, batches, hook, n, t_harvest)
    if args.memory:
        small, big = args.tokens // 4, args.tokens * 10 // 4
        result["peak_rss_mib"] = {str(small): cache_peak_rss(small, args.layer, source),
                                  str(big): cache_peak_rss(big, args.layer, source)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"tokens {n}, layer {args.layer}")
        print(f"bare forward cut at layer {args.layer}: {bare:8.0f} tok/s")
        print(f"harvest into shuffle buffer:      {n / t_harvest:8.0f} tok/s   ratio {result['ratio']:.2f}")
        print(f"full forward (all 30 layers):     {n / t_full:8.0f} tok/s")
        if args.prepack:
            pp = result["prepack"]
            print(f"harvest with plain F.linear:      {pp['plain_tokens_per_s']:8.0f} tok/s   prepacked is "
                  f"{pp['ratio_prepacked_vs_plain']:.2f}x faster; activations off by {pp['median_rel_error']:.1e} "
                  "(median relative error)")
        if args.bf16:
            b = result["bf16"]
            if "error" in b:
                print(f"bf16 autocast: {b['error']}")
            else:
                print(f"harvest under bf16 autocast:      {b['harvest_tokens_per_s']:8.0f} tok/s   "
                      f"{b['ratio_vs_float32_harvest']:.2f}x the float32 harvest; activations off by "
                      f"{b['median_rel_error']:.1e} (median relative error)")
        if args.memory:
            for k, v in result["peak_rss_mib"].items():
                print(f"peak RSS harvesting {k} tokens into the disk cache: {v:.0f} MiB")


if __name__ == "__main__":
    main()
