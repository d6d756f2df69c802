"""Benchmark: the same TopK SAE trained by emosae, SAELens 6 (its Hugging Face model route) and
EleutherAI sparsify (as shipped, and handed a model cut after the hook layer), one after another in
this process: same model, hook, d_sae, k, batch, token count, fp32, device, the same pre-tokenized
rows. Prints tokens/s of each, the bare forward stopped at the hook layer (the limit), the ratios,
and each tool's held-out FVE, L0 and dead fraction, all computed by emosae's one FVE function on the
same held-out activations. Then: 4 SAEs from one emosae harvest vs 4 separate runs.

    .venv/bin/python scripts/bench_train.py [--tokens 197000] [--repeat 3] [--with-compiled] [--json]
    python scripts/bench_train.py --device cuda --skip saelens,sparsify,sparsify_cut   # on a GPU

`--repeat N` runs the tools N rounds in turn and reports medians: on a shared (virtual) machine one
tool's speed moves +-15% from minute to minute, enough to swing a single run's ratio by 0.15.
`--with-compiled` adds emosae with `model.compile` (first round: inductor cache cold, then warm).

sparsify is benchmark-only (not a project dependency):
    .venv/bin/pip install --no-deps eai-sparsify natsort schedulefree
A tool that cannot run reports {"error": "..."} and the others go on.

Fairness notes: every tool sees the same token rows (emosae's packer; the others get the ids, as
pre-tokenized datasets). The first position of each row is excluded everywhere (SAELens:
seqpos_slice=(1, None); sparsify: its token mask with column 0 cleared; emosae: its position mask,
which also drops each packed document's first token and norm outliers). Throughput is text tokens
of the training rows divided by wall time from the first LM forward to the end of training (model
loading and final evals excluded for every tool)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from itertools import islice
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sae.config import load_config  # noqa: E402
from sae.data import batches, iter_texts, pack_rows, tokenize_stream  # noqa: E402
from sae.evals import evaluate, evaluate_sae  # noqa: E402
from sae.harvest import harvest  # noqa: E402
from sae.hooks import module_path, parse_hook, run_to_hooks  # noqa: E402
from sae.models import load_model  # noqa: E402

log = logging.getLogger("emosae")


def _err(e: BaseException) -> dict:
    log.warning("%s", "".join(traceback.format_exception(e))[-2000:])
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}


def _metrics(tokens: int, seconds: float, ev: dict) -> dict:
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "fve": ev["fve"], "l0": ev["l0"],
            "dead": ev["dead_heldout"]}


# --- shared inputs -------------------------------------------------------------------------------
def rows_for(args, tokenizer) -> tuple[list, list]:
    """(held-out rows, training rows) exactly as emosae's trainer cuts them."""
    held = math.ceil(args.heldout_tokens / args.context)
    n = args.tokens // args.context
    rows = list(islice(pack_rows(tokenize_stream(iter_texts(args.dataset), tokenizer), args.context), held + n))
    if len(rows) < held + n:
        raise SystemExit(f"{args.dataset} has only {len(rows) * args.context} tokens; lower --tokens")
    return rows[:held], rows[held:]


def heldout_acts(lm, rows, hook: str, args) -> torch.Tensor:
    parts = [c.acts[hook].cpu() for c in harvest(lm.model, lm.tokenizer, batches(rows, args.context, args.batch), [hook])]
    return torch.cat(parts)


