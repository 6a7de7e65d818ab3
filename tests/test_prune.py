"""lca prune: masks are the claimed rankings, fractions exact, 0 % is the allocation's θ_T."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, set_theta

import lca
from lca.cli import main
from lca.pruning import (
    CRITERIA,
    importance,
    lca_sums,
    prunable_indices,
    pruning_mask,
    scope_groups,
)
from lca.pruning.evaluation import PruningEvaluator, SplitScore
from lca.storage import RunError, open_run

FRACTIONS = (0.5, 0.9)
SEEDS = 3


class Recorder:
    """An evaluation that keeps a copy of every θ it was asked about, in order."""

    def __init__(self, evaluate) -> None:
        self.evaluate = evaluate
        self.thetas: list[np.ndarray] = []

    def __call__(self, theta: np.ndarray):
        self.thetas.append(np.array(theta, copy=True))
        return self.evaluate(theta)


def constant_score(theta: np.ndarray) -> dict[str, SplitScore]:
    """A stand-in evaluation for tests of the masks alone (no TensorFlow)."""
    return {"train": SplitScore(1.0, 0.5), "val": SplitScore(1.0, 0.5)}


@pytest.fixture(scope="module")
def run_dir(allocated_tiny_run) -> Path:
    """tiny_fc allocated (read-only: ``lca prune`` writes to an --out of its own here)."""
    return allocated_tiny_run


@pytest.fixture(scope="module")
def evaluator(run_dir) -> PruningEvaluator:
    return PruningEvaluator(run_dir, ("train", "val"))


@pytest.fixture(scope="module")
def pruned(run_dir, evaluator, tmp_path_factory) -> dict:
    """Every criterion at two fractions, global and per layer, with the θs evaluated."""
    out = {}
    for scope in ("global", "layer"):
        recorder = Recorder(evaluator)
        table = lca.prune(
            run_dir,
            fractions=FRACTIONS,
            scope=scope,
            seeds=SEEDS,
            out=tmp_path_factory.mktemp(f"prune_{scope}"),
            evaluate=recorder,
        )
        out[scope] = (table, recorder.thetas)
    return out


def evaluated_masks(thetas: list[np.ndarray], theta_T: np.ndarray) -> dict:
    """(criterion, fraction, seed) -> the zeroed weights, in the order ``prune`` evaluates."""
    assert np.all(theta_T != 0)  # so a zero in a pruned θ is a pruned weight
    keys = [
        (c, f, seed)
        for c in CRITERIA
        for f in FRACTIONS
        for seed in (range(SEEDS) if c == "random" else [0])
    ]
    assert len(thetas) == 1 + len(keys)
    return {key: theta == 0 for key, theta in zip(keys, thetas[1:])}


def independent_importance(run, criterion: str, seed: int) -> np.ndarray:
    """Each criterion straight from the stored arrays, read whole (larger = kept)."""
    lca_all = run.lca("train")[:].astype(np.float64)
    T = lca_all.shape[0]
    theta_0, theta_T = run.theta[0].astype(np.float64), run.theta[T].astype(np.float64)
    return {
        "lca": lambda: -lca_all.sum(axis=0),
        "lca-abs": lambda: np.abs(lca_all.sum(axis=0)),
        "lca-late": lambda: -lca_all[T - math.ceil(T / 4) :].sum(axis=0),
        "magnitude": lambda: np.abs(theta_T),
        "movement": lambda: np.abs(theta_T - theta_0),
        "random": lambda: np.random.default_rng(seed).random(theta_T.size),
    }[criterion]()


def kernel_groups(run, scope: str) -> dict[str, np.ndarray]:
    kernels = [e for e in run.layout.entries if e.name.endswith("kernel")]
    if scope == "global":
        return {"global": np.concatenate([np.arange(e.offset, e.offset + e.size) for e in kernels])}
    return {e.layer: np.arange(e.offset, e.offset + e.size) for e in kernels}  # one per layer


def test_pruning_nothing_is_the_allocations_theta_T(run_dir, pruned, evaluator):
    """0 %: θ_T itself, whose loss is bitwise the allocation's stored L(θ_T)."""
    run = open_run(run_dir)
    table, thetas = pruned["global"]
    assert np.array_equal(thetas[0], run.theta[run.num_iterations])
    for split in ("train", "val"):
        assert table.unpruned.loss[split] == run.loss(split)[-1]
        assert table.stored_loss[split] == run.loss(split)[-1]
    # the accuracy from a plain Keras forward pass of the same model at θ_T
    model = evaluator.objective.model
    set_theta(model, run.layout, thetas[0])
    from lca.data import load_dataset

    dataset = load_dataset(run.config.data, run_dir)
    for split in ("train", "val"):
        x, y = dataset.split(split)
        predicted = np.argmax(np.asarray(model(x, training=True)), axis=-1)
        assert table.unpruned.accuracy[split] == pytest.approx(np.mean(predicted == y), abs=0)
    assert table.unpruned.zeroed == 0


def test_each_mask_is_its_criterions_ranking(run_dir, pruned):
    run = open_run(run_dir)
    theta_T = run.theta[run.num_iterations]
    for scope in ("global", "layer"):
        masks = evaluated_masks(pruned[scope][1], theta_T)
        groups = kernel_groups(run, scope)
        for (criterion, fraction, seed), mask in masks.items():
            score = independent_importance(run, criterion, seed)
            expected = np.zeros_like(mask)
            for members in groups.values():
                order = np.lexsort((members, score[members]))  # least important, then index
                expected[members[order[: round(fraction * members.size)]]] = True
                # every pruned weight ranks at most as high as every kept one
                cut, kept = score[members][mask[members]], score[members][~mask[members]]
                assert cut.max() <= kept.min(), (criterion, scope, fraction)
            assert np.array_equal(mask, expected), (criterion, scope, fraction, seed)


