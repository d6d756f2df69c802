"""Strength units for clamping and steering, parsed from and printed as the user writes them.

    8.0     absolute: an activation value (features) or an added norm (vectors)
    4x      a multiple of the feature's `max_act` (RUN/features/stats.safetensors)
    0.05r   a fraction of the layer's `mean_resid_norm` (RUN/metrics.json), the paper's unit

`r` always measures what lands in the residual stream: for a feature it is the norm of the
feature's decoded contribution (activation x ||decoder row||), for a vector the norm added. So a
feature clamped to 0.05r and a vector added at 0.05r write the same amount into the stream."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sae.errors import UserError

UNITS = ("abs", "x", "r")
_PATTERN = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([xr]?)", re.IGNORECASE)


@dataclass(frozen=True)
class Strength:
    """A signed number and its unit; `str()` gives back the form the user typed (`4x`, `0.05r`)."""

    value: float
    unit: str = "abs"  # "abs" | "x" | "r"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise UserError(f"unknown strength unit {self.unit!r}; use a plain number, Nx or Nr")

    def __str__(self) -> str:
        return f"{self.value:g}{'' if self.unit == 'abs' else self.unit}"

    @property
    def is_zero(self) -> bool:
        return self.value == 0.0

    def scaled(self, factor: float) -> "Strength":
        return Strength(self.value * factor, self.unit)

    def resolve(self, max_act: float | None = None, mean_resid_norm: float | None = None,
                decoder_norm: float = 1.0, what: str = "strength") -> float:
        """The activation value (or added norm, for a unit-norm direction) this strength means.

        `decoder_norm` is the norm of the direction the value multiplies; `r` divides by it so
        that the residual-stream contribution has norm value x mean_resid_norm."""
        if self.unit == "abs":
            return self.value
        if self.unit == "x":
            if max_act is None:
                raise UserError(f"{what} {self} is a multiple of max_act, which is unknown here; run "
                                "`emosae stats RUN` (features/stats.safetensors) or give an absolute strength")
            return self.value * float(max_act)
        if mean_resid_norm is None:
            raise UserError(f"{what} {self} is a fraction of mean_resid_norm, which is unknown here; "
                            "give a run with metrics.json or an absolute strength")
        return self.value * float(mean_resid_norm) / float(decoder_norm)


def parse_strength(text: str | float | int | Strength, allow_x: bool = True, what: str = "strength") -> Strength:
    """`8`, `-2.5`, `4x`, `0.05r` (case-insensitive) -> Strength. `allow_x=False` for emotion
    vectors, which have no max_act."""
    if isinstance(text, Strength):
        s = text
    elif isinstance(text, bool):
        raise UserError(f"{what} {text!r} is not a number; write e.g. 8.0, 4x or 0.05r")
    elif isinstance(text, (int, float)):
        s = Strength(float(text))
    else:
        m = _PATTERN.fullmatch(str(text).strip())
        if not m:
            raise UserError(f"cannot parse {what} {text!r}; write a number (8.0), a multiple of max_act (4x) "
                            "or a fraction of the mean residual norm (0.05r)")
        s = Strength(float(m.group(1)), m.group(2).lower() or "abs")
    if not math.isfinite(s.value):
        raise UserError(f"{what} {text!r} is not finite; give a finite number")
    if s.unit == "x" and not allow_x:
        raise UserError(f"{what} {s} uses the x unit (a multiple of a feature's max_act), which an emotion "
                        "vector does not have; use an absolute norm (8.0) or a fraction of the residual norm (0.05r)")
    return s


def parse_strengths(text: str | list, allow_x: bool = True) -> list[Strength]:
    """A comma-separated list (`-0.1r,-0.05r,0,0.05r,0.1r`) or a list of values."""
    items = [t for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    if not items:
        raise UserError("no strengths given; write a comma-separated list such as -0.1r,0,0.1r")
    return [parse_strength(t, allow_x) for t in items]
