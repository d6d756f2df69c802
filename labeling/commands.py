"""Verbs owned by `labeling/`: each module listed defines `register(sub)` for its own verb."""

from __future__ import annotations

import argparse

from sae.cli import register_modules

MODULES = ("labeling.stories", "labeling.label", "labeling.geometry", "labeling.explain")


def register(sub: argparse._SubParsersAction) -> None:
    register_modules(sub, MODULES)
