"""Peak memory and speed of `features.stats` against corpus size.

Each size runs in a fresh process (so peak RSS is its own) and feeds FeatureStats the same way
`compute_stats` does: whole rows, chunks of ~2^25/d_sae kept tokens. The large case uses
synthetic TopK activations (k active features per token, random values) because encoding 1M
tokens with a 16k-feature SAE on 2 CPU cores takes ~10 minutes of matmul that says nothing about
the statistics' memory; `--encode` adds the real SAE encode (random weights) to the loop instead.

Times are process CPU seconds (user + system), which other jobs on a shared machine disturb far
less than wall time. Baselines measured in the same run: the process with the same imports and a [chunk, d_sae]
buffer but no statistics (RSS floor), and the time to produce the activations alone, so the
statistics' cost is printed as ratios. The dense alternative (keeping all acts to sort them)
would need n_tokens x d_sae x 4 bytes, printed for comparison.

    python scripts/bench_stats.py                      # 16k features, 62.5k..1M tokens
    python scripts/bench_stats.py --sizes 65536 --d-sae 4608 --encode
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(n_tokens: int, d_sae: int, k: int, encode: bool, stats: bool, seed: int = 0) -> dict:
    import torch

    from features.stats import Chunk, FeatureStats, StatsConfig

    torch.manual_seed(seed)
    torch.set_flush_denormal(True)
    cfg = StatsConfig()
    L = 256
    chunk = cfg.chunk_for(d_sae)
    rows_per = max(1, chunk // L)
    fs = FeatureStats(d_sae, cfg) if stats else None
    sae = None
    if encode:
        from sae.architectures import SAEConfig, SparseAutoencoder

        sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=576, d_sae=d_sae, k=k))
        sae.init_weights(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    t_make = t_stats = 0.0  # process CPU seconds: wall time is meaningless on a shared machine
    done, row0 = 0, 0
    while done < n_tokens:
        r = min(rows_per, max(1, (n_tokens - done) // L))
        t = time.process_time()
        rows = torch.randint(0, 49152, (r, L), generator=g)
        docs = torch.cumsum((torch.rand(r, L, generator=g) < 0.004).long(), 1) + (row0 + torch.arange(r))[:, None] * 1000
        local = torch.arange(r * L)
        if sae is not None:
            f = sae.encode(torch.randn(r * L, 576, generator=g) * 3)
        else:
            f = torch.zeros(r * L, d_sae)
            idx = torch.randint(0, d_sae, (r * L, k), generator=g)
            f.scatter_(1, idx, torch.rand(r * L, k, generator=g).pow(2) * 10)
        t_make += time.process_time() - t
        if fs is not None:
            t = time.process_time()
            fs.update(f, Chunk(torch.empty(0), local, rows, docs, row0))
            t_stats += time.process_time() - t
        done += r * L
        row0 += r
    if fs is not None:
        t = time.process_time()
        out = fs.finalize()
        t_stats += time.process_time() - t
        assert out["max_act"].shape == (d_sae,)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"n_tokens": done, "d_sae": d_sae, "stats": stats, "encode": encode, "peak_rss_mib": round(rss, 1),
            "make_s": round(t_make, 2), "stats_s": round(t_stats, 2)}


def run_child(args, n: int, stats: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--d-sae", str(args.d_sae), "--k", str(args.k)]
    cmd += ["--encode"] if args.encode else []
    cmd += [] if stats else ["--no-stats"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="62500,250000,1000000", help="token counts, comma-separated")
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32, help="active features per token")
    p.add_argument("--encode", action="store_true", help="real SAE encode (random weights) instead of synthetic acts")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-stats", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.d_sae, args.k, args.encode, not args.no_stats)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    base = run_child(args, sizes[0], stats=False)
    print(f"d_sae={args.d_sae} k={args.k} acts={'SAE encode' if args.encode else 'synthetic TopK'}")
    print(f"baseline (same loop, no statistics, {base['n_tokens']} tokens): peak RSS {base['peak_rss_mib']} MiB", flush=True)
    print(f"{'tokens':>9s} {'peak RSS MiB':>12s} {'RSS/baseline':>12s} {'stats s':>8s} {'acts s':>7s} "
          f"{'stats/acts':>10s} {'tok/s':>8s} {'dense acts GiB':>14s}")
    rows = []
    for n in sizes:
        r = run_child(args, n, stats=True)
        dense = r["n_tokens"] * args.d_sae * 4 / 2**30
        ratio = r["stats_s"] / max(r["make_s"], 1e-9)
        print(f"{r['n_tokens']:9d} {r['peak_rss_mib']:12.1f} {r['peak_rss_mib'] / base['peak_rss_mib']:12.2f} "
              f"{r['stats_s']:8.1f} {r['make_s']:7.1f} {ratio:10.2f} {r['n_tokens'] / max(r['stats_s'], 1e-9):8.0f} "
              f"{dense:14.1f}", flush=True)
        rows.append(r)
    growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"peak RSS grows {growth:.2f}x while tokens grow {rows[-1]['n_tokens'] / rows[0]['n_tokens']:.0f}x")
    print(json.dumps({"baseline": base, "runs": rows}))


if __name__ == "__main__":
    main()
