"""Harvest stops at the hook, masks with the one position mask, mixes in a shuffle buffer and
round-trips through the sharded disk cache."""

import json

import torch

from sae.cache import ActivationCache
from sae.data import token_batches
from sae.harvest import ShuffleBuffer, harvest
from sae.harvest_cli import harvest_to_cache

TEXTS = ["The kettle boiled while she read the letter again, slowly and carefully.",
         "Platform four: trains to the coast leave every twenty minutes on weekdays.",
         "Rinse the rice twice, then add water up to the first knuckle and simmer."] * 8


def _corpus(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return str(p)


def test_harvest_never_runs_later_layers(lm, tmp_path):
    calls = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(lm.model.model.layers)]
    handles.append(lm.model.lm_head.register_forward_hook(lambda m, a, o: calls.append("head")))
    try:
        chunks = list(harvest(lm.model, lm.tokenizer, token_batches(_corpus(tmp_path), lm.tokenizer, 64, 256),
                              ["blocks.5.hook_resid_post"]))
    finally:
        for h in handles:
            h.remove()
    assert chunks and max(c for c in calls if c != "head") == 5 and "head" not in calls
    c = chunks[0]
    assert c.acts["blocks.5.hook_resid_post"].shape == (c.n, 576)
    assert not c.keep[:, 0].any()  # every row starts a segment: the sink is masked
    norms = c.acts["blocks.5.hook_resid_post"].norm(dim=-1)
    assert norms.max() < 10 * norms.median() + 1e-3


def test_shuffle_buffer_mixes_and_keeps_every_row():
    buf = ShuffleBuffer(capacity=64, batch_size=8, seed=0)
    out = []
    for b in range(10):
        out += list(buf.add({"h": torch.full((16, 2), float(b))}))
    out += list(buf.drain())
    rows = torch.cat([o["h"] for o in out])
    assert rows.shape[0] == 160
    assert sorted(rows[:, 0].tolist()) == sorted([float(b) for b in range(10) for _ in range(16)])
    first = out[0]["h"][:, 0]
    assert len(first.unique()) > 1  # a batch mixes several input batches


def test_shuffle_buffer_state_round_trip():
    def run(split_at):
        buf = ShuffleBuffer(capacity=32, batch_size=4, seed=3)
        outs = []
        for b in range(8):
            if b == split_at:
                state = buf.state_dict()
                buf = ShuffleBuffer(capacity=32, batch_size=4, seed=99)
                buf.load_state_dict(state)
            outs += [o["h"] for o in buf.add({"h": torch.arange(8.0)[:, None] + 10 * b})]
        return torch.cat(outs)
    assert torch.equal(run(None), run(5))


def test_cache_round_trip(lm, tmp_path):
    hooks = ["blocks.3.hook_resid_post", "blocks.5.hook_mlp_out"]
    m = harvest_to_cache("unused", hooks, _corpus(tmp_path), str(tmp_path / "cache"), context_size=64,
                         token_budget=128, lm=lm)
    cache = ActivationCache.open(tmp_path / "cache")
    assert cache.n_tokens == m["n_tokens"] > 0 and cache.hooks == hooks
    assert cache.manifest["provenance"]["sha256"] == lm.sha256
    direct = list(harvest(lm.model, lm.tokenizer, token_batches(_corpus(tmp_path), lm.tokenizer, 64, 128), hooks))
    want = torch.cat([c.acts[hooks[0]] for c in direct])
    got = torch.cat([s[f"acts.{hooks[0]}"] for _, s in cache.iter_shards()])
    assert torch.equal(got, want)
    seen = 0
    for batch, pos in cache.iter_batches(16, torch.Generator().manual_seed(0)):
        assert set(batch) == set(hooks) and batch[hooks[1]].shape == (16, 576)
        seen += 16
    assert seen == sum((sh["n"] // 16) * 16 for sh in cache.manifest["shards"])
    # the stored rows rebuild each token's context
    shard = cache.shard(0)
    idx = shard["index"][:5]
    rows = shard["rows"].reshape(-1)
    assert rows.numel() >= int(idx.max()) + 1
    # a torchrun run's data.cache holds one part per rank: opening it names one to pass
    import shutil

    import pytest

    from sae.errors import UserError
    split = tmp_path / "run-cache"
    for r in range(2):
        shutil.copytree(tmp_path / "cache", split / "train" / f"rank{r}of2")
    for given in (split, split / "train"):
        with pytest.raises(UserError, match=r"2 ranks .*--cache .*rank0of2"):
            ActivationCache.open(given)
    assert ActivationCache.open(split / "train" / "rank1of2").n_tokens == m["n_tokens"]


def test_in_background_keeps_order_raises_and_stops():
    """The stream trainer's data thread (on CUDA): same items in the same order, the producer's
    exception raised in the consumer, and a consumer that stops early ends the thread."""
    import threading

    from sae.errors import UserError
    from sae.train_data import in_background

    assert list(in_background(iter(range(100)), depth=3)) == list(range(100))

    def bad():
        yield 1
        raise UserError("data.dataset: no such file")
    got = []
    try:
        for x in in_background(bad()):
            got.append(x)
    except UserError as e:
        assert "no such file" in str(e)
    else:
        raise AssertionError("the producer's error was lost")
    assert got == [1]

    gen = in_background(iter(range(10 ** 6)), depth=2)
    assert next(gen) == 0
    gen.close()
    for t in threading.enumerate():
        if t.name == "emosae-data":
            t.join(timeout=5)
            assert not t.is_alive()
