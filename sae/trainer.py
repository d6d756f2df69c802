"""`emosae train`: harvest activations, train one or several SAEs on them, evaluate, save.

    model ──► held-out slice (evals) + training activations (disk cache, or streamed)
          ──► one SAETrainer per SAE (sae/train_step.py), all fed from the same batches
          ──► checkpoints every N tokens ──► RUN/sae, metrics.json, curves.png (one dir per SAE)

Top to bottom: `train()` sets up (distributed, run dir, model, data), `_loop()` trains,
`_finish()` evaluates and writes. Launched by torchrun, the same entry point trains data-parallel."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from sae import checkpoint
from sae.cache import ActivationCache
from sae.data import TokenBatch
from sae.config import Config, default_lr, load_config
from sae.curves import plot_curves
from sae.dist import Dist, init_from_env, shutdown
from sae.errors import UserError
from sae.evals import ce_loss_score, evaluate_sae
from sae.hooks import module_path, parse_hook
from sae.io import write_json_atomic, write_text_atomic
from sae.models import LoadedModel, compile_blocks, load_model, resolve_autocast
from sae.train_data import (HELDOUT_FILE, CacheSource, HeldOut, StreamSource, cache_dir_for, harvest_heldout,
                            harvest_train_cache, train_part, _complete)
from sae.train_step import SAETrainer
from sae.wandb_log import WandbLogger

log = logging.getLogger("emosae")
CONFIG_FILE, METRICS_FILE, CURVES_FILE, INDEX_FILE = "config.yaml", "metrics.json", "curves.png", "index.json"


@dataclass
class _State:
    step: int = 0
    tokens: int = 0  # activation rows trained on (global)
    seconds: float = 0.0  # harvest + training wall time, summed over sessions
    heldout_seconds: float = 0.0  # this session's held-out harvest (not in `seconds`)
    history: list[list[dict]] = field(default_factory=list)  # per SAE
    next_ckpt: int = 0


def resolve(cfg: Config) -> Config:
    """Fill in the automatic values so RUN/config.yaml says exactly what ran."""
    if cfg.model.device == "auto":
        cfg.model.device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.train.device == "auto":
        cfg.train.device = cfg.model.device
    for s in cfg.saes:
        s.lr = s.lr or cfg.train.lr or default_lr(s.d_sae, cfg.train.optimizer)
    return cfg


def _device(spec: str, d: Dist) -> torch.device:
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", d.local_rank)
    return dev


def _run_dir_state(run: Path, resume: bool) -> None:
    if resume:
        if not (run / CONFIG_FILE).exists():
            raise UserError(f"{run} holds no training run ({CONFIG_FILE} missing); start one with --config")
    elif checkpoint.latest(run) is not None or (run / METRICS_FILE).exists() or (run / INDEX_FILE).exists():
        raise UserError(f"{run} already holds a training run; continue it with --resume {run} or pick another --run")


def train(config: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train the SAEs of `config` into `run_dir` (or continue the run there when `resume`).
    Returns the metrics (of the single SAE, or {"saes": {name: metrics}} for a list)."""
    cfg = resolve(config)
    d = init_from_env(torch.device(cfg.model.device).type)
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    elif d.enabled and torch.device(cfg.train.device).type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", d.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    try:
        return _train(cfg, Path(run_dir), resume, d)
    finally:
        torch.set_num_threads(threads)
        shutdown(d)


