"""Clamp an emotion feature while generating: the example to copy into your own script.

    python scripts/clamp_generate.py runs/demo happy 4x "Write two sentences about your morning."

A clamp is a context manager around any forward or `generate()` of a Hugging Face model; the KV
cache stays on. Strengths: 8.0 (absolute), 4x (x the feature's max_act), 0.05r (x the layer's mean
residual norm). Modes: set (default), add, scale, ablate."""

import sys

import torch

from features.clamp import clamp, load_run
from labeling.scoring import load_model_for
from sae.errors import UserError

run_dir, feature, strength, prompt = (sys.argv[1:5] + [None] * 4)[:4]
run_dir, feature, strength = run_dir or "runs/demo", feature or "happy", strength or "4x"
prompt = prompt or "Write two sentences about your morning."

run = load_run(run_dir)                   # the SAE, labels.json, max_act, mean_resid_norm, vectors
lm = load_model_for(run.sae, device="cpu")  # the LM the SAE was trained on, at its precision (model.autocast);
                                          # or sae.models.load_model(any hub id / local dir)
tok, model = lm.tokenizer, lm.model

chat = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
inputs = tok(chat, add_special_tokens=False, return_tensors="pt")
n_prompt = inputs["input_ids"].shape[1]


def sample(steer=None, seed=0):
    torch.manual_seed(seed)               # same seed for both runs: the clamp is the only difference
    if steer is None:
        out = model.generate(**inputs, max_new_tokens=40, do_sample=True, top_p=0.95)
    else:
        with steer:
            out = model.generate(**inputs, max_new_tokens=40, do_sample=True, top_p=0.95)
    return tok.decode(out[0, n_prompt:], skip_special_tokens=True)


feature_clamp = clamp(model, run, {feature: strength}, scope="generated")   # by label or index
print(feature_clamp)                      # e.g. feature 3961 (happy) set=4x (=31.2) [scope=generated, ...]
print("baseline:", sample())
print("clamped: ", sample(feature_clamp))

# Several features, other modes, and an emotion vector on the same scale (fraction of the residual norm):
#   clamp(model, run, {"happy": "add=0.05r", 1234: "ablate", "calm": "scale=2"})
#   clamp(model, run, vectors={"happy": "0.05r"})
if run.vectors:
    try:
        vector_clamp = clamp(model, run, vectors={feature: "0.05r"})
        print(vector_clamp)
        print("vector:  ", sample(vector_clamp))
    except UserError as e:                # no vector for this emotion at the SAE's layer
        print(f"(no vector steering: {e})")
