"""Every measured figure of README.md and docs/ comes from a block scripts/make_figures.py made.

A measured figure is a number with a unit of time, size or ratio (``162.7 s``, ``4 minutes``,
``×1.38``, ``57.6 %``, ``884 MB``). Outside the ``<!-- output: NAME -->`` blocks that
make_figures.py fills, a page may state one only as a reading of a generated block: its
value, at the precision printed, must be a value of one of the blocks the page quotes or
names in a ``<!-- numbers from: NAME, NAME -->`` comment (a block on another page, read in
prose). A figure that is no measurement (a threshold, a definition, arithmetic) is allowed
by name below, with the reason. Output blocks and tables of measured figures typed by hand
are caught the same way, and fenced output (``text``, ``console``, no language) outside the
marked blocks must hold no measured figure at all.

So the same quantity cannot be quoted with two values (each value is one block's, and every
block is quoted whole from one file), and each block's provenance must name a clean commit,
the machine and the target's commands: figures from different blocks were then made by the
same program on the same machine and compare.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import MEASURING_NOW, load_make_figures

ROOT = Path(__file__).parents[1]
OUTPUTS = ROOT / "docs" / "outputs"


make_figures = load_make_figures()
PAGES = make_figures.pages()

# A number with a unit of time, size or ratio: "162.7 s", "3 min", "×1.38", "1.79×", "57.6 %".
FIGURE = re.compile(
    r"(?:(?<![\d)])×(?P<times>\d[\d,]*(?:\.\d+)?)(?![\d.]))"
    r"|(?<![\w.·^/-])(?P<sign>[−+-]?)(?P<value>\d[\d,]*(?:\.\d+)?)\s?"
    r"(?P<unit>ms|s|min|minutes|seconds|hours?|×|%|MB|GB)(?![\w/])"
)
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[−+-]?\d+)?")
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)
# fenced blocks that show what a program prints (not code, commands or configuration)
OUTPUT_INFO = {"", "text", "console", "output"}
NUMBERS_FROM = re.compile(r"<!-- numbers from: (?P<names>[\w, -]+) -->")

# Figures that are not measurements, by page: the reason is the comment. Each entry must
# still occur on its page (test_every_allowed_figure_is_used), so the list cannot go stale.
NOT_MEASURED: dict[str, dict[str, str]] = {
    "README.md": {
        "1 %": "verify-error's limit on the total error",
        "99 %": "the sign agreement every mode must reach",
    },
    "docs/index.md": {
        "1 %": "verify-error's limit on the total error",
    },
    "docs/tutorial.md": {
        "50 %": "a coin flip, the figure's dashed line",
        "100 %": "the two shares add up to all parameters",
        "0 %": "a Gaussian's excess kurtosis, in words",
        "95 %": "the accuracy level the figure marks",
        "99 %": "the accuracy level the figure marks",
    },
    "docs/accuracy.md": {
        "1 %": "verify-error's limit on the total error",
        "99 %": "the sign agreement a mode must reach",
    },
    "docs/performance.md": {
        "99 %": "the sign agreement a mode must reach",
        "1 %": "the largest layer difference a mode may have",
        "21.5 MB": "arithmetic: a θ chunk's shape × 4 bytes",
    },
    "docs/checkpoints.md": {
        "400 GB": "arithmetic: 10 million parameters × 10,000 steps × 4 bytes",
    },
    "docs/storage.md": {
        "13 GB": "arithmetic from the array sizes of the table",
        "13.4 GB": "arithmetic: T × K × 4 bytes for the table's example",
        "43.7 GB": "arithmetic: T × K × 4 bytes for the table's example",
        "52 MB": "arithmetic: T × units × 8 bytes for the table's example",
        "261 MB": "arithmetic: T × units × 8 bytes for the table's example",
        "1 MB": "arithmetic: T × layers × 8 bytes for the table's example",
        "7 MB": "arithmetic: T × layers × 8 bytes for the table's example",
    },
    "docs/troubleshooting.md": {
        "11 MB": "the size of Keras' mnist.npz, a fact about the download",
    },
    "docs/reference/configuration.md": {
        "10×": "a setting's meaning (ten times the threshold)",
    },
    "docs/case-studies/pruning.md": {
        "10 %": "chance accuracy on ten classes",
        "30 %": "a level named in the text, not a result",
        "40 %": "a level named in the text, not a result",
        "50 %": "a pruning fraction",
        "80 %": "a pruning fraction",
        "90 %": "a pruning fraction",
        "95 %": "a pruning fraction",
        "98 %": "a pruning fraction",
    },
    "docs/case-studies/grokking.md": {
        "95 %": "the accuracy level whose first step is quoted",
        "99 %": "the accuracy level whose first step is quoted",
        "40 %": "the share of pairs in the training split (the config's setting)",
        "3.7 GB": "arithmetic: 57,339 × 4 bytes × 16,000 steps",
        "9.2 GB": "arithmetic: 57,339 × 4 bytes × 40,000 steps",
        "57,339 ×": "arithmetic: parameters × bytes",
        "37 GB": "arithmetic: the parameters store scaled to 40,000 steps",
    },
    "docs/case-studies/per-class.md": {
        "80 %": "the share that defines a neuron as specialised",
    },
    "docs/case-studies/why-parameters-hurt.md": {
        "100 %": "the whole of a sum, in words",
        "0 %": "none of a sum, in words",
    },
}

# Fenced output blocks outside the marked ones that hold no measurement (page, first line).
NOT_MEASURED_OUTPUT = {
    # what `lca describe --disk-budget` computes from the config: sizes by arithmetic
    (
        "docs/checkpoints.md",
        "$ lca describe configs/mnist_fc_sgd.yaml --record-every 10 --disk-budget 50MB",
    ),
}


def _relative(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _outside_marked_blocks(text: str) -> str:
    """The page without the bodies of its marked blocks (their markers stay)."""
    return make_figures.MARKED.sub(lambda m: f"<!-- output: {m['name']} -->\n", text)


def _figures(text: str) -> list[tuple[str, float, int]]:
    """(as written, |value|, decimals) of every measured figure in ``text``."""
    found = []
    for match in FIGURE.finditer(text):
        value = match["times"] or match["value"]
        digits = value.replace(",", "")
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        shown = match[0].strip()
        found.append((shown, float(digits), decimals))
    return found


def _allowed(page: str, shown: str) -> bool:
    bare = shown.lstrip("−+-≤≥± ")
    return any(
        bare == key or bare.replace(" ", "") == key.replace(" ", "")
        for key in NOT_MEASURED.get(page, {})
    )


def _sources(text: str) -> list[str]:
    """The generated blocks a page quotes or names as the source of its figures."""
    names = [m["name"] for m in make_figures.MARKED.finditer(text)]
    for comment in NUMBERS_FROM.finditer(text):
        names += [n.strip() for n in comment["names"].split(",") if n.strip()]
    return names


def _values(names: list[str]) -> list[float]:
    values = []
    for name in names:
        path = OUTPUTS / f"{name}.txt"
        if path.exists():
            for token in NUMBER.findall(path.read_text()):
                try:
                    values.append(abs(float(token.replace(",", "").replace("−", "-"))))
                except ValueError:
                    continue
    return values


def _first_line(fence: re.Match) -> str:
    body = fence["body"].strip()
    return body.splitlines()[0] if body else ""


def _readings(text: str, page: str) -> str:
    """The prose, tables and typed output of a page: outside marked blocks, code fences and
    the output blocks allowed as no measurement."""

    def kept(fence: re.Match) -> str:
        typed = fence["info"].strip() in OUTPUT_INFO
        return fence[0] if typed and (page, _first_line(fence)) not in NOT_MEASURED_OUTPUT else ""

    return FENCE.sub(kept, _outside_marked_blocks(text))


# Pages whose measured figures no target prints yet: each needs a target (or its text a
# reference to a block). Strict: a page that passes is taken off this list.
UNTRACED: dict[str, str] = {}
# Pages with typed output blocks of measurements (strict, as above).
TYPED_OUTPUT: dict[str, str] = {}


def _traced_pages():
    for page in PAGES:
        reason = UNTRACED.get(_relative(page))
        marks = (
            [pytest.mark.xfail(reason=f"no target prints {reason}", strict=True)] if reason else []
        )
        yield pytest.param(page, marks=marks, id=_relative(page))


@pytest.mark.parametrize("page", _traced_pages())
def test_measured_figures_are_read_from_generated_blocks(page):
    """A figure outside the marked blocks is a value of a block the page quotes or names."""
    text = page.read_text()
    name = _relative(page)
    for source in _sources(text):
        assert (OUTPUTS / f"{source}.txt").exists(), (
            f"{name}: names {source!r}, not in docs/outputs"
        )
    values = _values(_sources(text))
    untraced = []
    for line in _readings(text, name).splitlines():
        for shown, value, decimals in _figures(line):
            if _allowed(name, shown):
                continue
            if not any(abs(round(v, decimals) - value) < 1e-9 for v in values):
                untraced.append(f"{shown!r} in: {line.strip()[:100]}")
    assert not untraced, (
        f"{name}: measured figures that no generated block of the page holds (quote the block,"
        f" name it in <!-- numbers from: NAME -->, or say 'see the block'):\n  "
        + "\n  ".join(untraced)
    )


def _output_pages():
    for page in PAGES:
        reason = TYPED_OUTPUT.get(_relative(page))
        marks = [pytest.mark.xfail(reason=f"typed: {reason}", strict=True)] if reason else []
        yield pytest.param(page, marks=marks, id=_relative(page))


@pytest.mark.parametrize("page", _output_pages())
def test_output_blocks_are_generated(page):
    """Fenced output outside the marked blocks holds no measured figure (it was typed)."""
    name = _relative(page)
    typed = []
    for fence in FENCE.finditer(_outside_marked_blocks(page.read_text())):
        if fence["info"].strip() not in OUTPUT_INFO:
            continue
        first = _first_line(fence)
        if (name, first) in NOT_MEASURED_OUTPUT:
            continue
        if _figures(fence["body"]):
            typed.append(first[:100])
    assert not typed, f"{name}: output blocks not made by scripts/make_figures.py: {typed}"


def test_every_allowed_figure_is_used():
    """Every entry of the allow-lists still occurs on its page (no stale exceptions)."""
    stale = []
    for page, figures in NOT_MEASURED.items():
        shown = {f for f, _, _ in _figures(_readings((ROOT / page).read_text(), page))}
        for key in figures:
            if not any(
                _allowed(page, s) and s.lstrip("−+-≤≥± ").replace(" ", "") == key.replace(" ", "")
                for s in shown
            ):
                stale.append(f"{page}: {key}")
    for page, first in NOT_MEASURED_OUTPUT:
        assert first in (ROOT / page).read_text(), f"{page}: no output block starts {first!r}"
    assert not stale, f"allowed figures no longer on their pages: {stale}"


def test_figures_are_found_and_traced():
    """The scanner's own check: it finds figures as a reader writes them, traces roundings."""
    found = [
        shown for shown, _, _ in _figures("took 162.7 s, 3 min 20 s, ×0.96, 1.79×, −0.11 %, 884 MB")
    ]
    assert found == ["162.7 s", "3 min", "20 s", "×0.96", "1.79×", "−0.11 %", "884 MB"]
    assert not _figures(
        "θ_t+1, 2·10⁵, A[t, i], 784-100-50-10, 1e-3, data.val_size=500, 3×3 convolutions"
    )
    (value,) = _values(["mnist_fc_report"])[:1]
    assert value > 0