def bare_forward(lm, rows, hook: str, args) -> float:
    """Seconds for the plain forward over the training rows, stopped after the hook layer."""
    ids = torch.tensor([r[0] for r in rows])
    per = max(1, args.batch // args.context)
    device = next(lm.model.parameters()).device
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, ids.shape[0], per):
            run_to_hooks(lm.model, [hook], input_ids=ids[i:i + per].to(device, non_blocking=True))
    _sync(device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA calls return before the GPU is done
        torch.cuda.synchronize(device)


# --- emosae --------------------------------------------------------------------------------------
def emosae_config(args, tmp: Path, saes: str, tokens: int, tag: str, compile: bool = False):
    text = (f"model: {{name: {args.model}, device: {args.device}, compile: {str(compile).lower()}, "
            f"autocast: '{args.autocast}', "  # default off: fp32, as the others
            f"prepack: '{args.prepack}'}}\n"
            f"data: {{dataset: {args.dataset}, context_size: {args.context}, token_budget: {args.batch}, "
            f"tokens: {tokens}, heldout_tokens: {args.heldout_tokens}, cache: {tmp / ('cache-' + tag)}, "
            f"mode: {args.data_mode}}}\n"
            f"{saes}\n"
            f"train: {{batch_size: {args.batch}, optimizer: {args.optimizer}, lr: {'null' if args.lr is None else args.lr}, "
            f"warmup_steps: {args.warmup}, decay_start: 0.7, "
            f"dead_tokens: {args.dead_tokens}, checkpoint_every_tokens: {10 ** 12}, eval_every_steps: {10 ** 9}, "
            f"ce_eval: false}}\n"
            f"log: {{progress: {str(not args.json).lower()}, curves: false}}\n")
    p = tmp / f"{tag}.yaml"
    p.write_text(text)
    return load_config(p)


def run_emosae(args, tmp: Path, x_ho: torch.Tensor, tag: str = "emosae", compile: bool = False) -> dict:
    """emosae's trainer on the benchmark's SAE. With `compile`, the LM blocks are compiled inside
    the timed run; inductor's cache is a fresh folder of this benchmark, so the first compiled run
    pays the whole compilation and a second one shows a warm on-disk cache (dynamo's in-memory
    traces are reset first, as in a new process)."""
    from sae.architectures import load_sae
    from sae.trainer import train

    if compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
        torch._dynamo.reset()
    cfg = emosae_config(args, tmp, f"sae: {{arch: topk, hook: {args.hook}, d_sae: {args.d_sae}, k: {args.k}}}",
                        args.tokens, tag, compile)
    m = train(cfg, tmp / f"run-{tag}")
    ev = evaluate_sae(load_sae(tmp / f"run-{tag}"), x_ho)
    # compilation happens in the (otherwise untimed) held-out harvest, so compiled runs count it:
    # conservative by that slice's forward
    seconds = m["seconds"] + (m["heldout_seconds"] if compile else 0.0)
    return (_metrics(args.tokens // args.context * args.context, seconds, ev)
            | {"dead_train": m["dead"], "heldout_seconds": m["heldout_seconds"]})


def run_four(args, tmp: Path) -> dict:
    """4 SAEs (k = 16, 32, 64 TopK and a BatchTopK) from one harvest vs 4 separate runs."""
    from sae.trainer import train

    specs = [f"{{name: k{k}, arch: topk, hook: {args.hook}, d_sae: {args.d_sae}, k: {k}}}" for k in (16, 32, 64)]
    specs.append(f"{{name: btk32, arch: batchtopk, hook: {args.hook}, d_sae: {args.d_sae}, k: 32}}")
    t0 = time.perf_counter()
    train(emosae_config(args, tmp, "saes:\n" + "".join(f"  - {s}\n" for s in specs), args.tokens4, "four"),
          tmp / "run-four")
    together = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, s in enumerate(specs):
        train(emosae_config(args, tmp, f"sae: {s}", args.tokens4, f"sep{i}"), tmp / f"run-sep{i}")
    separate = time.perf_counter() - t0
    return {"seconds": together, "seconds_4_separate": separate, "ratio": together / separate,
            "tokens": args.tokens4 // args.context * args.context}


# --- SAELens -------------------------------------------------------------------------------------
def run_saelens(args, lm, train_rows, x_ho: torch.Tensor, tmp: Path) -> dict:
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    layer = parse_hook(args.hook, lm.model)
    ds = Dataset.from_dict({"input_ids": [r[0] for r in train_rows]})
    n_train = len(train_rows) * (args.context - 1)  # activations after the first position is sliced off
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=x_ho.shape[1], d_sae=args.d_sae, k=args.k, dtype="float32", device=args.device),
        model_name=lm.path, model_class_name="AutoModelForCausalLM", hook_name=module_path(lm.model, layer),
        dataset_path="", is_dataset_tokenized=True, streaming=False, context_size=args.context,
        prepend_bos=False, seqpos_slice=(1, None), training_tokens=n_train, train_batch_size_tokens=args.batch,
        store_batch_size_prompts=max(1, args.batch // args.context),
        # SAELens 6 sizes its mixing buffer as n_batches_in_buffer x context tokens; it must hold 2 batches
        n_batches_in_buffer=max(8, math.ceil(2 * args.batch / (args.context - 1))),
        device=args.device, dtype="float32", logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=str(tmp / "saelens-ckpt"), output_path=str(tmp / "saelens-out"), n_checkpoints=0,
        verbose=False, seed=0)
    t_load = time.perf_counter()
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=ds)
    t0 = time.perf_counter()
    sae = runner.run()
    seconds = time.perf_counter() - t0
    log.info("SAELens: model load %.1fs, training %.1fs", t0 - t_load, seconds)
    sae = sae.to("cpu").eval()
    ev = evaluate(lambda a: sae.encode(a), sae.decode, x_ho)
    return _metrics(len(train_rows) * args.context, seconds, ev)


# --- sparsify ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_first_position():
    """sparsify masks only listed token ids; clear column 0 of its mask (the attention sink)."""
    orig = torch.isin

    def isin(*a, **kw):
        out = orig(*a, **kw)
        if kw.get("invert") and out.ndim == 2:
            out = out.clone()
            out[:, 0] = False
        return out

    torch.isin = isin
    try:
        yield
    finally:
        torch.isin = orig


def run_sparsify(args, lm, train_rows, x_ho: torch.Tensor, tmp: Path, cut: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    with contextlib.redirect_stdout(sys.stderr):  # its import prints too; stdout is for --json
        from sparsify import SaeConfig, Trainer, TrainConfig

    layer = parse_hook(args.hook, lm.model).layer
    model = AutoModelForCausalLM.from_pretrained(lm.path, dtype=torch.float32).to(args.device).eval()
    if cut:  # keep the blocks up to the hook layer; no final norm, no unembedding
        model.model.layers = model.model.layers[: layer + 1]
        model.config.num_hidden_layers = layer + 1
        model.model.norm = torch.nn.Identity()
        model.lm_head = torch.nn.Identity()
    ds = Dataset.from_dict({"input_ids": [r[0] for r in train_rows]}).with_format("torch")
    cfg = TrainConfig(SaeConfig(k=args.k, num_latents=args.d_sae), batch_size=max(1, args.batch // args.context),
                      hookpoints=[f"layers.{layer}"], log_to_wandb=False, save_dir=str(tmp / f"sparsify-{cut}"),
                      save_every=10 ** 9)
    with contextlib.redirect_stdout(sys.stderr):  # sparsify prints; stdout is for --json
        trainer = Trainer(cfg, ds, model)
        t0 = time.perf_counter()
        with _no_first_position():
            trainer.fit()
        seconds = time.perf_counter() - t0
    sae = trainer.saes[f"layers.{layer}"].to("cpu").eval()

    def encode(a):
        out = sae.encode(a)
        return torch.zeros(a.shape[0], sae.num_latents).scatter_(1, out.top_indices, out.top_acts.float())

    ev = evaluate(encode, lambda f: f @ sae.W_dec + sae.b_dec, x_ho)
    return _metrics(len(train_rows) * args.context, seconds, ev)


# --- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (every tool, the limit included)")
    p.add_argument("--autocast", default="off", choices=("off", "bf16"),
                   help="emosae's LM forward (default off: float32 like the others; bf16 is emosae's GPU default; "
                        "the limit stays float32, so its ratio is then not like for like)")
    p.add_argument("--hook", default="blocks.15.hook_resid_post")
    p.add_argument("--dataset", default=str(ROOT / "labeling" / "data" / "general_corpus.jsonl.gz"))
    p.add_argument("--tokens", type=int, default=197_000, help="training text tokens (all tools)")
    p.add_argument("--tokens4", type=int, default=50_000, help="training tokens of the 4-SAE comparison")
    p.add_argument("--heldout-tokens", type=int, default=8192)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("-k", "--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096, help="tokens per SAE step and per LM batch")
    p.add_argument("--optimizer", default="signum", choices=("adam", "signum"),
                   help="emosae's optimizer (default signum: better than Adam at this benchmark's ~50 steps)")
    p.add_argument("--data-mode", default="stream", choices=("cache", "stream"),
                   help="emosae's data path: harvest into the disk cache, or a shuffle buffer in memory")
    p.add_argument("--lr", type=float, default=None,
                   help="emosae's lr (default: its rule for the optimizer; the others use their defaults)")
    p.add_argument("--prepack", default="auto", choices=("auto", "off"),
                   help="emosae's model.prepack (oneDNN-prepacked float32 linears on CPU; off: plain F.linear)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--dead-tokens", type=int, default=50_000)
    p.add_argument("--skip", default="", help="comma list of: limit,limit_prepacked,emosae,emosae_compiled,emosae_compiled_warm,"
                                              "saelens,sparsify,sparsify_cut,four")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of every tool, alternating; speeds and ratios are the medians over rounds")
    p.add_argument("--with-compiled", action="store_true",
                   help="also emosae with model.compile, inductor cache cold then warm (first round only)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("transformers", "datasets", "sae_lens", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    skip = set(filter(None, args.skip.split(",")))
    torch.set_flush_denormal(True)
    torch.manual_seed(0)

    if args.device != "cpu":
        skip.add("limit_prepacked")  # oneDNN prepacking is a CPU path
    lm = load_model(args.model, args.device, autocast="off", prepack="off")  # fp32, plain F.linear: the others' model, the limit
    packed = load_model(args.model, autocast="off", prepack="on") if "limit_prepacked" not in skip else None
    held, train_rows = rows_for(args, lm.tokenizer)
    x_ho = heldout_acts(lm, held, args.hook, args)
    tokens = len(train_rows) * args.context
    log.info("%d training tokens (%d rows), %d held-out activations", tokens, len(train_rows), x_ho.shape[0])
    out: dict = {"tokens": tokens, "heldout_activations": int(x_ho.shape[0]), "device": args.device,
                 "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
                 "emosae_optimizer": args.optimizer, "emosae_prepack": args.prepack, "emosae_autocast": args.autocast,
                 "threads": torch.get_num_threads()}
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_train-") as d:
        for r in range(args.repeat):  # tools alternate, so slow spells of a shared machine hit all of them
            tmp = Path(d) / f"round{r}"
            tmp.mkdir()
            res: dict = {}
            if "limit" not in skip:
                res["limit"] = {"tokens_per_s": tokens / bare_forward(lm, train_rows, args.hook, args)}
                log.info("round %d: bare forward to %s: %.0f tok/s", r, args.hook, res["limit"]["tokens_per_s"])
            if packed is not None:  # the same forward from emosae's prepacked linears (model.prepack)
                res["limit_prepacked"] = {"tokens_per_s": tokens / bare_forward(packed, train_rows, args.hook, args)}
                log.info("round %d: bare forward, prepacked: %.0f tok/s", r, res["limit_prepacked"]["tokens_per_s"])
            steps = [("emosae", lambda: run_emosae(args, tmp, x_ho)),
                     ("emosae_compiled", lambda: run_emosae(args, tmp, x_ho, "emosae_compiled", compile=True)),
                     ("emosae_compiled_warm", lambda: run_emosae(args, tmp, x_ho, "emosae_compiled_warm", compile=True)),
                     ("saelens", lambda: run_saelens(args, lm, train_rows, x_ho, tmp)),
                     ("sparsify", lambda: run_sparsify(args, lm, train_rows, x_ho, tmp, cut=False)),
                     ("sparsify_cut", lambda: run_sparsify(args, lm, train_rows, x_ho, tmp, cut=True))]
            for name, fn in steps:
                if name in skip or (name.startswith("emosae_compiled") and not (args.with_compiled and r == 0)):
                    continue
                log.info("--- round %d: %s", r, name)
                try:
                    res[name] = fn()
                except Exception as e:  # noqa: BLE001 - one tool failing must not hide the others
                    res[name] = _err(e)
                log.info("%s: %s", name, json.dumps(res[name]))
            rounds.append(res)
        if "four" not in skip:
            log.info("--- emosae_4_saes")
            try:
                out["emosae_4_saes"] = run_four(args, Path(d))
            except Exception as e:  # noqa: BLE001
                out["emosae_4_saes"] = _err(e)
    out.update(summarize(rounds))
    if args.json:
        print(json.dumps(out))
    else:
        print(_table(out))
    return 0


def summarize(rounds: list[dict]) -> dict:
    """Each tool's median round (by tokens/s; its other rounds' speeds beside it), and each ratio
    as the median of the per-round ratios (tools measured minutes apart, not hours)."""
    out: dict = {}
    names = list(dict.fromkeys(n for res in rounds for n in res))
    for name in names:
        runs = [res[name] for res in rounds if name in res]
        ok = sorted((x for x in runs if "error" not in x), key=lambda x: x["tokens_per_s"])
        pick = ok[(len(ok) - 1) // 2] if ok else runs[0]
        if name in ("limit", "limit_prepacked"):
            if ok:
                out[f"{name}_tokens_per_s"] = pick["tokens_per_s"]
            continue
        out[name] = dict(pick)
        if len(rounds) > 1 and ok:
            out[name]["tokens_per_s_rounds"] = [x["tokens_per_s"] if "error" not in x else None for x in runs]
    per_round: dict[str, list[float]] = {}
    for res in rounds:
        for ours in ("emosae", "emosae_compiled", "emosae_compiled_warm"):
            for base in ("limit", "limit_prepacked", "saelens", "sparsify", "sparsify_cut"):
                em, v = (res.get(ours, {}).get("tokens_per_s"), res.get(base, {}).get("tokens_per_s"))
                if em and v:
                    per_round.setdefault(f"{ours}_vs_{base}", []).append(em / v)
    out["ratios"] = {k: statistics.median(v) for k, v in per_round.items()}
    if len(rounds) > 1:
        out["ratios_rounds"] = per_round
    return out


def _table(out: dict) -> str:
    lines = [f"tokens: {out['tokens']}   bare forward (limit): {out.get('limit_tokens_per_s', float('nan')):.0f} tok/s"
             + (f"   prepacked: {out['limit_prepacked_tokens_per_s']:.0f} tok/s" if "limit_prepacked_tokens_per_s" in out else "")]
    for name in ("emosae", "emosae_compiled", "emosae_compiled_warm", "saelens", "sparsify", "sparsify_cut"):
        r = out.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"{name:>20}: error: {r['error']}")
        else:
            rounds = r.get("tokens_per_s_rounds")
            lines.append(f"{name:>20}: {r['tokens_per_s']:8.0f} tok/s   FVE {r['fve']:.4f}   L0 {r['l0']:.1f}   "
                         f"dead {r['dead']:.4f}" + (f"   rounds: {_fmt_list(rounds, '.0f')}" if rounds else ""))
    four = out.get("emosae_4_saes")
    if four and "error" not in four:
        lines.append(f"4 SAEs, one harvest: {four['seconds']:.0f}s vs 4 separate runs: {four['seconds_4_separate']:.0f}s "
                     f"(ratio {four['ratio']:.2f})")
    for k, v in out.get("ratios", {}).items():
        rounds = out.get("ratios_rounds", {}).get(k)
        lines.append(f"{k}: {v:.2f}x" + (f" (median of rounds {_fmt_list(rounds, '.2f')})" if rounds else ""))
    return "\n".join(lines)


def _fmt_list(values: list, spec: str) -> str:
    return " / ".join("error" if v is None else format(v, spec) for v in values)


if __name__ == "__main__":
    sys.exit(main())
