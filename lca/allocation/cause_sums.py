"""The LCA of every cause (``allocate.causes``): each term of the optimiser's step, split into
first order and curvature, summed per layer and unit for every iteration of a block.

A[t, i] = Σ_k u⁽ᵏ⁾_i ∇_iL(θ_t) + Σ_k u⁽ᵏ⁾_i (ḡ_i − ∇_iL(θ_t)) exactly (`causes`); the
per-parameter shares would be 2·terms times the size of the LCA itself, so a block keeps only
their sums: ``<split>/causes/layer``, ``causes/unit/<layer>`` (store levels ``parameters``
and ``units``), ``causes/hurt_layer`` (the shares of entries with A[t, i] > 0 only) and the
replay's ``replay_residual``. Sums group the parameters as `lca.layout.LevelSums`
does (``ParameterLayout.unit_index``); a layer's sum is the sum of its units' sums
(`lca.layout.GroupSums`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import zarr

from ..config import Config, resolve_layer_settings
from ..layout import GroupSums, ParameterLayout
from ..storage import RunError, Trajectory
from .causes import (
    CURVATURE,
    FIRST_ORDER,
    TERM_NAMES,
    AdamReplay,
    ParameterSettings,
    Terms,
    optimizer_kind,
    residual_ratio,
    sgd_step_terms,
)
from .causes_torch_optim import TorchOptimizer

PARTS = (FIRST_ORDER, CURVATURE)
#: What trajectories that ``lca train``'s own optimiser made say in ``recorded_by``.
LCA_TRAIN = "lca train"
CAUSES_DESCRIPTION = (
    "causes/layer[t, k, p, l] = Σ over layer l of u_k,i ∇_iL(θ_t) (p = first_order) or "
    "u_k,i (ḡ_i − ∇_iL(θ_t)) (p = curvature), u_k the k-th term of the optimiser's step "
    "(attrs terms: signal = the whole train split's gradient as the optimiser follows it, "
    "deviation = what the mini-batch added, momentum/history = carried-over velocity or first "
    "moment, weight_decay, residual = recorded step − Σ other terms), ḡ the path-mean gradient "
    "of the split; Σ over k, p = layer_lca; causes/unit/<layer> the same per unit; "
    "causes/hurt_layer the same over the entries with A[t, i] > 0 only"
)


@dataclass(frozen=True)
class CauseModel:
    """Which terms a run's steps have, and the optimiser settings that make them."""

    kind: str  # key of causes.TERM_NAMES
    settings: ParameterSettings
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    weight_decay: float = 0.0
    torch_optimizer: TorchOptimizer | None = None  # torch.optim's settings (torch_* kinds)

    @property
    def terms(self) -> tuple[str, ...]:
        return TERM_NAMES[self.kind]

    @property
    def replays_batches(self) -> bool:
        """Adam/AdamW: the terms need the mini-batch gradients and the moments m, v."""
        return self.kind in ("adam", "adamw", "torch_adam", "torch_adamw")

    @property
    def carries_state(self) -> bool:
        """The terms need a state carried from iteration 0 (Adam's m, v; torch.optim.SGD's
        nesterov b), stored at every block's start in ``lca.zarr/replay_state``."""
        if self.torch_optimizer is not None:
            return self.torch_optimizer.carries_state
        return self.replays_batches

    @classmethod
    def of_run(
        cls, config: Config, layout_json: list[dict], attrs: Mapping | None = None
    ) -> CauseModel:
        """The run's optimiser: ``lca train``'s (the config's) or, where the trajectory's
        ``attrs`` describe one (``torch_optimizer``), the torch.optim optimiser recorded."""
        described = (attrs or {}).get("torch_optimizer")
        if described is not None:
            optimizer = TorchOptimizer.from_description(described, layout_json)
            settings = optimizer.parameter_settings()
            return cls(optimizer.kind, settings, torch_optimizer=optimizer)
        layout = ParameterLayout.from_json(layout_json)
        per_variable = resolve_layer_settings(config, layout)
        settings = ParameterSettings.from_variables(
            per_variable.lr,
            per_variable.momentum,
            per_variable.freeze_from,
            np.array([e.offset for e in layout.entries], np.int64),
            layout.total,
        )
        opt = config.optimizer
        return cls(
            optimizer_kind(opt.name, per_variable.momentum, opt.weight_decay),
            settings,
            opt.beta_1,
            opt.beta_2,
            opt.epsilon,
            opt.weight_decay if opt.name == "adamw" else 0.0,
        )

    def adam_replay(self, m: np.ndarray | None = None, v: np.ndarray | None = None):
        """The replay of a stateful optimiser from the state (m, v) of a block's start."""
        if self.torch_optimizer is not None:
            return self.torch_optimizer.replay(m, v)
        return AdamReplay(
            self.settings, self.beta_1, self.beta_2, self.epsilon, self.weight_decay, m, v
        )


