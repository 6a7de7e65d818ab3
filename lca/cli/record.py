"""``lca describe``, ``lca train`` and ``lca import``: a config's model and a run's θ, from
training or from saved checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_config
from ..storage import location
from .common import friendly_errors, option, override_option, run_out_option


@click.command()
@click.argument("config_file", metavar="CONFIG_FILE|RUN")
@option(
    "--record-every",
    type=click.IntRange(min=1),
    show_default="training.record_every (config)",
    help="Say how much θ the run stores with θ every K steps.",
)
@option("--disk-budget", metavar="SIZE", help="Say which record_every fits SIZE (e.g. 50GB).")
@override_option
@friendly_errors
def describe(config_file: str, record_every, disk_budget, overrides: tuple[str, ...]) -> None:
    """Print the parameter layout (layers, shapes, counts) of CONFIG_FILE's model.

    With --record-every or --disk-budget (or a config storing θ every k steps), also how
    much θ the run stores, and which training.record_every fits the budget.

    For a RUN directory: what allocating it would execute (its builders), its stores'
    status, versions and checksums, and its layout, without building or importing anything.
    """
    from ..storage import CONFIG_FILE

    where = location(config_file)
    if where.is_dir() or (where / CONFIG_FILE).is_file():
        if overrides:
            raise click.UsageError("--set applies to a config file, not a run directory")
        from ..report.describe import describe_run

        click.echo(describe_run(where).to_text())
        return
    from ..allocation.backends import model_layout
    from ..data import input_spec
    from ..layout.describe import describe_layout

    config = load_config(config_file, overrides)
    storage = _theta_storage(config, record_every, disk_budget)
    if config.model.builder is not None:  # a user's model needs no data to be built
        layout = model_layout(config, (), 0)
        click.echo(f"{config.name}: model {config.model.builder}, loss {config.model.loss}")
        click.echo(describe_layout(layout))
        storage(layout.total)
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
    storage(layout.total)


def _theta_storage(config, record_every: int | None, disk_budget: str | None):
    """A function printing θ's storage for K parameters, where describe was asked for it."""
    from ..training.segments import parse_size, storage_lines

    budget = None if disk_budget is None else parse_size(disk_budget)
    k = record_every or config.training.record_every

    def show(num_params: int) -> None:
        if record_every or budget is not None or k > 1:
            lines = storage_lines(num_params, config.training.iterations, k, budget)
            click.echo("\n".join(lines))

    return show


@click.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@run_out_option
@option(
    "--seed",
    type=int,
    show_default="training.seed (config)",
    help="Training seed (initialisation, batches, dropout).",
)
@option(
    "--iterations",
    type=int,
    show_default="training.iterations (config)",
    help="Number of training iterations.",
)
@option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run in the directory (a plain rerun does too); fail if none.",
)
@option(
    "--threads",
    type=int,
    show_default="all cores",
    help="Pin the intra-op threads: the same N makes a resumed run bitwise an uninterrupted one.",
)
@override_option
@friendly_errors
def train(config_file, out, seed, iterations, overwrite, resume, threads, overrides) -> None:
    """Train CONFIG_FILE's model and record θ after every iteration.

    Rerunning the same command on an interrupted run continues it from its last checkpoint.
    """
    from ..training import train as run_training

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


@click.command("import")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("checkpoints", nargs=-1, required=True)
@run_out_option
@option(
    "--steps",
    metavar="S0,S1,…",
    show_default="the number in each file name",
    help="The optimizer step of each checkpoint, in order.",
)
@option(
    "--pattern",
    default="*",
    show_default=True,
    help="Which files of a CHECKPOINTS folder to read (a glob).",
)
@option(
    "--allow-gaps",
    is_flag=True,
    help="Accept a missing checkpoint of an evenly spaced sequence (one longer segment).",
)
@option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@override_option
@friendly_errors
def import_checkpoints(
    config_file, checkpoints, out, steps, pattern, allow_gaps, overwrite, overrides
) -> None:
    """Make a run from saved checkpoints (Keras .weights.h5, torch state dicts, .safetensors).

    CHECKPOINTS are files in training order, or folders (read in step order). CONFIG_FILE
    builds the model and data as for `lca train`; then allocate, verify and report the run
    as a recorded one: each iteration is the segment between two checkpoints.
    """
    from ..training import checkpoints as imports

    config = load_config(config_file, overrides)
    sequence = imports.checkpoint_sequence(
        checkpoints, steps=imports.parse_steps(steps), pattern=pattern, allow_gaps=allow_gaps
    )
    run_dir = location(out) if out else Path("runs") / config.name
    result = imports.import_checkpoints(config, sequence, run_dir, overwrite=overwrite)
    every = f"every {result.record_every} steps" if result.record_every else "irregular steps"
    click.echo(
        f"imported {result.checkpoints} checkpoints (steps {result.first_step}..."
        f"{result.last_step}, {every}) into {run_dir} ({result.seconds:.1f} s)"
    )
