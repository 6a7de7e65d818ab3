"""The documentation's examples, run: README.md's and docs/**/*.md's Python blocks, the tiny
quick start's shell commands, and the tutorial notebooks.

Python blocks (one test per Markdown file, so a failing page names itself):

* a ```` ```python ```` (or ```` ```py ````) fenced block is executed;
* a ```` ```python notest ```` block is shown but not executed (a long run, a cluster, MNIST);
* a ```` ```python title="my_model.py" ```` block (MkDocs Material's title syntax) is written to
  that file in the working directory instead of being executed, so later blocks can import it.

A page is a story: its blocks run in order in one shared namespace, in a fresh working
directory holding ``configs/`` and two runs, ``runs/tiny_fc`` and ``runs/mnist_fc_sgd``, both
copies of the tiny synthetic run allocated on train and val (the analyses do not depend on a
run's size, so ``runs/mnist_fc_sgd`` examples run unchanged on it). Tracebacks point at the
Markdown file and line of the failing statement.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from lca.cli.common import NATIVE_NOISE

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
PYTHON_LANGUAGES = {"python", "py", "python3"}
NOTEST = "notest"
QUICK_START_MARKER = "<!-- tested: tiny quick start -->"
NOTEBOOKS = sorted((ROOT / "docs").glob("**/*.ipynb"))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_TITLE = re.compile(r"""title\s*=\s*["']?(?P<title>[^"'\s]+)""")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the block's first code line
    info: str  # the fence's info string: "python notest", 'python title="x.py"', "bash", ...
    code: str

    @property
    def language(self) -> str:
        words = self.info.split()
        return words[0].lower().strip("{}.") if words else ""

    @property
    def flags(self) -> list[str]:
        return self.info.split()[1:]

    @property
    def title(self) -> str | None:
        match = _TITLE.search(self.info)
        return match["title"] if match else None

    @property
    def where(self) -> str:
        return f"{_relative(self.path)}:{self.line}"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, in order (indented ones in lists too)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        end = i + 1
        while end < len(lines):
            stripped = lines[end].strip()
            if stripped.startswith(fence) and not stripped.lstrip(fence[0]):
                break
            end += 1
        body = [line[indent:] if line[:indent].isspace() else line for line in lines[i + 1 : end]]
        blocks.append(Block(path, i + 2, opening["info"].strip(), "\n".join(body) + "\n"))
        i = end + 1
    return blocks


def _markdown_files() -> list[Path]:
    docs = sorted((ROOT / "docs").glob("**/*.md"))
    return [p for p in [ROOT / "README.md", *docs] if p.is_file()]


def _python_blocks(path: Path) -> list[Block]:
    return [
        b for b in fenced_blocks(path) if b.language in PYTHON_LANGUAGES and NOTEST not in b.flags
    ]


MARKDOWN_WITH_PYTHON = [p for p in _markdown_files() if _python_blocks(p)]


@pytest.fixture
def docs_workdir(allocated_tiny_run, tmp_path, monkeypatch):
    """A fresh working directory as the examples expect it: configs/ and two allocated runs."""
    for name in ("tiny_fc", "mnist_fc_sgd"):
        shutil.copytree(allocated_tiny_run, tmp_path / "runs" / name)
    (tmp_path / "configs").symlink_to(CONFIGS, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("path", MARKDOWN_WITH_PYTHON, ids=_relative)
def test_python_blocks(path, docs_workdir):
    if path.name == "pytorch.md":  # the one page whose examples need the torch extra
        pytest.importorskip("torch")
        pytest.importorskip("lightning")
    namespace: dict = {"__name__": "__main__"}
    written: list[str] = []
    try:
        for block in _python_blocks(path):
            if block.title:  # a module of the example: written, imported by later blocks
                (docs_workdir / block.title).write_text(block.code, encoding="utf-8")
                written.append(Path(block.title).stem)
                continue
            # padded so that line numbers (and tracebacks' source lines) are the Markdown file's
            source = "\n" * (block.line - 1) + block.code
            failure = None
            try:
                exec(compile(source, str(block.path), "exec"), namespace)
            except Exception as exc:
                failure = _failure(block, exc)
            if failure:
                pytest.fail(failure, pytrace=False)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
        for module in written:
            sys.modules.pop(module, None)


def _failure(block: Block, exc: Exception) -> str:
    """The error of a block, with the traceback's frames from Markdown files and lca only."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename.endswith(".md") or f"{os.sep}lca{os.sep}" in frame.filename
    ]
    return (
        f"the Python block at {block.where} ({block.info!r}) failed:\n"
        + "".join(traceback.format_list(frames))
        + "".join(traceback.format_exception_only(exc))
    )


# --- the tiny quick start ---------------------------------------------------------------------

# What each command prints when it worked (a regular expression searched in its stdout).
EXPECTED_OUTPUT = {
    "train": r"recorded \d+ steps in ",
    "allocate": r"allocated \d+ iterations|nothing left to allocate",
    "verify-error": r"(?m)^PASS: ",
    "report": r"report written to ",
    "prune": r"pruning results written to ",
    "check": r"every chunk is present and checks out",
}


def quick_start_commands(readme: Path) -> list[list[str]]:
    """The `lca` commands of the fenced block after README's tiny quick start marker, one
    argument list per command (a line may chain commands with ``&&``; ``#`` starts a comment)."""
    text = readme.read_text(encoding="utf-8")
    if QUICK_START_MARKER not in text:
        pytest.fail(f"{_relative(readme)} has no tiny quick start block ({QUICK_START_MARKER})")
    marker_line = text[: text.index(QUICK_START_MARKER)].count("\n") + 1
    following = [b for b in fenced_blocks(readme) if b.line > marker_line]
    if not following:
        pytest.fail(f"{_relative(readme)}:{marker_line}: no fenced block after the marker")
    block = following[0]
    commands = []
    for line in block.code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            command, words = _split_at(words, "&&")
            if command[0] != "lca":
                pytest.fail(f"{block.where}: only `lca` commands can be tested, not {line!r}")
            commands.append(command[1:])
    if not commands:
        pytest.fail(f"{block.where}: the tiny quick start block has no commands")
    return commands


def _split_at(words: list[str], separator: str) -> tuple[list[str], list[str]]:
    if separator in words:
        at = words.index(separator)
        return words[:at], words[at + 1 :]
    return words, []


def test_tiny_quick_start(tiny_quick_start):
    """README's offline quick start: the fenced block right after the line
    ``<!-- tested: tiny quick start -->`` holds ``lca`` commands (one a line), run in order in a
    fresh directory holding a copy of ``configs/``, each as ``python -m lca.cli ...``; each must
    exit 0, print its success line (verify-error: PASS) and, run without TF_CPP_MIN_LOG_LEVEL
    as a user runs it, no TensorFlow start-up log. The commands run once per session
    (conftest's ``tiny_quick_start``; test_quick_start.py compares what they print with the
    quoted figures)."""
    commands = quick_start_commands(ROOT / "README.md")
    _, results = tiny_quick_start(commands)
    for done in results:
        shown = "lca " + shlex.join(done["args"])
        output = f"{done['stdout']}\n{done['stderr']}"
        assert done["returncode"] == 0, f"{shown} exited {done['returncode']}:\n{output}"
        noise = [line for line in done["stderr"].splitlines() if NATIVE_NOISE.search(line.encode())]
        assert not noise, f"{shown} printed TensorFlow's start-up logs:\n" + "\n".join(noise)
        expected = EXPECTED_OUTPUT.get(done["args"][0] if done["args"] else "")
        if expected:
            assert re.search(expected, done["stdout"]), (
                f"{shown} printed no {expected!r}:\n{output}"
            )
    assert len(results) == len(commands)


# --- notebooks --------------------------------------------------------------------------------

# A line each notebook must print when run against the tiny run (its key result).
NOTEBOOK_OUTPUT = {"explore_a_run.ipynb": "% helped, all parameters"}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_relative)
def test_notebook_runs(notebook, allocated_tiny_run, tmp_path, monkeypatch):
    """Each notebook of docs/ runs top to bottom against the tiny allocated run (``LCA_RUN``),
    in a fresh directory, without a cell error, and prints its key result."""
    import nbclient
    import nbformat

    # the kernel inherits this process's environment
    monkeypatch.setenv("LCA_RUN", str(allocated_tiny_run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, quoting the cell, at the first error
    printed = "".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    expected = NOTEBOOK_OUTPUT.get(notebook.name)
    if expected:
        assert expected in printed, f"{_relative(notebook)} did not print {expected!r}"
