"""Measure what `lca` costs: one benchmark tool, a subcommand per measurement.

    python scripts/bench.py allocate runs/mnist_fc_sgd      # allocate against its floor
    python scripts/bench.py train --checkpoints             # recording's cost on lca train
    python scripts/bench.py SUBCOMMAND --help               # its options

Subcommands (one module each in ``scripts/benchmarks/``): allocate, callback, causes, modes,
precision, segments, subset, thresholds, torch, train. Each takes "a config or a run" the same
way (a config file is trained first, with ``--set key=value`` overrides; a run directory is used
as it is) and compares candidates side by side, alternating which goes first, reporting medians
of per-round ratios (``benchmarks/common.py``). ``$LCA_BENCH_TMP`` places the scratch folder.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's lca is measured

#: subcommand -> its module in scripts/benchmarks/
SUBCOMMANDS = {
    "allocate": "allocate",
    "callback": "callback",
    "causes": "causes",
    "modes": "modes",
    "precision": "precision",
    "segments": "segments",
    "subset": "subset",
    "thresholds": "thresholds",
    "torch": "frameworks",
    "train": "train",
}


def parser() -> argparse.ArgumentParser:
    """The command line: each module's docstring is its help, its add_arguments its options."""
    main = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for command, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"benchmarks.{module_name}")
        sub = commands.add_parser(
            command,
            help=module.__doc__.splitlines()[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, parser=sub)
    return main


def main(argv: list[str] | None = None) -> int | None:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
