"""Verbs owned by `sae/`: harvest and train."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("emosae")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("harvest", help="run the model to a hook point and cache masked activations")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, hub id, local dir or .gguf")
    p.add_argument("--hook", default="blocks.15.hook_resid_post", help="hook point(s), comma-separated")
    p.add_argument("--dataset", required=True, help="local .jsonl/.txt/.parquet (or folder) or a hub dataset id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--out", required=True, help="cache directory to write")
    p.add_argument("--tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--context-size", type=int, default=256)
    p.add_argument("--token-budget", type=int, default=4096, help="tokens per forward batch")
    p.add_argument("--outlier-mult", type=float, default=10.0, help="mask positions with norm > this x median")
    p.add_argument("--dtype", default="float32", help="cache dtype: float32|bfloat16|float16")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.set_defaults(func=_harvest)

    p = sub.add_parser("train", help="train SAEs on a model's activations (YAML config; torchrun for several GPUs)",
                       description="Train one SAE (sae:) or several from one pass of the model (saes:). "
                                   "Data-parallel: torchrun --nproc_per_node N -m sae.cli train --config FILE "
                                   "--run-dir RUN")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 --set sae.k=64 (repeatable)")
    p.add_argument("--run", "--run-dir", dest="run",
                   help="run directory to create (default: runs/<config name>-<time>); under torchrun write "
                        "--run-dir (torchrun's own parser takes --run for its --run-path)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its latest checkpoint")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON document")
    p.set_defaults(func=_train)



def _harvest(args: argparse.Namespace) -> int:
    from sae.cli import print_json
    from sae.harvest_cli import harvest_to_cache

    manifest = harvest_to_cache(model=args.model, hooks=args.hook.split(","), dataset=args.dataset,
                                out=args.out, tokens=args.tokens, context_size=args.context_size,
                                token_budget=args.token_budget, outlier_mult=args.outlier_mult,
                                dtype=args.dtype, device=args.device, text_field=args.text_field)
    if args.json:
        print_json(manifest)
    return 0


def _train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from sae.cli import print_json
    from sae.config import load_config
    from sae.errors import UserError
    from sae.trainer import resume, train

    if args.resume:
        if args.config or args.set or args.run:
            raise UserError("--resume takes the config and run directory from RUN; drop --config, --set and --run")
        metrics = resume(args.resume)
    else:
        if not args.config:
            raise UserError("give --config FILE (see configs/) or --resume RUN")
        cfg = load_config(args.config, args.set)
        run = args.run or f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        metrics = train(cfg, run)
    if args.json and _is_main():
        print_json(_without_history(metrics))
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _without_history(m: dict) -> dict:
    if "saes" in m:
        return {**m, "saes": {n: _without_history(v) for n, v in m["saes"].items()}}
    return {k: v for k, v in m.items() if k != "history"}
