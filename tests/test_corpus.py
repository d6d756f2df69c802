"""The shipped emotion corpus: coverage, lengths, no named emotions, a by-topic split."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from labeling.corpus import DATA, NEUTRAL, cluster_mates, emotions, find_forbidden, load_corpus, topics
from sae.errors import UserError
from sae.io import read_jsonl

ISSUE_EMOTIONS = ["happy", "sad", "afraid", "angry", "disgusted", "surprised", "calm", "desperate", "loving",
                  "guilty", "proud", "ashamed", "nervous", "grateful", "lonely", "excited", "content", "bored",
                  "jealous", "hopeful", "relieved", "embarrassed", "awestruck", "nostalgic", "frustrated",
                  "hostile", "blissful", "terrified", "peaceful", "resentful"]
NEUTRAL_KINDS = {"instructions", "facts", "schedules"}


@pytest.fixture(scope="module")
def rows():
    return load_corpus()


def test_schema(rows):
    for r in rows:
        assert set(r) >= {"text", "emotion", "topic", "split"}
        assert r["split"] in ("train", "heldout")
        assert isinstance(r["text"], str) and r["text"].strip()


def test_emotions_and_topics(rows):
    emos = emotions(rows)
    assert len(emos) >= 30
    assert set(ISSUE_EMOTIONS) <= set(emos)
    all_topics, _ = topics()
    assert len(all_topics) >= 10
    per = defaultdict(Counter)
    for r in rows:
        if r["emotion"] != NEUTRAL:
            per[r["emotion"]][r["topic"]] += 1
    for e in emos:
        # the same topics for every emotion, >= 2 passages each, so topic never predicts emotion
        assert set(per[e]) == set(all_topics), e
        assert min(per[e].values()) >= 2, e


def test_lengths(rows):
    bad = [(r["emotion"], len(r["text"].split())) for r in rows if not 50 <= len(r["text"].split()) <= 120]
    assert not bad, bad[:5]


def test_no_forbidden_forms(rows):
    hits = [(r["emotion"], f, r["text"][:60]) for r in rows for f in find_forbidden(r["text"], r["emotion"])]
    assert not hits, hits[:5]


def test_find_forbidden_catches_forms():
    assert find_forbidden("She was so happy today.", "happy") == ["happy"]
    assert "joy*" in find_forbidden("It was joyful.", "happy")
    assert find_forbidden("The clouds drifted by.", "happy") == []


def test_neutral(rows):
    neutral = [r for r in rows if r["emotion"] == NEUTRAL]
    assert len(neutral) >= 150
    kinds = Counter(r["topic"] for r in neutral)
    all_topics, _ = topics()
    assert all(kinds[k] >= 10 for k in NEUTRAL_KINDS), kinds
    assert sum(kinds[t] for t in all_topics) >= 60  # flat scenes on the emotion topics
    assert all(kinds[t] >= 2 for t in all_topics)


def test_split_by_topic(rows):
    all_topics, heldout = topics()
    assert set(heldout) <= set(all_topics)
    assert 0.2 <= len(heldout) / len(all_topics) <= 0.34  # about a quarter
    split_of = defaultdict(set)
    for r in rows:
        split_of[r["topic"]].add(r["split"])
    for t, s in split_of.items():
        if t not in all_topics:  # neutral instructions/facts/schedules: spread over both splits
            continue
        assert len(s) == 1, f"topic {t!r} is in both splits"
        assert (t in heldout) == (s == {"heldout"}), t
    train_topics = {r["topic"] for r in rows if r["split"] == "train"}
    assert not train_topics & set(heldout)
    assert {r["topic"] for r in load_corpus(split="heldout")} - NEUTRAL_KINDS == set(heldout)
    n_held = sum(r["split"] == "heldout" for r in rows if r["emotion"] != NEUTRAL)
    assert 0.2 <= n_held / sum(r["emotion"] != NEUTRAL for r in rows) <= 0.34


def test_synonym_clusters_sane(rows):
    raw = json.loads((DATA / "synonym_clusters.json").read_text())
    emos = set(emotions(rows))
    for c in raw["clusters"]:
        assert len(c) >= 2 and len(set(c)) == len(c)
        assert set(c) <= emos, set(c) - emos
    for e in emos:
        mates = cluster_mates(e)
        assert e not in mates
        assert len(mates) <= 8  # an emotion must keep most of the corpus as negatives
        for m in mates:
            assert e in cluster_mates(m)  # symmetric
    assert cluster_mates("afraid") >= {"terrified", "nervous"}
    assert "happy" not in cluster_mates("sad")


def test_user_corpus_errors(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a", "emotion": "Happy"}\n{"text": "b"}\n')
    with pytest.raises(UserError, match="missing field"):
        load_corpus(p)
    p.write_text('{"text": "a", "emotion": " Happy "}\nnot json\n')
    with pytest.raises(UserError, match=":2: malformed JSON"):
        read_jsonl(p)
    p.write_text('{"text": "a", "emotion": " Happy "}\n')
    r = load_corpus(p)
    assert r[0]["emotion"] == "happy" and r[0]["split"] == "train"


def test_sae_corpus_is_the_script_output_and_holds_no_heldout_passage(rows):
    """The demo SAE trains on general text plus the *train* passages; a held-out passage in it
    would leak the labels' test topics into the features."""
    import gzip
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sae_corpus", DATA.parent.parent / "scripts" / "make_sae_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with gzip.open(DATA / "sae_corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        shipped = [json.loads(line) for line in f]
    assert shipped == mod.mixed_rows(DATA / "general_corpus.jsonl.gz")
    texts = {r["text"] for r in shipped}
    assert all(r["text"] in texts for r in rows if r["split"] == "train")
    assert not any(r["text"] in texts for r in rows if r["split"] == "heldout")


def test_more_topics_file():
    """labeling/data/more_topics.jsonl (the README's "more passages" experiment): train passages on
    nine topics of its own, crossed with every emotion and neutral, held to the corpus's rules."""
    shipped = load_corpus()
    more = load_corpus(DATA / "more_topics.jsonl")
    all_topics, _ = topics()
    new_topics = {r["topic"] for r in more}
    assert len(new_topics) == 9 and not new_topics & set(all_topics)
    assert {r["split"] for r in more} == {"train"}
    per = Counter((r["emotion"], r["topic"], r["person"]) for r in more)
    for e in [*emotions(shipped), NEUTRAL]:
        for t in new_topics:
            assert per[(e, t, "first")] == 1 and per[(e, t, "third")] == 1, (e, t)
    assert len(more) == len(per)
    assert not [r for r in more if not 50 <= len(r["text"].split()) <= 120]
    assert not [(r["emotion"], f) for r in more for f in find_forbidden(r["text"], r["emotion"])]
    assert not {r["text"] for r in more} & {r["text"] for r in shipped}
