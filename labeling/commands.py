"""Verbs owned by `labeling/`: each module listed defines `register(sub)` for its own verb."""

from __future__ import annotations

import argparse
import importlib

MODULES = ("labeling.stories", "labeling.label", "labeling.geometry", "labeling.explain")


def register(sub: argparse._SubParsersAction) -> None:
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
