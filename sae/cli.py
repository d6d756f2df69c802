"""The `emosae` command. Each package owns its verbs (a `commands.py` with `register(sub)`);
this file only dispatches, turns user errors into one line + exit code 2, and keeps stdout for
`--json` documents (logs and progress go to stderr)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

from sae.errors import UserError

VERB_MODULES = ("sae.commands", "labeling.commands", "features.commands")
log = logging.getLogger("emosae")


def print_json(obj: Any) -> None:
    """The one JSON document a `--json` verb prints on stdout."""
    sys.stdout.write(json.dumps(obj, indent=None) + "\n")
    sys.stdout.flush()


class Parser(argparse.ArgumentParser):
    """argparse with the project's error form: a bad option is one line on stderr and exit code 2,
    like every other user error, not argparse's usage block first (`--help` still shows it).
    Subparsers inherit the class, so every verb gets it."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="emosae", description="Find, label, browse and clamp emotion features with SAEs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    register_modules(sub, VERB_MODULES)
    return parser


def register_modules(sub: argparse._SubParsersAction, names: tuple[str, ...]) -> None:
    """Let each named module add its verbs (`module.register(sub)`); a module that is not there is
    skipped, an import error inside one is not hidden."""
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)


# options whose values may start with "-" (negative strengths): argparse would read "-0.1r" as an option
NEGATIVE_VALUED = ("--strengths", "--feature", "--vector", "--target")


def join_negative_values(argv: list[str]) -> list[str]:
    """`--strengths -0.1r,0` -> `--strengths=-0.1r,0`, so a negative value can follow its option."""
    out: list[str] = []
    for tok in argv:
        if (out and out[-1] in NEGATIVE_VALUED and len(tok) > 1 and tok[0] == "-"
                and (tok[1].isdigit() or tok[1] == ".")):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def typed(args: argparse.Namespace, *dests: str) -> dict[str, Any]:
    """The options among `dests` the user typed, {dest: value}. Such options default to None, so a
    flag that cannot apply is refused, not silently ignored, and the rest keep the callee's defaults."""
    return {d: getattr(args, d) for d in dests if getattr(args, d) is not None}


def flags(dests) -> list[str]:
    """Option names of dests, as typed: skip_tokens -> --skip-tokens."""
    return ["--" + d.replace("_", "-") for d in dests]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    if extra:  # the verb's parser says it, so the hint names `emosae VERB --help`, where its options are
        verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        verbs.choices[args.verb].error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(message)s")
    for noisy in ("transformers", "datasets", "httpx", "urllib3", "sae_lens"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"emosae {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emosae {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
