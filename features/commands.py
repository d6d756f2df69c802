"""Verbs owned by `features/`: each module listed defines `register(sub)` for its own verb."""

from __future__ import annotations

import argparse

from sae.cli import register_modules

MODULES = ("features.stats", "features.vectors", "features.monitor", "features.clamp_cli", "features.demo",
           "features.sweep", "features.screen", "features.browser")


def register(sub: argparse._SubParsersAction) -> None:
    register_modules(sub, MODULES)
