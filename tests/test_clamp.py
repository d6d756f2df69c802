"""Clamping inside the embedded model: exact no-ops, scope at prompt vs generated positions under the
KV cache, units, and one-line errors. The run directory is built here from a random-weight SAE at
blocks.15.hook_resid_post with synthetic labels, stats, metrics and vectors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from features.clamp import clamp, load_run, parse_spec
from features.units import Strength, parse_strength, parse_strengths
from sae.architectures import SAEConfig, SparseAutoencoder
from sae.errors import UserError

HOOK = "blocks.15.hook_resid_post"
D_SAE = 64
MEAN_NORM = 170.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=576, d_sae=D_SAE, k=8, hook_name=HOOK,
                                      metadata={"model_id": "smollm2-135m-instruct-q4_1"}))
    sae.init_weights(torch.Generator().manual_seed(0))
    sae.save(root / "sae")
    (root / "features").mkdir()
    save_file({"max_act": torch.linspace(1.0, 64.0, D_SAE)}, str(root / "features" / "stats.safetensors"))
    (root / "metrics.json").write_text(json.dumps({"mean_resid_norm": MEAN_NORM}))
    labels = {"corpus": "test", "settings": {},
              "features": {"3": {"label": "happy", "score": 0.9}, "7": {"label": "sad", "score": 0.8},
                           "9": {"label": "afraid", "score": 0.7}},
              "emotions": {"happy": [{"feature": 3, "auroc": 0.9}, {"feature": 11, "auroc": 0.8}],
                           "sad": [{"feature": 7, "auroc": 0.8}], "afraid": [{"feature": 9, "auroc": 0.7}],
                           "hopeful": []}}
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "vectors").mkdir()
    vec = torch.randn(3, 576, generator=torch.Generator().manual_seed(1))
    save_file({"layer_15": vec / vec.norm(dim=1, keepdim=True)}, str(root / "vectors" / "vectors.safetensors"),
              metadata={"emotions": json.dumps(["happy", "sad", "calm"])})
    return root


@pytest.fixture(scope="module")
def assets(run):
    return load_run(run)


def _prompt(lm, text="Write two sentences about your morning."):
    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
    return lm.tokenizer(chat, add_special_tokens=False, return_tensors="pt")


# --- units ----------------------------------------------------------------------------------------
def test_units_parse_print_and_resolve():
    assert parse_strength("8") == Strength(8.0, "abs") and str(parse_strength("8")) == "8"
    assert parse_strength("4x") == Strength(4.0, "x") and str(parse_strength(" 4X ")) == "4x"
    assert parse_strength("-0.05r") == Strength(-0.05, "r") and str(parse_strength("-0.05r")) == "-0.05r"
    assert parse_strength(".5r").value == 0.5 and parse_strength(2.5) == Strength(2.5)
    assert parse_strength("4x").resolve(max_act=3.0) == 12.0
    assert parse_strength("0.05r").resolve(mean_resid_norm=200.0) == pytest.approx(10.0)
    assert parse_strength("0.05r").resolve(mean_resid_norm=200.0, decoder_norm=2.0) == pytest.approx(5.0)
    assert [str(s) for s in parse_strengths("-0.1r, 0,0.1r")] == ["-0.1r", "0", "0.1r"]
    for bad in ("four", "4y", "4 x x", "", "nan", "1e999"):
        with pytest.raises(UserError):
            parse_strength(bad)
    with pytest.raises(UserError, match="emotion\\s+vector"):
        parse_strength("4x", allow_x=False)
    with pytest.raises(UserError, match="max_act"):
        parse_strength("4x").resolve()


def test_parse_spec_modes():
    assert parse_spec("4x") == ("set", Strength(4.0, "x"))
    assert parse_spec("add=0.05r") == ("add", Strength(0.05, "r"))
    assert parse_spec(("scale", 2)) == ("scale", Strength(2.0))
    assert parse_spec("ablate") == ("ablate", None)
    with pytest.raises(UserError, match="plain factor"):
        parse_spec("scale=2x")
    with pytest.raises(UserError, match="unknown clamp mode"):
        parse_spec("boost=2")


# --- exactness and resolution ---------------------------------------------------------------------
def test_noop_is_exact(lm, assets):
    enc = _prompt(lm)
    with torch.no_grad():
        base = lm.model(**enc).logits
        with clamp(lm.model, assets, {"happy": "scale=1", 5: "add=0", "sad": "scale=1.0"}, vectors={"calm": 0}):
            same = lm.model(**enc).logits
        with clamp(lm.model, assets, {"happy": "8x"}, scope="generated"):  # only prompt positions: nothing edited
            same2 = lm.model(**enc).logits
        with clamp(lm.model, assets, {"happy": "8x"}):
            moved = lm.model(**enc).logits
    assert torch.equal(base, same) and torch.equal(base, same2)
    assert not torch.allclose(base, moved)


def test_set_mode_writes_value_minus_current_times_decoder_row(lm, assets):
    """x' = x + (value - current) * W_dec[i]: the SAE's error term and other features untouched."""
    from sae.hooks import hooks, run_to_hooks

    enc = _prompt(lm)
    seen = {}
    with torch.no_grad():
        raw = run_to_hooks(lm.model, [HOOK], **enc)[HOOK]
        with clamp(lm.model, assets, {7: 5.0, 3: "scale=3"}, skip_outliers=None):
            with hooks(lm.model, {HOOK: lambda x: seen.setdefault("x", x.clone())}):  # runs after the clamp
                lm.model(**enc)
        acts = assets.sae.encode(raw)
    w = assets.sae.W_dec
    expected = raw + (5.0 - acts[..., 7:8]) * w[7] + (2 * acts[..., 3:4]) * w[3]
    assert torch.allclose(seen["x"], expected, rtol=1e-5, atol=1e-3)
    assert not torch.equal(seen["x"], raw)


def test_random_controls_keep_each_edits_norm(lm, assets):
    """The matched control: every edit's direction swapped for an isotropic one, or for another
    SAE feature's decoder row, at the same norm; seeded, so a sweep's controls repeat."""
    w = assets.sae.W_dec.detach().float()
    real = clamp(lm.model, assets, {7: 5.0, 3: "add=0.1r"}, vectors={"calm": "0.1r"})
    iso = clamp(lm.model, assets, {7: 5.0, 3: "add=0.1r"}, vectors={"calm": "0.1r"}, random_control=5)
    feat = clamp(lm.model, assets, {7: 5.0, 3: "add=0.1r"}, vectors={"calm": "0.1r"}, random_control=5,
                 control_kind="feature")
    again = clamp(lm.model, assets, {7: 5.0, 3: "add=0.1r"}, vectors={"calm": "0.1r"}, random_control=5,
                  control_kind="feature")
    for r, i, f, a in zip(real.edits, iso.edits, feat.edits, again.edits):
        assert i.value == r.value and f.value == r.value
        assert float(i.direction.norm()) == pytest.approx(float(r.direction.norm()), rel=1e-5)
        assert float(f.direction.norm()) == pytest.approx(float(r.direction.norm()), rel=1e-5)
        assert torch.equal(f.direction, a.direction) and not torch.allclose(f.direction, r.direction)
        cos = torch.nn.functional.cosine_similarity(w, f.direction[None], dim=1)
        j = int(cos.argmax())
        assert float(cos[j]) == pytest.approx(1.0, abs=1e-5) and j not in (3, 7)  # another feature's row
    with pytest.raises(UserError, match="unknown control kind 'gaussian'"):
        clamp(lm.model, assets, {7: 5.0}, random_control=1, control_kind="gaussian")


def test_per_row_control_seeds_give_each_row_its_own_directions(lm, assets):
    """random_control=[s0, s1]: batch row i is edited exactly as random_control=s_i edits it alone."""
    spec = {7: 5.0, 3: "add=0.1r"}
    enc = _prompt(lm)
    two = {k: v.repeat(2, 1) for k, v in enc.items()}
    with torch.no_grad():
        with clamp(lm.model, assets, spec, random_control=[11, 12]):
            both = lm.model(**two).logits
        for i, seed in enumerate((11, 12)):
            with clamp(lm.model, assets, spec, random_control=seed):
                alone = lm.model(**enc).logits[0]
            assert torch.allclose(both[i], alone, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(both[0], both[1], atol=1e-3)
        with pytest.raises(ValueError, match="directions for 2 rows"):
            with clamp(lm.model, assets, spec, random_control=[11, 12]):
                lm.model(**enc)
    per_row = clamp(lm.model, assets, spec, random_control=[11, 12]).edits[0]
    assert per_row.describe()["residual_norm"] == pytest.approx(clamp(lm.model, assets, spec).edits[0].describe()["residual_norm"])


def test_resolution_labels_units_and_vectors(lm, assets):
    c = clamp(lm.model, assets, {"happy": "2x", "happy#2": "add=0.05r", "sad": "ablate"}, vectors={"calm": "0.1r"})
    d = {e["target"]: e for e in c.describe()["edits"]}
    max_act = torch.linspace(1.0, 64.0, D_SAE)
    assert d["happy"]["feature"] == 3 and d["happy"]["value"] == pytest.approx(2 * float(max_act[3]))
    assert d["happy#2"]["feature"] == 11 and d["happy#2"]["residual_norm"] == pytest.approx(0.05 * MEAN_NORM, rel=1e-5)
    assert d["sad"]["mode"] == "ablate" and d["sad"]["feature"] == 7
    assert d["vector:calm"]["value"] == pytest.approx(0.1 * MEAN_NORM) and d["vector:calm"]["kind"] == "vector"
    assert "feature 3 (happy) set=2x" in str(c)


# --- scope and the KV cache -----------------------------------------------------------------------
def _gen(lm, steer=None, use_cache=True, n=8):
    enc = _prompt(lm)
    kw = dict(max_new_tokens=n, do_sample=False, use_cache=use_cache, pad_token_id=lm.tokenizer.eos_token_id)
    with torch.no_grad():
        if steer is None:
            return lm.model.generate(**enc, **kw)[0, enc["input_ids"].shape[1]:]
        with steer:
            return lm.model.generate(**enc, **kw)[0, enc["input_ids"].shape[1]:]


def test_scope_edits_only_its_positions_during_cached_generation(lm, assets):
    plen = _prompt(lm)["input_ids"].shape[1]
    n = 6
    for scope in ("prompt", "generated", "all"):
        c = clamp(lm.model, assets, {"happy": "10x"}, scope=scope, record=True)
        _gen(lm, c, n=n)
        calls = c.log
        assert calls[0]["positions"] == list(range(plen))  # the prefill
        assert [call["positions"] for call in calls[1:]] == [[plen + i] for i in range(n - 1)]  # one token per step
        prompt_edit = calls[0]["delta_norm"][0, 1:]  # position 0 is the attention sink, left unedited
        gen_edit = torch.cat([call["delta_norm"][0] for call in calls[1:]])
        assert calls[0]["delta_norm"][0, 0] == 0
        if scope == "prompt":
            assert (prompt_edit > 0).all() and (gen_edit == 0).all()
        elif scope == "generated":
            assert (prompt_edit == 0).all() and (gen_edit > 0).all()
        else:
            assert (prompt_edit > 0).all() and (gen_edit > 0).all()


def test_kv_cache_generation_changes_text_and_matches_uncached(lm, assets):
    base = _gen(lm)
    for scope in ("all", "generated", "prompt"):
        cached = _gen(lm, clamp(lm.model, assets, {"happy": "12x"}, scope=scope))
        uncached = _gen(lm, clamp(lm.model, assets, {"happy": "12x"}, scope=scope), use_cache=False)
        assert not torch.equal(cached, base), scope
        # the clamp sees the same absolute positions with or without the cache
        assert torch.equal(cached, uncached), scope
    # (scope="prompt" above changed the generated tokens through attention to the edited prompt)
    vec = _gen(lm, clamp(lm.model, assets, vectors={"happy": "0.5r"}, scope="generated"))
    assert not torch.equal(vec, base)



def test_a_reused_clamp_starts_a_new_sequence_with_each_generate_call(lm, assets):
    """Multi-turn: the second generate() feeds turn one plus new user text; under scope="generated"
    that new text is prompt, so a reused clamp must give what a fresh one gives."""
    enc = _prompt(lm)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
    reused = clamp(lm.model, assets, {"happy": "10x"}, scope="generated", record=True)
    with torch.no_grad():
        with reused:
            first = lm.model.generate(**enc, **kw)
            more = lm.tokenizer(" Then my friend said", add_special_tokens=False, return_tensors="pt")["input_ids"]
            second_ids = torch.cat([first, more], 1)
            k = len(reused.log)
            second = lm.model.generate(input_ids=second_ids, **kw)
        fresh = _gen_ids(lm, clamp(lm.model, assets, {"happy": "10x"}, scope="generated"), second_ids, kw)
    assert reused.log[k]["positions"] == list(range(second_ids.shape[1]))
    assert (reused.log[k]["delta_norm"] == 0).all()  # the whole second prompt is prompt
    assert torch.equal(second, fresh)


def _gen_ids(lm, steer, ids, kw):
    with steer:
        return lm.model.generate(input_ids=ids, **kw)


def test_scope_generated_with_a_prefilled_prompt_cache(lm, assets):
    """generate() handed a cache that already holds most of the prompt: the uncached prompt tokens
    are still prompt, and every generated token is steered, as without the prefill."""
    from transformers import DynamicCache

    ids = _prompt(lm)["input_ids"]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
    with torch.no_grad():
        cache = DynamicCache(config=lm.model.config)
        lm.model(input_ids=ids[:, :-2], cache=cache, use_cache=True)
        c = clamp(lm.model, assets, {"happy": "12x"}, scope="generated", record=True)
        prefilled = _gen_ids(lm, c, ids, dict(kw, cache=cache))
        plain = _gen_ids(lm, clamp(lm.model, assets, {"happy": "12x"}, scope="generated"), ids, kw)
        base = lm.model.generate(input_ids=ids, **kw)
    plen = ids.shape[1]
    assert c.log[0]["positions"] == [plen - 2, plen - 1] and (c.log[0]["delta_norm"] == 0).all()
    assert all((call["delta_norm"] > 0).all() for call in c.log[1:])
    assert torch.equal(prefilled, plain) and not torch.equal(plain, base)


def test_a_feature_named_twice_is_edited_once(lm, assets):
    import numpy as np

    enc = _prompt(lm)
    with torch.no_grad():
        with clamp(lm.model, assets, {"happy": 5.0}):
            once = lm.model(**enc).logits
        with clamp(lm.model, assets, {"happy": 5.0, 3: 5.0}) as c:  # "happy" is feature 3
            twice = lm.model(**enc).logits
        with clamp(lm.model, assets, {np.int64(3): 5.0}):  # what argsort hands back
            numpy_key = lm.model(**enc).logits
    assert len(c.edits) == 1 and torch.equal(once, twice) and torch.equal(once, numpy_key)
    with pytest.raises(UserError, match="both feature 3"):
        clamp(lm.model, assets, {"happy": 5.0, 3: "ablate"})
    with pytest.raises(UserError, match="dict"):
        clamp(lm.model, assets, ["happy"])


def test_a_bare_sae_skips_the_attention_sink_like_a_run(lm, assets):
    """Without the run's mean_resid_norm the clamp falls back on the mask's median rule, so the same
    SAE edits the same positions whether it comes as a run or bare."""
    enc = _prompt(lm)
    with torch.no_grad():
        with clamp(lm.model, assets, {3: 8.0}, record=True) as as_run:
            a = lm.model(**enc).logits
        with clamp(lm.model, assets.sae, {3: 8.0}, record=True) as bare:
            b = lm.model(**enc).logits
    assert bare.log[0]["delta_norm"][0, 0] == 0 and (bare.log[0]["delta_norm"][0, 1:] > 0).all()
    assert torch.equal(as_run.log[0]["delta_norm"] > 0, bare.log[0]["delta_norm"] > 0)
    assert torch.allclose(a, b, atol=1e-4)


def test_vectors_only_at_the_hook_they_were_computed_at(lm, assets):
    with pytest.raises(UserError, match="no emotion vectors at blocks.15.hook_resid_pre") as e:
        clamp(lm.model, assets, vectors={"happy": "0.05r"}, hook="blocks.15.hook_resid_pre")
    _one_line(e)
    assert clamp(lm.model, assets, vectors={"happy": "0.05r"}, hook=HOOK).edits


def test_generate_takes_a_clamp_or_a_factory(lm, assets):
    from features.generation import generate

    ids = [_prompt(lm)["input_ids"][0].tolist()]
    c = clamp(lm.model, assets, {"happy": "10x"}, scope="generated")
    a = generate(lm.model, lm.tokenizer, ids, [3], max_new_tokens=5, context=c)
    b = generate(lm.model, lm.tokenizer, ids, [3], max_new_tokens=5, context=lambda: c)
    base = generate(lm.model, lm.tokenizer, ids, [3], max_new_tokens=5)
    assert a.texts == b.texts and a.texts != base.texts
    with pytest.raises(UserError, match="batch_size"):
        generate(lm.model, lm.tokenizer, ids, [3], max_new_tokens=5, batch_size=0)

@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_tiny_models_left_padded_scope_with_and_without_cache(family):
    """Other architectures, a left-padded batch: the same positions are edited whether generate()
    uses the KV cache or re-feeds the whole sequence, and a no-op clamp changes nothing."""
    from tiny_models import tiny_model

    model = tiny_model(family)
    sae = SparseAutoencoder(SAEConfig(d_in=64, d_sae=32, k=4, hook_name="blocks.1.hook_resid_post"))
    sae.init_weights(torch.Generator().manual_seed(0))
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base = model.generate(**kw)
        with clamp(model, sae, {3: "scale=1"}):
            assert torch.equal(model.generate(**kw), base)
        for scope, prompt_on, gen_on in (("prompt", 1, 0), ("generated", 0, 1), ("all", 1, 1)):
            runs = []
            for use_cache in (True, False):
                c = clamp(model, sae, {3: 8.0}, scope=scope, record=True)
                with c:
                    runs.append(model.generate(**kw, use_cache=use_cache))
                last = c.log[-1]  # cached: one new position; uncached: the whole sequence again
                edited = (last["delta_norm"][1] > 0).int().tolist()
                pos = last["positions"]
                assert edited == [prompt_on if p < 7 else gen_on for p in pos], (scope, use_cache)
                assert (pos == [9]) if use_cache else (pos == list(range(10)))
            assert torch.equal(runs[0], runs[1]), scope


def test_batched_left_padded_sampling_is_seeded_per_row(lm, assets):
    from features.generation import format_prompts, generate, tokenize_prompts

    texts, templated = format_prompts(lm.tokenizer, ["Describe your room.", "Write two sentences about rain."])
    ids = tokenize_prompts(lm.tokenizer, texts, templated)
    both = generate(lm.model, lm.tokenizer, ids, [5, 6], max_new_tokens=6)
    alone = generate(lm.model, lm.tokenizer, ids[1:], [6], max_new_tokens=6)
    again = generate(lm.model, lm.tokenizer, ids, [5, 6], max_new_tokens=6)
    assert both.texts == again.texts and both.texts[1] == alone.texts[0]
    steer = clamp(lm.model, assets, {"happy": "12x"}, scope="generated")
    steered = generate(lm.model, lm.tokenizer, ids, [5, 6], max_new_tokens=6, context=lambda: steer)
    assert steered.texts != both.texts


def test_fast_top_p_sampler_equals_the_full_vocabulary_rule():
    """SeededSampler.choose (top-k candidates, widened when a nucleus does not fit) picks exactly
    the token reference_choice (full sort, full CDF) picks, draw for draw: peaked, flat (nucleus far
    beyond top_k) and tied rows, several temperatures and top_p."""
    from features.generation import SeededSampler, reference_choice

    g = torch.Generator().manual_seed(0)
    vocab, rows = 4096, 12
    for trial in range(40):
        logits = torch.randn(rows, vocab, generator=g) * (0.3, 1.0, 3.0, 8.0)[trial % 4]
        logits[:2, :7] += 12.0  # peaked rows
        logits[2, :] = 0.0  # a uniform row: the nucleus is most of the vocabulary
        logits[3, 100:140] = logits[3, 99]  # a run of exact ties
        for temperature, top_p in ((0.7, 0.95), (1.0, 0.5), (1.3, 0.99), (1.0, 1.0), (0.0, 0.9)):
            seeds = list(range(trial * rows, (trial + 1) * rows))
            fast = SeededSampler(seeds, temperature, top_p, top_k=16).choose(logits)
            ref = reference_choice(SeededSampler(seeds, temperature, top_p), logits)
            assert torch.equal(fast, ref), (trial, temperature, top_p)


def test_top_p_keeps_tokens_tied_at_the_edge_together():
    from features.generation import SeededSampler

    logits = torch.tensor([0.5, 0.2, 0.2, 0.1]).log().expand(4000, 4)  # top_p 0.6 ends inside the tie
    picks = SeededSampler(list(range(4000)), 1.0, 0.6, top_k=2).choose(logits)
    counts = torch.bincount(picks, minlength=4).tolist()
    assert counts[3] == 0 and min(counts[:3]) > 0
    assert abs(counts[0] / 4000 - 0.5 / 0.9) < 0.03  # renormalised over the kept 0.9


def test_inverse_cdf_never_draws_a_zero_weight_token():
    from features.generation import _inverse_cdf

    w = torch.tensor([[0.0, 0.0, 0.25, 0.0, 0.75], [0.5, 0.0, 0.5, 0.0, 0.0]])
    at = lambda *u: _inverse_cdf(w, torch.tensor(u, dtype=torch.float64)).tolist()
    assert at(0.0, 0.0) == [2, 0]  # u = 0 picks the first token with weight, not index 0
    assert at(0.25, 0.5) == [4, 2]  # a draw exactly on a boundary goes to the next token with weight
    assert at(0.9999, 0.9999) == [4, 2]


def test_saelens_sae_object_works(lm, run, assets):
    """Any SAELens SAE: load ours through sae_lens and clamp with it directly."""
    from sae_lens import SAE

    sl = SAE.load_from_disk(str(run / "sae"), device="cpu")
    enc = _prompt(lm)
    with torch.no_grad():
        with clamp(lm.model, sl, {3: 20.0}, skip_outliers=None):
            a = lm.model(**enc).logits
        with clamp(lm.model, assets.sae, {3: 20.0}, skip_outliers=None):
            b = lm.model(**enc).logits
    assert torch.allclose(a, b, atol=1e-4)


# --- errors ---------------------------------------------------------------------------------------
def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs_are_one_line_errors(lm, assets, run):
    with pytest.raises(UserError) as e:
        clamp(lm.model, assets, {"hapy": 4.0})
    assert "happy" in _one_line(e) and "nearest" in _one_line(e)
    with pytest.raises(UserError) as e:
        clamp(lm.model, assets, {D_SAE: 4.0})
    assert f"0..{D_SAE - 1}" in _one_line(e)
    with pytest.raises(UserError) as e:
        clamp(lm.model, assets, {"happy": "lots"})
    assert "cannot parse" in _one_line(e)
    with pytest.raises(UserError) as e:
        clamp(lm.model, assets, vectors={"happy": "4x"})
    assert "x unit" in _one_line(e)
    with pytest.raises(UserError) as e:
        clamp(lm.model, assets, vectors={"hapy": "0.1r"})
    assert "happy" in _one_line(e)
    with pytest.raises(UserError) as e:
        clamp(lm.model, assets, {"hopeful": 1.0})
    assert "no feature is labeled" in _one_line(e)
    with pytest.raises(UserError):
        clamp(lm.model, assets, {"happy": 1.0}, scope="later")
    wrong_d = SparseAutoencoder(SAEConfig(d_in=64, d_sae=16, k=4, hook_name=HOOK))
    with pytest.raises(UserError) as e:
        clamp(lm.model, wrong_d, {0: 1.0})
    assert "d_in=64" in _one_line(e)
    for hook in ("blocks.99.hook_resid_post", "blocks.3.hook_nonsense", "transformer.h.3"):
        bad_hook = SparseAutoencoder(SAEConfig(d_in=576, d_sae=16, k=4, hook_name=hook))
        with pytest.raises(UserError) as e:
            clamp(lm.model, bad_hook, {0: 1.0})
        _one_line(e)
    bare = SparseAutoencoder(SAEConfig(d_in=576, d_sae=16, k=4, hook_name=HOOK))
    with pytest.raises(UserError) as e:
        clamp(lm.model, bare, {0: "4x"})  # no stats known for a bare SAE
    assert "max_act" in _one_line(e)


def test_cli_parsing_and_errors(run, capsys):
    from features.clamp_cli import parse_feature_arg, parse_vector_arg
    from sae.cli import main

    assert parse_feature_arg("happy=4x") == ("happy", "4x")
    assert parse_feature_arg("812:add=0.05r") == ("812", "add=0.05r")
    assert parse_feature_arg("sad:ablate") == ("sad", "ablate")
    assert parse_vector_arg("calm=0.1r") == ("calm", "0.1r")
    for bad in ("happy", "happy:ablate=3", "=4"):
        with pytest.raises(UserError):
            parse_feature_arg(bad)
    assert main(["clamp", str(run), "--feature", "hapy=4x", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nearest labels: happy" in err[0]
    assert main(["clamp", str(run), "--vector", "happy=4x", "--prompt", "hi"]) == 2
    assert "x unit" in capsys.readouterr().err


def test_cli_json_baseline_vs_clamped(run, capsys):
    from sae.cli import main

    rc = main(["clamp", str(run), "--feature", "happy=12x", "--scope", "generated", "--prompt",
               "Describe your room.", "--samples", "2", "--seed", "3", "--max-new-tokens", "8", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in rows] == [3, 4]
    assert all(set(r) == {"prompt", "seed", "baseline", "clamped", "settings"} for r in rows)
    assert rows[0]["settings"]["edits"][0]["strength"] == "12x" and rows[0]["settings"]["scope"] == "generated"
    assert any(r["baseline"] != r["clamped"] for r in rows)


# --- the dose-response sweep ----------------------------------------------------------------------
def test_prompt_ci_clusters_by_prompt():
    from features.sweep import _control_strengths, prompt_ci

    mean, lo, hi = prompt_ci([1.0, 3.0, 2.0, 2.0, 0.0, 0.0], [0, 0, 1, 1, 2, 2])  # per-prompt means 2, 2, 0
    assert mean == pytest.approx(4 / 3)
    half = 4.302653 * (2 / 3 ** 0.5) / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n), sd of (2, 2, 0) = 2/sqrt(3)
    assert (lo, hi) == (pytest.approx(mean - half, rel=1e-5), pytest.approx(mean + half, rel=1e-5))
    s = [x for x in parse_strengths("-0.1r,-0.05r,0,0.05r,0.1r") if not x.is_zero]
    assert {str(x) for x in _control_strengths(s, "max")} == {"-0.1r", "0.1r"}
    assert len(_control_strengths(s, "all")) == 4 and not _control_strengths(s, "none")


def test_the_unsteered_strength_of_each_mode():
    """A sweep's baseline row is the strength that leaves the model alone: 0, or the factor 1 in
    scale mode, where 0 ablates (as `clamp --feature X=scale=0` does)."""
    from features.sweep import Target

    zero, one = parse_strength("0"), parse_strength("1")
    assert Target.parse("happy").unsteered(zero) and not Target.parse("happy").unsteered(one)
    assert Target.parse("happy:add").unsteered(zero) and Target.parse("vector:happy").unsteered(zero)
    scale = Target.parse("happy", "scale")
    assert scale.unsteered(one) and not scale.unsteered(zero)
    assert Target.parse("happy:scale").unsteered(one)


def test_sweep_flags_that_would_change_nothing_are_errors(run, tmp_path, capsys, monkeypatch):
    """--control-* with --control none, and --mode with only vector targets, were silently ignored:
    now one line and exit code 2, before the model loads."""
    import features.sweep
    from sae.cli import main

    def must_not_run(*a, **kw):
        raise AssertionError("the sweep ran: the flag was silently ignored")

    monkeypatch.setattr(features.sweep, "run_sweeps", must_not_run)
    cases = [(["--target", "happy", "--control", "none", "--control-kind", "feature"], "--control-kind sets the random control"),
             (["--target", "happy", "--control", "none", "--control-directions", "4"], "--control-directions"),
             (["--target", "happy", "--control", "none", "--control-seed", "7"], "--control-seed"),
             (["--target", "vector:happy", "--mode", "add"], "--mode applies to feature targets")]
    for extra, msg in cases:
        assert main(["sweep", str(run), *extra, "--out", str(tmp_path / "sw")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "sw").exists()


def test_sweep_checks_sampling_settings_before_loading(run, monkeypatch):
    import features.clamp
    from features.sweep import run_sweeps

    monkeypatch.setattr(features.clamp, "load_run", lambda *a, **kw: pytest.fail("loaded before checking"))
    for kw in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(UserError, match="temperature must be >= 0 and top_p"):
            run_sweeps(run, ["happy"], "0,0.3r", **kw)


def test_sweep_refuses_a_target_given_twice(lm, run, tmp_path):
    from features.sweep import run_sweeps

    with pytest.raises(UserError, match="sweep_happy"):
        run_sweeps(run, ["happy", "vector:happy", "happy"], "0,0.3r", lm=lm, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_sweep_rows_files_and_control(lm, run, tmp_path):
    from features.sweep import run_sweeps, table

    results = run_sweeps(run, ["vector:happy", "happy:add"], "0,0.3r", prompts=["Describe your room.", "Write about rain."],
                         samples=2, max_new_tokens=6, lm=lm, out_dir=tmp_path, control="all")
    assert [r["target"] for r in results] == ["vector:happy", "happy:add"]
    for res in results:
        zero, strong = res["rows"]
        assert zero["strength"] == "0" and zero["delta"] == 0 and zero["ppl_ratio"] == pytest.approx(1.0)
        assert zero["kl"] == 0 and "control_delta" not in zero
        assert strong["value"] == pytest.approx(0.3 * MEAN_NORM, rel=1e-5) and strong["kl"] > 0
        assert strong["delta_lo"] <= strong["delta"] <= strong["delta_hi"]
        assert "control_delta" in strong and strong["control_kl"] > 0
        for key in ("csv", "png", "json"):
            assert (tmp_path / res["files"][key].split("/")[-1]).exists()
        header = (tmp_path / "sweep_vector_happy.csv").read_text().splitlines()[0]
        assert header.startswith("target,kind,strength,value")
    assert results[1]["feature"] == 3 and results[1]["mode"] == "add"
    assert "vector:happy" in table(results)
    with pytest.raises(UserError, match="mix units"):
        run_sweeps(run, ["happy"], "1x,0.1r", prompts=["a"], samples=1, lm=lm, out_dir=tmp_path)


def test_score_matches_each_row_scored_alone(lm, assets):
    """score() runs each distinct prompt once and keeps logits only from the prompt boundary on:
    per-row NLL and KL equal a plain full-logits computation of each row alone (prompts of two
    lengths, so left padding is exercised; rows sharing a prompt; an empty continuation)."""
    from features.generation import Batch, score

    tok = lm.tokenizer
    long_p, short_p = _prompt(lm)["input_ids"][0].tolist(), _prompt(lm, "Hi.")["input_ids"][0].tolist()
    words = [" The sun was warm and", " Hello", " I", " It rained all day, so we stayed in."]
    conts = [tok(w, add_special_tokens=False)["input_ids"] for w in words] + [[]]
    prompts = [long_p, short_p, long_p, short_p, long_p]
    happy = {"happy": "0.2r"}
    out = score(lm.model, tok, Batch(prompts, conts, [""] * 5), batch_size=5,
                steer=lambda p: clamp(lm.model, assets, happy, prompt_len=p))
    plain = score(lm.model, tok, Batch(prompts, conts, [""] * 5), batch_size=2)
    with torch.no_grad():
        for i, (p_ids, c_ids) in enumerate(zip(prompts, conts)):
            assert out["n_tokens"][i] == plain["n_tokens"][i] == len(c_ids)
            if not c_ids:
                assert out["nll"][i] == plain["nll"][i] == out["kl"][i] == 0
                continue
            row = torch.tensor([p_ids + c_ids])
            at = slice(len(p_ids) - 1, len(p_ids) + len(c_ids) - 1)
            logp = torch.log_softmax(lm.model(row).logits[0, at].float(), -1)
            with clamp(lm.model, assets, happy, prompt_len=len(p_ids)):
                logq = torch.log_softmax(lm.model(row).logits[0, at].float(), -1)
            ref = -float(logp.gather(-1, torch.tensor(c_ids)[:, None]).sum())
            kl = float((logq.exp() * (logq - logp)).sum(-1).mean())
            assert out["nll"][i] == pytest.approx(ref, rel=1e-4, abs=1e-3)
            assert plain["nll"][i] == pytest.approx(ref, rel=1e-4, abs=1e-3)
            assert out["kl"][i] == pytest.approx(kl, rel=1e-3, abs=1e-5) and kl > 0
    assert plain["kl"] == [0.0] * 5


def test_sweep_feature_groups_and_control_directions(lm, run, assets, tmp_path):
    """A "+" target clamps every named feature; the control's row r uses the direction drawn with
    seed control_seed + (r mod K), so K rows groups see K different random directions."""
    from features.generation import generate
    from features.sweep import Target, _control_run, run_sweeps

    assert Target.parse("happy+7:add").clamp_kwargs(parse_strength("0.1r")) == \
        {"features": {"happy": "add=0.1r", "7": "add=0.1r"}}
    for bad in ("3+3", "3+", "+3"):
        with pytest.raises(UserError, match="join distinct features"):
            Target.parse(bad)
    (res,) = run_sweeps(run, ["happy+sad"], "0,0.2r", prompts=["Describe your room."], samples=2, max_new_tokens=5,
                        lm=lm, out_dir=tmp_path, control="all", control_directions=2)
    assert res["feature"] == [3, 7] and res["label"] == ["happy", "sad"]
    assert res["settings"]["control_directions"] == 2
    strong = res["rows"][1]
    rows = [assets.sae.W_dec[i].float() * (0.2 * MEAN_NORM / assets.sae.W_dec[i].norm()) for i in (3, 7)]
    assert strong["residual_norm"] == pytest.approx(float((rows[0] + rows[1]).norm()), rel=1e-4)
    assert strong["control_kl"] > 0
    a, b = run_sweeps(run, ["happy", "sad"], "0", prompts=["Describe your room."], samples=1, max_new_tokens=4, lm=lm,
                      out_dir=tmp_path, control="none", target_strengths=[["0", "0.1r"], ["0", "2x"]])
    assert [r["strength"] for r in a["rows"]] == ["0", "0.1r"] and [r["strength"] for r in b["rows"]] == ["0", "2x"]
    assert a["rows"][0]["vader"] == b["rows"][0]["vader"]  # one shared baseline
    with pytest.raises(UserError, match="one per target"):
        run_sweeps(run, ["happy", "sad"], "0", prompts=["a"], samples=1, lm=lm, target_strengths=[["0", "1x"]])

    ids = _prompt(lm)["input_ids"][0].tolist()
    kw = dict(features={"happy": "add=0.5r"})
    gen_kw = dict(max_new_tokens=6, temperature=0.0, top_p=1.0, batch_size=8)
    batch, scores = _control_run(lm, assets, kw, [ids] * 4, [0, 1, 2, 3], 50, "direction", 2, gen_kw, "t")
    for r in range(4):  # row r alone, with the direction of seed 50 + r % 2
        alone = generate(lm.model, lm.tokenizer, [ids], [r], context=lambda r=r: clamp(
            lm.model, assets, random_control=50 + r % 2, **kw), **gen_kw)
        assert batch.continuation_ids[r] == alone.continuation_ids[0]
    assert batch.continuation_ids[0] != batch.continuation_ids[1]  # greedy, so only the direction differs
    assert len(scores["kl"]) == 4 and all(k > 0 for k in scores["kl"])
    with pytest.raises(UserError, match="control_directions"):
        run_sweeps(run, ["happy"], "0,0.1r", prompts=["a"], samples=1, lm=lm, out_dir=tmp_path, control_directions=0)


def test_stacked_clamp_edits_each_block_of_rows_as_its_own_clamp(lm, assets):
    """stack([a, b], [2, 1]): rows 0-1 get a's edits, row 2 gets b's; nothing else changes."""
    from features.clamp import stack

    enc = lm.tokenizer(["Write two sentences about your morning."] * 3, return_tensors="pt")
    a = clamp(lm.model, assets, {"happy": "0.2r"})
    b = clamp(lm.model, assets, {"sad": "add=0.1r", "11": "0.2r"})
    with torch.no_grad():
        with stack([a, b], [2, 1]):
            both = lm.model(**enc).logits
        with a:
            only_a = lm.model(**enc).logits
        with b:
            only_b = lm.model(**enc).logits
    assert torch.allclose(both[:2], only_a[:2], rtol=1e-4, atol=1e-4)
    assert torch.allclose(both[2], only_b[2], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(only_a[2], only_b[2], rtol=1e-4, atol=1e-4)  # the two really differ
    with pytest.raises(ValueError, match="edits for 3 rows, the batch has 2"), torch.no_grad():
        with stack([a, b], [2, 1]):
            lm.model(**lm.tokenizer(["Write about rain.", "Write about snow."], return_tensors="pt"))
    with pytest.raises(ValueError, match="per-row"):
        stack([clamp(lm.model, assets, {"happy": "0.2r"}, random_control=[1, 2])], [2])
    for rows in ([3, -1], [2, 0], [1.5, 1]):
        with pytest.raises(ValueError, match="positive integers"):
            stack([a, b], rows)


def _count_generate(monkeypatch) -> list:
    """The progress label of every generate() call, in order."""
    import features.generation

    real, progress = features.generation.generate, []

    def counting(*a, **kw):
        progress.append(kw.get("progress"))
        return real(*a, **kw)

    monkeypatch.setattr(features.generation, "generate", counting)
    return progress


def test_screening_stacks_targets_and_matches_each_target_run_alone(lm, run, monkeypatch):
    """kl=False (screening): all targets' rows go through shared generate() calls (blocks of 6 rows
    straddle targets here), and texts and numbers come out as when each target runs alone."""
    from features.sweep import run_sweeps

    progress = _count_generate(monkeypatch)
    kw = dict(prompts=["Describe your room.", "Write about rain."], samples=2, max_new_tokens=6, lm=lm,
              out_dir=False, control="none", kl=False, batch_size=6, examples=4)
    together = run_sweeps(run, ["happy", "sad", "7"], "0,0.2r", **kw)
    assert progress == ["baseline", "3 settings", "3 settings"]  # 12 steered rows in blocks of 6
    alone = [run_sweeps(run, [t], "0,0.2r", **kw)[0] for t in ("happy", "sad", "7")]
    assert [r["examples"] for r in together] == [r["examples"] for r in alone]
    for t, a in zip(together, alone):
        for rt, ra in zip(t["rows"], a["rows"]):
            assert rt.keys() == ra.keys()
            for k in rt:
                assert rt[k] == (pytest.approx(ra[k], rel=1e-4, nan_ok=True) if isinstance(ra[k], float) else ra[k]), k


def test_sweeps_share_a_baseline_through_the_baselines_dict(lm, run, monkeypatch):
    """Screening calls run_sweeps several times on one prompt set: with a shared `baselines` dict
    the baseline is generated once, and every number comes out as if it were generated each time."""
    from features.sweep import run_sweeps

    progress = _count_generate(monkeypatch)
    kw = dict(prompts=["Describe your room.", "Write about rain."], samples=2, max_new_tokens=5, lm=lm,
              out_dir=False, control="none", kl=False)
    fresh = run_sweeps(run, ["happy", "sad"], "0,0.2r", **kw) + run_sweeps(run, ["7"], "0,0.2r", **kw)
    assert progress.count("baseline") == 2
    progress.clear()
    shared: dict = {}
    reused = run_sweeps(run, ["happy", "sad"], "0,0.2r", baselines=shared, **kw) + \
        run_sweeps(run, ["7"], "0,0.2r", baselines=shared, **kw)
    assert progress.count("baseline") == 1 and len(shared) == 1
    assert [r["rows"] for r in reused] == [r["rows"] for r in fresh]
    run_sweeps(run, ["7"], "0,0.2r", baselines=shared, **{**kw, "samples": 1})  # other rows: a new baseline
    assert progress.count("baseline") == 2 and len(shared) == 2


# --- screening candidates for steering -------------------------------------------------------------
def test_screen_candidates_and_pick_rule():
    from features.screen import candidates, pick

    labels = {"emotions": {"sad": [{"feature": 4}, {"feature": 5}, {"feature": 6}], "afraid": [{"feature": 5}]},
              "aligned": {"sad": [{"feature": 9}, {"feature": 10}], "afraid": [{"feature": 4}]}}
    assert candidates(labels, ["sad", "afraid"], top=2, aligned=1) == [
        (4, "sad label #1"), (5, "sad label #2"), (9, "sad aligned #1")]  # 5 and 4 already named
    with pytest.raises(UserError, match="no emotion 'sadd'; nearest: sad"):
        candidates(labels, ["sadd"])
    many = {"emotions": {"sad": [{"feature": i} for i in range(10)]},
            "aligned": {"sad": [{"feature": 100 + i} for i in range(10)]}}
    assert [f for f, _ in candidates(many, ["sad"])] == [0, 1, 2, 3, 4, 100, 101, 102]  # defaults: 5 labeled + 3 aligned
    rows = [{"feature": 4, "delta": -0.5, "ppl_ratio": 3.5},  # strongest, but incoherent
            {"feature": 5, "delta": -0.3, "ppl_ratio": 1.8}, {"feature": 9, "delta": 0.4, "ppl_ratio": 1.2}]
    assert pick(rows, -1)["feature"] == 5 and pick(rows, +1)["feature"] == 9
    assert pick(rows[:1], -1) is None and pick(rows[1:2], +1) is None


def test_pair_strength_keeps_the_total_edit_norm():
    from features.screen import pair_strength

    w = torch.zeros(4, 8)
    w[0, 0], w[1, 1], w[2, 0], w[3, 0] = 2.0, 5.0, 3.0, -1.0
    assert pair_strength("0.2r", w, 0, 1) == f"{0.2 / 2 ** 0.5:.4g}r"  # orthogonal rows: s / sqrt(2)
    assert pair_strength("0.2r", w, 0, 2) == "0.1r"  # parallel rows: the two edits add, s / 2 each
    with pytest.raises(UserError, match="residual-norm strength"):
        pair_strength("2x", w, 0, 1)


def test_screen_pairs_the_best_singles_at_the_same_norm(monkeypatch, run):
    """pairs=2: the two best singles (wanted direction, under the perplexity bound) are screened
    together at the per-feature strength that keeps the summed edit's norm; the pair can be the pick."""
    import features.sweep
    from features.screen import pair_strength, screen, table

    deltas = {"3": -0.2, "11": -0.3, "7": -0.1, "3+11": None, "11+3": None}
    calls = []

    def fake_sweeps(run_dir, targets, strengths, **kw):
        per = kw.get("target_strengths") or [strengths] * len(targets)
        calls.append((list(targets), [list(x) for x in per]))
        out = []
        for t, st in zip(targets, per):
            d = -0.5 if "+" in t else deltas[t]
            out.append({"label": None, "settings": {}, "rows": [{"strength": "0"}, {"strength": st[1], "delta": d, "delta_lo": d - 0.1,
                                                                   "delta_hi": d + 0.1, "ppl_ratio": 1.5, "kl": 0.2}]})
        return out

    monkeypatch.setattr(features.sweep, "run_sweeps", fake_sweeps)
    doc = screen(run, ["happy", "sad"], -1, "0.2r", top=2, aligned=0, pairs=2, lm=object())
    s_pair = pair_strength("0.2r", load_run(run).sae.W_dec.detach(), 11, 3)
    assert calls[1] == (["11+3"], [["0", s_pair]])  # the best two singles, best first, one shared baseline
    assert doc["pick"] == [11, 3] and doc["pick_strength"] == s_pair
    pair_row = doc["candidates"][-1]
    assert pair_row["emotion"] == "happy" and pair_row["why"] == "pair happy label #2 + happy label #1"
    assert "11+3" in table(doc) and "<- pick" in table(doc)
    with pytest.raises(UserError, match="pairs must be 0"):
        screen(run, ["happy"], -1, "0.2r", pairs=1, lm=object())


