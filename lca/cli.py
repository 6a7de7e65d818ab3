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
import re
import sys
import typing
import warnings
from pathlib import Path

# TensorFlow's start-up chatter (oneDNN, cuInit on machines without a GPU, …) stays out of the
# output: set before anything imports TensorFlow; a value the user set wins (and shows all)
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click  # noqa: E402

from .config import ConfigError, Precision, StoreLevel, load_config, note_renamed  # noqa: E402
from .quadrature import RULES  # noqa: E402
from .storage import RunError, location  # noqa: E402

RULE_NAMES = tuple(RULES)
PRECISION_NAMES: tuple[str, ...] = typing.get_args(Precision)
STORE_NAMES: tuple[str, ...] = typing.get_args(StoreLevel)

#: Old flags that still work (command: {old: new}); each prints ``note: OLD is now NEW``.
RENAMED_FLAGS = {
    "allocate": {
        "--max-splits": "--max-intervals",
        "--restart": "--overwrite",
        "--iterations": "--range",
    },
    "tensorboard": {"--logdir": "--out"},
}


class Option(click.Option):
    """An option whose described default (``show_default="…"``) shows as ``[default: …]``,
    the way click shows a real default, so every default in ``--help`` reads the same."""

    def get_help_extra(self, ctx: click.Context) -> dict:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str) and "default" in extra:
            extra["default"] = self.show_default
        return extra


def option(*names: str, **kwargs):
    """``click.option`` with `Option`: the one way options of ``lca`` are declared."""
    return click.option(*names, cls=Option, **kwargs)


class RenamingCommand(click.Command):
    """A command that still reads its old flag names, noting each new one once."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.renamed = renamed or {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        new_args = []
        for i, arg in enumerate(args):
            if arg == "--":
                new_args += args[i:]
                break
            flag, equals, value = arg.partition("=")
            if flag in self.renamed:
                note_renamed(flag, self.renamed[flag])
                arg = self.renamed[flag] + equals + value
            new_args.append(arg)
        return super().parse_args(ctx, new_args)


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
    "import": "lca import configs/mnist_fc_sgd.yaml checkpoints/",
    "allocate": "lca allocate runs/mnist_fc_sgd",
    "verify-error": "lca verify-error runs/mnist_fc_sgd",
    "report": "lca report runs/mnist_fc_sgd",
    "tensorboard": "lca tensorboard runs/mnist_fc_sgd",
    "prune": "lca prune runs/mnist_fc_sgd --by lca,magnitude",
    "check": "lca check runs/mnist_fc_sgd",
}


#: Lines native libraries print on stderr whatever TF_CPP_MIN_LOG_LEVEL says (absl logs
#: before its initialisation): informational, or about a GPU a CPU-only machine lacks.
NATIVE_NOISE = re.compile(
    rb"All log messages before absl::InitializeLog|^[IW]\d{4} [\d:. ]+\d+ \S+:\d+\] "
    rb"|failed call to cuInit|Could not find cuda drivers|Unable to register cu\w+ factory"
    rb"|computation placer already registered"
)


def quiet_native_stderr() -> None:
    """Drop `NATIVE_NOISE` lines written to file descriptor 2 by native code.

    Python's own stderr keeps writing to the terminal directly; only what reaches fd 2
    otherwise (TensorFlow's C++ logs, worker processes) passes a filter thread.
    """
    import threading

    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):  # captured (tests, notebooks): leave it
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding, closefd=False)  # noqa: SIM115
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line + b"\n" for line in lines if not NATIVE_NOISE.search(line)]
            if pending and not re.match(rb"[IWEF]\d|WARNING: All", pending):
                kept.append(pending)  # a progress bar's line: no newline to wait for
                pending = b""
            if kept:
                os.write(terminal, b"".join(kept))

    threading.Thread(target=forward, daemon=True, name="lca-stderr-filter").start()


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

    `lca COMMAND --help` lists a command's options. Documentation: the docs/ folder of the
    repository (browse it with `mkdocs serve`).
    """
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    if USER_TF_LOG_LEVEL is None:
        quiet_native_stderr()


override_option = option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set optimizer.lr=0.01 (repeatable).",
)


@main.command()
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
    from .training.segments import parse_size, storage_lines

    budget = None if disk_budget is None else parse_size(disk_budget)
    k = record_every or config.training.record_every

    def show(num_params: int) -> None:
        if record_every or budget is not None or k > 1:
            lines = storage_lines(num_params, config.training.iterations, k, budget)
            click.echo("\n".join(lines))

    return show


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@option(
    "--out",
    type=click.Path(file_okay=False),
    show_default="runs/<config name>",
    help="Run directory.",
)
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
    from .config import AllocateConfig

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


@main.command(cls=RenamingCommand, renamed=RENAMED_FLAGS["allocate"])
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
    help="Arithmetic of the gradients; losses stay float32. auto: bfloat16 on CPUs with "
    "bf16 units, float32 elsewhere.",
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
    from .allocation import Execution, parse_gpus
    from .allocation import allocate as run_allocation

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


@main.command("verify-error")
@click.argument("run_dir", type=click.Path(file_okay=False))
@option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
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
    from .report import make_report

    if frames < 1:
        raise click.BadParameter("must be >= 1", param_hint="--frames")
    result = make_report(
        list(run_dirs), split=split, out_dir=out, vs=list(vs) or None, frames=frames
    )
    click.echo(result.headline())
    click.echo(f"report written to {result.out_dir}")


@main.command(cls=RenamingCommand, renamed=RENAMED_FLAGS["tensorboard"])
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
    from .report.tensorboard import write_tensorboard

    if histograms < 0:
        raise click.BadParameter("must be >= 0", param_hint="--histograms")
    written = write_tensorboard(list(run_dirs), out, max_histograms=histograms)
    for folder in written:
        click.echo(f"wrote {folder}")
    root = written[0].parent if len(written) == 1 else os.path.commonpath(written)
    click.echo(f"view with: tensorboard --logdir {root}")


@main.command()
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


@main.command("import")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("checkpoints", nargs=-1, required=True)
@option(
    "--out",
    type=click.Path(file_okay=False),
    show_default="runs/<config name>",
    help="Run directory.",
)
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
    from .training import checkpoints as imports

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


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@option(
    "--repair",
    is_flag=True,
    help="Mark the LCA blocks holding damaged chunks as not done (then `lca allocate`).",
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
        if fixed.blocks_reset:
            click.echo(
                f"repaired: {len(fixed.blocks_reset)} block(s) marked not done "
                f"({fixed.chunks_removed} damaged chunk(s) removed); now run "
                f"`lca allocate {run_dir}`"
            )
        if report.fatal or report.lost_iterations:
            click.echo("not repaired: the trajectory's damage cannot be recomputed (see above)")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
