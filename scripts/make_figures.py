"""Regenerate every figure and quoted output of README.md and docs/ with the project's commands.

    python scripts/make_figures.py                       # every target (the torch ones need torch)
    python scripts/make_figures.py mnist_fc tiny         # the quick starts only (about 5 min)
    python scripts/make_figures.py torch                 # the PyTorch example on MNIST
    python scripts/make_figures.py --list                # what each target runs and writes
    python scripts/make_figures.py --fill                # run nothing; refill the pages

Each target (listed in ``scripts/figure_targets.py``) runs `lca` commands (or an example or
benchmark script of ``scripts/``) in a fresh process, exactly as a user types them, into
``--runs`` (default ``runs/``). Their
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


sys.path.insert(0, str(Path(__file__).resolve().parent))
from figure_targets import TARGETS, Step  # noqa: E402  (every target, in scripts/)


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
