"""Optional Weights & Biases logging (off unless log.wandb.project is set). Losses, FVE, L0, dead,
lr and a feature-density histogram. Any wandb failure is logged once and turns logging off: it
never stops training. Works offline (WANDB_MODE=offline or log.wandb.mode: offline)."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import numpy as np

from sae.config import WandbConfig

log = logging.getLogger("emosae")


class WandbLogger:
    def __init__(self, cfg: WandbConfig, config: dict, run_dir: Path, resume: bool):
        self.run = None
        if not cfg.project:
            return
        try:
            import wandb

            id_file = Path(run_dir) / "wandb_id"
            run_id = id_file.read_text().strip() if resume and id_file.exists() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or Path(run_dir).name,
                                  config=config, dir=str(run_dir), id=run_id, resume="allow",
                                  mode=cfg.mode, reinit="finish_previous")
        except Exception as e:  # noqa: BLE001 - wandb can fail in many ways; training goes on
            self._fail(e)

    @property
    def active(self) -> bool:
        return self.run is not None

    def _fail(self, e: Exception) -> None:
        log.warning("wandb logging is off from here: %s", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        self.run = None

    def log(self, metrics: dict, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def log_density(self, name: str, density: np.ndarray, step: int) -> None:
        """Histogram of log10 feature density (fraction of tokens each latent is active on)."""
        if self.run is None:
            return
        try:
            import wandb

            vals = np.log10(np.asarray(density, dtype=np.float64) + 1e-10)
            self.run.log({f"{name}/log10_density": wandb.Histogram(vals)}, step=step)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def finish(self, summary: dict | None = None) -> None:
        if self.run is None:
            return
        try:
            if summary:
                for k, v in summary.items():
                    self.run.summary[k] = v
            self.run.finish()
        except Exception as e:  # noqa: BLE001
            self._fail(e)
        self.run = None
