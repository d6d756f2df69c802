"""Verbs owned by `sae/`: harvest (and train, registered by the trainer module)."""

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