def test_streamed_lca_sums_are_the_whole_arrays_sums(run_dir):
    run = open_run(run_dir)
    whole = run.lca("train")[:].astype(np.float64)
    total, late = lca_sums(run.lca("train"), late_start=30, chunk_rows=3)
    assert np.array_equal(total, whole.sum(axis=0))
    assert np.array_equal(late, whole[30:].sum(axis=0))
    # lca helps where the sum is negative: the most helpful weight ranks first
    best = np.argmax(importance("lca", None, run.theta[0], total, late))
    assert total[best] == total.min() < 0


def test_pruned_fractions_are_exact_per_scope(run_dir, pruned):
    run = open_run(run_dir)
    theta_T = run.theta[run.num_iterations]
    for scope in ("global", "layer"):
        table, thetas = pruned[scope]
        groups = kernel_groups(run, scope)
        assert table.groups == {name: g.size for name, g in groups.items()}
        for (criterion, fraction, _), mask in evaluated_masks(thetas, theta_T).items():
            for members in groups.values():
                assert mask[members].sum() == round(fraction * members.size)
            row = table.row(criterion, fraction)
            assert row.zeroed_by_scope == {n: round(fraction * g.size) for n, g in groups.items()}
    assert len(kernel_groups(run, "layer")) == 2  # tiny_fc: two dense layers


def test_biases_are_untouched_by_default(run_dir, pruned):
    run = open_run(run_dir)
    theta_T = run.theta[run.num_iterations]
    biases = [e for e in run.layout.entries if not e.name.endswith("kernel")]
    assert biases
    for thetas in (pruned["global"][1], pruned["layer"][1]):
        for theta in thetas:
            for e in biases:
                window = slice(e.offset, e.offset + e.size)
                assert np.array_equal(theta[window], theta_T[window]), e.name
    # with --include all every parameter may go
    everything = prunable_indices(run.layout, "all")
    assert np.array_equal(everything, np.arange(run.layout.total))
    mask = pruning_mask(
        np.abs(theta_T.astype(np.float64)), scope_groups(run.layout, everything, "global"), 0.9
    )
    assert any(mask[e.offset : e.offset + e.size].any() for e in biases)


def test_random_pruning_is_reproducible_per_seed(run_dir, pruned, tmp_path):
    run = open_run(run_dir)
    theta_T = run.theta[run.num_iterations]
    again = Recorder(constant_score)
    lca.prune(run_dir, by="random", fractions=FRACTIONS, seeds=2, out=tmp_path, evaluate=again)
    first = evaluated_masks(pruned["global"][1], theta_T)
    for i, (f, seed) in enumerate((f, s) for f in FRACTIONS for s in range(2)):
        assert np.array_equal(again.thetas[1 + i] == 0, first[("random", f, seed)])
    assert not np.array_equal(first[("random", 0.5, 0)], first[("random", 0.5, 1)])
    table = pruned["global"][0]
    row = table.row("random", 0.5)
    assert row.seeds == tuple(range(SEEDS)) and row.accuracy_std["val"] > 0


def test_a_units_store_names_the_reallocation(fresh_run, tmp_path):
    from lca.allocation import allocate

    run_dir = fresh_run("tiny_fc")
    allocate(run_dir, store="units", iterations=(0, 8), progress=False)
    with pytest.raises(RunError) as caught:
        lca.prune(run_dir, by="magnitude,lca", out=tmp_path, evaluate=constant_score)
    assert_one_line_error(caught, f"lca allocate {run_dir} --store parameters --restart")
    result = CliRunner().invoke(main, ["prune", str(run_dir), "--by", "lca-late"])
    assert_one_line_error(result.stderr, "--store parameters", alone=True)
    assert result.exit_code == 2
    # the criteria that need no LCA still work on it
    table = lca.prune(run_dir, by="magnitude", out=tmp_path, evaluate=constant_score)
    assert table.criteria == ["magnitude"]


def test_cli_writes_json_markdown_and_figure(allocated_copy):
    run_dir = allocated_copy("tiny_fc")  # the results go into the run
    args = ["prune", str(run_dir), "--by", "lca,magnitude,random", "--seeds", "2"]
    result = CliRunner().invoke(main, [*args, "--fractions", "0.5,0.9", "--scope", "layer"])
    assert result.exit_code == 0, result.output
    out = run_dir / "prune"
    data = json.loads((out / "prune.json").read_text())
    assert data["scope"] == "layer" and data["evaluated_on"] == ["train", "val"]
    assert [(r["criterion"], r["fraction"]) for r in data["rows"]] == [
        (c, f) for c in ("lca", "magnitude", "random") for f in (0.5, 0.9)
    ]
    assert data["unpruned"]["loss"]["val"] == data["stored_loss"]["val"]
    markdown = (out / "prune.md").read_text()
    assert "| lca | " in markdown and "![" in markdown and "prune.png" in markdown
    best = {b["fraction"]: b["criteria"] for b in data["best"]}
    for row in data["rows"]:  # the best criterion really has the highest val accuracy
        top = max(r["accuracy"]["val"] for r in data["rows"] if r["fraction"] == row["fraction"])
        assert (row["accuracy"]["val"] == top) == (row["criterion"] in best[row["fraction"]])
    assert (out / "prune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*partial*"))
    bad = CliRunner().invoke(main, ["prune", str(run_dir), "--by", "weight-norm"])
    assert bad.exit_code == 2 and "choose from lca, lca-abs" in bad.output