def test_screen_refuses_a_pair_strength_unit_before_screening_singles(monkeypatch, run):
    """Pairs need an r strength; a 2x or absolute one is refused before the singles are generated
    (it used to fail only after them, minutes into a screen)."""
    import features.sweep
    from features.screen import screen

    calls = []
    monkeypatch.setattr(features.sweep, "run_sweeps", lambda *a, **kw: calls.append(a) or [])
    for strength in ("2x", "8.0"):
        with pytest.raises(UserError, match="residual-norm strength.*--pairs 0"):
            screen(run, ["happy"], -1, strength, top=2, aligned=0, pairs=2, lm=object())
    assert calls == []


def test_screen_cli_passes_generation_flags(monkeypatch, run):
    import features.sweep
    from sae.cli import main

    class Seen(Exception):
        pass

    def capture(*a, **kw):
        raise Seen(kw)

    monkeypatch.setattr(features.sweep, "run_sweeps", capture)
    with pytest.raises(Seen) as seen:
        main(["screen", str(run), "--emotions", "happy", "--sign", "+", "--pairs", "0", "--max-new-tokens", "7",
              "--batch-size", "16", "--model", "smollm2-135m"])
    kw = seen.value.args[0]
    assert (kw["max_new_tokens"], kw["batch_size"], kw["model"]) == (7, 16, "smollm2-135m")


