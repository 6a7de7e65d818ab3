"""Run configuration: the schema, one typed dataclass per section of the YAML file.

One YAML file describes one run (model, data, optimizer, training, allocate). Each section's
dataclass holds its keys' names, types and defaults and checks its values (``validate``);
`Config` is the whole run. Reading a file into them is `lca.config.loading`'s job. The
one-line notes for old names (``note: OLD is now NEW``) are given here, once per process.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ..quadrature import RuleName

MODEL_NAMES = ("fc", "lenet", "resnet20", "allcnn")
TORCH_MODEL_NAMES = ("fc", "lenet")  # the built-ins that exist in both frameworks
LOSS_NAMES = ("sparse_categorical_crossentropy", "mean_squared_error")
CLASSIFICATION_LOSSES = ("sparse_categorical_crossentropy",)
USER_MODEL_KEYS = ("builder", "kwargs", "loss", "from_logits")
TRANSFORMER_KEYS = ("num_layers", "d_model", "num_heads", "d_mlp", "layer_norm", "vocab_size")
DATASET_NAMES = ("mnist", "cifar10", "synthetic", "modular")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
SPLIT_NAMES = ("train", "val")


IMAGE_DATASETS = ("mnist", "cifar10", "synthetic")


def only_for(*names: str, **field_options: Any) -> Any:
    """A field read only when its section's ``name`` is one of ``names`` (the model a
    size applies to, the optimiser a coefficient belongs to): `Config.used_dict`
    leaves it out otherwise."""
    return field(metadata={"only_for": names}, **field_options)


def _is_import_path(value: str) -> bool:
    """``package.module:function``: dotted identifiers, one colon."""
    module, sep, attr = value.partition(":")
    parts = [*module.split("."), *attr.split(".")]
    return bool(sep) and all(p.isidentifier() for p in parts)


class ConfigError(ValueError):
    """A configuration problem, worded as one line: ``key.path: problem in file``."""


class ModelError(ConfigError):
    """A user's model that cannot be built or allocated honestly (one line, naming the key)."""


@dataclass
class ModelConfig:
    """Which network to build; the size options exist for tiny test and quick-start runs.

    ``builder: "module:function"`` builds a user's Keras model instead of ``name``: the
    function is called with ``kwargs`` (after seeding) and returns a ``keras.Model``. The
    model's outputs are what ``loss`` compares with the labels: logits by default for the
    classification loss (``from_logits``), raw predictions for mean squared error.
    """

    name: Literal["fc", "lenet", "resnet20", "allcnn", "transformer"] = "fc"
    builder: str | None = None  # "module:function" returning a keras.Model
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the builder
    loss: Literal["sparse_categorical_crossentropy", "mean_squared_error"] = (
        "sparse_categorical_crossentropy"
    )
    from_logits: bool = True  # sparse_categorical_crossentropy only
    hidden_units: list[int] = only_for("fc", default_factory=lambda: [100, 50])  # fc
    conv_filters: list[int] = only_for("lenet", default_factory=lambda: [20, 40])  # lenet
    dense_units: int = only_for("lenet", default=400)  # lenet
    # resnet20 (16, 32, 64) and allcnn (96, 192)
    widths: list[int] | None = only_for("resnet20", "allcnn", default=None)
    blocks_per_stage: int = only_for("resnet20", default=3)  # resnet20
    # transformer: decoder-only over token sequences (data.name: modular), logits at the end
    num_layers: int = only_for("transformer", default=1)
    d_model: int = only_for("transformer", default=128)
    num_heads: int = only_for("transformer", default=4)
    d_mlp: int = only_for("transformer", default=512)
    # pre-norm blocks and a final norm when true
    layer_norm: bool = only_for("transformer", default=False)
    # default: num_classes + 1 (modular's tokens and "=")
    vocab_size: int | None = only_for("transformer", default=None)

    @property
    def classification(self) -> bool:
        """Whether the loss is a per-class cross-entropy (per-class LCA needs one)."""
        return self.loss in CLASSIFICATION_LOSSES

    def validate(self) -> dict[str, str]:
        problems = {}
        if self.builder is not None and not _is_import_path(self.builder):
            problems["builder"] = "must be 'module:function', e.g. mypkg.models:build"
        if self.kwargs and self.builder is None:
            problems["kwargs"] = "only applies with model.builder"
        if self.builder is None and self.loss != "sparse_categorical_crossentropy":
            problems["loss"] = "the built-in networks are classifiers; set model.builder"
        for key in ("hidden_units", "conv_filters", "widths"):
            values = getattr(self, key)
            if values is not None and any(v <= 0 for v in values):
                problems[key] = "all values must be > 0"
        if self.widths is not None:
            expected = {"resnet20": 3, "allcnn": 2}.get(self.name)
            if expected is not None and len(self.widths) != expected:
                problems["widths"] = f"{self.name} needs {expected} widths"
        if self.dense_units <= 0:
            problems["dense_units"] = "must be > 0"
        if self.blocks_per_stage <= 0:
            problems["blocks_per_stage"] = "must be > 0"
        for key in ("num_layers", "d_model", "num_heads", "d_mlp"):
            if getattr(self, key) <= 0:
                problems[key] = "must be > 0"
        if self.num_heads > 0 and self.d_model % self.num_heads:
            problems["num_heads"] = f"must divide d_model ({self.d_model})"
        if self.vocab_size is not None and self.vocab_size <= 0:
            problems["vocab_size"] = "must be > 0"
        return problems