# --- provenance -----------------------------------------------------------------------------

PROVENANCE_HEAD = re.compile(r"commit (?P<commit>[0-9a-f]{7,40}), (?P<date>\d{4}-\d\d-\d\d)$")
MACHINE = re.compile(r"(?P<cpu>.+), (?P<cores>\d+) cores, Python [\d.]+, TensorFlow [\w.+]+")
TIMED = re.compile(r"^ *\d+\.\d s  (?P<command>.+)$")
PROVENANCES = sorted(OUTPUTS.glob("*_provenance.txt"))
# Targets whose blocks were made on a tree with uncommitted changes or by a command since
# renamed, on another machine than the rest (strict: a regenerated target leaves the list).
STALE: dict[str, str] = {}


def _provenances():
    for path in PROVENANCES:
        reason = STALE.get(path.stem.removesuffix("_provenance"))
        marks = [pytest.mark.xfail(reason=f"stale: {reason}", strict=True)] if reason else []
        yield pytest.param(path, marks=marks, id=path.name)


def provenance_problems(path: Path) -> list[str]:
    """What a provenance file fails to name: a clean commit, the machine, the target's commands."""
    target = make_figures.TARGETS.get(path.stem.removesuffix("_provenance"))
    lines = path.read_text().splitlines()
    problems = []
    if not lines or not PROVENANCE_HEAD.match(lines[0]):
        problems.append(f"first line is not 'commit HASH, DATE' of a clean tree: {lines[:1]}")
    if len(lines) < 2 or not MACHINE.match(lines[1]):
        problems.append(f"second line names no machine (CPU, cores, versions): {lines[1:2]}")
    commands = [m["command"] for m in map(TIMED.match, lines[2:]) if m]
    if target is None:
        problems.append("no make_figures target of that name")
    else:
        expected = [s.shown(runs="runs", mnist="MNIST") for s in target.steps]
        if commands != expected:
            problems.append(f"commands {commands} are not the target's {expected}")
    return problems