def test_screen_keeps_multi_word_emotions_whole(monkeypatch, run, tmp_path):
    """The paper's list has emotions such as "worn out": a candidate's "emotion" is the whole name
    (it was the first word, "worn"), for labeled, aligned and paired candidates alike."""
    import shutil

    import features.sweep
    from features.screen import screen

    d = tmp_path / "run"
    shutil.copytree(run, d)
    labels = json.loads((d / "labels.json").read_text())
    labels["emotions"]["worn out"] = [{"feature": 5, "auroc": 0.8}]
    labels["aligned"] = {"worn out": [{"feature": 6, "cos": 0.4}]}
    (d / "labels.json").write_text(json.dumps(labels))

    def fake_sweeps(run_dir, targets, strengths, **kw):
        per = kw.get("target_strengths") or [strengths] * len(targets)
        return [{"label": None, "settings": {}, "rows": [{"strength": "0"}, {"strength": st[1], "delta": -0.3, "delta_lo": -0.4,
                                                           "delta_hi": -0.2, "ppl_ratio": 1.2, "kl": None}]} for st in per]

    monkeypatch.setattr(features.sweep, "run_sweeps", fake_sweeps)
    doc = screen(d, ["worn out"], -1, "0.2r", top=1, aligned=1, pairs=2, lm=object())
    assert [(c["why"], c["emotion"]) for c in doc["candidates"]] == [
        ("worn out label #1", "worn out"), ("worn out aligned #1", "worn out"),
        ("pair worn out label #1 + worn out aligned #1", "worn out")]