@dataclass
class SyntheticConfig:
    """Deterministic class-template images plus noise: learnable, tiny, offline."""

    image_shape: list[int] = field(default_factory=lambda: [8, 8, 1])
    num_classes: int = 10
    num_examples: int = 600
    noise: float = 0.5
    seed: int = 0

    def validate(self) -> dict[str, str]:
        problems = {}
        if len(self.image_shape) != 3 or any(v <= 0 for v in self.image_shape):
            problems["image_shape"] = "must be [height, width, channels], all > 0"
        if self.num_classes < 2:
            problems["num_classes"] = "must be >= 2"
        if self.num_examples <= 0:
            problems["num_examples"] = "must be > 0"
        if self.noise < 0:
            problems["noise"] = "must be >= 0"
        return problems


MODULAR_OPERATIONS = ("add", "subtract", "divide", "poly")


@dataclass
class ModularConfig:
    """Every pair (a, b) of 0..p-1 as the tokens ``a b =``, labelled ``a ∘ b mod p``.

    The algorithmic data of grokking studies (Power et al. 2022): ``poly`` is the
    non-commutative a² + ab + b² + a; ``divide`` is a · b⁻¹ and leaves out b = 0.
    ``train_fraction`` of the pairs, drawn with ``data.split_seed``, are the training set
    and the rest the validation set (``val_size`` and ``train_size`` do not apply).
    """

    p: int = 113
    operation: Literal["add", "subtract", "divide", "poly"] = "add"
    train_fraction: float = 0.3

    def validate(self) -> dict[str, str]:
        problems = {}
        if self.p < 2 or any(self.p % k == 0 for k in range(2, int(self.p**0.5) + 1)):
            problems["p"] = "must be a prime (every b ≠ 0 must have an inverse mod p)"
        if not 0 < self.train_fraction < 1:
            problems["train_fraction"] = "must be in (0, 1)"
        return problems


@dataclass
class DataConfig:
    """Dataset and the paper's split: ``val_size`` examples held out of the training set."""

    name: Literal["mnist", "cifar10", "synthetic", "modular"] = "mnist"
    # "module:function" returning the train and validation data instead of ``name`` (see
    # lca.data.load_builder_dataset); it must give the same arrays, in the same order, each call
    builder: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the builder
    # local mnist.npz, CIFAR python batches dir or tar.gz
    path: str | None = only_for("mnist", "cifar10", default=None)
    # examples held out of the training set for validation
    val_size: int = only_for(*IMAGE_DATASETS, default=5000)
    split_seed: int = 0  # seed of the random train/validation split
    # use only the first N training examples (quick runs)
    train_size: int | None = only_for(*IMAGE_DATASETS, default=None)
    synthetic: SyntheticConfig = only_for("synthetic", default_factory=SyntheticConfig)
    modular: ModularConfig = only_for("modular", default_factory=ModularConfig)

    def validate(self) -> dict[str, str]:
        problems = {}
        if self.builder is not None and not _is_import_path(self.builder):
            problems["builder"] = "must be 'module:function', e.g. mypkg.data:load"
        if self.kwargs and self.builder is None:
            problems["kwargs"] = "only applies with data.builder"
        if self.val_size <= 0:
            problems["val_size"] = "must be > 0"
        if self.train_size is not None and self.train_size <= 0:
            problems["train_size"] = "must be > 0"
        return problems


