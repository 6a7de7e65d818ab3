"""Regenerate every figure and quoted output of README.md and docs/ with the project's commands.

    python scripts/make_figures.py                       # every target (the torch ones need torch)
    python scripts/make_figures.py mnist_fc tiny         # the quick starts only (about 5 min)
    python scripts/make_figures.py torch                 # the PyTorch example on MNIST
    python scripts/make_figures.py --list                # what each target runs and writes
    python scripts/make_figures.py --fill                # run nothing; refill the pages

Each target runs `lca` commands (or an example or benchmark script of ``scripts/``) in a
fresh process, exactly as a user types them, into ``--runs`` (default ``runs/``). Their
printed output lands in ``docs/outputs/NAME.txt`` and in every block of README.md and
docs/**/*.md between ``<!-- output: NAME -->`` and ``<!-- /output -->`` (inside a code fence,
or bare for Markdown output such as a table); the figures are copied from the report folders
to ``docs/images/``; the notebook ``docs/tutorials/explore_a_run.ipynb`` is executed against
the MNIST-FC run and stored with its outputs. ``docs/outputs/NAME_provenance.txt`` records,
per target, the commit, the machine and the wall time of every command.
``tests/test_make_figures.py`` checks that every marked block matches its file and that every
image the pages show is made here, so nothing quoted can drift from what the commands print.

MNIST is read from ``--mnist PATH`` (a Keras ``mnist.npz``) when given or when
``../shared/data/mnist.npz`` exists, else downloaded by Keras.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ROOT / "docs" / "outputs"
IMAGES = ROOT / "docs" / "images"
NOTEBOOK = ROOT / "docs" / "tutorials" / "explore_a_run.ipynb"
LOCAL_MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"
# A marked block: the output inside a fence (```text … ```), or bare (Markdown that renders).
MARKED = re.compile(
    r"(?P<open><!-- output: (?P<name>[\w-]+) -->\n(?P<fence>```[^\n]*\n)?)"
    r"(?P<body>.*?)(?P<close>(?(fence)```\n)<!-- /output -->)",
    re.DOTALL,
)


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


def _cause_steps(name: str) -> list[Step]:
    """Train one MNIST-FC set-up and allocate it with --causes (why parameters hurt)."""
    run = f"{{runs}}/causes/{name}"
    return [
        Step(f"train configs/{name}.yaml --out {run} --overwrite {MNIST}"),
        Step(f"allocate {run} --causes"),
        Step(f"verify-error {run}", output=f"causes_{name}_verify_error", keep="tail:1"),
        Step(f"report {run}"),
    ]


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
        [
            Step("train configs/tiny_fc.yaml --out {runs}/tiny_fc --overwrite"),
            Step("allocate {runs}/tiny_fc"),
            Step("verify-error {runs}/tiny_fc", output="tiny_verify_error"),
            Step("report {runs}/tiny_fc", output="tiny_report"),
        ],
    ),
    "mnist_fc": Target(
        "the main quick start: MNIST-FC with SGD and momentum, the defaults (about 4 minutes)",
        [
            Step(
                f"train configs/mnist_fc_sgd.yaml --out {{runs}}/mnist_fc_sgd --overwrite {MNIST}"
            ),
            Step("allocate {runs}/mnist_fc_sgd"),
            Step("verify-error {runs}/mnist_fc_sgd", output="mnist_fc_verify_error"),
            Step("report {runs}/mnist_fc_sgd", output="mnist_fc_report"),
        ],
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
        [
            Step(
                f"train configs/mnist_fc_sgd.yaml --out {{runs}}/mnist_fc_per_class --overwrite {MNIST}"
            ),
            Step("allocate {runs}/mnist_fc_per_class --per-class --splits train"),
            Step("verify-error {runs}/mnist_fc_per_class", output="per_class_verify_error"),
            Step("report {runs}/mnist_fc_per_class", output="per_class_report"),
        ],
        images={"mnist_fc_per_class/report/s22_neuron.png": "s22_neuron.png"},
        sections={"per_class_section": ("mnist_fc_per_class/report/report.md", "## Per class")},
    ),
    "grokking_describe": Target(
        "what `lca describe` says of the grokking run, its size on disk included (needs grokking)",
        [Step("describe {runs}/grokking_modadd", output="grokking_describe")],
    ),
    "grokking": Target(
        "a one-layer transformer groks modular addition (about 10 minutes)",
        [
            Step("train configs/grokking_modadd.yaml --out {runs}/grokking_modadd --overwrite"),
            Step("allocate {runs}/grokking_modadd --causes"),
            Step("verify-error {runs}/grokking_modadd", output="grokking_verify_error"),
            Step("report {runs}/grokking_modadd", output="grokking_report"),
        ],
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


def produced_outputs() -> set[str]:
    """Every output name some target writes (the tests check the pages against it)."""
    named = {s.output for t in TARGETS.values() for s in t.steps if s.output}
    quoted = {name for t in TARGETS.values() for name in t.sections}
    return named | quoted | {f"{name}_provenance" for name in TARGETS}


def produced_images() -> set[str]:
    """Every image name some target copies into docs/images/."""
    return {name for t in TARGETS.values() for name in t.images.values()}


def marked_blocks(text: str) -> dict[str, list[str]]:
    """The bodies of a page's ``<!-- output: NAME -->`` blocks, by name."""
    blocks: dict[str, list[str]] = {}
    for match in MARKED.finditer(text):
        blocks.setdefault(match["name"], []).append(match["body"])
    return blocks