def _train(cfg: Config, run_dir: Path, resume: bool, d: Dist) -> dict:
    torch.set_flush_denormal(True)
    run = Path(d.broadcast_object(str(Path(run_dir).resolve())))
    if d.main:
        _run_dir_state(run, resume)
    d.barrier()
    ckpt_path = checkpoint.latest(run) if resume else None
    if resume and ckpt_path is None and d.main:
        log.info("no checkpoint in %s yet: starting the run from the beginning", run)
    cfg.model.autocast = resolve_autocast(cfg.model.autocast, _device(cfg.model.device, d))
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run / CONFIG_FILE, cfg.to_yaml())
    device = _device(cfg.train.device, d)
    lm = load_model(cfg.model.name, _device(cfg.model.device, d), cfg.model.dtype, cfg.model.autocast,
                    "off" if cfg.model.compile else cfg.model.prepack)
    hooks = list(dict.fromkeys(s.hook for s in cfg.saes))
    points = {h: parse_hook(h, lm.model) for h in hooks}
    if cfg.model.compile:
        compile_blocks(lm.model, max(p.layer for p in points.values()))
    d_in = int(lm.model.get_input_embeddings().embedding_dim)
    heldout, source, harvest_seconds, heldout_seconds = _data(cfg, lm, hooks, d)
    trainers = []
    for i, s in enumerate(cfg.saes):
        meta = {"model_id": lm.model_id, "model_name": lm.model_id, "model_path": lm.path,
                "provenance": lm.provenance, "context_size": cfg.data.context_size,
                "hook_name_module": module_path(lm.model, points[s.hook]), "dataset_path": cfg.data.dataset,
                "emosae_run": run.name}
        trainers.append(SAETrainer(s, cfg.train, d_in, i, meta, device))
    st = _State(history=[[] for _ in trainers], next_ckpt=cfg.train.checkpoint_every_tokens)
    if ckpt_path is not None:
        _restore(checkpoint.load(ckpt_path), st, trainers, source, d)
        if d.main:
            log.info("resumed %s from %s (step %d, %d tokens)", run, ckpt_path.name, st.step, st.tokens)
    st.seconds += harvest_seconds
    st.heldout_seconds = heldout_seconds
    wb = WandbLogger(cfg.log.wandb, cfg.to_dict(), run, resume) if d.main else None
    _loop(cfg, st, trainers, source, heldout, d, run, wb)
    return _finish(cfg, st, trainers, heldout, lm, d, run, wb)


# --- data ----------------------------------------------------------------------------------------
def _data(cfg: Config, lm: LoadedModel, hooks: list[str], d: Dist):
    """(held-out slice on rank 0, this rank's training batches, seconds spent harvesting them now,
    seconds spent harvesting the held-out slice now). The held-out harvest is not counted in
    `seconds` (training-data harvest + training); metrics.json reports it apart as
    `heldout_seconds` — with `model.compile` the compilation happens there."""
    data, t = cfg.data, cfg.train
    t_ho = time.time()
    if t.batch_size % d.world:
        raise UserError(f"train.batch_size ({t.batch_size}) must divide evenly over {d.world} processes")
    local_batch = t.batch_size // d.world
    if data.mode == "stream":
        heldout = harvest_heldout(lm, data, hooks) if d.main else None
        return heldout, StreamSource(lm, data, hooks, local_batch, t.seed, d.rank, d.world), 0.0, time.time() - t_ho
    cdir = cache_dir_for(lm, data, hooks, d.world, str(torch.device(cfg.model.device).type))
    heldout = None
    if d.main and data.heldout_tokens:
        if not (cdir / HELDOUT_FILE).exists():
            log.info("harvesting %d held-out tokens into %s", data.heldout_tokens, cdir)
            h = harvest_heldout(lm, data, hooks)
            h.save(cdir / HELDOUT_FILE)
        heldout = HeldOut.load(cdir / HELDOUT_FILE)
        missing = [h for h in hooks if h not in heldout.acts]
        if missing:
            raise UserError(f"{cdir / HELDOUT_FILE} has no activations for {missing}; point data.cache elsewhere")
    heldout_seconds = time.time() - t_ho
    part = train_part(cdir, d.rank, d.world)
    t0 = time.time()
    if _complete(part):
        if d.main:
            log.info("using the activation cache in %s", part)
    else:
        harvest_train_cache(lm, data, hooks, part, d.rank, d.world, progress=cfg.log.progress)
    d.barrier()
    seconds = time.time() - t0
    source = CacheSource(ActivationCache.open(part), hooks, local_batch, t.seed, data.shuffle, t.epochs)
    return heldout, source, seconds, heldout_seconds


# --- checkpoints -----------------------------------------------------------------------------------
def _save(cfg: Config, st: _State, trainers: list[SAETrainer], source, d: Dist, run: Path) -> None:
    per_rank = d.gather_objects({"rng": checkpoint.rng_state(), "data": source.state_dict()})
    if d.main:
        state = {"version": 1, "world": d.world, "step": st.step, "tokens": st.tokens, "seconds": st.seconds,
                 "history": st.history, "saes": [tr.state_dict() for tr in trainers], "ranks": per_rank,
                 "names": [s.name for s in cfg.saes]}
        checkpoint.save(run, st.tokens, state, cfg.train.keep_checkpoints)
    d.barrier()


