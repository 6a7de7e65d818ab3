"""``lca allocate``, ``lca verify-error`` and ``lca check``: a run's LCA computed, its
conservation verified, its chunks read back; the allocate flags named as the user typed them."""

from __future__ import annotations

import json
import re
import sys

import click

from ..config import ConfigError
from ..storage import RunError
from .common import (
    PRECISION_NAMES,
    RENAMED_FLAGS,
    RULE_NAMES,
    STORE_NAMES,
    RenamingCommand,
    friendly_errors,
    option,
)


def _parse_range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        start, stop = value.split(":")
        return (int(start) if start else 0, int(stop) if stop else 2**62)
    except ValueError:
        raise click.BadParameter("expected A:B, e.g. 0:100") from None


#: ``lca allocate``'s options and the settings they set, in one place: the command builds
#: its overrides from it, and rewrites the library's errors, which name settings
#: (``allocate.max_intervals: …``), into the flags the user typed (``--max-intervals: …``).
ALLOCATE_FLAGS = {
    "--splits": "allocate.splits",
    "--threshold": "allocate.threshold",
    "--max-intervals": "allocate.max_intervals",
    "--subset": "allocate.subset_size",
    "--check-every": "allocate.check_every",
    "--per-class": "allocate.per_class",
    "--rule": "allocate.rule",
    "--trapezoid-threshold": "allocate.trapezoid_threshold",
    "--precision": "allocate.precision",
    "--store": "allocate.store",
    "--store-grad": "allocate.store_grad",
    "--causes": "allocate.causes",
    "--workers": "execution.workers",
    "--gpus": "execution.gpus",
    "--threads": "execution.threads",
    "--ray": "execution.ray",
    "--gpus-per-task": "execution.gpus_per_task",
    "--cpus-per-task": "execution.cpus_per_task",
    "--overwrite": "execution.overwrite",
}


def _from_config(setting: str) -> str:
    """How a default that comes from the run's config shows in ``--help``."""
    from ..config import AllocateConfig

    value = getattr(AllocateConfig(), setting)
    if isinstance(value, list):
        value = ",".join(value)
    elif isinstance(value, bool):
        value = str(value).lower()
    return f"{value} (config)"


def _with_flags(message: str, given: set[str]) -> str:
    """``message`` with each setting the user gave as a flag named by that flag."""
    for flag, setting in sorted(ALLOCATE_FLAGS.items(), key=lambda item: -len(item[1])):
        if flag in given or setting.startswith("execution."):
            message = re.sub(rf"{re.escape(setting)}(\[\d+\])?(?![\w.])", flag, message)
    return message