def fill_marked_blocks(text: str, outputs: dict[str, str]) -> str:
    """``text`` with the body of every marked block whose name is in ``outputs`` replaced."""

    def body(match: re.Match) -> str:
        name = match["name"]
        if name not in outputs:
            return match[0]
        content = outputs[name] if outputs[name].endswith("\n") else outputs[name] + "\n"
        return match["open"] + content + match["close"]

    return MARKED.sub(body, text)


def pages() -> list[Path]:
    """README.md and every Markdown page of the documentation."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# a progress bar's rate: "1.00it/s]", "?it/s]", "1.24s/it, halvings=3]" (not "0.2 s/iteration")
PROGRESS = re.compile(r"[\d?](it/s|s/it)[],]")


def _clean(text: str, keep: str) -> str:
    """Printed output as a reader sees it: progress bars and TensorFlow's log lines dropped."""
    lines = []
    for line in text.replace("\r", "\n").splitlines():
        if not line.strip() or PROGRESS.search(line):
            continue
        if re.match(r"^(WARNING: All log|[IWE]\d{4} )", line):
            continue
        lines.append(line.rstrip())
    if keep == "table":
        lines = [line for line in lines if line.startswith("|")]
    if keep.startswith("tail:"):
        lines = lines[-int(keep.split(":")[1]) :]
    if keep.startswith("from:"):
        start = keep.split(":", 1)[1]
        lines = lines[next(i for i, line in enumerate(lines) if line.startswith(start)) :]
    return "\n".join(lines) + "\n"


#: Subsections of a quoted report section that the documentation explains itself.
DROPPED_SUBSECTIONS = ("### How to read",)


def report_section(report_md: Path, heading: str) -> str:
    """One section of a report.md (to the next heading of its level), without its images.

    The figures are copied to docs/images/ on their own; the report's relative image links
    would point nowhere from the documentation.
    """
    lines = report_md.read_text().splitlines()
    level = heading.split(" ")[0]
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("#") and len(lines[i].split(" ")[0]) <= len(level)
        ),
        len(lines),
    )
    kept, dropping = [], False
    for line in lines[start + 1 : end]:
        if line.startswith("#"):
            dropping = line.startswith(DROPPED_SUBSECTIONS)
        if not dropping and not line.startswith("!["):
            kept.append(line)
    text = "\n".join(kept).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text) + "\n"


def run_step(step: Step, runs: Path, mnist: str) -> tuple[str, float]:
    """Run one command as a user would; its cleaned output and wall time."""
    args = step.args.format(runs=runs, mnist=mnist).split()
    if "{mnist}" in step.args and not mnist:
        if "--data {mnist}" in step.args:
            sys.exit(f"`{step.program} {step.args}` reads MNIST from a file: pass --mnist PATH")
        args = [a for a in args if not a.startswith("data.path=") and a != "--set"]
    settings = dict(pair.split("=", 1) for pair in step.env.split())
    shown = f"{step.env + ' ' if step.env else ''}{step.program} {' '.join(args)}"
    print(f"$ {shown}", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **settings}
    command = (
        [sys.executable, *args]
        if step.program == "python"
        else [sys.executable, "-m", "lca.cli", *args]
    )
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(
            f"`{shown}` failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
        )
    return _clean(done.stdout, step.keep), seconds


