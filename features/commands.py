"""Verbs owned by `features/`: each module listed defines `register(sub)` for its own verb."""

from __future__ import annotations

import argparse
import importlib

MODULES = ("features.stats", "features.vectors", "features.monitor", "features.clamp_cli", "features.demo",
           "features.sweep", "features.screen", "features.browser")


def register(sub: argparse._SubParsersAction) -> None:
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
