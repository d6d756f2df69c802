"""Packing keeps documents apart, the one position mask drops what it says, text sources work."""

import gzip
import json

import pytest
import torch

from sae.data import _to_batch, batches, iter_texts, pack_rows, position_mask, token_batches
from sae.errors import UserError
from sae.hooks import run_to_hooks
from tests.conftest import tolerance_close
from tests.tiny_models import tiny_model

DOCS = ["The kettle boiled while she read the letter again, slowly.",
        "Platform four: trains to the coast leave every twenty minutes on weekdays.",
        "Rinse the rice twice, then add water to the first knuckle.",
        "He oiled the chain and checked the brakes before the ride."]


def test_pack_rows_fills_rows_and_restarts_positions():
    docs = [[1] * 5, [2] * 7, [3] * 6]
    rows = list(pack_rows(docs, 8))
    assert [len(r[0]) for r in rows] == [8, 8]  # 18 tokens -> two full rows, the last 2 dropped
    ids, segs, pos = rows[0]
    assert ids == [1] * 5 + [2] * 3 and pos == [0, 1, 2, 3, 4, 0, 1, 2]
    ids, segs, pos = rows[1]
    assert ids[:4] == [2] * 4 and pos[:4] == [0, 1, 2, 3]  # the rest of doc 2 restarts as a segment
    assert len(set(rows[0][1]) & set(rows[1][1])) == 0


def _packed_equals_alone(model, tok_docs, context, hook):
    rows = list(pack_rows(tok_docs, context))
    b = _to_batch(rows)
    with torch.no_grad():
        packed = run_to_hooks(model, [hook], **b.forward_kwargs())[hook]
    checked = 0
    for seg in b.doc_ids.unique():
        where = b.doc_ids == seg
        r = int(where.any(dim=1).nonzero()[0])
        ids = b.input_ids[r][where[r]]
        with torch.no_grad():
            alone = run_to_hooks(model, [hook], input_ids=ids[None])[hook][0]
        keep = b.positions[r][where[r]] != 0  # unmasked positions (the first token is the sink)
        assert tolerance_close(packed[r][where[r]][keep], alone[keep])
        checked += 1
    assert checked >= 3


def test_packed_document_equals_document_alone_embedded(lm):
    tok_docs = [lm.tokenizer(d, add_special_tokens=False)["input_ids"] for d in DOCS]
    _packed_equals_alone(lm.model, tok_docs, 24, "blocks.15.hook_resid_post")


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_packed_document_equals_document_alone_tiny(family):
    g = torch.Generator().manual_seed(0)
    tok_docs = [torch.randint(1, 128, (n,), generator=g).tolist() for n in (9, 13, 7, 11)]
    _packed_equals_alone(tiny_model(family), tok_docs, 16, "blocks.1.hook_resid_post")


def test_position_mask_drops_sink_specials_and_outliers():
    ids = torch.tensor([[5, 6, 0, 7, 8, 9]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    acts = torch.ones(1, 6, 4)
    acts[0, 4] *= 1000  # a norm outlier
    keep = position_mask(ids, pos, [0], acts, outlier_mult=10.0)
    assert keep.tolist() == [[False, True, False, False, False, True]]
    assert position_mask(ids, pos, [0], acts, outlier_mult=None).tolist() == [[False, True, False, False, True, True]]


def test_first_position_is_the_attention_sink_on_embedded_model(lm):
    ids = lm.tokenizer(DOCS[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        acts = run_to_hooks(lm.model, ["blocks.15.hook_resid_post"], input_ids=ids)["blocks.15.hook_resid_post"][0]
    norms = acts.norm(dim=-1)
    assert norms[0] > 50 * norms[1:].median()  # ~25,000 against ~172
    keep = position_mask(ids, torch.arange(ids.shape[1])[None], lm.tokenizer.all_special_ids, acts[None])
    assert not keep[0, 0] and keep[0, 1:].all()


def test_batches_follow_token_budget(lm, tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": d * 5}) + "\n" for d in DOCS * 10))
    bs = list(token_batches(str(src), lm.tokenizer, context_size=32, token_budget=128))
    assert all(b.input_ids.shape == (4, 32) for b in bs[:-1])
    assert sum(b.n_tokens for b in bs) == sum(b.input_ids.numel() for b in bs)
    limited = list(token_batches(str(src), lm.tokenizer, 32, 128, limit_tokens=200))
    assert sum(b.n_tokens for b in limited) <= 200


def test_text_sources(tmp_path):
    (tmp_path / "a.txt").write_text("one doc\nstill one\n\nsecond doc\n")
    assert list(iter_texts(str(tmp_path / "a.txt"))) == ["one doc\nstill one", "second doc"]
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "zipped"}) + "\n")
    assert list(iter_texts(str(tmp_path / "b.jsonl.gz"), text_field="body")) == ["zipped"]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["p1", "p2"]}), tmp_path / "c.parquet")
    assert list(iter_texts(str(tmp_path / "c.parquet"))) == ["p1", "p2"]


@pytest.mark.parametrize("content,match", [
    (b'{"text": "ok"}\n{oops\n', r"bad.jsonl:2: malformed JSON"),
    (b'{"text": "ok"}\n{"body": "x"}\n', r"bad.jsonl:2: missing field\(s\) text; set data.text_field"),
    (b'{"text": "caf\xe9"}\n', r"bad.jsonl:1: not UTF-8"),
    (b'{"text": "ok"}\n["text"]\n', r"bad.jsonl:2: not a JSON object"),
    (b"\n\n", r"holds no text"),
])
def test_bad_jsonl_is_a_clear_error(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(UserError, match=match):
        list(iter_texts(str(p)))


def test_non_utf8_txt_names_the_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(UserError, match=r"bad.txt:3: not UTF-8"):
        list(iter_texts(str(p)))
