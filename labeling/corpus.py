"""The labeled emotion corpus shipped with emosae (or any file shaped like it), its forbidden
word forms and near-synonym clusters.

Rows: {"text", "emotion", "topic", "split": "train"|"heldout"} (+ "person"); emotion "neutral"
for neutral rows. Topics are crossed with every emotion so topic never predicts emotion, and a
quarter of the topics are held out for scoring labels on text the labeler never saw."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from sae.errors import UserError
from sae.io import read_jsonl

DATA = Path(__file__).parent / "data"
NEUTRAL = "neutral"
_WORD = re.compile(r"[a-z']+")


def load_corpus(path: str | Path | None = None, split: str | None = None) -> list[dict]:
    """The shipped corpus (all files under labeling/data/corpus/) or a user's JSONL file."""
    if path is None:
        rows = [r for p in sorted((DATA / "corpus").glob("*.jsonl")) for r in read_jsonl(p)]
    else:
        rows = read_jsonl(path, ("text", "emotion"))
    for i, r in enumerate(rows, 1):
        # a user's file is checked here, naming the record, not deep in the tokenizer as a traceback
        for key in ("text", "emotion"):
            if not isinstance(r[key], str) or not r[key].strip():
                raise UserError(f"{path or 'shipped corpus'}: record {i}: {key!r} must be a non-empty string; "
                                "fix or remove that line")
        r.setdefault("split", "train")
        r.setdefault("topic", "")
        r["emotion"] = str(r["emotion"]).strip().lower()
    return [r for r in rows if split is None or r["split"] == split]


@lru_cache(maxsize=1)
def forbidden_forms() -> dict[str, tuple[str, ...]]:
    """Per emotion, the word forms and direct synonyms a passage about it must not contain."""
    out: dict[str, list[str]] = {}
    for p in sorted((DATA / "forbidden").glob("*.json")):
        for emotion, forms in json.loads(p.read_text()).items():
            out.setdefault(emotion, []).extend(f.lower() for f in forms)
    return {e: tuple(dict.fromkeys(f)) for e, f in out.items()}


def find_forbidden(text: str, emotion: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Forbidden forms of `emotion` found in `text` (whole words; `form*` matches a prefix).
    Emotions without a list forbid the word itself and its simple prefix."""
    forms = forbidden_forms().get(emotion) or (emotion, emotion[:-1] + "*" if len(emotion) > 5 else emotion)
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    words += [w.strip("'") for w in words]
    hits = []
    for form in (*forms, *extra):
        if form.endswith("*"):
            stem = form[:-1]
            if any(w.startswith(stem) for w in words):
                hits.append(form)
        elif " " in form:
            if re.search(r"\b" + re.escape(form) + r"\b", text.lower()):
                hits.append(form)
        elif form in words:
            hits.append(form)
    return hits


@lru_cache(maxsize=1)
def _clusters() -> list[frozenset[str]]:
    raw = json.loads((DATA / "synonym_clusters.json").read_text())
    return [frozenset(c) for c in raw["clusters"]]


def cluster_mates(emotion: str) -> set[str]:
    """Emotions too close to `emotion` to count as its negatives (its near-synonym clusters)."""
    return {e for c in _clusters() if emotion in c for e in c} - {emotion}


@lru_cache(maxsize=1)
def topics() -> tuple[list[str], list[str]]:
    """(all topics, held-out topics) of the shipped corpus."""
    raw = json.loads((DATA / "topics.json").read_text())
    return raw["topics"], raw["heldout"]


def emotions(rows: list[dict]) -> list[str]:
    """Emotions present in `rows`, in first-seen order, neutral excluded."""
    return list(dict.fromkeys(r["emotion"] for r in rows if r["emotion"] != NEUTRAL))
