"""scripts/bench_train.py's rounds: each tool's median round, ratios as medians of per-round ratios."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "scripts" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tps: float, fve: float = 0.7) -> dict:
    return {"tokens_per_s": tps, "fve": fve, "l0": 32.0, "dead": 0.0}


def test_medians_over_rounds(bench):
    rounds = [{"limit": {"tokens_per_s": 1000.0}, "emosae": _run(1000.0, 0.1), "saelens": _run(800.0)},
              {"limit": {"tokens_per_s": 1400.0}, "emosae": _run(1300.0, 0.2), "saelens": _run(900.0)},
              {"limit": {"tokens_per_s": 1200.0}, "emosae": _run(1200.0, 0.3), "saelens": {"error": "boom"}}]
    out = bench.summarize(rounds)
    assert out["limit_tokens_per_s"] == 1200.0
    assert out["emosae"]["tokens_per_s"] == 1200.0 and out["emosae"]["fve"] == 0.3  # the median round, whole
    assert out["emosae"]["tokens_per_s_rounds"] == [1000.0, 1300.0, 1200.0]
    assert out["saelens"]["tokens_per_s"] == 800.0  # lower middle of the two that ran
    assert out["saelens"]["tokens_per_s_rounds"] == [800.0, 900.0, None]
    assert out["ratios_rounds"]["emosae_vs_saelens"] == pytest.approx([1.25, 1300 / 900])
    assert out["ratios"]["emosae_vs_saelens"] == pytest.approx((1.25 + 1300 / 900) / 2)
    assert out["ratios"]["emosae_vs_limit"] == pytest.approx(1.0)
    assert "emosae_vs_sparsify" not in out["ratios"]


def test_one_round_keeps_the_documented_shape(bench):
    out = bench.summarize([{"limit": {"tokens_per_s": 1000.0}, "emosae": _run(900.0), "sparsify": {"error": "no"}}])
    assert out["limit_tokens_per_s"] == 1000.0 and out["emosae"] == _run(900.0)
    assert out["sparsify"] == {"error": "no"}
    assert out["ratios"] == {"emosae_vs_limit": pytest.approx(0.9)} and "ratios_rounds" not in out
