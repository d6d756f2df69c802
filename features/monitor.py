"""`emosae monitor`: how strongly each emotion is represented in a text, by its labeled SAE feature
and by its emotion vector.

Scored the way labels and vectors are (labeling.scoring): the text runs to the SAE's hook, THE
position mask and the `skip_tokens` rule pick the tokens, and per token we take the activation of
the emotion's labeled feature (the first of its ranking in RUN/labels.json) and the projection of
the residual on its unit emotion vector at that hook (RUN/vectors/). `--position` reduces over the
kept tokens: max, mean, or the last one (for a chat ending in a user turn: the assistant's turn
opening, where the model has read the whole prompt). A text with no kept token scores null.

Input lines are {"text": ...} or {"messages": [{"role", "content"}]} (rendered with the model's
chat template; a generation prompt is added when the last turn is the user's); other fields are
passed through to the output line."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from sae.errors import UserError
from sae.layout import run_root

log = logging.getLogger("emosae")
POSITIONS = ("max", "mean", "last")


@dataclass
class Monitor:
    """A model cut at one hook, plus per emotion a feature id (needs `sae`) and/or a unit vector."""

    lm: object
    hook: str
    sae: object | None = None
    features: dict[str, int] = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    skip_tokens: int = 4
    outlier_mult: float | None = 10.0
    emotions: list[str] = field(default_factory=list)
    position: str = "mean"  # default reduce of score(); from_run sets the labels' rule

    @classmethod
    def from_run(cls, run: str | Path, emotions: Sequence[str] | None = None, lm=None, model: str | None = None,
                 device: str | None = None, require_vectors: bool = True) -> "Monitor":
        """The run's SAE, the labeled feature per emotion (labels.json) and the vectors at the
        SAE's hook (RUN/vectors/); the skip rule is the one the labels were made with."""
        from features.vectors import vectors_for_hook
        from labeling.label import check_labels_fit, chosen_features, read_labels
        from labeling.scoring import DEFAULT_SKIP, load_run

        root = run_root(run)
        labels = read_labels(root)
        features = chosen_features(labels)
        if not features:
            raise UserError(f"{root}/labels.json ranks no feature for any emotion; re-run `emosae label {root}`")
        check_labels_fit(labels, root)
        lm, sae, hook, outlier_mult = load_run(run, model, device, lm)
        vectors: dict[str, torch.Tensor] = {}
        try:
            names, mat, _ = vectors_for_hook(root, hook)
            vectors = {e: mat[i] for i, e in enumerate(names)}
        except UserError:
            if require_vectors:
                raise UserError(f"no emotion vectors at {hook} in {root}/vectors; run `emosae vectors --run {root}`") from None
            log.warning("monitor: no emotion vectors at %s in %s; vectors are not scored", hook, root)
        skip = int((labels.get("settings") or {}).get("skip_tokens", DEFAULT_SKIP))
        mon = cls(lm, hook, sae, features, vectors, skip, outlier_mult)
        mon.emotions = mon.pick(emotions)
        mon.position = (labels.get("settings") or {}).get("reduce", "max")  # the rule the labels were chosen by
        return mon

    @classmethod
    def from_vectors(cls, lm, vectors_dir: str | Path, layer: int | None = None,
                     emotions: Sequence[str] | None = None, skip_tokens: int | None = None) -> "Monitor":
        """Vectors only (no SAE): the vectors at `layer` (default: the best layer) of a vectors dir."""
        from features.vectors import load_vectors
        from labeling.scoring import DEFAULT_OUTLIER_MULT, DEFAULT_SKIP

        names, by_layer = load_vectors(vectors_dir)
        info_path = Path(vectors_dir) / "vectors.json"
        from sae.io import read_json

        info = read_json(info_path) if info_path.exists() else {}
        layer = layer if layer is not None else info.get("best_layer", min(by_layer) if len(by_layer) == 1 else None)
        if layer is None or layer not in by_layer:
            raise UserError(f"no vectors at layer {layer} in {vectors_dir} (have {sorted(by_layer)}); pass --layer")
        skip = skip_tokens if skip_tokens is not None else int(info.get("skip_tokens", DEFAULT_SKIP))
        outlier = (info.get("settings") or {}).get("outlier_mult", DEFAULT_OUTLIER_MULT)
        mon = cls(lm, f"blocks.{layer}.hook_resid_post", None, {}, {e: by_layer[layer][i] for i, e in enumerate(names)},
                  skip, outlier)
        mon.emotions = mon.pick(emotions)
        return mon

    def pick(self, emotions: Sequence[str] | None) -> list[str]:
        """Requested emotions (each must have a feature or a vector), else every emotion that has
        both (or whichever one is available)."""
        known = list(dict.fromkeys([*self.vectors, *self.features]))
        if isinstance(emotions, str):
            emotions = emotions.split(",")
        if emotions:
            wanted = list(dict.fromkeys(e.strip().lower() for e in emotions if e.strip()))  # a repeat reads once
            if not wanted:  # `--emotions ,` would otherwise print readings of nothing
                raise UserError(f"--emotions names no emotion; give a comma-separated list from: {', '.join(sorted(known))}")
            bad = [e for e in wanted if e not in known]
            if bad:
                raise UserError(f"no labeled feature or vector for {', '.join(bad)}; known: {', '.join(sorted(known))}")
            return wanted
        both = [e for e in self.vectors if e in self.features]
        return both or known

    @torch.no_grad()
    def score(self, texts: Sequence[str], position: str | None = None, tokens: bool = False) -> list[dict]:
        """One dict per text: {"features": {e: float|None}, "vectors": {e: float|None}} (+ "tokens":
        [{"token", "features", "vectors"}], values null where the token is masked). `position`
        defaults to the rule the run's labels were chosen by (labels.json settings.reduce), so a
        reading means what the label's AUROC measured; mean for vectors alone (the paper's recipe)."""
        from labeling.scoring import TokenActs, passage_acts

        position = position or self.position
        if position not in POSITIONS:
            raise UserError(f"unknown --position {position!r}; use one of {', '.join(POSITIONS)}")
        if not texts:
            return []
        # an empty text has no token to keep: it scores null like any text the mask empties (the
        # passage forward refuses empty texts, and one blank input line must not fail the others)
        full = [i for i, t in enumerate(texts) if t]
        per_full = passage_acts(self.lm, None, [texts[i] for i in full], self.hook, skip_tokens=self.skip_tokens,
                                reduce="none", outlier_mult=self.outlier_mult) if full else []
        per = [TokenActs([], torch.zeros(0, 1), torch.zeros(0, dtype=torch.bool)) for _ in texts]
        for i, p in zip(full, per_full):
            per[i] = p
        f_em = [e for e in self.emotions if e in self.features and self.sae is not None]
        v_em = [e for e in self.emotions if e in self.vectors]
        fid = torch.tensor([self.features[e] for e in f_em], dtype=torch.long)
        V = torch.stack([self.vectors[e].float() for e in v_em]) if v_em else torch.zeros(0, 1)
        kept = [p.acts[p.keep] for p in per]
        kept_any = [k for k in kept if k.shape[0]]
        x = torch.cat(kept_any) if kept_any else torch.zeros(0, 1)
        feats = torch.zeros(x.shape[0], len(f_em))
        if f_em and x.shape[0]:
            dev = self.sae.W_enc.device
            feats = torch.cat([self.sae.encode(c.to(dev))[:, fid.to(dev)].float().cpu() for c in x.split(4096)])
        proj = x @ V.T if v_em and x.shape[0] else torch.zeros(x.shape[0], len(v_em))
        out, start = [], 0
        for p, k in zip(per, kept):
            n = k.shape[0]
            f, v = feats[start:start + n], proj[start:start + n]
            start += n
            row = {"features": _reduce(f, f_em, position), "vectors": _reduce(v, v_em, position)}
            if tokens:
                row["tokens"] = self._tokens(p, f, v, f_em, v_em)
            out.append(row)
        empty = sum(1 for p in per if not p.keep.any())
        if empty:
            log.warning("monitor: %d text(s) have no token left after the mask and skip_tokens=%d; they score null",
                        empty, self.skip_tokens)
        return out

    def _tokens(self, p, f: torch.Tensor, v: torch.Tensor, f_em: list[str], v_em: list[str]) -> list[dict]:
        tok = self.lm.tokenizer
        rows, j = [], 0
        for i, tid in enumerate(p.ids):
            item = {"token": tok.decode([tid]), "kept": bool(p.keep[i])}
            if p.keep[i]:
                item["features"] = {e: round(float(f[j, c]), 5) for c, e in enumerate(f_em)}
                item["vectors"] = {e: round(float(v[j, c]), 5) for c, e in enumerate(v_em)}
                j += 1
            else:
                item["features"] = {e: None for e in f_em}
                item["vectors"] = {e: None for e in v_em}
            rows.append(item)
        return rows


