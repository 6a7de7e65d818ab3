"""The ``lca`` command line: parse, call the library, turn known errors into one line.

lca describe configs/mnist_fc_sgd.yaml
lca train configs/mnist_fc_sgd.yaml --set data.path=../shared/data/mnist.npz
lca allocate runs/mnist_fc_sgd --workers 2
lca verify-error runs/mnist_fc_sgd
lca report runs/mnist_fc_sgd --out /tmp/report
lca tensorboard runs/mnist_fc_sgd
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path

import click

from .config import ConfigError, load_config
from .storage import RunError, location

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out


def _known_errors() -> tuple[type[BaseException], ...]:
    from .data import DatasetError
    from .training import TrainingDiverged

    return (ConfigError, RunError, DatasetError, TrainingDiverged, FileNotFoundError)


def friendly_errors(func):
    """Print expected failures as one line on stderr and exit 2; keep tracebacks for bugs."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except _known_errors() as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:  # disk full, read-only, no permission: one line, no traceback
            click.echo(f"error: {_os_error_line(exc, func.__name__)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: what was written so far is kept", err=True)
            sys.exit(130)

    return wrapper


def _os_error_line(exc: OSError, command: str) -> str:
    """``cannot write PATH: No space left on device (…)`` for an OSError lca did not expect."""
    import errno
    import re

    from .storage.base import os_error_cause

    where = exc.filename
    if where is not None:  # a file being written atomically: name the file, not its temp copy
        where = re.sub(r"\.[0-9a-f]{32}\.partial$", "", os.fsdecode(where))
    cause = os_error_cause(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES):
        verb = "access" if exc.errno == errno.EACCES else "write"
        what = f"cannot {verb} {where}" if where else f"lca {command} cannot {verb}"
        return (
            f"{what}: {cause} (what was written before is kept; free space or fix the "
            f"permissions, then rerun the same command to resume)"
        )
    return f"{where}: {cause}" if where else f"lca {command}: {cause}"


def _parse_range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        start, stop = value.split(":")
        return (int(start) if start else 0, int(stop) if stop else 2**62)
    except ValueError:
        raise click.BadParameter("expected A:B, e.g. 0:100") from None


#: The commands in the order a run goes through them, each with one example.
PIPELINE = {
    "describe": "lca describe configs/mnist_fc_sgd.yaml",
    "train": "lca train configs/mnist_fc_sgd.yaml",
    "allocate": "lca allocate runs/mnist_fc_sgd",
    "verify-error": "lca verify-error runs/mnist_fc_sgd",
    "report": "lca report runs/mnist_fc_sgd",
    "tensorboard": "lca tensorboard runs/mnist_fc_sgd",
    "prune": "lca prune runs/mnist_fc_sgd --by lca,magnitude",
    "check": "lca check runs/mnist_fc_sgd",
}


