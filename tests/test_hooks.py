"""Hook points resolve onto every supported family and mean what their names say."""

import pytest
import torch

from sae.errors import UserError
from sae.hooks import HOOK_KINDS, final_norm, hooks, n_layers, parse_hook, run_to_hooks
from tests.conftest import tolerance_close
from tests.tiny_models import CONFIGS, tiny_model


def _capture_all(model, ids):
    names = [f"blocks.{L}.{k}" for L in range(n_layers(model)) for k in HOOK_KINDS]
    got = {}
    with hooks(model, {n: (lambda n: lambda x: got.__setitem__(n, x.clone()))(n) for n in names}):
        norm_in = {}
        h = final_norm(model).register_forward_pre_hook(lambda m, a: norm_in.setdefault("x", a[0].clone()))
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        h.remove()
    return got, out.hidden_states, norm_in["x"]


def _check(model, ids):
    got, hidden, norm_in = _capture_all(model, ids)
    n = n_layers(model)
    for L in range(n):
        post = got[f"blocks.{L}.hook_resid_post"]
        ref = hidden[L + 1] if L < n - 1 else norm_in
        assert tolerance_close(post, ref), f"resid_post {L}"
        assert tolerance_close(got[f"blocks.{L}.hook_resid_pre"], hidden[L]), f"resid_pre {L}"
        parts = got[f"blocks.{L}.hook_resid_pre"] + got[f"blocks.{L}.hook_attn_out"] + got[f"blocks.{L}.hook_mlp_out"]
        assert tolerance_close(parts, post), f"pre + attn + mlp != post at {L}"


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_hook_points_on_every_family(family):
    model = tiny_model(family)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _check(model, ids)


def test_hook_points_on_embedded_model(lm):
    ids = lm.tokenizer(["The kettle boiled while she read the letter again."], return_tensors="pt",
                       add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        _check(lm.model, ids)


def test_run_to_hooks_stops_after_the_hook_layer():
    model = tiny_model("llama")
    calls = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(model.model.layers)]
    head = model.lm_head.register_forward_hook(lambda m, a, o: calls.append("head"))
    with torch.no_grad():
        acts = run_to_hooks(model, ["blocks.1.hook_resid_post"], input_ids=torch.zeros(1, 5, dtype=torch.long))
    for h in handles + [head]:
        h.remove()
    assert calls == [0, 1]
    assert acts["blocks.1.hook_resid_post"].shape == (1, 5, 64)


def test_module_path_names_and_errors():
    model = tiny_model("llama")
    assert parse_hook("model.layers.2", model).name == "blocks.2.hook_resid_post"
    assert parse_hook("model.layers.0.mlp", model).name == "blocks.0.hook_mlp_out"
    with pytest.raises(UserError, match="out of range"):
        parse_hook("blocks.3.hook_resid_post", model)
    with pytest.raises(UserError, match="unknown hook point"):
        parse_hook("blocks.0.hook_z", model)
    model.config.model_type = "mamba"
    with pytest.raises(UserError, match="supported: .*llama"):
        parse_hook("blocks.0.hook_resid_post", model)
