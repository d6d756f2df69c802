"""The embedded model loads from the wheel's GGUF via a cached HF directory; other sources work
the same way; bad paths are one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from sae.errors import UserError
from sae.models import EMBEDDED_ID, embedded_gguf_path, load_model, sha256_file


def test_embedded_model_provenance_and_cache(lm):
    assert lm.model_id == EMBEDDED_ID == "smollm2-135m-instruct-q4_1"
    assert lm.sha256 == sha256_file(embedded_gguf_path())
    assert lm.model.config.num_hidden_layers == 30 and lm.model.config.hidden_size == 576
    assert not lm.model.training
    prov = json.loads((__import__("pathlib").Path(lm.path) / "emosae_provenance.json").read_text())
    assert prov["sha256"] == lm.sha256
    assert lm.tokenizer.chat_template  # the chat template travels into the cached directory


def test_local_directory_is_the_same_model(lm):
    local = load_model(lm.path)  # the cached HF directory through the plain local-directory route
    assert local.source == "local"
    ids = torch.tensor([[504, 2365, 314, 253, 1205]])
    with torch.no_grad():
        assert torch.equal(local.model(ids).logits, lm.model(ids).logits)


@pytest.mark.slow
def test_converted_directory_matches_gguf_loaded_model(lm):
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = torch.tensor([[504, 2365, 314, 253, 1205, 30, 7]])
    plain = load_model("smollm2-135m", prepack="off")  # the conversion, bit for bit: plain F.linear
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, plain.model(ids).logits)
        assert torch.allclose(direct(ids).logits, lm.model(ids).logits, rtol=1e-4, atol=1e-3)  # prepacked


def test_bad_model_specs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="does not exist"):
        load_model("./no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(UserError, match="could not read GGUF"):
        load_model(str(corrupt))


def test_cli_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    cases = [
        (["harvest", "--dataset", str(bad), "--out", str(tmp_path / "c")], "bad.jsonl:2"),
        (["harvest", "--dataset", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "c")], "does not exist"),
        (["harvest", "--model", str(tmp_path / "x.gguf"), "--dataset", str(bad), "--out", str(tmp_path / "c")], "does not exist"),
        (["harvest", "--hook", "blocks.99.hook_resid_post", "--dataset", str(bad), "--out", str(tmp_path / "c")], "out of range"),
    ]
    mine = tmp_path / "mine"  # a folder of the user's: never replaced by a cache
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    cases += [(["harvest", "--dataset", str(bad), "--out", str(mine)], "not an activation cache"),
              (["harvest", "--dataset", str(bad), "--out", str(mine / "keep.txt")], "is a file"),
              (["stats", str(mine), "--cache", str(mine), "--corpus", str(bad)], "not both"),
              (["stats", str(mine), "--tokens", "100"], "drop --tokens")]
    # a malformed option is one line too (not argparse's usage block), pointing at --help
    options = [(["screen", str(mine), "--emotions", "sad", "--sign", "x"], "--sign must be + or -"),
               (["clamp", str(mine), "--scope", "everything"], "invalid choice: 'everything'"),
               (["label"], "the following arguments are required: run")]
    for argv, needle in cases + options:
        r = subprocess.run([sys.executable, "-m", "sae.cli", *argv], capture_output=True, text=True)
        assert r.returncode == 2, (argv, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1
        if (argv, needle) in options:
            assert r.stderr.count("\n") == 1 and f"see `emosae {argv[0]} --help`" in r.stderr, r.stderr
    assert not (tmp_path / "c").exists()  # nothing half-written
    assert [p.name for p in mine.iterdir()] == ["keep.txt"] and (mine / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_keep_hooks(tmp_path, monkeypatch):
    """`model.compile`: compiled blocks give eager's activations at every hook kind (capture cuts
    the forward inside the compiled region too), a hook added after compiling still edits the
    stream, a new batch shape still works, and blocks past `up_to` stay eager."""
    from sae.hooks import HOOK_KINDS, add_hook, blocks_of, run_to_hooks
    from sae.models import compile_blocks
    from tests.conftest import tolerance_close
    from tests.tiny_models import tiny_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = tiny_model("llama")
    gen = torch.Generator().manual_seed(2)
    ids, ids2 = torch.randint(0, 128, (2, 16), generator=gen), torch.randint(0, 128, (3, 24), generator=gen)
    names = [f"blocks.1.{k}" for k in HOOK_KINDS]
    with torch.inference_mode():
        eager = {n: run_to_hooks(model, [n], input_ids=ids)[n].clone() for n in names}
        eager2 = run_to_hooks(model, ["blocks.1.hook_resid_post"], input_ids=ids2)["blocks.1.hook_resid_post"]
        compile_blocks(model, up_to=1)
        blocks = blocks_of(model)
        compiled = [all(hasattr(c.forward, "_torchdynamo_orig_callable") for c in b.children()) for b in blocks]
        assert compiled == [True, True, False]
        for n in names:
            assert tolerance_close(run_to_hooks(model, [n], input_ids=ids)[n], eager[n]), n
        assert tolerance_close(run_to_hooks(model, ["blocks.1.hook_resid_post"], input_ids=ids2)[
            "blocks.1.hook_resid_post"], eager2)
        for edited in ("blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"):  # on a block, on a child
            h = add_hook(model, edited, lambda x: torch.zeros_like(x))
            seen = run_to_hooks(model, [edited], input_ids=ids)[edited]
            h.remove()
            assert torch.count_nonzero(seen) == 0, edited
        assert tolerance_close(run_to_hooks(model, [names[-1]], input_ids=ids)[names[-1]], eager[names[-1]])
    assert (tmp_path / "inductor").is_dir()


def test_autocast_modes_resolve(monkeypatch, caplog):
    from sae import models

    assert models.resolve_autocast("auto", "cpu") == "off" and models.resolve_autocast("off", "cpu") == "off"
    assert models.resolve_autocast("auto", "cuda") == "bf16" and models.resolve_autocast("off", "cuda") == "off"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.resolve_autocast("bf16", "cpu") == "bf16"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        assert models.resolve_autocast("bf16", "cpu") == "off"  # emulated bf16 would be slower
    assert "no native bf16" in caplog.text
    with pytest.raises(UserError, match="autocast"):
        models.resolve_autocast("fp8", "cpu")


def test_bf16_autocast_model(lm, monkeypatch, tmp_path):
    """Every forward of a bf16 model runs its matmuls in bf16; hook functions (SAEs, clamps) still
    compute in float32; its activations are close to float32's but not the same numbers, so caches
    and the SAEs trained on them record the precision, and later stages load the model that way."""
    from labeling.scoring import cache_key, load_model_for
    from sae import models
    from sae.architectures import SAEConfig, SparseAutoencoder
    from sae.data import TokenBatch
    from sae.harvest import forward_acts
    from sae.hooks import add_hook, blocks_of

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    lm16 = load_model("smollm2-135m", autocast="bf16")
    assert lm16.autocast == "bf16" and lm16.provenance["autocast"] == "bf16" and "autocast" not in lm.provenance
    seen = {}
    block = blocks_of(lm16.model)[3]
    raw = block.mlp.down_proj.register_forward_hook(lambda m, a, out: seen.update(mlp=out.dtype))

    def in_hook(x):
        seen.update(hook=(x.dtype, torch.is_autocast_enabled("cpu")))
    handle = add_hook(lm16.model, "blocks.3.hook_resid_post", in_hook)
    ids = lm.tokenizer("The letter said the dog had come home after three days.", return_tensors="pt").input_ids
    batch = TokenBatch(ids, torch.zeros_like(ids), torch.arange(ids.shape[1])[None])
    a16 = forward_acts(lm16.model, batch, ["blocks.15.hook_resid_post"])["blocks.15.hook_resid_post"][0, 1:]
    raw.remove()
    handle.remove()
    assert seen == {"mlp": torch.bfloat16, "hook": (torch.float32, False)}
    again = forward_acts(lm16.model, batch, ["blocks.15.hook_resid_post"])["blocks.15.hook_resid_post"][0, 1:]
    assert torch.equal(a16, again)  # bf16 is as deterministic as float32 on one machine
    a32 = forward_acts(lm.model, batch, ["blocks.15.hook_resid_post"])["blocks.15.hook_resid_post"][0, 1:]
    rel = ((a16.float() - a32).norm(dim=-1) / a32.norm(dim=-1)).median()
    assert 0 < rel < 0.05, rel
    assert cache_key(lm16, ["x"], "h", 10.0, None) != cache_key(lm, ["x"], "h", 10.0, None)
    sae = SparseAutoencoder(SAEConfig(d_in=576, d_sae=64, k=4, metadata={
        "model_id": EMBEDDED_ID, "provenance": lm16.provenance}))
    assert load_model_for(sae, device="cpu").autocast == "bf16"
    sae.cfg.metadata["provenance"] = lm.provenance
    assert load_model_for(sae, device="cpu").autocast == "off"


def test_prepacked_linears_match_f_linear_and_fall_back(monkeypatch, caplog):
    """`model.prepack`: inference forwards run oneDNN-prepacked weights, equal to F.linear to float
    rounding in float32 and bit for bit under bf16 autocast; gradients, another precision and a
    weight changed in place take F.linear on the weight itself."""
    from sae import models
    from sae.models import prepack_linears, resolve_prepack, unpack_linears
    from tests.tiny_models import tiny_model

    if not models._onednn_linear_ops():
        pytest.skip("this torch has no oneDNN linear ops")
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    step = ids[:, :1]  # a sampling step's shape
    with torch.inference_mode():
        plain, plain_step = model(input_ids=ids).logits, model(input_ids=step).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain16 = model(input_ids=ids).logits
    n = prepack_linears(model)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert n == len(linears) > 0
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        packed = model(input_ids=ids).logits
        assert len(calls) == n  # every linear, once
        assert torch.allclose(packed, plain, rtol=1e-4, atol=1e-4) and torch.equal(packed, model(input_ids=ids).logits)
        assert torch.allclose(model(input_ids=step).logits, plain_step, rtol=1e-4, atol=1e-4)
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 packs do not serve bf16 calls
            assert torch.equal(model(input_ids=ids).logits, plain16)
        assert not calls
    x = torch.randn(2, 40, 64, requires_grad=True)
    linears[0](x).sum().backward()  # autograd goes through F.linear
    assert x.grad is not None and not calls
    with torch.no_grad():
        linears[0].weight.mul_(2)  # a weight edited in place: the packed copy is stale, never used
        x = torch.randn(2, 40, 64)
        assert torch.equal(linears[0](x), torch.nn.functional.linear(x, linears[0].weight, linears[0].bias))
    assert not calls
    unpack_linears(model)
    assert not any("_emosae_packed" in m.__dict__ for m in model.modules())

    model16 = tiny_model("llama")
    prepack_linears(model16, torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model16(input_ids=ids).logits, plain16)  # autocast's numbers, bit for bit
    assert len(calls) == n

    fp32 = tiny_model("llama")
    assert resolve_prepack("auto", fp32, "off") and resolve_prepack("auto", fp32, "bf16")
    assert not resolve_prepack("off", fp32, "off")
    with caplog.at_level("WARNING"):
        assert not resolve_prepack("on", tiny_model("llama").to(torch.bfloat16), "off")
    assert "not float32" in caplog.text
    with pytest.raises(UserError, match="prepack"):
        resolve_prepack("yes", fp32, "off")