@dataclass
class LayerOverride:
    """Per-layer optimiser settings; the layer names are those ``lca describe`` prints."""

    lr: float | None = None
    momentum: float | None = None
    freeze_from: int | None = None  # frozen (no update at all) from this iteration on

    def validate(self) -> dict[str, str]:
        problems = {}
        if self.lr is not None and self.lr < 0:
            problems["lr"] = "must be >= 0"
        if self.momentum is not None and not 0 <= self.momentum < 1:
            problems["momentum"] = "must be in [0, 1)"
        if self.freeze_from is not None and self.freeze_from < 0:
            problems["freeze_from"] = "must be >= 0"
        return problems


@dataclass
class OptimizerConfig:
    """SGD with (heavy-ball, Keras-style) momentum, Adam, or AdamW; no LR decay.

    AdamW's ``weight_decay`` is decoupled, as Keras applies it: before each Adam step every
    trained variable shrinks by ``lr · weight_decay · θ``. It moves θ, so LCA allocates the
    loss change it causes, but the decay term is not part of the loss that is allocated.
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = only_for("sgd", default=0.9)  # sgd only
    beta_1: float = only_for("adam", "adamw", default=0.9)  # adam, adamw
    beta_2: float = only_for("adam", "adamw", default=0.999)  # adam, adamw
    epsilon: float = only_for("adam", "adamw", default=1e-7)  # adam, adamw
    weight_decay: float = only_for("adamw", default=0.0)  # adamw only (decoupled)
    layers: dict[str, LayerOverride] = field(default_factory=dict)

    def validate(self) -> dict[str, str]:
        problems = {}
        if self.lr <= 0:
            problems["lr"] = "must be > 0"
        if not 0 <= self.momentum < 1:
            problems["momentum"] = "must be in [0, 1)"
        for key in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, key) < 1:
                problems[key] = "must be in [0, 1)"
        if self.epsilon <= 0:
            problems["epsilon"] = "must be > 0"
        if self.weight_decay < 0:
            problems["weight_decay"] = "must be >= 0"
        elif self.weight_decay and self.name != "adamw":
            problems["weight_decay"] = "only applies to adamw (decoupled weight decay)"
        if self.name in ("adam", "adamw"):
            for layer, override in self.layers.items():
                if override.momentum is not None:
                    problems[f"layers.{layer}.momentum"] = "only applies to sgd"
        return problems


@dataclass
class TrainingConfig:
    """The training loop: fixed iterations of fixed mini-batches, reshuffled every epoch.

    ``batch_size: full`` takes every step on the whole training split (full-batch gradient
    descent, as grokking studies do); no per-iteration batch is recorded then.
    """

    iterations: int = 880
    batch_size: int | Literal["full"] = 250
    seed: int = 0
    # validation accuracy every N iterations (0: never): recorded in the trajectory
    # (val_accuracy), printed at most every 100
    log_every: int = 100
    # store θ every k optimizer steps (and the last one): each iteration of the allocation is
    # then the straight segment between two stored θ
    record_every: int = 1

    def validate(self) -> dict[str, str]:
        problems = {}
        if self.iterations <= 0:
            problems["iterations"] = "must be > 0"
        if self.record_every <= 0:
            problems["record_every"] = "must be >= 1"
        if self.batch_size != "full" and self.batch_size <= 0:
            problems["batch_size"] = "must be > 0 (or full)"
        if self.log_every < 0:
            problems["log_every"] = "must be >= 0"
        return problems


#: What ``allocate.precision`` may choose for the gradients.
Precision = Literal["auto", "float32", "bfloat16", "tf32"]
#: What ``allocate.store`` may keep per iteration.
StoreLevel = Literal["parameters", "units", "layers"]


@dataclass
class AllocateConfig:
    """How ``lca allocate`` evaluates the full-set loss and integrates along the path.

    The one definition of the allocate settings: their names, defaults, allowed values and
    checks. The config file, ``lca allocate``'s options and ``lca.allocate(run, **overrides)``
    all fill this object; `lca.allocation.AllocationSettings` is it resolved for a run.
    """

    splits: list[Literal["train", "val"]] = field(default_factory=lambda: ["train", "val"])
    eval_batch_size: int = 11000
    threshold: float = 1e-3
    max_intervals: int = 32  # most sub-intervals per iteration (a power of two)
    # the refinement sequence (lca.quadrature.RULES): "simpson" is the paper's composite
    # Simpson from 2 sub-intervals; "adaptive" starts from the trapezoid on the endpoints (one
    # new gradient per iteration) and refines to Simpson only where its error is too large
    # (the default: it met the agreement limits with "simpson" on every MNIST-FC set-up)
    rule: RuleName = "adaptive"
    # |error| within which "adaptive" accepts the trapezoid (default threshold / 10: its
    # errors share a sign along training and add up where Simpson's do not)
    trapezoid_threshold: float | None = None
    # arithmetic of the gradients (losses are always float32 with float64 sums): bfloat16 runs
    # the backward matrix products on bf16 units (TensorFlow only); tf32 runs the gradient
    # passes on TF32 tensor cores of GPUs and takes the losses from a float32 pass (the one
    # way to use TF32: it is off otherwise); an iteration still over the threshold after
    # refinement is recomputed in float32. "auto": bfloat16 on a CPU with bf16 units (AMX,
    # AVX512-BF16) for TensorFlow runs, float32 elsewhere
    precision: Precision = "auto"
    block_iterations: int | None = None  # iterations per block (default: storage chunk)
    jit_compile: bool = False
    # interior quadrature nodes reuse a first dense layer's pre-activations (exact up to
    # float rounding; about 13 % faster on MNIST-FC); false evaluates every node from scratch
    reuse_input_layer: bool = True
    # allocate the train split on a fixed random subset of this many examples (cheaper; the
    # conservation then holds for the subset loss); None uses every training example
    subset_size: int | None = None
    subset_seed: int = 0
    # with a subset: every check_every-th iteration also gets the exact full-set LCA to compare
    check_every: int | None = None
    # also split every LCA into per-class parts (L = Σ_c N_c/N · L_c): per layer and per
    # output unit; the full (T, classes, K) array only with per_class_full (C times the size)
    per_class: bool = False
    per_class_full: bool = False
    # what is kept per iteration (docs/storage.md#store-levels): "parameters" the (T, K)
    # LCA; "units" only its float64 sums per output unit and per layer; "layers" per layer only
    store: StoreLevel = "parameters"
    # also keep the full-set gradient at every θ_t, (T+1, K): only oscillation measures read it
    store_grad: bool = True
    # also split every LCA by its cause (docs/storage.md): the optimiser step's terms (signal,
    # mini-batch deviation, momentum/history, weight decay, replay residual) × first order /
    # curvature, summed per layer and unit; needs the train split and no subset or per_class
    causes: bool = False

    def validate(self) -> dict[str, str]:
        problems = {}
        if not self.splits:
            problems["splits"] = "name at least one of train, val"
        elif len(set(self.splits)) != len(self.splits):
            problems["splits"] = "names a split twice"
        if self.eval_batch_size <= 0:
            problems["eval_batch_size"] = "must be > 0"
        if self.threshold <= 0:
            problems["threshold"] = "must be > 0"
        if self.max_intervals < 2 or self.max_intervals & (self.max_intervals - 1):
            problems["max_intervals"] = "must be a power of two >= 2"
        if self.trapezoid_threshold is not None:
            if self.trapezoid_threshold <= 0:
                problems["trapezoid_threshold"] = "must be > 0"
            elif self.rule != "adaptive":
                problems["trapezoid_threshold"] = "applies to rule: adaptive only"
        if self.precision not in ("float32", "auto") and self.per_class:
            problems["precision"] = "allocate.per_class needs precision: float32"
        if self.block_iterations is not None and self.block_iterations <= 0:
            problems["block_iterations"] = "must be > 0"
        if self.subset_size is not None and self.subset_size <= 0:
            problems["subset_size"] = "must be > 0"
        if self.subset_seed < 0:
            problems["subset_seed"] = "must be >= 0"
        if self.check_every is not None:
            if self.check_every <= 0:
                problems["check_every"] = "must be > 0"
            elif self.subset_size is None:
                problems["check_every"] = (
                    "compares a subset with the full set; set allocate.subset_size"
                )
        if self.per_class_full and not self.per_class:
            problems["per_class_full"] = "needs allocate.per_class: true"
        if self.subset_size is not None and "train" not in self.splits:
            problems["subset_size"] = "subsets the train split; allocate the train split"
        if self.causes:
            if "train" not in self.splits:
                problems["causes"] = "the signal term is the train split's gradient: allocate train"
            elif self.subset_size is not None:
                problems["causes"] = "the signal term needs the whole train split, not a subset"
            elif self.per_class:
                problems["causes"] = "not together with allocate.per_class"
        return problems


@dataclass
class Config:
    """A whole run; ``name`` defaults to the file's stem and names the run directory."""

    name: str = "run"
    # which framework builds, trains and differentiates the model; torch: model.name fc or
    # lenet (the TensorFlow networks' twins) or a model.builder returning a torch.nn.Module
    framework: Literal["tensorflow", "torch"] = "tensorflow"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    allocate: AllocateConfig = field(default_factory=AllocateConfig)

    def validate(self) -> dict[str, str]:
        problems = {}
        if self.framework == "torch":
            problems.update(self._torch_problems())
        if self.allocate.per_class and not self.model.classification:
            problems["allocate.per_class"] = f"needs a classification loss, not {self.model.loss}"
        builtin = self.data.builder is None and self.model.builder is None
        tokens = self.data.name == "modular"
        if builtin and tokens and self.model.name != "transformer":
            problems["data.name"] = (
                "modular data are token sequences: the built-in image networks cannot read "
                "them; use model.name: transformer (or a model.builder taking (3,) int tokens)"
            )
        if builtin and not tokens and self.model.name == "transformer":
            problems["model.name"] = (
                f"the transformer reads token sequences (data.name: modular), not "
                f"{self.data.name} images"
            )
        return problems

    def _torch_problems(self) -> dict[str, str]:
        """What a torch run cannot do (yet): one line each, naming the key."""
        problems = {}
        if self.model.builder is None and self.model.name not in TORCH_MODEL_NAMES:
            problems["model.name"] = (
                f"{self.model.name} is built in TensorFlow only; with framework: torch use "
                f"{' or '.join(TORCH_MODEL_NAMES)}, or a model.builder returning a torch.nn.Module"
            )
        refused = {
            "per_class": self.allocate.per_class,
            "jit_compile": self.allocate.jit_compile,
        }
        for key, used in refused.items():
            if used:
                problems[f"allocate.{key}"] = "is TensorFlow only (framework: torch)"
        if self.allocate.precision == "bfloat16":
            problems["allocate.precision"] = (
                "torch runs are allocated in float32 or tf32 (bfloat16 is TensorFlow only)"
            )
        return problems

    def to_dict(self) -> dict[str, Any]:
        """All settings; a builder's section keeps only the keys that apply to it.

        ``framework`` is written only when it is not the default (TensorFlow), so the
        configs of TensorFlow runs read as they always have.
        """
        data = dataclasses.asdict(self)
        if self.framework == "tensorflow":
            data.pop("framework")
        if self.training.record_every == 1:  # θ of every step: configs read as they always have
            data["training"].pop("record_every")
        if self.data.name != "modular":  # a section only the modular data set reads
            data["data"].pop("modular")
        if self.model.builder is not None:
            data["model"] = {k: data["model"][k] for k in USER_MODEL_KEYS}
        elif self.model.name != "transformer":  # keys only the transformer reads
            for key in TRANSFORMER_KEYS:
                data["model"].pop(key)
        if self.data.builder is not None:
            data["data"] = {k: data["data"][k] for k in ("builder", "kwargs")}
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def used_dict(self) -> dict[str, Any]:
        """`to_dict` without the keys the run's model, data set and optimiser do not
        read (fields marked `only_for` other names): the settings that shaped the run."""
        data = self.to_dict()
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            values = data.get(f.name)
            if not dataclasses.is_dataclass(section) or "name" not in (values or {}):
                continue  # no name to choose by (allocate, training), or a builder's section
            for key in dataclasses.fields(section):
                names = key.metadata.get("only_for")
                if names and section.name not in names:
                    values.pop(key.name, None)
        return data


# --- notes on old names ------------------------------------------------------------------

_notes_given: set[str] | None = set()  # None: notes are off in this process


def note_renamed(old: str, new: str) -> None:
    """Print ``note: OLD is now NEW`` on stderr, once per process for each old name."""
    if _notes_given is None or old in _notes_given:
        return
    _notes_given.add(old)
    print(f"note: {old} is now {new}", file=sys.stderr)


def quiet_notes() -> None:
    """No rename notes from this process (a worker: its parent gave them already)."""
    global _notes_given
    _notes_given = None
