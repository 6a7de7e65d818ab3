"""What scripts/make_figures.py regenerates: every target, its commands and what it leaves behind.

A target is the `lca` commands (or scripts of this checkout) that belong together, run in a
fresh process each as a user types them; a step's printed output becomes
``docs/outputs/NAME.txt`` and the pages' ``<!-- output: NAME -->`` blocks. ``{runs}`` and
``{mnist}`` are filled in by make_figures.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Step:
    """One `lca` command line (``{runs}`` and ``{mnist}`` filled in) and where its output goes."""

    args: str
    output: str | None = None  # docs/outputs/<output>.txt and the marked blocks of that name
    # "all" lines, "tail:N" the last N lines, "table" a Markdown table's, "from:TEXT" the lines
    # from the first that starts with TEXT
    keep: str = "all"
    program: str = "lca"  # or "python": args start with a script of this checkout
    env: str = ""  # NAME=VALUE settings the command runs with, as a shell line writes them

    def shown(self, **names: str) -> str:
        """The command line as a user types it."""
        return f"{self.env + ' ' if self.env else ''}{self.program} {self.args.format(**names)}"


@dataclass
class Target:
    """Commands that belong together, and the figures they leave behind."""

    about: str
    steps: list[Step]
    images: dict[str, str] = field(default_factory=dict)  # runs-relative source -> image name
    notebook_run: str | None = None  # execute the notebook against this run
    # output name -> (runs-relative report.md, heading): a section of a report, quoted as is
    sections: dict[str, tuple[str, str]] = field(default_factory=dict)
    torch: bool = False  # the provenance names torch's version too


MNIST = "--set data.path={mnist}"
CAUSE_RUNS = ("mnist_fc_sgd", "mnist_fc_sgd_nomom", "mnist_fc_adam")


def _pipeline(
    config: str,
    run: str,
    *,
    outputs: str,
    mnist: bool = True,
    allocate: str = "",
    verify_keep: str = "all",
    quote_report: bool = True,
) -> list[Step]:
    """The quick start's four commands on one run: train ``configs/CONFIG.yaml`` into
    ``{runs}/RUN``, allocate (with ``allocate``'s flags), verify-error and report, whose output
    is quoted as ``OUTPUTS_verify_error`` and ``OUTPUTS_report``."""
    where = f"{{runs}}/{run}"
    data = f" {MNIST}" if mnist else ""
    return [
        Step(f"train configs/{config}.yaml --out {where} --overwrite{data}"),
        Step(f"allocate {where}{' ' + allocate if allocate else ''}"),
        Step(f"verify-error {where}", output=f"{outputs}_verify_error", keep=verify_keep),
        Step(f"report {where}", output=f"{outputs}_report" if quote_report else None),
    ]


def _cause_steps(name: str) -> list[Step]:
    """Train one MNIST-FC set-up and allocate it with --causes (why parameters hurt); only
    verify-error's verdict line is quoted, the report through its section."""
    return _pipeline(
        name,
        f"causes/{name}",
        outputs=f"causes_{name}",
        allocate="--causes",
        verify_keep="tail:1",
        quote_report=False,
    )


def _bench(subcommand: str, output: str, keep: str = "all") -> Step:
    """One ``scripts/bench.py`` measurement, its printed result quoted as is."""
    return Step(f"scripts/bench.py {subcommand}", output=output, keep=keep, program="python")


#: The measurements of docs/performance.md, each made by the benchmark tool (or the `lca`
#: commands whose wall times the provenance records). Some time runs of other targets.
BENCH_TARGETS: dict[str, Target] = {
    "bench_train": Target(
        "recording's cost on `lca train` of MNIST-FC, checksums and resume checkpoints "
        "included (a few minutes)",
        [_bench("train --set data.path={mnist} --repeats 9 --checkpoints", "bench_train")],
    ),
    "bench_callback": Target(
        "TrajectoryRecorder's cost on model.fit, 784-100-50-10 (a few minutes)",
        [_bench("callback", "bench_callback")],
    ),
    "bench_allocate": Target(
        "`lca allocate` of MNIST-FC against its floor, the straightforward way and without "
        "checksums (about 5 minutes)",
        [
            _bench(
                "allocate configs/mnist_fc_sgd.yaml --set data.path={mnist} --iterations 64 "
                "--checksum-repeats 5",
                "bench_allocate",
            )
        ],
    ),
    "bench_modes": Target(
        "every rule × precision on the three MNIST-FC set-ups, 880 iterations each "
        "(needs causes; about 35 minutes)",
        [
            _bench(
                "modes {runs}/causes/mnist_fc_sgd {runs}/causes/mnist_fc_adam "
                "{runs}/causes/mnist_fc_sgd_nomom",
                "bench_modes",
            )
        ],
    ),
    "bench_causes": Target(
        "what --causes adds to `lca allocate` of MNIST-FC (needs causes; about 7 minutes)",
        [
            _bench(
                "causes {runs}/causes/mnist_fc_sgd --range 0:64 --repeats 3", "bench_causes_sgd"
            ),
            _bench(
                "causes {runs}/causes/mnist_fc_adam --range 0:256 --repeats 2", "bench_causes_adam"
            ),
            _bench("causes --in-process --iterations 200 --splits 2", "bench_causes_in_process"),
        ],
    ),
    "bench_subset": Target(
        "allocating on a subset of the training set: MNIST-FC and ResNet20 (about 10 minutes)",
        [
            _bench(
                "subset configs/mnist_fc_sgd.yaml --set data.path={mnist} --iterations 24 "
                "--fractions 0.5,0.2,0.1,0.02",
                "bench_subset_mnist_fc",
            ),
            _bench(
                "subset configs/cifar_resnet_sgd.yaml --set data.name=synthetic "
                "--set data.synthetic.image_shape=[32,32,3] "
                "--set data.synthetic.num_examples=3000 --set data.val_size=500 "
                "--set allocate.eval_batch_size=500 --set allocate.max_intervals=4 "
                "--iterations 4 --check-every 2 --block-iterations 2 --fractions 0.5,0.2,0.1",
                "bench_subset_resnet",
            ),
        ],
    ),
    "bench_per_class": Target(
        "per-class against plain allocation of MNIST-FC, 64 iterations, start-up included "
        "(wall times in the provenance; about 2 minutes)",
        [
            Step(
                f"train configs/mnist_fc_sgd.yaml --out {{runs}}/bench_per_class --overwrite {MNIST}"
            ),
            Step("allocate {runs}/bench_per_class --range 0:64"),
            Step("allocate {runs}/bench_per_class --range 0:64 --per-class --overwrite"),
        ],
    ),
    "bench_lenet": Target(
        "MNIST-LeNet: training, and allocating its first and middle 10 iterations "
        "(wall times in the provenance; about 10 minutes)",
        [
            Step(
                f"train configs/mnist_lenet_sgd.yaml --out {{runs}}/mnist_lenet_sgd --overwrite {MNIST}"
            ),
            Step("allocate {runs}/mnist_lenet_sgd --splits train --range 0:10"),
            Step("allocate {runs}/mnist_lenet_sgd --splits train --range 440:450"),
        ],
    ),
    "bench_thresholds": Target(
        "the trapezoid's acceptance threshold swept over the paper's allocation of the three "
        "MNIST-FC set-ups (needs causes; about 12 minutes)",
        [
            _bench(
                "thresholds {runs}/causes/mnist_fc_sgd {runs}/causes/mnist_fc_adam "
                "{runs}/causes/mnist_fc_sgd_nomom --thresholds 1e-3,3e-4,1e-4,inf",
                "bench_thresholds",
            )
        ],
    ),
    "bench_precision": Target(
        "one full-set gradient in float32 against `lca`'s bfloat16, MNIST-FC and MNIST-LeNet "
        "(about 5 minutes)",
        [
            _bench(
                "precision configs/mnist_fc_sgd.yaml configs/mnist_lenet_sgd.yaml "
                "--set data.path={mnist}",
                "bench_precision",
            )
        ],
    ),
    "bench_segments": Target(
        "θ every k steps against every step: chord against path LCA of the three MNIST-FC "
        "set-ups (needs causes; about 15 minutes)",
        [
            _bench(
                f"segments {{runs}}/causes/{name} --k 1,2,5,10,20,50,110 "
                f"--out {{runs}}/segments/{name}",
                f"bench_segments_{name}",
            )
            for name in CAUSE_RUNS
        ],
    ),
    "suite": Target(
        "the test suite, as the README and CI run it (about 5 minutes)",
        # the suite checks every quoted block but its own, which it is making
        [
            Step(
                "-m pytest -q",
                output="suite",
                keep="tail:1",
                program="python",
                env="LCA_MEASURING_SUITE=1",
            )
        ],
    ),
    "torch_install": Target(
        "what installing torch costs a fresh virtual environment: PyPI's default (CUDA) wheel "
        "and the CPU wheel, time and size on disk (downloads about 3 GB)",
        [Step("scripts/measure_install.py", output="torch_install", program="python")],
    ),
    "bench_gpu_on_cpu": Target(
        "the GPU check run on the CPU, a single-threaded worker standing in for the GPU: "
        "checks the tests themselves, says nothing about GPUs",
        [
            Step(
                "-m pytest -m gpu tests/test_gpu.py -n0 -s -p no:cacheprovider",
                output="bench_gpu_on_cpu",
                program="python",
                env="LCA_GPU_TEST_ON_CPU=1 LCA_GPU_TEST_EXAMPLES=600 LCA_GPU_TEST_TIMING_EXAMPLES=2000",
            )
        ],
    ),
}


TARGETS: dict[str, Target] = {
    "tiny": Target(
        "the offline quick start: tiny_fc on synthetic data (seconds)",
        _pipeline("tiny_fc", "tiny_fc", outputs="tiny", mnist=False),
    ),
    "mnist_fc": Target(
        "the main quick start: MNIST-FC with SGD and momentum, the defaults (about 4 minutes)",
        _pipeline("mnist_fc_sgd", "mnist_fc_sgd", outputs="mnist_fc"),
        images={
            "mnist_fc_sgd/report/overview.png": "overview.png",
            "mnist_fc_sgd/report/fig3a_percent_helped.png": "fig3a_percent_helped.png",
            "mnist_fc_sgd/report/fig3b_lca_histogram.png": "fig3b_lca_histogram.png",
            "mnist_fc_sgd/report/fig3c_helped_per_layer.png": "fig3c_helped_per_layer.png",
            "mnist_fc_sgd/report/fig3d_fraction_helped.png": "fig3d_fraction_helped.png",
            "mnist_fc_sgd/report/s7_oscillations.png": "s7_oscillations.png",
            "mnist_fc_sgd/report/fig2_frames_dense_1.png": "fig2_frames_dense_1.png",
            "mnist_fc_sgd/report/s1_unit_lca.png": "s1_unit_lca.png",
            "mnist_fc_sgd/report/s2_parameter_curves.png": "s2_parameter_curves.png",
            "mnist_fc_sgd/report/fig4_layer_totals.png": "fig4_layer_totals.png",
            "mnist_fc_sgd/report/approximate_loss.png": "approximate_loss.png",
            "mnist_fc_sgd/report/s11_cumulative_layer_lca.png": "s11_cumulative_layer_lca.png",
            "mnist_fc_sgd/report/s17_synchronisation.png": "s17_synchronisation.png",
        },
        notebook_run="mnist_fc_sgd",
    ),
    "pruning": Target(
        "LCA as weight importance on the MNIST-FC run (needs mnist_fc)",
        [
            Step("prune {runs}/mnist_fc_sgd", output="mnist_fc_prune", keep="table"),
            Step(
                "prune {runs}/mnist_fc_sgd --scope layer --out {runs}/mnist_fc_sgd/prune_layer",
                output="mnist_fc_prune_layer",
                keep="table",
            ),
        ],
        images={"mnist_fc_sgd/prune/prune.png": "prune_mnist_fc_sgd.png"},
    ),
    "per_class": Target(
        "per-class LCA of MNIST-FC (Fig 6, S21, S22)",
        _pipeline(
            "mnist_fc_sgd",
            "mnist_fc_per_class",
            outputs="per_class",
            allocate="--per-class --splits train",
        ),
        images={"mnist_fc_per_class/report/s22_neuron.png": "s22_neuron.png"},
        sections={"per_class_section": ("mnist_fc_per_class/report/report.md", "## Per class")},
    ),
    "grokking_describe": Target(
        "what `lca describe` says of the grokking run, its size on disk included (needs grokking)",
        [Step("describe {runs}/grokking_modadd", output="grokking_describe")],
    ),
    "grokking": Target(
        "a one-layer transformer groks modular addition (about 10 minutes)",
        _pipeline(
            "grokking_modadd",
            "grokking_modadd",
            outputs="grokking",
            mnist=False,
            allocate="--causes",
        ),
        images={
            "grokking_modadd/report/splits_accuracy.png": "grokking_splits_accuracy.png",
            "grokking_modadd/report/splits_layer_cumulative.png": (
                "grokking_splits_layer_cumulative.png"
            ),
            "grokking_modadd/report/splits_head_cumulative.png": (
                "grokking_splits_head_cumulative.png"
            ),
            "grokking_modadd/report/causes_train.png": "causes_grokking_modadd_train.png",
            "grokking_modadd/report/causes_val.png": "causes_grokking_modadd_val.png",
        },
        sections={
            "causes_grokking_modadd": ("grokking_modadd/report/report.md", "## Why parameters hurt")
        },
    ),
    "causes": Target(
        "why parameters hurt: MNIST-FC with SGD, without momentum and with Adam (--causes)",
        [step for name in CAUSE_RUNS for step in _cause_steps(name)],
        images={
            f"causes/{name}/report/causes_{split}.png": f"causes_{name}_{split}.png"
            for name in CAUSE_RUNS
            for split in ("train", "val")
        },
        sections={
            f"causes_{name}": (f"causes/{name}/report/report.md", "## Why parameters hurt")
            for name in CAUSE_RUNS
        },
    ),
    "torch": Target(
        "a CNN trained by a plain PyTorch loop on MNIST, recorded, allocated, verified and "
        "reported (scripts/torch_mnist; a few minutes; needs torch and an mnist.npz)",
        [
            Step(
                "scripts/torch_mnist/run_example.py --data {mnist} --out {runs}/torch_mnist",
                output="torch_mnist",
                keep="from:$ lca report",
                program="python",
            )
        ],
        torch=True,
    ),
    "torch_bench": Target(
        "TensorFlow against PyTorch: full-set gradients, allocation and the torch recorder's "
        "cost (scripts/bench.py torch; needs torch)",
        [
            Step(
                "scripts/bench.py torch --set data.path={mnist}",
                output="torch_bench",
                program="python",
            )
        ],
        torch=True,
    ),
    **BENCH_TARGETS,
}
