"""TensorBoard event files of allocated runs, to watch LCA, losses and errors over iterations.

``write_tensorboard(["runs/a", "runs/b"], "runs/tensorboard")`` writes, per run, into
``LOGDIR/<run name>/``::

    training/   the trajectory: mini-batch ``loss`` and ``accuracy`` of each update (step t:
                θ_t's batch); as text, the settings the run uses (its config without
                other models' and optimisers' keys) and a summary of what was written
    <split>/    per allocated split (train, val):
                ``loss``                      L(θ_t) over the whole split, step t
                ``lca/<layer>``, ``lca/total``  Σ A[t, i] per layer (and all), step t
                ``lca_cumulative/<layer>``, ``lca_cumulative/total``  their running sums
                ``helped_pct/<layer>``        % of the layer's non-zero A[t, i] that are < 0
                                              (``store: parameters``), or
                ``helped_units_pct/<layer>``  % of its units whose summed LCA is < 0
                                              (``store: units``)
                ``conservation_error/rule``, ``conservation_error/first_order``
                                              (L(θ_t+1) − L(θ_t)) − Σ_i A[t, i] of the
                                              accepted rule (simpson or adaptive) and of
                                              first order
                ``sub_intervals``             sub-intervals the accepted rule used
                ``lca_hist/<layer>``          histogram of the layer's A[t, i] at every
                                              iteration, or at ``max_histograms`` (50)
                                              evenly spaced ones of a longer run
                                              (``store: parameters``)
                ``accuracy`` (val only)       the validation accuracy of θ_t+1 recorded by
                                              ``lca train`` every ``log_every`` iterations
                ``causes/<term>_<part>/<layer>``, ``causes/<term>_<part>/total``
                                              the layer's LCA split by update term (signal,
                                              deviation, momentum or history, weight_decay,
                                              residual) × part (first_order, curvature),
                                              step t (runs allocated with ``--causes``)
    training/   also ``replay_residual``: ‖r‖/‖Δθ‖ of iteration t, what the replay of the
                optimiser did not reproduce (``--causes``)

The same tags in every split and run, so one chart of ``tensorboard --logdir LOGDIR`` overlays
train and validation, and the runs side by side. Only (T, L)-sized series are held in memory;
per-parameter LCA is streamed in row blocks (helped fractions) or read one row per histogram.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml
from tensorboard.plugins.scalar.metadata import create_summary_metadata

from ..analysis import cause_names, helped_fractions
from ..storage import CONFIG_FILE, Run, location, open_run

BLOCK_ROWS = 4096  # iterations written per call of a compiled writer (memory stays (block, tags))
MAX_HISTOGRAMS = 50  # histogram slices per layer and split: keeps the event files small
HISTOGRAM_BUCKETS = 30

# what tf.summary.scalar tags its points with; written directly, a tag inside a tf.function's
# loop is not prefixed with the loop's name scope ("while/")
SCALAR = create_summary_metadata(display_name=None, description=None).SerializeToString()
Series = tuple[list[str], Sequence, np.ndarray]  # tags, their (n,) columns, the n steps
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.")


def write_tensorboard(
    run_dirs: Sequence[str | os.PathLike],
    logdir: str | os.PathLike | None = None,
    *,
    max_histograms: int = MAX_HISTOGRAMS,
    chunk_rows: int = 64,
) -> list[Path]:
    """Write each run's event files into ``logdir/<run name>``; return those directories.

    ``logdir`` defaults to ``tensorboard/`` beside the runs (in their common parent folder),
    so exports of several runs, made together or one after another, land side by side. The
    run name is the run's path relative to that common folder (its folder name for one run).
    Rewriting a run replaces its earlier event files instead of adding duplicate points.
    What the run's store level does not keep is skipped with one warning per run.
    """
    runs = [location(d) for d in dict.fromkeys(os.fspath(d) for d in run_dirs)]
    if not runs:
        raise ValueError("no run directories given")
    parent = _common_parent(runs)
    root = location(logdir) if logdir is not None else parent / "tensorboard"
    written = []
    for run_dir in runs:
        if len(runs) == 1:
            name = run_dir.name
        else:
            name = Path(os.path.abspath(run_dir)).relative_to(parent).as_posix()
        written.append(_write_run(open_run(run_dir), root / name, max_histograms, chunk_rows))
    return written


def _common_parent(runs: Sequence[Path]) -> Path:
    """The folder holding every run (a lone run's parent): where a shared logdir belongs."""
    if len(runs) == 1:
        return runs[0].parent
    return Path(os.path.commonpath([os.path.abspath(r) for r in runs]))


def _write_run(run: Run, out: Path, max_histograms: int, chunk_rows: int) -> Path:
    notes = _level_notes(run)
    lacking = [note for note in notes if not note.startswith(NO_CAUSES)]  # --causes: optional
    if lacking:
        warnings.warn(f"{run.path}: {' '.join(lacking)}", stacklevel=3)
    splits = run.splits
    if splits:
        run.require_allocated()
    for sub in dict.fromkeys(["training", *splits, "val"]):
        _clear_events(out / sub)
    val_accuracy = _val_accuracy(run)
    for split in splits:
        with _writer(out / split):
            series = _split_series(run, split, chunk_rows)
            if run.has_causes:
                series.append(_cause_series(run, split))
            if split == "val" and val_accuracy is not None:
                series.append(val_accuracy)
            _write_scalars(series)
            if run.store_level == "parameters":
                _write_histograms(run, split, max_histograms)
    if "val" not in splits and val_accuracy is not None:
        with _writer(out / "val"):
            _write_scalars([val_accuracy])
    with _writer(out / "training"):
        group = run.trajectory.group
        steps = np.arange(run.num_iterations)
        _write_scalars([(["loss", "accuracy"], [group["loss"], group["accuracy"]], steps)])
        if splits and run.has_causes:
            residual = np.asarray(run.replay_residual(), np.float64)
            _write_scalars([(["replay_residual"], [residual], np.arange(residual.shape[0]))])
        tf.summary.text("config", _config_text(run), step=0)
        tf.summary.text("summary", _summary(run, notes), step=0)
    return out


NO_CAUSES = "allocated without --causes"


def _level_notes(run: Run) -> list[str]:
    """What this run's store cannot show, as one sentence (empty when nothing is missing)."""
    if not run.splits:
        return ["not allocated: only the mini-batch metrics and the config are written."]
    notes = []
    level = run.store_level
    if level != "parameters":
        if level == "units":
            what = "% helped is the share of units (helped_units_pct), not of parameters"
        else:
            what = "no % helped"
        notes.append(
            f"store: {level} keeps no per-parameter LCA, so {what} and no per-layer "
            "histograms are written (reallocate with --store parameters for them)."
        )
    if not run.has_causes:
        notes.append(
            f"{NO_CAUSES}: no causes/ scalars nor replay_residual are written "
            f"(`lca allocate {run.path} --causes` adds them)."
        )
    return notes


def _cause_series(run: Run, split: str) -> Series:
    """``causes/<term>_<part>/<layer>`` and ``…/total``: (T,) columns of the (T, terms, 2, L)
    cause sums, small on every store level."""
    causes = np.asarray(run.cause_layer_lca(split), np.float64)
    flat = causes.reshape(causes.shape[0], -1, causes.shape[-1])  # (T, causes, L)
    tags, columns = [], []
    for k, name in enumerate(cause_names(run.cause_terms)):
        tags += [f"causes/{name}/{layer}" for layer in run.layer_names]
        tags.append(f"causes/{name}/total")
        columns += [*flat[:, k, :].T, flat[:, k, :].sum(axis=1)]
    return tags, columns, np.arange(causes.shape[0])


def _clear_events(folder: Path) -> None:
    """Drop earlier event files, so a rewrite replaces a run's points instead of doubling them."""
    if folder.is_dir():
        for path in folder.iterdir():
            if _EVENT_FILE.match(path.name) and path.is_file():
                path.unlink()


@contextlib.contextmanager
def _writer(folder: Path) -> Iterator[None]:
    """A file writer made the default for the ``with`` body, then flushed and closed."""
    writer = tf.summary.create_file_writer(str(folder))
    try:
        with writer.as_default():
            yield
    finally:
        writer.close()


def _split_series(run: Run, split: str, chunk_rows: int) -> list[Series]:
    """The scalar series of one allocated split, each (T+1,) or (T,): small on every level."""
    layers = run.layer_names
    loss = run.loss(split)
    per_layer = run.layer_lca(split, chunk_rows)  # (T, L) float64
    per_layer = np.concatenate([per_layer, per_layer.sum(axis=1, keepdims=True)], axis=1)
    names = [*layers, "total"]
    tags = [f"lca/{n}" for n in names] + [f"lca_cumulative/{n}" for n in names]
    columns = [*per_layer.T, *np.cumsum(per_layer, axis=0).T]
    group = run.lca_store[split]
    tags += ["conservation_error/rule", "conservation_error/first_order", "sub_intervals"]
    columns += [group["error"], group["error_fo"], run.intervals(split)]
    if run.store_level == "parameters":
        helped = helped_fractions(run.lca(split), run.layout.layer_index(), len(layers), chunk_rows)
        tags += [f"helped_pct/{n}" for n in layers]
        columns += list(helped.helped_per_layer.T)
    elif run.store_level == "units":
        for layer, units in run.unit_lcas(split, chunk_rows=chunk_rows).items():
            share = helped_fractions(units, np.zeros(units.shape[1], np.int64), 1, chunk_rows)
            tags.append(f"helped_units_pct/{layer}")
            columns.append(share.helped)
    return [
        (["loss"], [loss], np.arange(loss.shape[0])),
        (tags, columns, np.arange(per_layer.shape[0])),
    ]


def _write_scalars(series: Sequence[Series]) -> None:
    """Every series into the default writer, in row blocks, by one compiled function.

    Eager ``tf.summary.scalar`` costs about 0.3 ms a point, which is minutes for a long run
    with many layers; a loop inside a ``tf.function`` writes a point in microseconds. The
    function captures the writer, so each writer traces its own (once), which TensorFlow
    would report as excessive retracing: its logger is quietened for the call.
    """
    series = [(list(tags), columns, np.asarray(steps)) for tags, columns, steps in series]
    signature = []
    for tags, _, _ in series:
        signature += [tf.TensorSpec([None, len(tags)], tf.float64), tf.TensorSpec([None], tf.int64)]

    @tf.function(input_signature=signature)
    def write(*blocks: tf.Tensor) -> None:
        for (tags, _, _), values, at in zip(series, blocks[::2], blocks[1::2]):
            for i in tf.range(tf.shape(values)[0]):
                for j, tag in enumerate(tags):
                    tf.summary.write(tag, tf.cast(values[i, j], tf.float32), at[i], SCALAR)

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        for start in range(0, max(len(steps) for _, _, steps in series), BLOCK_ROWS):
            blocks = []
            for tags, columns, steps in series:
                stop = min(len(steps), start + BLOCK_ROWS)
                rows = [np.asarray(c[start:stop], np.float64) for c in columns]
                block = np.stack(rows, axis=1) if stop > start else np.zeros((0, len(tags)))
                blocks += [tf.constant(block), tf.constant(steps[start:stop], dtype=tf.int64)]
            write(*blocks)
    finally:
        logger.setLevel(level)


def histogram_iterations(num_iterations: int, most: int = MAX_HISTOGRAMS) -> np.ndarray:
    """The iterations that get histograms: every one of a short run, else ``most`` evenly
    spaced from the first to the last (TensorBoard draws each as one slice)."""
    if num_iterations < 1 or most < 1:
        return np.zeros(0, dtype=np.int64)
    if most == 1:
        return np.array([num_iterations - 1], dtype=np.int64)
    return np.unique(np.linspace(0, num_iterations - 1, most).round().astype(np.int64))


def _write_histograms(run: Run, split: str, max_histograms: int) -> None:
    """Per layer, the distribution of its per-parameter A[t, i] at up to ``max_histograms``
    evenly spaced iterations (one row of the store read for each)."""
    lca = run.lca(split)
    slices = run.layout.layer_slices()
    at = histogram_iterations(run.num_iterations, max_histograms)
    for t in at:
        row = np.asarray(lca[int(t)])
        for layer, parts in slices.items():
            values = np.concatenate([row[s] for s in parts])
            tf.summary.histogram(
                f"lca_hist/{layer}", values, step=int(t), buckets=HISTOGRAM_BUCKETS
            )


def _val_accuracy(run: Run) -> Series | None:
    """The validation accuracy ``lca train`` recorded, of θ_t+1 at step t + 1, where measured."""
    values = run.trajectory.group.get("val_accuracy", None)
    if values is None:
        return None
    values = np.asarray(values[:], dtype=np.float64)
    measured = np.flatnonzero(np.isfinite(values))
    return (["accuracy"], [values[measured]], measured + 1) if measured.size else None


def _config_text(run: Run) -> str:
    """The settings this run's model, data set and optimiser use, as a YAML code block: the
    sizes of other networks and the coefficients of other optimisers are left out."""
    used = yaml.safe_dump(run.config.used_dict(), sort_keys=False)
    return _code_block(f"# the settings in use ({CONFIG_FILE} has them all)\n{used}")


def _code_block(text: str) -> str:
    """Markdown that TensorBoard's text tab shows verbatim (indented code)."""
    return "\n".join("    " + line for line in text.splitlines())


def _summary(run: Run, notes: list[str]) -> str:
    lines = [
        f"run: `{run.path}`",
        f"iterations: {run.num_iterations}; layers: {', '.join(run.layer_names)}",
    ]
    if run.splits:
        lines += [
            f"allocated splits: {', '.join(run.splits)} ({run.allocated_with})",
            f"store level: {run.store_level}",
        ]
    lines += [f"note: {note}" for note in notes]
    return "\n\n".join(lines)