def test_provenance_reader_finds_what_is_missing(tmp_path):
    step = make_figures.TARGETS["tiny"].steps[0].shown(runs="runs", mnist="MNIST")
    good = tmp_path / "tiny_provenance.txt"
    good.write_text(
        "commit 47d1de1, 2026-11-30\n"
        "Intel(R) Xeon(R) Processor, 2 cores, Python 3.11.7, TensorFlow 2.21.0\n"
        f"    5.0 s  {step}\n"
    )
    assert any("commands" in p for p in provenance_problems(good))  # three steps are missing
    dirty = tmp_path / "tiny_provenance.txt"
    dirty.write_text("commit 47d1de1 (with uncommitted changes), 2026-11-30\n2-core CPU\n")
    problems = provenance_problems(dirty)
    assert any("clean tree" in p for p in problems) and any("machine" in p for p in problems)


@pytest.mark.parametrize("path", _provenances())
def test_provenance_names_a_clean_commit_the_machine_and_the_commands(path):
    problems = provenance_problems(path)
    target = path.stem.removesuffix("_provenance")
    assert not problems, (
        f"{path.name}: {'; '.join(problems)}. Regenerate on a clean commit: "
        f"python scripts/make_figures.py {target}"
    )


def test_every_target_quoted_has_its_provenance():
    """A block on a page comes with its target's provenance (the commit, the machine)."""
    quoted = {name for page in PAGES for name in make_figures.marked_blocks(page.read_text())}
    for page in PAGES:
        quoted |= set(_sources(page.read_text()))
    owner = {
        output: name
        for name, target in make_figures.TARGETS.items()
        for output in [s.output for s in target.steps if s.output] + list(target.sections)
    }
    missing = {
        owner[q]
        for q in quoted
        if q in owner
        and not (OUTPUTS / f"{owner[q]}_provenance.txt").exists()
        and f"{owner[q]}_provenance" not in MEASURING_NOW
    }
    assert not missing, (
        f"quoted without provenance: run python scripts/make_figures.py {' '.join(sorted(missing))}"
    )


@pytest.mark.xfail(bool(STALE), reason=f"stale blocks: {', '.join(STALE)}", strict=True)
def test_every_provenance_names_one_machine():
    """Figures of different blocks compare only if one machine made them all."""
    machines = {}
    for path in PROVENANCES:
        lines = path.read_text().splitlines()
        match = MACHINE.match(lines[1]) if len(lines) > 1 else None
        machines[path.stem] = f"{match['cpu']}, {match['cores']} cores" if match else "unnamed"
    assert len(set(machines.values())) == 1, (
        f"the blocks were made on different machines: {machines}"
    )
