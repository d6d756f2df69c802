"""`emosae clamp RUN --feature happy=4x --prompt "..."`: baseline and clamped continuations,
side by side, from the same per-row seeds (so the only difference is the clamp)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import torch

from sae.errors import UserError

log = logging.getLogger("emosae")
_SPEC = re.compile(r"\s*(?P<key>[^:=]+?)\s*(?::\s*(?P<mode>[A-Za-z]+)\s*)?(?:=(?P<strength>.*))?")


def parse_feature_arg(text: str) -> tuple[str, str]:
    """`LABEL|INDEX[:set|add|scale|ablate]=STRENGTH` (or `LABEL:ablate`) -> (key, spec for clamp())."""
    m = _SPEC.fullmatch(text)
    if not m or not m.group("key"):
        raise UserError(f"cannot parse --feature {text!r}; write LABEL|INDEX[:set|add|scale|ablate]=STRENGTH")
    mode, strength = m.group("mode"), m.group("strength")
    if mode and mode.lower() == "ablate":
        if strength not in (None, ""):
            raise UserError(f"--feature {text!r}: ablate takes no strength; write {m.group('key')}:ablate")
        return m.group("key"), "ablate"
    if strength is None or not strength.strip():
        raise UserError(f"--feature {text!r} has no strength; write e.g. {m.group('key')}=4x")
    return m.group("key"), f"{mode}={strength.strip()}" if mode else strength.strip()


def parse_vector_arg(text: str) -> tuple[str, str]:
    """`EMOTION=STRENGTH` -> (emotion, strength)."""
    name, eq, strength = text.partition("=")
    if not eq or not name.strip() or not strength.strip():
        raise UserError(f"cannot parse --vector {text!r}; write EMOTION=STRENGTH, e.g. happy=0.05r")
    return name.strip(), strength.strip()


def read_prompts(prompts: list[str] | None, input_file: str | None) -> list[str]:
    """--prompt (repeatable) or --input FILE.jsonl with a "prompt" (or "text") field per line."""
    if bool(prompts) == bool(input_file):
        raise UserError("give either --prompt TEXT or --input FILE.jsonl")
    if prompts:
        return list(prompts)
    return load_prompt_file(input_file)


def load_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a JSONL file: {"prompt": ...} (or {"text": ...}, or a bare JSON string) per line."""
    from sae.io import read_jsonl  # the one JSONL reader: file:line errors, UTF-8 checks

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"prompt file {path} does not exist")
    out = []
    for i, row in enumerate(read_jsonl(p, required=()), 1):
        text = row.get("prompt", row.get("text")) if isinstance(row, dict) else row if isinstance(row, str) else None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{p}: prompt {i} has no \"prompt\" field; each line needs {{\"prompt\": \"...\"}}")
        out.append(text)
    return out


def printable(text: str) -> str:
    """Generated text is untrusted: show control characters (terminal escapes) as \\x.. codes."""
    return "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in text)


def run_clamp(run: str, features: list[tuple[str, str]], vectors: list[tuple[str, str]], prompts: list[str],
              scope: str = "all", samples: int = 1, seed: int = 0, max_new_tokens: int = 40,
              temperature: float = 0.7, top_p: float = 0.95, chat: bool | None = None, model: str | None = None,
              device: str | None = None, lm=None) -> list[dict]:
    """Baseline and clamped continuations for prompts x samples (seed + j for sample j)."""
    from features.clamp import clamp, load_run
    from features.generation import format_prompts, generate, tokenize_prompts
    from labeling.scoring import default_device, load_model_for

    if samples < 1 or max_new_tokens < 1:
        raise UserError("--samples and --max-new-tokens must be >= 1")
    if not features and not vectors:
        raise UserError("nothing to clamp: give --feature LABEL=STRENGTH and/or --vector EMOTION=STRENGTH")
    torch.set_flush_denormal(True)
    device = device or default_device()
    assets = load_run(run, device)
    lm = lm or load_model_for(assets.sae, model, device)
    keys = [k for k, _ in features]
    if len(set(keys)) != len(keys):
        raise UserError("the same feature is given twice; give each --feature once")
    steer = clamp(lm.model, assets, dict(features), vectors=dict(vectors), scope=scope)
    log.info("clamp: %s", steer)
    texts, templated = format_prompts(lm.tokenizer, prompts, chat)
    ids = tokenize_prompts(lm.tokenizer, texts, templated)
    rows = [(i, j) for i in range(len(prompts)) for j in range(samples)]
    row_ids = [ids[i] for i, _ in rows]
    seeds = [seed + j for _, j in rows]
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    base = generate(lm.model, lm.tokenizer, row_ids, seeds, progress="baseline", **kw)
    steered = generate(lm.model, lm.tokenizer, row_ids, seeds, context=lambda: steer, progress="clamped", **kw)
    settings = {**steer.describe(), "chat_template": templated, "temperature": temperature, "top_p": top_p,
                "max_new_tokens": max_new_tokens, "model": lm.model_id}
    return [{"prompt": prompts[i], "seed": s, "baseline": b, "clamped": c, "settings": settings}
            for (i, _), s, b, c in zip(rows, seeds, base.texts, steered.texts)]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clamp", help="generate with SAE features clamped (or emotion vectors added), beside a baseline",
                       description="Strengths: 8.0 (absolute activation / norm), 4x (x the feature's max_act), "
                                   "0.05r (x the layer's mean residual norm).")
    p.add_argument("run", help="run directory (or any SAELens SAE directory)")
    p.add_argument("--feature", action="append", default=[], metavar="LABEL|INDEX[:MODE]=STRENGTH",
                   help="feature to clamp; MODE set (default) | add | scale | ablate (LABEL:ablate); repeatable")
    p.add_argument("--vector", action="append", default=[], metavar="EMOTION=STRENGTH",
                   help="add an emotion vector from RUN/vectors (units absolute or r); repeatable")
    p.add_argument("--scope", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    p.add_argument("--input", default=None, help="JSONL file with a \"prompt\" field per line")
    p.add_argument("--samples", type=int, default=1, help="continuations per prompt (seeds S, S+1, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--model", default=None, help="model spec (default: the SAE's model)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print a JSON list of {prompt, seed, baseline, clamped, settings}")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from sae.cli import print_json

    prompts = read_prompts(args.prompt, args.input)
    features = [parse_feature_arg(f) for f in args.feature]
    vectors = [parse_vector_arg(v) for v in args.vector]
    rows = run_clamp(args.run, features, vectors, prompts, scope=args.scope, samples=args.samples, seed=args.seed,
                     max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                     chat=False if args.no_chat else None, model=args.model, device=args.device)
    if args.json:
        print_json(rows)
        return 0
    out = sys.stdout
    if rows:
        s = rows[0]["settings"]
        out.write(f"clamp at {s['hook']} (scope {s['scope']}): "
                  + "; ".join(_edit_str(e) for e in s["edits"]) + "\n")
    for r in rows:
        out.write(f"\n=== {printable(r['prompt'])!s}  [seed {r['seed']}]\n")
        out.write(f"--- baseline\n{printable(r['baseline'])}\n--- clamped\n{printable(r['clamped'])}\n")
    return 0


def _edit_str(e: dict) -> str:
    who = f"feature {e['feature']}" + (f" ({e['label']})" if e.get("label") else "") if e["kind"] == "feature" \
        else f"vector {e['target'].removeprefix('vector:')}"
    if e["mode"] == "ablate":
        return f"{who} ablate"
    extra = f" = {e['value']:.4g}" if e["strength"] != f"{e['value']:g}" else ""
    return f"{who} {e['mode']} {e['strength']}{extra}"