def check_replayable(run_dir, trajectory: Trajectory, check_batches: bool = True) -> None:
    """A one-line RunError for a trajectory whose optimiser lca cannot replay.

    ``lca train``'s runs (either framework) and runs of torch.optim SGD, Adam and AdamW
    recorded by ``lca.torch.TrajectoryRecorder`` are replayed; Adam and AdamW need every
    step's examples (``batch_indices``), which ``check_batches`` checks. A run that stores θ
    every k steps or from checkpoints has no optimizer steps to replay.
    """
    from ..storage.trajectory import refuse_segments

    refuse_segments(trajectory, "--causes (the optimizer's terms of each step)")
    attrs = trajectory.attrs
    by = attrs.get("recorded_by", LCA_TRAIN)
    described = attrs.get("torch_optimizer")
    changed = attrs.get("torch_optimizer_changed_at")
    if described is not None and changed is not None:
        raise RunError(
            f"{run_dir}: --causes: the optimizer's hyperparameters changed at iteration "
            f"{changed} (a learning-rate schedule?); the replay knows only the recorded ones"
        )
    if described is not None:
        try:
            optimizer = TorchOptimizer.from_description(described, trajectory.layout_json)
        except RunError as exc:
            raise RunError(f"{run_dir}: {exc}") from None
        if check_batches and optimizer.kind != "torch_sgd":
            _check_batches(run_dir, trajectory, described.get("class"))
        return
    if by != LCA_TRAIN:
        raise RunError(
            f"{run_dir}: --causes needs a run trained by `lca train`; this one was recorded by "
            f"{by} (model.fit), whose optimiser lca does not replay"
        )


def _check_batches(run_dir, trajectory: Trajectory, name: str) -> None:
    """Every step of a recorded Adam/AdamW run names its examples (rows of -1 do not)."""
    missing = 0 if "batch_indices" not in trajectory.group else None
    if missing is None:
        array = trajectory.group["batch_indices"]
        rows = array.chunks[0]
        for first in range(0, array.shape[0], rows):
            unknown = ~(np.asarray(array[first : first + rows]) >= 0).any(axis=1)
            if unknown.any():
                missing = first + int(np.argmax(unknown))
                break
    if missing is not None:
        raise RunError(
            f"{run_dir}: --causes for torch.optim.{name} needs every step's mini-batch (its "
            f"moments are rebuilt from g_B), but step {missing} recorded no batch indices; pass "
            "batch_size= to TrajectoryRecorder and call recorder.batch(indices) every step"
        )


