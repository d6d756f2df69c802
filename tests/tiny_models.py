"""Tiny randomly initialised models of each supported family (no download)."""

from __future__ import annotations

import torch
import transformers as tf

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**COMMON),
    "mistral": lambda: tf.MistralConfig(**COMMON),
    "qwen2": lambda: tf.Qwen2Config(**COMMON),
    "gemma": lambda: tf.GemmaConfig(**COMMON, head_dim=16),
    "gemma2": lambda: tf.Gemma2Config(**COMMON, head_dim=16),
    "phi": lambda: tf.PhiConfig(**COMMON),
    "phi3": lambda: tf.Phi3Config(**COMMON, pad_token_id=0),
    "gpt2": lambda: tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=3, n_head=4, n_positions=128),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=4, max_position_embeddings=128, use_parallel_residual=True),
}


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[family]())
    return model.eval()
