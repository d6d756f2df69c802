"""`emosae stories`: the embedded model writes rows in the corpus schema, stories that name their
emotion are rejected and written again, and a re-run (even after a kill mid-row) resumes."""

from __future__ import annotations

import json
import logging

import pytest

import sae.generation
from labeling.corpus import find_forbidden, load_corpus
from labeling.stories import parse_emotions, parse_topics, write_stories
from sae.errors import UserError


def test_parse_emotions_all_dedup_and_typo_warning(caplog):
    paper = parse_emotions("all")
    assert len(paper) == 171 and "worn out" in paper and "at ease" in paper  # one emotion per line
    assert parse_emotions(" Happy, sad,happy ") == ["happy", "sad"]
    with caplog.at_level(logging.WARNING, logger="emosae"):
        assert parse_emotions("hapy,schadenfreude") == ["hapy", "schadenfreude"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "did you mean 'happy'" in warned[0]
    with pytest.raises(UserError, match="empty"):
        parse_emotions(" , ")
    with pytest.raises(UserError, match="choose 1"):
        parse_topics("0")


@pytest.mark.slow
def test_real_stories_schema_and_resume(lm, tmp_path):
    out = tmp_path / "stories.jsonl"
    topics = parse_topics("2")
    kw = dict(model="smollm2-135m", max_retries=2, neutral=True, batch_size=8, max_new_tokens=60, lm=lm)
    first = write_stories(["calm", "afraid"], topics, 1, out, **kw)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["written"] == len(rows) and first["written"] + first["failed"] == 6
    assert first["written"] >= 3  # the model writes most of them within three tries
    for r in rows:
        assert r["topic"] in topics and r["model"] == lm.model_id and 1 <= r["attempts"] <= 3
        assert len(r["text"].split()) >= 20
        if r["emotion"] != "neutral":
            assert not find_forbidden(r["text"], r["emotion"])
    load_corpus(out)  # the rows are a corpus the labeler reads

    again = write_stories(["calm", "afraid"], topics, 1, out, **kw)
    assert again["existing"] == first["written"] and again["written"] == first["failed"] - again["failed"]


def test_rejects_named_emotion_and_repairs_a_partial_row(lm, tmp_path, monkeypatch):
    """Generation is replaced by a script of answers to see the retry rule; the prompts and the file
    handling are the real ones."""
    story = "She walked along the quiet shore at dawn and watched the grey waves fold over the sand " \
            "while the gulls circled above the harbour wall"
    answers = iter([[story.replace("quiet", "happy")], [story]])
    prompts_seen = []

    def scripted(model, tokenizer, prompts, **_):
        prompts_seen.extend(prompts)
        return next(answers)

    monkeypatch.setattr(sae.generation, "generate", scripted)
    out = tmp_path / "s.jsonl"
    out.write_text('{"text": "' + story + '", "emotion": "sad", "topic": "t", "index": 0}\n{"text": "cut of')
    summary = write_stories(["sad", "happy"], ["t"], 1, out, lm=lm, batch_size=1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary == {"written": 1, "rejected": 1, "failed": 0, "existing": 1, "out": str(out)}
    assert [r["emotion"] for r in rows] == ["sad", "happy"] and rows[1]["attempts"] == 2
    assert rows[1]["text"] == story
    assert len(prompts_seen) == 2 and all('"happy"' in p and "while t." in p for p in prompts_seen)
