"""Benchmark: one SAE optimizer step, the sparse TopK path (sae/kernels.py) against the dense
reference (train.sparse=false) measured in the same run, per device, width and batch; and, with
`--profile`, where the wall time of a real `emosae train` goes (cProfile, host side).

    .venv/bin/python scripts/bench_step.py [--device cpu|cuda] [--d-sae 4608,16384] [--batch 1024,4096]
    python scripts/bench_step.py --device cuda --profile configs/demo-cpu.yaml

Steps run on random activations with the trainer's own code (`SAETrainer.step`): the timing covers
the encoder, top-k, decoder, AuxK (with a third of the latents marked dead, `--dead`), the
optimizer and the bookkeeping, synchronised on CUDA. Prints ms/step of each and sparse/dense."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sae.config import SAESpec, TrainConfig  # noqa: E402
from sae.dist import Dist  # noqa: E402
from sae.train_step import SAETrainer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(device: torch.device, d_in: int, d_sae: int, k: int, batch: int, sparse: bool, dead: float,
               steps: int, warmup: int) -> float:
    """Median ms per `SAETrainer.step` over `steps` steps after `warmup`."""
    spec = SAESpec(arch="topk", d_sae=d_sae, k=k, hook="blocks.0.hook_resid_post", name="bench")
    tr = SAETrainer(spec, TrainConfig(batch_size=batch, warmup_steps=0, sparse=sparse), d_in, 0, {}, device)
    g = torch.Generator().manual_seed(0)
    xs = [(torch.randn(batch, d_in, generator=g) * 3 + 1).to(device) for _ in range(4)]
    d = Dist()
    tr.initialize(xs[0], d)
    times = []
    for i in range(warmup + steps):
        if dead:
            tr.since_fired[:: max(1, round(1 / dead))] = 10 ** 9  # dead: AuxK runs over them
        _sync(device)
        t0 = time.perf_counter()
        tr.step(xs[i % len(xs)], 0.5, d)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def profile_train(config: str, device: str, overrides: list[str], top: int) -> str:
    from sae.config import load_config
    from sae.trainer import train

    with tempfile.TemporaryDirectory(prefix="bench_step-") as d:
        cfg = load_config(config, [f"model.device={device}", f"data.cache={d}/cache", "log.progress=false",
                                   "log.curves=false", *overrides])
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        m = train(cfg, Path(d) / "run")
        prof.disable()
        wall = time.perf_counter() - t0
    out = [f"train: {wall:.1f}s wall, {m['tokens']} tokens, {m['steps']} steps, training loop {m['seconds']:.1f}s"]
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        s = pstats.Stats(prof, stream=buf)
        s.sort_stats(key).print_stats(top)
        out.append(f"--- by {key}\n" + "\n".join(buf.getvalue().splitlines()[6:]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", default="4608,16384")
    p.add_argument("--batch", default="1024,4096")
    p.add_argument("-k", "--k", type=int, default=32)
    p.add_argument("--dead", type=float, default=1 / 3, help="fraction of latents marked dead (AuxK on); 0: none")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile", metavar="CONFIG", default=None,
                   help="also cProfile a real `emosae train` of CONFIG on --device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for --profile")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    rows = []
    for d_sae in map(int, args.d_sae.split(",")):
        for batch in map(int, args.batch.split(",")):
            ms = {name: time_steps(device, args.d_in, d_sae, args.k, batch, sparse, args.dead, args.steps, args.warmup)
                  for name, sparse in (("dense", False), ("sparse", True))}
            rows.append({"device": args.device, "d_sae": d_sae, "batch": batch, "k": args.k, "dead": args.dead,
                         "dense_ms": ms["dense"], "sparse_ms": ms["sparse"], "sparse_vs_dense": ms["sparse"] / ms["dense"]})
            if not args.json:
                print(f"{args.device} d_sae {d_sae:6d} batch {batch:5d}: dense {ms['dense']:8.2f} ms  "
                      f"sparse {ms['sparse']:8.2f} ms  sparse/dense {ms['sparse'] / ms['dense']:.2f}", flush=True)
    profile = profile_train(args.profile, args.device, args.set, args.top) if args.profile else None
    if args.json:
        print(json.dumps({"steps": rows, "profile": profile}))
    elif profile:
        print(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