def execute_notebook(run_dir: Path) -> None:
    """Run the exploration notebook against ``run_dir`` (from the checkout) and store it."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["LCA_RUN"] = str(run_dir)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(ROOT)}}).execute()
    nbformat.write(notebook, NOTEBOOK)


def source_state() -> tuple[str, bool]:
    """The commit the figures are made with, and whether the tree differs from it.

    Read once, before any target runs: the outputs, figures and pages this script writes are
    not what makes the figures, and must not mark the commit as changed.
    """
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return commit, bool(dirty)


def provenance(source: tuple[str, bool], torch: bool = False) -> str:
    """The commit and machine every quoted figure comes from (and torch's version)."""
    commit, dirty = source
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.*)", cpuinfo.read_text())
        cpu = names[0] if names else cpu
    from importlib.metadata import version

    tensorflow = version("tensorflow")
    frameworks = f"TensorFlow {tensorflow}" + (f", PyTorch {version('torch')}" if torch else "")
    return (
        f"commit {commit}{' (with uncommitted changes)' if dirty else ''}, "
        f"{time.strftime('%Y-%m-%d')}\n"
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {frameworks}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"of {', '.join(TARGETS)} (default: all)")
    parser.add_argument(
        "--runs", type=Path, default=Path("runs"), help="where runs are made (from the checkout)"
    )
    parser.add_argument("--mnist", default=str(LOCAL_MNIST) if LOCAL_MNIST.exists() else "")
    parser.add_argument("--list", action="store_true", help="print the targets and stop")
    parser.add_argument(
        "--fill",
        action="store_true",
        help="run nothing: quote the report sections of the runs there are, refill the pages",
    )
    ns = parser.parse_args()
    if ns.fill:
        for target in TARGETS.values():  # report sections re-read from the runs, if there
            for output, (report_md, heading) in target.sections.items():
                if (ROOT / ns.runs / report_md).exists():
                    text = report_section(ROOT / ns.runs / report_md, heading)
                    (OUTPUTS / f"{output}.txt").write_text(text)
        fill_pages({f.stem: f.read_text() for f in OUTPUTS.glob("*.txt")})
        return
    if ns.list:
        for name, target in TARGETS.items():
            print(f"{name}: {target.about}")
            for step in target.steps:
                print(
                    f"    {step.shown(runs='{runs}', mnist='{mnist}')}"
                    + (f"  -> {step.output}" if step.output else "")
                )
        return
    unknown = set(ns.targets) - set(TARGETS)
    if unknown:
        sys.exit(f"unknown target(s) {', '.join(sorted(unknown))}; see --list")
    source = source_state()
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    for name in ns.targets or list(TARGETS):
        target = TARGETS[name]
        times = []
        for step in target.steps:
            text, seconds = run_step(step, ns.runs, ns.mnist)
            times.append(f"{seconds:7.1f} s  {step.shown(runs='runs', mnist='MNIST')}")
            if step.output:
                outputs[step.output] = text
                (OUTPUTS / f"{step.output}.txt").write_text(text)
        for output, (report_md, heading) in target.sections.items():
            outputs[output] = report_section(ROOT / ns.runs / report_md, heading)
            (OUTPUTS / f"{output}.txt").write_text(outputs[output])
        for made, image in target.images.items():
            shutil.copyfile(ROOT / ns.runs / made, IMAGES / image)
        if target.notebook_run:
            execute_notebook(ns.runs / target.notebook_run)
        outputs[f"{name}_provenance"] = provenance(source, target.torch) + "\n".join(times) + "\n"
        (OUTPUTS / f"{name}_provenance.txt").write_text(outputs[f"{name}_provenance"])
    fill_pages(outputs)


def fill_pages(outputs: dict[str, str]) -> None:
    """Write ``outputs`` into every marked block of README.md and docs/."""
    for page in pages():
        text = page.read_text()
        filled = fill_marked_blocks(text, outputs)
        if filled != text:
            page.write_text(filled)
            print(f"updated {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