def _restore(state: dict, st: _State, trainers: list[SAETrainer], source, d: Dist) -> None:
    if state.get("world") != d.world:
        raise UserError(f"the checkpoint was written by {state.get('world')} processes; resume with the same "
                        f"number (now {d.world})")
    if len(state["saes"]) != len(trainers):
        raise UserError("the checkpoint holds a different number of SAEs than the run's config.yaml")
    st.step, st.tokens, st.seconds, st.history = state["step"], state["tokens"], state["seconds"], state["history"]
    every = trainers[0].cfg.checkpoint_every_tokens
    st.next_ckpt = (st.tokens // every + 1) * every
    for tr, s in zip(trainers, state["saes"]):
        tr.load_state_dict(s)
    mine = state["ranks"][d.rank]
    source.load_state_dict(mine["data"])
    checkpoint.set_rng_state(mine["rng"])


# --- the loop --------------------------------------------------------------------------------------
def _heldout_evals(trainers: list[SAETrainer], heldout: HeldOut | None) -> list[dict | None]:
    if heldout is None:
        return [None for _ in trainers]
    return [evaluate_sae(tr.export(), heldout.acts[tr.hook]) for tr in trainers]


def _loop(cfg: Config, st: _State, trainers: list[SAETrainer], source, heldout: HeldOut | None, d: Dist,
          run: Path, wb: WandbLogger | None) -> None:
    t = cfg.train
    total_steps = source.total_steps()
    if isinstance(source, CacheSource):
        total_steps = int(d.all_reduce(torch.tensor([total_steps]), "min")[0])
    bar = tqdm(total=total_steps * t.batch_size, initial=st.tokens, unit="tok", unit_scale=True, desc="train",
               disable=not (cfg.log.progress and d.main) or None, dynamic_ncols=True, smoothing=0.1)
    last_saved = st.tokens
    seconds0 = st.seconds - time.time()  # seconds = seconds0 + now
    it = iter(source)
    while True:
        if isinstance(source, CacheSource) and st.step >= total_steps:
            break
        batch = next(it, None)
        if d.enabled:
            if int(d.all_reduce(torch.tensor([0 if batch is None else 1]), "min")[0]) == 0:
                break
        elif batch is None:
            break
        for tr in trainers:
            if not tr.initialized:
                tr.initialize(d.all_gather_cat(batch[tr.hook].float()), d)
        progress = source.progress(st.step, total_steps)
        stats = [tr.step(batch[tr.hook], progress, d) for tr in trainers]
        st.step += 1
        st.tokens += int(stats[0]["n"])
        st.seconds = seconds0 + time.time()
        bar.update(int(stats[0]["n"]))
        eval_now = st.step % t.eval_every_steps == 0
        if st.step % cfg.log.every_steps == 0 or st.step == 1 or eval_now:
            bar.set_postfix_str(_postfix(stats), refresh=False)
            for hist, s in zip(st.history, stats):
                hist.append({"step": st.step, "tokens": st.tokens, "loss": s["loss"], "fve": s["fve"],
                             "l0": s["l0"], "dead": s["dead"], "lr": s["lr"]})
        if eval_now and d.main:
            evals = _heldout_evals(trainers, heldout)
            for hist, tr, e in zip(st.history, trainers, evals):
                if e is None:
                    continue
                hist[-1]["fve_heldout"] = e["fve"]
                if wb is not None:
                    wb.log({f"{tr.spec.name}/heldout_{k}": v for k, v in e.items()}, st.step)
        if wb is not None and wb.active and st.step % cfg.log.wandb.every_steps == 0:
            for tr, s in zip(trainers, stats):
                wb.log({f"{tr.spec.name}/{k}": v for k, v in s.items() if k != "n"} | {"tokens": st.tokens}, st.step)
                wb.log_density(tr.spec.name, _density(tr), st.step)
        if st.tokens >= st.next_ckpt:
            _save(cfg, st, trainers, source, d, run)
            last_saved = st.tokens
            while st.next_ckpt <= st.tokens:
                st.next_ckpt += t.checkpoint_every_tokens
    bar.close()
    if st.step == 0:
        raise UserError("no training batch: the data gave fewer rows than train.batch_size; "
                        "raise data.tokens or lower train.batch_size")
    if st.tokens != last_saved or checkpoint.latest(run) is None:
        _save(cfg, st, trainers, source, d, run)  # a kill during the final evals resumes straight to them


def _density(tr: SAETrainer) -> "list[float]":
    """A cheap density proxy for wandb: 1 / (tokens since the latent last fired)."""
    return (1.0 / (tr.since_fired.float() + 1.0)).cpu().numpy()


def _postfix(stats: list[dict]) -> str:
    s = stats[0]
    more = f" (+{len(stats) - 1} SAEs)" if len(stats) > 1 else ""
    return f"FVE {s['fve']:.3f} L0 {s['l0']:.1f} dead {s['dead']:.3f} lr {s['lr']:.1e}{more}"


# --- the end ---------------------------------------------------------------------------------------
def _finish(cfg: Config, st: _State, trainers: list[SAETrainer], heldout: HeldOut | None, lm: LoadedModel,
            d: Dist, run: Path, wb: WandbLogger | None) -> dict:
    results: dict[str, dict] = {}
    drift = [_rank_drift(tr, d) for tr in trainers] if d.enabled else None
    if d.main:
        for i, (tr, spec) in enumerate(zip(trainers, cfg.saes)):
            sae = tr.export()
            m: dict = {}
            if heldout is not None:
                m.update(evaluate_sae(sae, heldout.acts[tr.hook]))
            if heldout is not None and cfg.train.ce_eval and cfg.train.ce_tokens:
                rows = max(1, math.ceil(cfg.train.ce_tokens / cfg.data.context_size))
                b = heldout.batch
                part = TokenBatch(b.input_ids[:rows], b.doc_ids[:rows], b.positions[:rows])
                m.update(ce_loss_score(lm.model, lm.tokenizer, sae, part, heldout.keep[:rows],
                                       cfg.data.outlier_mult))
            m.update({"dead": float(tr.dead_mask().float().mean()), "tokens": st.tokens,
                      "seconds": round(st.seconds, 2), "heldout_seconds": round(st.heldout_seconds, 2),
                      "tokens_per_s": st.tokens / max(st.seconds, 1e-9),
                      "steps": st.step, "skipped_steps": tr.bad_steps, "arch": spec.arch, "d_sae": spec.d_sae,
                      "k": spec.k, "hook": spec.hook, "input_scale": tr.scale, "lr": tr.lr,
                      "history": st.history[i]})
            if drift is not None:
                m.update(world_size=d.world, ddp_param_max_diff=drift[i])
            out = run / spec.name if cfg.multi else run
            sae.save(out / "sae")
            if cfg.multi:
                write_text_atomic(out / CONFIG_FILE, cfg.for_sae(i).to_yaml())
            write_json_atomic(out / METRICS_FILE, m)
            if cfg.log.curves:
                plot_curves(st.history[i], out / CURVES_FILE, f"{spec.name}  ({spec.arch}, {spec.hook})")
            results[spec.name] = m
            log.info("%s: FVE %s  L0 %.1f  dead %.3f  CE-loss score %s  (%d tokens, %.0fs)", spec.name,
                     _fmt(m.get("fve")), m.get("l0", float("nan")), m["dead"], _fmt(m.get("ce_loss_score")),
                     st.tokens, st.seconds)
        if cfg.multi:
            write_json_atomic(run / INDEX_FILE, {"saes": [
                {"name": s.name, "dir": s.name, "hook": s.hook, "arch": s.arch, "d_sae": s.d_sae, "k": s.k}
                for s in cfg.saes]})
        if wb is not None:
            wb.finish({f"{n}/{k}": v for n, m in results.items() for k, v in m.items() if not isinstance(v, list)})
    d.barrier()
    results = d.broadcast_object(results)
    if cfg.multi:
        return {"run": str(run), "saes": results}
    return {"run": str(run), **results[cfg.saes[0].name]}


@torch.no_grad()
def _rank_drift(tr: SAETrainer, d: Dist) -> float:
    """Largest difference between any rank's parameters and rank 0's (0.0 when in lockstep)."""
    diff = torch.zeros(1, dtype=torch.float64, device=tr.device)
    for p in tr.params:
        ref = d.broadcast(p.detach().clone())
        diff = torch.maximum(diff, (p.detach() - ref).abs().max().double().reshape(1))
    return float(d.all_reduce(diff, "max")[0])


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def resume(run_dir: str | Path) -> dict:
    """Continue the run in `run_dir` from its latest checkpoint, with its resolved config."""
    run = Path(run_dir)
    if not (run / CONFIG_FILE).exists():
        raise UserError(f"{run} holds no training run ({CONFIG_FILE} missing); start one with --config")
    return train(load_config(run / CONFIG_FILE), run, resume=True)
