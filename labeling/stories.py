"""`emosae stories`: the paper's recipe for emotion data as a command. An instruct model writes
short stories in which a character feels an emotion that is never named; a story that contains a
forbidden form of its emotion is rejected and written again. Rows follow the corpus schema, are
appended as they come, and a re-run resumes where it stopped."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
from pathlib import Path

from labeling.corpus import DATA, NEUTRAL, find_forbidden
from sae.errors import UserError
from sae.io import atomic_path, read_jsonl

log = logging.getLogger("emosae")

STORY_PROMPT = ("Write a short story of about 90 words in which a character feels {emotion} while "
                "{topic}. Never use the word \"{emotion}\" or any synonym of it: show the feeling only "
                "through what the character does, notices and thinks. Write only the story.")
NEUTRAL_PROMPT = ("Write a short, plain, factual paragraph of about 90 words about {topic}. Describe only "
                  "what happens, step by step, with no feelings or opinions. Write only the paragraph.")
_PREAMBLE = re.compile(r"^(sure|here|certainly|title)[^\n]*\n+", re.IGNORECASE)


def parse_emotions(spec: str) -> list[str]:
    """Any word may be written about, but one that is a near miss of the paper's 171 is most likely a
    typo, and hours of generation would label a corpus with it: warn before the model loads."""
    paper = [w.strip() for w in (DATA / "emotions_171.txt").read_text().splitlines() if w.strip()]
    if spec.strip().lower() == "all":
        return paper
    out = list(dict.fromkeys(e.strip().lower() for e in spec.split(",") if e.strip()))
    if not out:
        raise UserError("--emotions is empty; give a comma-separated list or 'all'")
    for e in out:
        near = difflib.get_close_matches(e, paper, n=1, cutoff=0.8) if e not in paper else []
        if near:
            log.warning("stories: %r is not among the paper's 171 emotions; did you mean %r? Writing %r as given",
                        e, near[0], e)
    return out


def parse_topics(spec: str) -> list[str]:
    """A file (one topic per line, or a JSON list / {"topics": [...]}) or N: the first N shipped topics."""
    if spec.isdigit():
        shipped = [t.strip() for t in (DATA / "story_topics.txt").read_text().splitlines() if t.strip()]
        n = int(spec)
        if not 1 <= n <= len(shipped):
            raise UserError(f"--topics {n}: choose 1..{len(shipped)} shipped topics, or give a file")
        return shipped[:n]
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--topics {spec}: not a number and no such file; give N or a file with one topic per line")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        raw = json.loads(text)
        topics = raw["topics"] if isinstance(raw, dict) else raw
    else:
        topics = [t.strip() for t in text.splitlines() if t.strip()]
    if not topics:
        raise UserError(f"{spec} lists no topics")
    return topics


def heldout_topics(topics: list[str]) -> set[str]:
    """The shipped held-out topics where used, else the last quarter of the list (fixed by order)."""
    shipped = json.loads((DATA / "topics.json").read_text())["heldout"]
    chosen = {t for t in topics if t in shipped}
    return chosen or set(topics[len(topics) - len(topics) // 4:]) if len(topics) >= 4 else chosen


def clean(text: str) -> str:
    text = _PREAMBLE.sub("", text.strip())
    return " ".join(text.split())


def _drop_partial_line(path: Path) -> None:
    """A run killed mid-write leaves its last row without a newline; cut it so the re-run writes it again."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("stories: %s ends in a partial row (a run stopped mid-write); dropping it to write it again", path)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[:keep])


def write_stories(emotions: list[str], topics: list[str], per_topic: int, out: str | Path,
                  model: str = "smollm2-135m", max_retries: int = 4, neutral: bool = False,
                  batch_size: int = 16, max_new_tokens: int = 160, seed: int = 0, lm=None) -> dict:
    from sae.generation import chat_prompt, generate
    from sae.models import load_model

    out = Path(out)
    labels = emotions + ([NEUTRAL] if neutral else [])
    done: set[tuple[str, str, int]] = set()
    if out.exists() and out.stat().st_size:
        _drop_partial_line(out)
        for r in read_jsonl(out, ("text", "emotion", "topic")):
            done.add((r["emotion"], r["topic"], int(r.get("index", 0))))
    jobs = [(e, t, i, 0) for e in labels for t in topics for i in range(per_topic) if (e, t, i) not in done]
    if not jobs:
        log.info("all %d stories already in %s", len(done), out)
        return {"written": 0, "rejected": 0, "failed": 0, "existing": len(done), "out": str(out)}
    lm = lm or load_model(model)
    held = heldout_topics(topics)
    written = rejected = failed = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    round_no = 0
    with out.open("a", encoding="utf-8") as f:
        while jobs:
            batch, jobs = jobs[:batch_size], jobs[batch_size:]
            prompts = [chat_prompt(lm.tokenizer, (NEUTRAL_PROMPT if e == NEUTRAL else STORY_PROMPT)
                                   .format(emotion=e, topic=t)) for e, t, _, _ in batch]
            texts = generate(lm.model, lm.tokenizer, prompts, max_new_tokens=max_new_tokens,
                             seed=seed * 1009 + round_no, batch_size=batch_size, repetition_penalty=1.1)
            round_no += 1
            for (e, t, i, attempt), text in zip(batch, texts):
                text = clean(text)
                bad = find_forbidden(text, e) if e != NEUTRAL else []
                if bad or len(text.split()) < 20:
                    rejected += 1
                    if attempt + 1 <= max_retries:
                        jobs.append((e, t, i, attempt + 1))
                    else:
                        failed += 1
                        log.warning("gave up on %s / %s #%d after %d tries", e, t, i, attempt + 1)
                    continue
                row = {"text": text, "emotion": e, "topic": t, "split": "heldout" if t in held else "train",
                       "index": i, "attempts": attempt + 1, "model": lm.model_id}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                written += 1
            log.info("stories: %d written, %d rejected, %d left", written, rejected, len(jobs))
    return {"written": written, "rejected": rejected, "failed": failed, "existing": len(done), "out": str(out)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stories", help="have an instruct model write emotion stories that never name the emotion")
    p.add_argument("--emotions", required=True, help="comma-separated emotions, or 'all' (the paper's 171)")
    p.add_argument("--topics", required=True, help="N (first N shipped topics) or a file of topics")
    p.add_argument("--per-topic", type=int, default=1)
    p.add_argument("--out", required=True, help="JSONL file; rows are appended, a re-run resumes")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-retries", type=int, default=4)
    p.add_argument("--neutral", action="store_true", help="also write emotionally neutral passages")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sae.cli import print_json

    if args.per_topic < 1:
        raise UserError("--per-topic must be at least 1")
    summary = write_stories(parse_emotions(args.emotions), parse_topics(args.topics), args.per_topic, args.out,
                            model=args.model, max_retries=args.max_retries, neutral=args.neutral,
                            batch_size=args.batch_size, seed=args.seed)
    if args.json:
        print_json(summary)
    else:
        log.info("wrote %d stories to %s (%d rejected for naming the emotion, %d given up)",
                 summary["written"], summary["out"], summary["rejected"], summary["failed"])
    return 0