class PipelineGroup(click.Group):
    """``lca --help`` lists the commands in pipeline order, each with an example."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = list(PIPELINE)
        return sorted(self.commands, key=lambda n: (order.index(n) if n in order else 99, n))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            rows.append((name, command.get_short_help_str(limit=300)))
            if name in PIPELINE:
                rows.append(("", f"$ {PIPELINE[name]}"))
        with formatter.section("Commands, in pipeline order"):
            formatter.write_dl(rows)


@click.group(cls=PipelineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lca")
def main() -> None:
    """Loss Change Allocation: record a training run, allocate its loss change, verify it.

    `lca COMMAND --help` lists a command's options. Documentation: docs/ (mkdocs serve).
    """
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


override_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set optimizer.lr=0.01 (repeatable).",
)


@main.command()
@click.argument("config_file", metavar="CONFIG_FILE|RUN")
@override_option
@friendly_errors
def describe(config_file: str, overrides: tuple[str, ...]) -> None:
    """Print the parameter layout (layers, shapes, counts) of CONFIG_FILE's model.

    For a RUN directory: what allocating it would execute (its builders), its stores'
    status, versions and checksums, and its layout, without building or importing anything.
    """
    from .storage import CONFIG_FILE

    where = location(config_file)
    if where.is_dir() or (where / CONFIG_FILE).is_file():
        if overrides:
            raise click.UsageError("--set applies to a config file, not a run directory")
        from .report.describe import describe_run

        click.echo(describe_run(where).to_text())
        return
    from .allocation.backends import model_layout
    from .data import input_spec
    from .layout.describe import describe_layout

    config = load_config(config_file, overrides)
    if config.model.builder is not None:  # a user's model needs no data to be built
        layout = model_layout(config, (), 0)
        click.echo(f"{config.name}: model {config.model.builder}, loss {config.model.loss}")
        click.echo(describe_layout(layout))
        return
    input_shape, num_classes = input_spec(config.data)
    layout = model_layout(config, input_shape, num_classes)
    inputs = "x".join(map(str, input_shape))
    if config.data.name == "modular":
        inputs = f"(sequences of {input_shape[0]} tokens)"
    click.echo(
        f"{config.name}: model {config.model.name} on {config.data.name} {inputs}, "
        f"{num_classes} classes"
    )
    click.echo(describe_layout(layout))


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [runs/<config name>].")
@click.option("--seed", type=int, help="Training seed (initialisation, batches, dropout).")
@click.option("--iterations", type=int, help="Number of training iterations.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run in the directory (a plain rerun does too); fail if none.",
)
@click.option(
    "--threads",
    type=int,
    help="Pin TensorFlow's threads: the same N makes a resumed run bitwise an uninterrupted one.",
)
@override_option
@friendly_errors
def train(config_file, out, seed, iterations, overwrite, resume, threads, overrides) -> None:
    """Train CONFIG_FILE's model and record θ after every iteration.

    Rerunning the same command on an interrupted run continues it from its last checkpoint.
    """
    from .training import train as run_training

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    extra = [f"training.seed={seed}"] * (seed is not None)
    extra += [f"training.iterations={iterations}"] * (iterations is not None)
    config = load_config(config_file, [*overrides, *extra])
    run_dir = location(out) if out else Path("runs") / config.name
    result = run_training(
        config, run_dir, overwrite=overwrite, resume=True if resume else None, threads=threads
    )
    click.echo(
        f"recorded {result.steps_recorded} steps in {run_dir} "
        f"({result.seconds:.1f} s; final mini-batch loss {result.final_loss:.4f}, "
        f"accuracy {result.final_accuracy:.3f})"
    )


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--gpus", help="One worker per listed GPU: 0-3 or 0,2.")
@click.option("--workers", type=int, default=1, show_default=True, help="CPU worker processes.")
@click.option(
    "--threads", type=int, help="TensorFlow intra-op threads per worker [--ray: its CPUs]."
)
@click.option(
    "--ray",
    "ray_address",
    metavar="auto|local|ADDRESS",
    help="Run each chunk as a task on a Ray cluster (pip install 'lca[ray]').",
)
@click.option(
    "--gpus-per-task",
    type=float,
    default=0.0,
    show_default=True,
    help="With --ray: GPUs a task holds.",
)
@click.option(
    "--cpus-per-task", type=float, help="With --ray: CPUs (and threads) a task holds [1]."
)
@click.option("--splits", help="Comma-separated splits to allocate [config: train,val].")
@click.option("--threshold", type=float, help="Per-iteration |error| that triggers halving.")
@click.option("--max-splits", type=int, help="Most sub-intervals per iteration (power of 2).")
@click.option(
    "--iterations",
    "iteration_range",
    metavar="A:B",
    help="Allocate only iterations A..B-1 (rounded out to whole chunks).",
)
@click.option(
    "--subset", type=int, metavar="N", help="Allocate the train split on N fixed random examples."
)
@click.option(
    "--check-every",
    type=int,
    metavar="K",
    help="With --subset: also allocate every K-th iteration on the full train set and compare.",
)
@click.option(
    "--per-class", is_flag=True, default=None, help="Also split every LCA into per-class parts."
)
@click.option(
    "--rule",
    type=click.Choice(["adaptive", "simpson"]),
    help="adaptive: trapezoid on the endpoints first; simpson: the paper's [config: adaptive].",
)
@click.option(
    "--trapezoid-threshold",
    type=float,
    help="With --rule adaptive: |error| within which the trapezoid is accepted [config].",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "float32", "bfloat16", "tf32"]),
    help="Arithmetic of the gradients; losses stay float32 [config: auto, bfloat16 on CPUs "
    "with bf16 units].",
)
@click.option(
    "--store",
    type=click.Choice(["parameters", "units", "layers"]),
    help="What to keep per iteration: the LCA of every parameter, or only its sums per unit "
    "and layer, or per layer (long runs) [config: parameters].",
)
@click.option(
    "--store-grad/--no-store-grad",
    default=None,
    help="Keep the full-set gradient at every step (T+1, K); only oscillations need it "
    "[config: true].",
)
@click.option(
    "--causes/--no-causes",
    default=None,
    help="Also split every LCA by its cause: each term of the optimiser's step (signal, "
    "mini-batch deviation, momentum or Adam's history, weight decay, replay residual) × first "
    "order / curvature, summed per layer and unit (<split>/causes in lca.zarr) [config: false].",
)
@click.option("--restart", is_flag=True, help="Discard an existing lca.zarr and start over.")
@friendly_errors
def allocate(
    run_dir,
    gpus,
    workers,
    threads,
    ray_address,
    gpus_per_task,
    cpus_per_task,
    splits,
    threshold,
    max_splits,
    iteration_range,
    subset,
    check_every,
    per_class,
    rule,
    trapezoid_threshold,
    precision,
    store,
    store_grad,
    causes,
    restart,
) -> None:
    """Compute the per-parameter, per-iteration LCA of a trained run (resumable)."""
    from .allocation import allocate as run_allocation
    from .allocation import parse_gpus

    if sum([bool(gpus), workers != 1, ray_address is not None]) > 1:
        raise click.UsageError("--gpus, --workers and --ray are exclusive")
    if ray_address is None and (gpus_per_task or cpus_per_task is not None):
        raise click.UsageError("--gpus-per-task and --cpus-per-task need --ray")
    summary = run_allocation(
        run_dir,
        splits=splits.split(",") if splits else None,
        threshold=threshold,
        max_splits=max_splits,
        subset_size=subset,
        check_every=check_every,
        per_class=per_class,
        rule=rule,
        trapezoid_threshold=trapezoid_threshold,
        precision=precision,
        store=store,
        store_grad=store_grad,
        causes=causes,
        iterations=_parse_range(iteration_range),
        workers=workers,
        gpus=parse_gpus(gpus) if gpus else None,
        threads=threads,
        ray=ray_address,
        gpus_per_task=gpus_per_task,
        cpus_per_task=cpus_per_task,
        restart=restart,
    )
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


@main.command("verify-error")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def verify_error(run_dir: str, as_json: bool) -> None:
    """Report how well the allocation conserves the loss (paper Table S1); exit 1 if it fails."""
    from .analysis.diagnostics import verify_error as run_verify

    report = run_verify(run_dir)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.to_text())
    sys.exit(0 if report.passed else 1)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Output directory [RUN/report].")
@click.option(
    "--vs",
    "vs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A run of a second group to compare with (repeatable).",
)
@click.option("--frames", type=int, default=40, show_default=True, help="Animation frames (≤ 40).")
@friendly_errors
def report(run_dirs, split, out, vs, frames) -> None:
    """Turn allocated runs into the paper's tables and figures (report.md, report.json, PNGs).

    Several RUN_DIRS (same config, different seeds) give mean ± std and a per-layer sign test.
    """
    from .report import make_report

    if frames < 1:
        raise click.BadParameter("must be >= 1", param_hint="--frames")
    result = make_report(
        list(run_dirs), split=split, out_dir=out, vs=list(vs) or None, frames=frames
    )
    click.echo(result.headline())
    click.echo(f"report written to {result.out_dir}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--logdir",
    type=click.Path(file_okay=False),
    help="Where the event files go, one folder per run [tensorboard/ beside the runs].",
)
@click.option(
    "--histograms",
    type=int,
    default=50,
    show_default=True,
    help="Most iterations with per-layer LCA histograms (the training log points).",
)
@friendly_errors
def tensorboard(run_dirs, logdir, histograms) -> None:
    """Write TensorBoard event files of RUN_DIRS: losses, per-layer LCA, errors, config.

    Each run goes to LOGDIR/<run name>/ (train/, val/, training/), so one
    `tensorboard --logdir LOGDIR` shows several runs side by side. A command of its own
    rather than a flag of `lca report`: it writes no report, and LOGDIR is its only output.
    """
    from .report.tensorboard import write_tensorboard

    if histograms < 0:
        raise click.BadParameter("must be >= 0", param_hint="--histograms")
    written = write_tensorboard(list(run_dirs), logdir, max_histograms=histograms)
    for folder in written:
        click.echo(f"wrote {folder}")
    root = written[0].parent if len(written) == 1 else os.path.commonpath(written)
    click.echo(f"view with: tensorboard --logdir {root}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--by",
    help="Comma-separated criteria: lca, lca-abs, lca-late, magnitude, movement, random [all].",
)
@click.option("--fractions", help="Comma-separated fractions to prune [0.5,0.8,0.9,0.95,0.98].")
@click.option(
    "--scope",
    type=click.Choice(["global", "layer"]),
    default="global",
    show_default=True,
    help="Rank all prunable weights together, or prune each layer group by the fraction.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val"]),
    default="train",
    show_default=True,
    help="The split whose LCA ranks the weights.",
)
@click.option(
    "--include",
    default="kernels",
    show_default=True,
    help="What may be pruned: kernels, all, or comma-separated name endings (kernel,embeddings).",
)
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds of random pruning.")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory [RUN/prune].")
@friendly_errors
def prune(run_dir, by, fractions, scope, split, include, seeds, out) -> None:
    """Zero the least important weights of θ_T by LCA, magnitude, movement or at random,
    and evaluate the pruned model on the whole splits (prune.json, prune.md, prune.png)."""
    from .pruning import CRITERIA, DEFAULT_FRACTIONS
    from .pruning import prune as run_prune

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


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--repair",
    is_flag=True,
    help="Mark the LCA work units holding damaged chunks as not done (then `lca allocate`).",
)
@friendly_errors
def check(run_dir: str, repair: bool) -> None:
    """Read every chunk of a run: present, checksum OK, finite; exit 1 if any is damaged."""
    from .allocation.repair import repair_run
    from .storage.check import check_run

    report = check_run(run_dir)
    click.echo(report.to_text())
    if repair and not report.ok:
        fixed = repair_run(run_dir, report)
        if fixed.units_reset:
            click.echo(
                f"repaired: {len(fixed.units_reset)} work unit(s) marked not done "
                f"({fixed.chunks_removed} damaged chunk(s) removed); now run "
                f"`lca allocate {run_dir}`"
            )
        if report.fatal or report.lost_iterations:
            click.echo("not repaired: the trajectory's damage cannot be recomputed (see above)")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