def test_screen_runs_each_candidate_against_one_baseline(lm, run, capsys):
    from features.screen import screen, table

    doc = screen(run, ["happy"], +1, "0.3r", top=2, aligned=0, pairs=0, prompts=["Describe your room.", "Write about rain."],
                 samples=2, max_new_tokens=6, lm=lm)
    assert [c["feature"] for c in doc["candidates"]] == [3, 11]
    for c in doc["candidates"]:
        assert c["strength"] == "0.3r" and c["ppl_ratio"] > 0 and c["delta_lo"] <= c["delta"] <= c["delta_hi"]
    assert doc["pick"] in (None, 3, 11)
    assert doc["pick"] is None or next(c for c in doc["candidates"] if c["feature"] == doc["pick"])["delta"] > 0
    assert "happy label #1" in table(doc)
    from sae.cli import main

    assert main(["screen", str(run), "--emotions", "happy", "--sign", "+", "--strength", "0"]) == 2
    assert "non-zero" in capsys.readouterr().err


def test_negative_values_may_follow_their_option():
    from sae.cli import join_negative_values, build_parser

    argv = join_negative_values(["sweep", "R", "--target", "happy", "--strengths", "-0.1r,0,0.1r", "--samples", "2"])
    assert argv == ["sweep", "R", "--target", "happy", "--strengths=-0.1r,0,0.1r", "--samples", "2"]
    assert build_parser().parse_args(argv).strengths == "-0.1r,0,0.1r"
    assert join_negative_values(["clamp", "R", "--feature", "-1=4x"])[-1] == "--feature=-1=4x"
    assert join_negative_values(["clamp", "R", "--feature", "happy", "-v"]) == ["clamp", "R", "--feature", "happy", "-v"]