def _reduce(x: torch.Tensor, names: list[str], position: str) -> dict[str, float | None]:
    if x.shape[0] == 0:
        return {e: None for e in names}
    r = x.max(0).values if position == "max" else x.mean(0) if position == "mean" else x[-1]
    return {e: round(float(r[i]), 5) for i, e in enumerate(names)}


def render(row: dict, tokenizer) -> str:
    """The text of an input line: "text", or "messages" through the chat template."""
    if not isinstance(row, dict):
        raise UserError("each input line must be a JSON object with 'text' or 'messages'")
    if isinstance(row.get("text"), str):
        return row["text"]
    msgs = row.get("messages")
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                               and isinstance(m.get("content"), str) for m in msgs):
        return chat_text(tokenizer, msgs)
    raise UserError("each input line needs a string field 'text' or a list 'messages' of {role, content} "
                    "with string role and content")


def chat_text(tokenizer, messages: list[dict]) -> str:
    """Messages through the model's chat template (a generation prompt after a user turn); plain
    'role: content' lines for a model without a template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=messages[-1]["role"] == "user")
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="per text (or token): each emotion's labeled feature and vector projection")
    p.add_argument("run", help="run directory with labels.json and vectors/")
    p.add_argument("--input", required=True, help="JSONL, one {\"text\"} or {\"messages\"} per line")
    p.add_argument("--emotions", default=None, help="comma-separated emotions (default: all with a feature and a vector)")
    p.add_argument("--position", default=None, choices=POSITIONS,
                   help="reduce over kept tokens (default: the rule the run's labels were chosen by, labels.json settings.reduce)")
    p.add_argument("--tokens", action="store_true", help="add per-token values")
    p.add_argument("--model", default=None, help="model spec (default: the SAE's model)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object per input line on stdout")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    import sys

    from sae.io import read_jsonl

    rows = read_jsonl(args.input, required=())
    emotions = args.emotions.split(",") if args.emotions else None
    mon = Monitor.from_run(args.run, emotions, model=args.model, device=args.device)
    texts = []
    for i, r in enumerate(rows, 1):
        try:
            texts.append(render(r, mon.lm.tokenizer))
        except UserError as e:
            raise UserError(f"{args.input}: input row {i}: {e}") from None
    scores = mon.score(texts, args.position, args.tokens)
    for row, text, s in zip(rows, texts, scores):
        out = {k: v for k, v in row.items() if k not in ("features", "vectors", "tokens")}
        out.update({"text": text, **s})
        if args.json:
            sys.stdout.write(json.dumps(out) + "\n")
        else:
            print(_line(text, s))
    sys.stdout.flush()
    return 0


def _line(text: str, s: dict, top: int = 5) -> str:
    snippet = " ".join(text.split())
    snippet = snippet[:70] + ("..." if len(snippet) > 70 else "")

    def best(d: dict) -> str:
        items = sorted(((k, v) for k, v in d.items() if v is not None), key=lambda kv: -kv[1])[:top]
        return ", ".join(f"{k} {v:.2f}" for k, v in items) or "-"

    return f"{snippet!r}\n  features: {best(s['features'])}\n  vectors:  {best(s['vectors'])}"