@click.command(cls=RenamingCommand, renamed=RENAMED_FLAGS["allocate"])
@click.argument("run_dir", type=click.Path(file_okay=False))
@option("--gpus", help="One worker process per listed GPU: 0-3 or 0,2.")
@option("--workers", type=int, default=1, show_default=True, help="CPU worker processes.")
@option(
    "--threads",
    type=int,
    show_default="all cores (--ray: its CPUs per task)",
    help="Intra-op threads per worker: the same N gives bitwise the same numbers.",
)
@option(
    "--ray",
    metavar="auto|local|ADDRESS",
    help="Run each block of iterations as a task on a Ray cluster (pip install 'lca[ray]').",
)
@option(
    "--gpus-per-task",
    type=float,
    default=0.0,
    show_default=True,
    help="With --ray: GPUs a task holds.",
)
@option(
    "--cpus-per-task",
    type=float,
    show_default="1",
    help="With --ray: CPUs (and threads) a task holds.",
)
@option(
    "--splits",
    show_default=_from_config("splits"),
    help="Comma-separated data splits to allocate.",
)
@option(
    "--threshold",
    type=float,
    show_default=_from_config("threshold"),
    help="Per-iteration |conservation error| that triggers halving the sub-intervals.",
)
@option(
    "--max-intervals",
    type=int,
    show_default=_from_config("max_intervals"),
    help="Most sub-intervals per iteration (a power of two).",
)
@option(
    "--range",
    "iteration_range",
    metavar="A:B",
    show_default="all iterations",
    help="Allocate only iterations A..B-1 (rounded out to whole blocks).",
)
@option(
    "--subset",
    "subset_size",
    type=int,
    metavar="N",
    show_default="the whole split",
    help="Allocate the train split on N fixed random examples.",
)
@option(
    "--check-every",
    type=int,
    metavar="K",
    show_default="never",
    help="With --subset: also allocate every K-th iteration on the full train set and compare.",
)
@option(
    "--per-class",
    is_flag=True,
    default=None,
    show_default=_from_config("per_class"),
    help="Also split every LCA into per-class parts.",
)
@option(
    "--rule",
    type=click.Choice(RULE_NAMES),
    show_default=_from_config("rule"),
    help="Quadrature rule. adaptive: the trapezoid on the endpoints first, Simpson where its "
    "error is too large; simpson: the paper's composite Simpson.",
)
@option(
    "--trapezoid-threshold",
    type=float,
    show_default="threshold / 10 (config)",
    help="With --rule adaptive: |error| within which the trapezoid is accepted.",
)
@option(
    "--precision",
    type=click.Choice(PRECISION_NAMES),
    show_default=_from_config("precision"),
    help="Arithmetic of the gradients; losses stay float32. tf32: gradient passes on the "
    "TF32 tensor cores of GPUs (TF32 is off otherwise). auto: bfloat16 on CPUs with bf16 "
    "units (TensorFlow runs), float32 elsewhere.",
)
@option(
    "--store",
    type=click.Choice(STORE_NAMES),
    show_default=_from_config("store"),
    help="What to keep per iteration: the LCA of every parameter, or only its sums per unit "
    "and layer, or per layer (long runs).",
)
@option(
    "--store-grad/--no-store-grad",
    default=None,
    show_default=_from_config("store_grad"),
    help="Keep the full-set gradient at every step (T+1, K); only oscillations need it.",
)
@option(
    "--causes/--no-causes",
    default=None,
    show_default=_from_config("causes"),
    help="Also split every LCA by its cause: each term of the optimiser's step (signal, "
    "mini-batch deviation, momentum or Adam's history, weight decay, replay residual) × first "
    "order / curvature, summed per layer and unit (<split>/causes in lca.zarr).",
)
@option(
    "--overwrite",
    is_flag=True,
    help="Discard an existing lca.zarr and start over (old name: --restart).",
)
@click.pass_context
@friendly_errors
def allocate(ctx: click.Context, run_dir, iteration_range, **options) -> None:
    """Compute the per-parameter, per-iteration LCA of a trained run (resumable).

    Options not given take the run's config (its `allocate:` section); a resumed allocation
    continues with its store's rule, precision and store choices.
    """
    from ..allocation import Execution, parse_gpus
    from ..allocation import allocate as run_allocation

    if options["splits"]:
        options["splits"] = options["splits"].split(",")
    if options["gpus"]:
        options["gpus"] = parse_gpus(options["gpus"])
    typed = click.core.ParameterSource.COMMANDLINE
    names = {flag: setting.partition(".") for flag, setting in ALLOCATE_FLAGS.items()}
    given = {
        flag for flag, (_, _, name) in names.items() if ctx.get_parameter_source(name) == typed
    }
    overrides = {
        name: options[name]
        for flag, (section, _, name) in names.items()
        if section == "allocate" and flag in given
    }
    execution_options = {
        name: options[name] for section, _, name in names.values() if section == "execution"
    }
    try:
        execution = Execution(**execution_options)
        summary = run_allocation(
            run_dir, execution=execution, iterations=_parse_range(iteration_range), **overrides
        )
    except (RunError, ConfigError) as exc:
        rewritten = _with_flags(str(exc), given)
        if rewritten == str(exc):
            raise
        raise RunError(rewritten) from None
    done = f"{summary.iterations_done} of {summary.iterations_total} done in {run_dir}/lca.zarr"
    n = summary.iterations_this_run
    if n == 0:
        click.echo(f"nothing left to allocate: {done}")
        return
    click.echo(
        f"allocated {n} iterations in {summary.seconds:.1f} s ({summary.seconds / n:.3f} "
        f"s/iteration, {summary.gradient_evaluations / n:.2f} gradients/iteration, "
        f"{summary.halvings} halvings); {done}"
    )


@click.command("verify-error")
@click.argument("run_dir", type=click.Path(file_okay=False))
@option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def verify_error(run_dir: str, as_json: bool) -> None:
    """Report how well the allocation conserves the loss (paper Table S1); exit 1 if it fails."""
    from ..analysis.diagnostics import verify_error as run_verify

    report = run_verify(run_dir)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.to_text())
    sys.exit(0 if report.passed else 1)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@option(
    "--repair",
    is_flag=True,
    help="Mark the LCA blocks holding damaged chunks as not done (then `lca allocate`).",
)
@friendly_errors
def check(run_dir: str, repair: bool) -> None:
    """Read every chunk of a run: present, checksum OK, finite; exit 1 if any is damaged."""
    from ..allocation.repair import repair_run
    from ..storage.check import check_run

    report = check_run(run_dir)
    click.echo(report.to_text())
    if repair and not report.ok:
        fixed = repair_run(run_dir, report)
        if fixed.blocks_reset:
            click.echo(
                f"repaired: {len(fixed.blocks_reset)} block(s) marked not done "
                f"({fixed.chunks_removed} damaged chunk(s) removed); now run "
                f"`lca allocate {run_dir}`"
            )
        if report.fatal or report.lost_iterations:
            click.echo("not repaired: the trajectory's damage cannot be recomputed (see above)")
    sys.exit(0 if report.ok else 1)
