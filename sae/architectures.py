"""The SAE itself: one module for the four architectures, saved and loaded in SAELens's format.

    pre = (x - b_dec) @ W_enc + b_enc        f = act(pre)        x_hat = f @ W_dec + b_dec

act is TopK (keep the k largest, ReLU), BatchTopK (the k x batch largest over the batch while
training; a JumpReLU with the learned threshold at inference, as SAELens saves it), JumpReLU
(pre kept where pre > threshold) or Standard (ReLU, trained with an L1 penalty)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sae.errors import UserError
from sae.io import atomic_path, write_json_atomic
from sae.layout import CFG_FILE, WEIGHTS_FILE, find_sae_dir

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")


@dataclass
class SAEConfig:
    arch: str = "topk"
    d_in: int = 576
    d_sae: int = 4608
    k: int | None = 32
    hook_name: str = "blocks.15.hook_resid_post"
    metadata: dict = field(default_factory=dict)  # model id, module path, provenance, context size...

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown SAE architecture {self.arch!r}; use one of {', '.join(ARCHITECTURES)}")
        if self.arch in ("topk", "batchtopk") and not self.k:
            raise UserError(f"sae.k must be set for a {self.arch} SAE")


class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SAEConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        kw = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        if cfg.arch in ("jumprelu", "batchtopk"):
            # JumpReLU learns log-thresholds in training; BatchTopK keeps a running estimate.
            self.threshold = nn.Parameter(torch.zeros(d_sae, **kw), requires_grad=cfg.arch == "jumprelu")
        self.batch_level = cfg.arch == "batchtopk"  # training mode of BatchTopK; False at inference

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Decoder rows: random unit vectors; encoder: the decoder's transpose (tied init)."""
        with torch.no_grad():
            w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator, dtype=torch.float32)
            w /= w.norm(dim=1, keepdim=True)
            self.W_dec.copy_(w)
            self.W_enc.copy_(w.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_name(self) -> str:
        return self.cfg.hook_name

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype) - self.b_dec  # addmm: one pass over the [n, d_sae] output
        return torch.addmm(self.b_enc, x.reshape(-1, x.shape[-1]), self.W_enc).reshape(*x.shape[:-1], -1)

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.arch
        if arch == "topk" or (arch == "batchtopk" and self.batch_level):
            if arch == "topk":
                vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
                return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
            flat = pre.reshape(-1)
            n = self.cfg.k * (flat.numel() // pre.shape[-1])
            vals, idx = flat.relu().topk(n, sorted=False)
            return torch.zeros_like(flat).scatter_(0, idx, vals).reshape(pre.shape)
        if arch in ("jumprelu", "batchtopk"):
            return pre.relu() * (pre > self.threshold).to(pre.dtype)
        return pre.relu()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """The SAE was trained on x * scale; make it work on raw x with identical feature acts."""
        self.W_enc.mul_(scale)
        self.b_dec.div_(scale)
        self.W_dec.div_(scale)

    # --- SAELens on-disk format -------------------------------------------------------------
    def saelens_cfg(self) -> dict:
        """cfg.json as SAELens 6 writes it; BatchTopK is saved for inference as a JumpReLU."""
        arch = {"batchtopk": "jumprelu"}.get(self.cfg.arch, self.cfg.arch)
        out = {"architecture": arch, "d_in": self.cfg.d_in, "d_sae": self.cfg.d_sae,
               "dtype": str(self.W_enc.dtype).removeprefix("torch."), "device": "cpu",
               "apply_b_dec_to_input": True, "normalize_activations": "none",
               "reshape_activations": "none",
               "metadata": {"sae_lens_version": _saelens_version(), "sae_lens_training_version": None,
                            "hook_name": self.cfg.hook_name, "emosae_arch": self.cfg.arch,
                            "prepend_bos": False, **self.cfg.metadata}}
        if arch == "topk":
            out.update(k=self.cfg.k, rescale_acts_by_decoder_norm=False)
        if self.cfg.k is not None:
            out["metadata"]["k"] = self.cfg.k
        return out

    def save(self, directory: str | Path) -> Path:
        """Write `cfg.json` + `sae_weights.safetensors`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if hasattr(self, "threshold"):
            tensors["threshold"] = self.threshold
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        write_json_atomic(directory / CFG_FILE, self.saelens_cfg())
        return directory

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "SparseAutoencoder":
        """Load an SAE directory in SAELens format (ours or any SAELens SAE). Accepts a run
        directory too (its `sae/` is used)."""
        directory = find_sae_dir(path)
        try:
            raw = json.loads((directory / CFG_FILE).read_text())
            state = load_file(str(directory / WEIGHTS_FILE))
        except (OSError, ValueError) as e:
            raise UserError(f"could not read SAE in {directory}: {e}; re-run training or point at a valid SAE") from None
        arch = raw.get("architecture", "standard")
        if arch not in ("topk", "jumprelu", "standard"):
            raise UserError(f"SAE architecture {arch!r} in {directory} is not supported; emosae reads topk, jumprelu and standard")
        if raw.get("normalize_activations", "none") not in ("none", None):
            raise UserError(f"SAE in {directory} normalizes activations at run time "
                            f"({raw['normalize_activations']}); fold the normalization into its weights first")
        meta = dict(raw.get("metadata") or {})
        hook = meta.get("hook_name") or raw.get("hook_name")
        if not hook:
            raise UserError(f"SAE in {directory} names no hook point (metadata.hook_name)")
        arch_ours = meta.get("emosae_arch", arch) if meta.get("emosae_arch") in ARCHITECTURES else arch
        k = raw.get("k") or meta.get("k")
        cfg = SAEConfig(arch=arch_ours, d_in=raw["d_in"], d_sae=raw["d_sae"], k=k, hook_name=hook,
                        metadata={k_: v for k_, v in meta.items() if k_ not in ("hook_name", "emosae_arch", "k")})
        sae = cls(cfg, device=device)
        sae.batch_level = False
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
                if name in state and hasattr(sae, name):
                    getattr(sae, name).copy_(state[name])
        if arch == "topk" and raw.get("rescale_acts_by_decoder_norm"):
            with torch.no_grad():  # fold: scale the encoder columns by the decoder norms
                norms = sae.W_dec.norm(dim=1)
                sae.W_enc.mul_(norms)
                sae.b_enc.mul_(norms)
                sae.W_dec.div_(norms[:, None])
        sae.requires_grad_(False)
        return sae.eval()


def _saelens_version() -> str:
    """Written into metadata: SAELens reads a config without it as pre-6.0 and drops the metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "6.0.0"


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    return SparseAutoencoder.load(path, device)


def from_saelens_release(release: str, sae_id: str, device: str = "cpu") -> SparseAutoencoder:
    """A pretrained SAELens release (needs the hub): downloaded by SAELens, converted to ours."""
    import tempfile

    from sae_lens import SAE

    sl = SAE.from_pretrained(release, sae_id, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        sl.save_model(tmp)
        return load_sae(tmp, device)
