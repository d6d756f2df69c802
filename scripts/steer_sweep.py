"""Dose-response sweep of a feature or emotion vector (same as `emosae sweep`).

    python scripts/steer_sweep.py runs/demo --target happy --target vector:happy --strengths=-0.1r,0,0.1r

Writes RUN/sweeps/sweep_<target>.{csv,png,json} and prints a table. From Python:
`features.sweep.run_sweep(run_dir, target="happy", strengths=[...], samples=8, seed=0) -> dict`."""

import argparse
import sys

from features.sweep import add_arguments
from sae.cli import main as emosae_main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.parse_args()  # --help and argument errors here; the run goes through the emosae CLI
    sys.exit(emosae_main(["sweep", *sys.argv[1:]]))
