"""Training config: YAML by concern, --set overrides, unknown keys name the nearest key, presets
load and their hook points exist on their model families (tiny random models, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sae.config import Config, load_config
from sae.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {  # file: (model family, layers of the real model, d_model)
    "gpt2-small.yaml": ("gpt2", 12, 768),
    "gemma-2-2b.yaml": ("gemma2", 26, 2304),
    "qwen2.5-1.5b.yaml": ("qwen2", 28, 1536),
    "llama-3.1-8b.yaml": ("llama", 32, 4096),
}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = _write(tmp_path, "sae: {d_sae: 1024, k: 16}\ntrain: {batch_size: 512}\n")
    cfg = load_config(p, ["train.lr=3e-4", "sae.k=8", "data.tokens=2.5e+5", "log.wandb.project=emo",
                          "data.outlier_mult=null", "train.betas=[0.8, 0.99]"])
    assert cfg.saes[0].d_sae == 1024 and cfg.saes[0].k == 8 and cfg.train.batch_size == 512
    assert cfg.train.lr == 3e-4 and cfg.data.tokens == 250_000 and cfg.log.wandb.project == "emo"
    assert cfg.data.outlier_mult is None and cfg.train.betas == [0.8, 0.99]
    assert cfg.model.autocast == "auto"
    assert load_config(_write(tmp_path, "model: {autocast: off}\n")).model.autocast == "off"  # YAML's bare off
    assert not cfg.multi and cfg.saes[0].name == "topk-1024-k8-L15_resid_post"
    # the resolved YAML loads back to the same config
    again = load_config(_write(tmp_path, cfg.to_yaml()))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text, overrides, needle", [
    ("train: {lrr: 0.1}\n", [], "did you mean 'lr'"),
    ("trian: {lr: 0.1}\n", [], "did you mean 'train'"),
    ("sae: {dsae: 10}\n", [], "did you mean 'd_sae'"),
    ("", ["train.batch_szie=3"], "did you mean 'batch_size'"),
    ("", ["log.wandb.projet=x"], "did you mean 'wandb.project'"),
    ("", ["train.lr=abc"], "train.lr must be a number"),
    ("sae: {arch: topkk}\n", [], "did you mean 'topk'"),
    ("sae: {arch: topk, k: null}\n", [], "sae.k must be set"),
    ("sae: {d_sae: 8, k: 16}\n", [], "cannot exceed d_sae"),
    ("sae: {}\nsaes: [{}]\n", [], "both `sae:` and `saes:`"),
    ("saes: [{name: a}, {name: a}]\n", [], "two SAEs are named 'a'"),
    ("data: {mode: disk}\n", [], "data.mode must be one of"),
    ("train: {decay_start: 2}\n", [], "decay_start"),
    ("train: {optimizer: signam}\n", [], "did you mean 'signum'"),
    ("model: {autocast: bf61}\n", [], "did you mean 'bf16'"),
    ("train: {momentum: 1.5}\n", [], "train.momentum must be in"),
    ("", ["train.lr"], "section.key=value"),
    ("saes: [{}]\n", ["sae.k=3"], "saes.N.k"),
    ("saes: [{}]\n", ["saes.3.k=3"], "index it with 0..0"),
])
def test_errors_name_the_fix(tmp_path, text, overrides, needle):
    with pytest.raises(UserError) as e:
        load_config(_write(tmp_path, text), overrides)
    assert needle in str(e.value)


def test_several_saes(tmp_path):
    p = _write(tmp_path, "saes:\n  - {d_sae: 512, k: 8}\n  - {arch: jumprelu, d_sae: 512, hook: blocks.10.hook_resid_post}\n")
    cfg = load_config(p, ["saes.1.l0_coeff=0.5"])
    assert cfg.multi and len(cfg.saes) == 2 and cfg.saes[1].l0_coeff == 0.5
    assert cfg.saes[1].k is None  # only TopK-style SAEs keep a k
    assert len({s.name for s in cfg.saes}) == 2
    assert "saes" in yaml.safe_load(cfg.to_yaml())
    one = cfg.for_sae(1)
    assert not one.multi and yaml.safe_load(one.to_yaml())["sae"]["arch"] == "jumprelu"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(_write(tmp_path, "train: {lr: [1,\n"))


def test_demo_preset():
    cfg = load_config(ROOT / "configs" / "demo-cpu.yaml")
    s = cfg.saes[0]
    assert (cfg.model.name, s.arch, s.hook, s.d_sae, s.k) == ("smollm2-135m", "topk", "blocks.15.hook_resid_post", 4608, 32)
    assert cfg.data.dataset == "labeling/data/sae_corpus.jsonl.gz" and cfg.data.mode == "cache"
    assert (ROOT / cfg.data.dataset).exists()
    assert 200_000 <= cfg.data.tokens <= 300_000
    assert cfg.model.autocast == "bf16"


def test_relative_dataset_found_from_any_directory(tmp_path, monkeypatch):
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "mine.jsonl").write_text('{"text": "hi"}\n')
    mine = _write(tmp_path / "cfgs", "data: {dataset: mine.jsonl}\n")
    hub = _write(tmp_path, "data: {dataset: roneneldan/TinyStories}\n")
    monkeypatch.chdir(tmp_path)
    shipped = load_config(ROOT / "configs" / "demo-cpu.yaml").data.dataset
    assert Path(shipped) == (ROOT / "labeling/data/sae_corpus.jsonl.gz").resolve()
    assert Path(load_config(mine).data.dataset) == (tmp_path / "cfgs" / "mine.jsonl").resolve()
    assert load_config(hub).data.dataset == "roneneldan/TinyStories"  # not a path anywhere: a hub id
    (tmp_path / "mine.jsonl").write_text('{"text": "here"}\n')
    assert load_config(mine).data.dataset == "mine.jsonl"  # the working directory comes first


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_gpu_presets_are_valid(name):
    """Each GPU preset loads, and its hook point resolves on its model family at the real depth."""
    from tiny_models import CONFIGS
    import transformers as tf

    from sae.hooks import parse_hook

    cfg = load_config(ROOT / "configs" / name)
    family, layers, d_model = PRESETS[name]
    assert cfg.data.mode == "stream" and cfg.data.tokens >= 100_000_000
    conf = CONFIGS[family]()
    if family == "gpt2":
        conf.n_layer = layers
    else:
        conf.num_hidden_layers = layers
        if hasattr(conf, "layer_types"):
            conf.layer_types = conf.layer_types[:1] * layers if conf.layer_types else None
    model = tf.AutoModelForCausalLM.from_config(conf)
    for s in cfg.saes:
        hp = parse_hook(s.hook, model)
        assert hp.layer < layers and s.d_sae >= 4 * d_model
        if s.arch in ("topk", "batchtopk"):
            assert 8 <= s.k <= 256


def test_config_is_plain_dataclasses():
    cfg = Config()
    assert cfg.to_dict()["sae"]["arch"] == "topk"
