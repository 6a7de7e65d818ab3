"""``lca report``, ``lca tensorboard`` and ``lca prune``: what an allocated run shows, as a
report, as TensorBoard event files and as pruning curves."""

from __future__ import annotations

import os

import click

from .common import RENAMED_FLAGS, RenamingCommand, friendly_errors, option


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@option(
    "--split",
    type=click.Choice(["train", "val"]),
    default="train",
    show_default=True,
    help="The data split whose LCA the report shows.",
)
@option(
    "--out", type=click.Path(file_okay=False), show_default="RUN/report", help="Output directory."
)
@option(
    "--vs",
    "vs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A run of a second group to compare with (repeatable).",
)
@option("--frames", type=int, default=40, show_default=True, help="Animation frames (≤ 40).")
@friendly_errors
def report(run_dirs, split, out, vs, frames) -> None:
    """Turn allocated runs into the paper's tables and figures (report.md, report.json, PNGs).

    Several RUN_DIRS (same config, different seeds) give mean ± std and a per-layer one-sample
    t-test of the totals against 0.
    """
    from ..report import make_report

    if frames < 1:
        raise click.BadParameter("must be >= 1", param_hint="--frames")
    result = make_report(
        list(run_dirs), split=split, out_dir=out, vs=list(vs) or None, frames=frames
    )
    click.echo(result.headline())
    click.echo(f"report written to {result.out_dir}")


@click.command(cls=RenamingCommand, renamed=RENAMED_FLAGS["tensorboard"])
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@option(
    "--out",
    type=click.Path(file_okay=False),
    show_default="tensorboard/ beside the runs",
    help="Where the event files go, one folder per run (old name: --logdir).",
)
@option(
    "--histograms",
    type=int,
    default=50,
    show_default=True,
    help="Iterations with per-layer LCA histograms: every one of a shorter run, else this "
    "many evenly spaced from the first to the last (0: none).",
)
@friendly_errors
def tensorboard(run_dirs, out, histograms) -> None:
    """Write TensorBoard event files of RUN_DIRS: losses, per-layer LCA, errors, config.

    Each run goes to `OUT/<run name>/` (train/, val/, training/), so one
    `tensorboard --logdir OUT` shows several runs side by side. A command of its own
    rather than a flag of `lca report`: it writes no report, and OUT is its only output.
    """
    from ..report.tensorboard import write_tensorboard

    if histograms < 0:
        raise click.BadParameter("must be >= 0", param_hint="--histograms")
    written = write_tensorboard(list(run_dirs), out, max_histograms=histograms)
    for folder in written:
        click.echo(f"wrote {folder}")
    root = written[0].parent if len(written) == 1 else os.path.commonpath(written)
    click.echo(f"view with: tensorboard --logdir {root}")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@option(
    "--by",
    show_default="all",
    help="Comma-separated criteria: lca, lca-abs, lca-late, magnitude, movement, random.",
)
@option(
    "--fractions",
    show_default="0.5,0.8,0.9,0.95,0.98",
    help="Comma-separated fractions to prune.",
)
@option(
    "--scope",
    type=click.Choice(["global", "layer"]),
    default="global",
    show_default=True,
    help="Rank all prunable weights together, or prune each layer group by the fraction.",
)
@option(
    "--split",
    type=click.Choice(["train", "val"]),
    default="train",
    show_default=True,
    help="The split whose LCA ranks the weights.",
)
@option(
    "--include",
    default="kernels",
    show_default=True,
    help="What may be pruned: kernels, all, or comma-separated name endings (kernel,embeddings).",
)
@option("--seeds", type=int, default=5, show_default=True, help="Seeds of random pruning.")
@option(
    "--out", type=click.Path(file_okay=False), show_default="RUN/prune", help="Output directory."
)
@friendly_errors
def prune(run_dir, by, fractions, scope, split, include, seeds, out) -> None:
    """Zero the least important weights of θ_T by LCA, magnitude, movement or at random,
    and evaluate the pruned model on the whole splits (prune.json, prune.md, prune.png)."""
    from ..pruning import CRITERIA, DEFAULT_FRACTIONS
    from ..pruning import prune as run_prune

    try:
        table = run_prune(
            run_dir,
            by=by or CRITERIA,
            fractions=fractions or DEFAULT_FRACTIONS,
            scope=scope,
            split=split,
            out=out,
            include=include,
            seeds=seeds,
        )
    except ValueError as exc:  # a bad --by, --fractions, --include or --seeds
        raise click.UsageError(str(exc)) from None
    click.echo(table.headline_table())
    click.echo(f"pruning results written to {table.out_dir}")