class LevelReducer:
    """Sums of products of two sets of (·, K) rows per unit and per layer, grouped as
    ``ParameterLayout.unit_index``, without forming the products.

    Each variable's blocks are reshaped to (before, units, after) around its unit axis and
    multiplied and summed over everything but the unit axis in one ``einsum`` (no BLAS: its
    threads wait on each other when the cores are busy); a layer's sum is the sum of its
    units'.
    """

    def __init__(self, layout_json: list[dict]) -> None:
        layout = ParameterLayout.from_json(layout_json)
        self.layers = list(layout.layers)
        counts = {layer: count for layer, (_, _, count) in layout.unit_index().items()}
        self.unit_counts = [counts[layer] for layer in self.layers]
        self.unit_starts = np.concatenate([[0], np.cumsum(self.unit_counts)]).astype(np.int64)
        self.unit_layers = GroupSums(
            np.repeat(np.arange(len(self.layers)), self.unit_counts), len(self.layers)
        )
        start_of = dict(zip(self.layers, self.unit_starts[:-1].tolist(), strict=True))
        own_units = {layer: 0 for layer in self.layers}
        for e in layout.entries:
            own_units[e.layer] = max(own_units[e.layer], e.num_units())
        # (offset, size, layer position, (before, units, after) or None for the shared unit
        # or a scalar, first unit column)
        self.product_plan = []
        for e in layout.entries:
            position, first, split = self.layers.index(e.layer), start_of[e.layer], None
            if e.unit_axis is None:  # the layer's shared unit comes after its own
                first += own_units[e.layer]
            elif e.shape:
                axis = e.unit_axis % len(e.shape)
                before = int(np.prod(e.shape[:axis]))
                split = (before, e.shape[axis], int(np.prod(e.shape[axis + 1 :])))
            self.product_plan.append((e.offset, e.size, position, split, first))

    @property
    def total_units(self) -> int:
        return int(self.unit_starts[-1])

    def unit_products(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(m, q, U) float64: Σ over each unit's entries i of rows[j, i] · weights[r, i]."""
        m, q = rows.shape[0], weights.shape[0]
        out = np.zeros((m, q, self.total_units))
        for offset, size, _, split, first in self.product_plan:
            a, w = rows[:, offset : offset + size], weights[:, offset : offset + size]
            if split is None:  # shared by the layer's units (or a scalar: its unit 0)
                out[:, :, first] += np.einsum("ji,ri->jr", a, w)
                continue
            before, units, after = split
            columns = out[:, :, first : first + units]
            if after == 1:  # a dense kernel (in, out) or a bias: units are the last axis
                columns += np.einsum(
                    "jau,rau->jru", a.reshape(m, before, units), w.reshape(q, before, units)
                )
            else:
                columns += np.einsum(
                    "jaub,raub->jru",
                    a.reshape(m, before, units, after),
                    w.reshape(q, before, units, after),
                )
        return out

    def layer_products(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(m, q, L) float64: Σ over each layer's entries i of rows[j, i] · weights[r, i]."""
        out = np.zeros((rows.shape[0], weights.shape[0], len(self.layers)))
        for offset, size, position, _, _ in self.product_plan:
            block = slice(offset, offset + size)
            out[:, :, position] += np.einsum("ji,ri->jr", rows[:, block], weights[:, block])
        return out

    def layers_from_units(self, units: np.ndarray) -> np.ndarray:
        """(…, L) float64 from (…, U) unit sums."""
        return self.unit_layers(units, dtype=None)

    def unit_columns(self, layer_position: int) -> slice:
        return slice(
            int(self.unit_starts[layer_position]), int(self.unit_starts[layer_position + 1])
        )


def describe_causes(causes: zarr.Group, model: CauseModel, layers: list[str]) -> None:
    """The attributes of a split's new ``causes`` group: the axes' names and what they mean
    (its arrays are in the table of `lca.storage.lca_arrays`)."""
    causes.attrs.update(
        {
            "terms": list(model.terms),
            "parts": list(PARTS),
            "optimizer": model.kind,
            "layers": layers,
            "description": CAUSES_DESCRIPTION,
        }
    )


class BlockCauses:
    """One block's cause sums, filled one iteration at a time."""

    def __init__(
        self,
        model: CauseModel,
        reducer: LevelReducer,
        splits,
        store_level: str,
        start: int,
        n: int,
        before: np.ndarray | None,
        replay: AdamReplay | None = None,
    ) -> None:
        self.model, self.reducer, self.splits = model, reducer, tuple(splits)
        self.start, self.replay = start, replay
        self.keep_units = store_level != "layers"
        nt, L, U = len(model.terms), len(reducer.layers), reducer.total_units
        self.layer = {s: np.empty((n, nt, 2, L)) for s in self.splits}
        self.hurt = {s: np.empty((n, nt, 2, L)) for s in self.splits}
        self.units = {s: np.empty((n, nt, 2, U)) for s in self.splits} if self.keep_units else {}
        self.residual = np.empty(n)
        self.previous_delta = before  # θ_start − θ_{start−1} (SGD's momentum), None at t = 0
        K, S = model.settings.lr.shape[0], len(self.splits)
        # reused every iteration: the terms (rows in model.terms' order), Δθ_t and Δθ_{t−1},
        # and per split its ∇L(θ_t) and ḡ − ∇L(θ_t), then the same on the hurting entries
        self.steps = np.empty((nt, K))
        self.deltas = [np.empty(K), np.empty(K)]
        self.weights = np.empty((2 * S, K))
        self.hurt_weights = np.empty((2 * S, K))

    def terms(self, k: int, theta0, theta1, train_grad, batch_grad=None) -> Terms:
        """The terms of iteration start + k from the recorded θ_t, θ_{t+1} (views of rows of
        `steps`, valid until the next call)."""
        t = self.start + k
        out = dict(zip(self.model.terms, self.steps, strict=True))
        if self.replay is not None:
            return self.replay.step(t, theta0, batch_grad, train_grad, theta_next=theta1, out=out)
        delta = self.deltas[k % 2]  # the other one holds Δθ_{t−1}
        np.subtract(theta1, theta0, out=delta, dtype=np.float64)
        terms = sgd_step_terms(
            t, delta, self.previous_delta, self.model.settings, train_grad, batch_grad, out
        )
        self.previous_delta = delta
        return terms

    def add(
        self,
        k: int,
        terms: Terms,
        grad_at_start: Mapping[str, np.ndarray],
        mean_grad: Mapping[str, np.ndarray],
        lca: Mapping[str, np.ndarray],
    ) -> None:
        """Row k: every split's shares of ``terms``, summed (``lca``: the stored float32 A).

        The shares u_k·∇L(θ_t) and u_k·(ḡ − ∇L(θ_t)) of every term and split are summed as
        products (`LevelReducer.unit_products`), never formed one by one.
        """
        self.residual[k] = residual_ratio(terms)
        steps = self.steps
        for j, name in enumerate(self.model.terms):  # made by :meth:`terms`: in place already
            if np.asarray(terms[name]).ctypes.data != steps[j].ctypes.data:
                steps[j] = terms[name]
        weights, hurting = self.weights, self.hurt_weights
        for i, s in enumerate(self.splits):
            g0, bend = weights[2 * i], weights[2 * i + 1]
            g0[:] = grad_at_start[s]
            np.subtract(mean_grad[s], g0, out=bend)
            hurts = np.greater(lca[s], 0)
            np.multiply(weights[2 * i : 2 * i + 2], hurts, out=hurting[2 * i : 2 * i + 2])
        units = self.reducer.unit_products(steps, weights)  # (nt, 2S, U)
        layers = self.reducer.layers_from_units(units)
        hurt = self.reducer.layer_products(steps, hurting)
        for i, s in enumerate(self.splits):
            parts = slice(2 * i, 2 * i + 2)
            self.layer[s][k] = layers[:, parts]
            self.hurt[s][k] = hurt[:, parts]
            if self.keep_units:
                self.units[s][k] = units[:, parts]

    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """Per split, ``causes/...`` name → rows of this block."""
        out = {}
        for s in self.splits:
            arrays = {"causes/layer": self.layer[s], "causes/hurt_layer": self.hurt[s]}
            if self.keep_units:
                for position, layer in enumerate(self.reducer.layers):
                    columns = self.reducer.unit_columns(position)
                    arrays[f"causes/unit/{layer}"] = self.units[s][..., columns]
            out[s] = arrays
        return out
