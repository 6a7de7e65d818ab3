"""The package's architecture: imports flow one way (import-linter) and the module graph of lca
has no cycle at all (grimp, imports inside functions included), and old module paths fail with
one line naming the new one.

The layers are declared once, in ``pyproject.toml`` (``[tool.importlinter]``).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

grimp = pytest.importorskip("grimp", reason="pip install import-linter (the dev extra)")


def _env() -> dict:
    # analyse this checkout's lca, whatever else is installed
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def test_import_linter_contracts_are_kept():
    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def _layered() -> set[str]:
    """The modules and packages the layers contract of pyproject.toml places: ``lca.x``."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = next(
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    )
    return {name.strip() for layer in layers for name in layer.split("|")}


def test_every_package_is_in_a_layer():
    """A new subpackage or top-level module must be placed in the layers contract."""
    placed = _layered()
    found = {
        f"lca.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "lca").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    assert found == placed, f"not in a layer: {found - placed}; no such package: {placed - found}"


def test_module_maps_name_every_module_of_each_package():
    """Each package of the layers contract names every module file of it in its docstring's
    map (`` `name` `` or a link to ``lca.package.name``) and in its row of docs/development.md's
    table (``name.py``), so neither map can miss a module or name one that is gone."""
    import ast
    import re

    development = (ROOT / "docs" / "development.md").read_text()
    missing = []
    for package in sorted(_layered()):
        folder = ROOT / package.replace(".", "/")
        if not (folder / "__init__.py").is_file():
            continue  # a module, not a package
        modules = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        rows = [
            line
            for line in development.splitlines()
            if line.startswith(f"| `{package.replace('.', '/')}/` |")
        ]
        assert len(rows) == 1, f"docs/development.md: no one row for {package}"
        named = set(re.findall(r"`(\w+)\.py`", rows[0]))
        assert named <= set(modules), f"docs/development.md names gone modules: {named}"
        for module in modules:
            pkg = re.escape(package)
            if not re.search(rf"`{module}[`.]|\]\[{pkg}\.{module}[\].]", doc):
                missing.append(f"{package}/__init__.py docstring: {module}")
            if module not in named:
                missing.append(f"docs/development.md row {package}: {module}.py")
    assert not missing, "\n".join(missing)


def test_docstrings_cite_only_files_that_exist():
    """A ``docs/….md`` page or a notes file (``PAPER_NOTES``, ``NOTES.md``) named in lca's
    source must be in the repository."""
    import re

    cited = set()
    for path in (ROOT / "lca").rglob("*.py"):
        text = path.read_text()
        for page in re.findall(r"\bdocs/[\w/.-]+?\.md\b", text):
            cited.add((page, path.relative_to(ROOT)))
        for notes in re.findall(r"\b[A-Z]+_?NOTES(?:\.\w+)?\b(?!\s*[=\[(.])", text):
            cited.add((notes, path.relative_to(ROOT)))
    absent = sorted(f"{source}: {name}" for name, source in cited if not (ROOT / name).exists())
    assert not absent, "cited but not in the repository:\n" + "\n".join(absent)


def test_no_empty_section_banners():
    """A ``# --- section ---`` comment heads code: none is followed only by another or by the
    end of its file."""
    import re

    banner = re.compile(r"\s*# (---|===|\S.*(---|===)\s*$)")
    empty = []
    for path in sorted((ROOT / "lca").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        for i, line in enumerate(lines):
            if banner.match(line) and (i + 1 == len(lines) or banner.match(lines[i + 1])):
                empty.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not empty, "\n".join(empty)


CYCLES = """
import sys
import grimp
import lca

assert lca.__file__.startswith(sys.argv[1]), lca.__file__
graph = grimp.build_graph("lca", cache_dir=None)
cycles = set()
for importer in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(importer)):
        back = graph.find_shortest_chain(importer=imported, imported=importer)
        if back:
            cycles.add(" -> ".join((importer, *back)))
print("\\n".join(sorted(cycles)))
print(len(graph.modules), "modules", file=sys.stderr)
"""


def test_no_import_cycles():
    result = subprocess.run(
        [sys.executable, "-c", CYCLES, str(ROOT)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", "import cycles:\n" + result.stdout


@pytest.mark.parametrize(
    ("statement", "new"),
    [
        ("import lca.plots", "lca.report.plots"),
        ("from lca.gradients import configure_tensorflow", "lca.tensorflow.runtime"),
        ("from lca.models import build_model", "lca.tensorflow"),
        ("import lca.allocation.objective", "lca.tensorflow.objective"),
        ("from lca.training.recorder import TrajectoryRecorder", "lca.keras"),
        ("from lca import per_class", "lca.analysis.per_class"),
        ("from lca.allocation.levels import LevelSums", "lca.layout.levels"),
        ("from lca.diagnostics import verify_error", "lca.analysis.diagnostics"),
    ],
)
def test_old_module_paths_name_the_new_one(statement, new):
    result = subprocess.run(
        [sys.executable, "-c", statement], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ") and new in last, result.stderr


def test_public_paths_still_import():
    code = (
        "import lca, lca.analysis, lca.keras, lca.storage, lca.config, lca.training\n"
        "assert callable(lca.allocate) and callable(lca.open_run)\n"
        "assert callable(lca.verify_error) and callable(lca.prune)\n"
        "from lca.analysis import helped_fractions, summary, across_runs, class_specialisation\n"
        "from lca.keras import TrajectoryRecorder\n"
        "from lca.config import load_config\n"
        "from lca.training import train\n"
        "from lca.storage import Run, open_run, open_trajectory, RunError\n"
        "from lca.config import import_function\n"
        "assert import_function('lca.data:run_arrays', 'k').__name__ == 'run_arrays'\n"
        "keras_builder = import_function('lca.tensorflow.models:from_keras_config', 'k')\n"
        "assert keras_builder.__name__ == 'from_keras_config'\n"
        "# the path runs recorded before TensorFlow's code moved name in their config.yaml\n"
        "keras_builder = import_function('lca.models:from_keras_config', 'k')\n"
        "assert keras_builder.__name__ == 'from_keras_config'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_torch_public_paths_import_without_tensorflow():
    """lca.torch (its own layer, below the phases: pyproject.toml) loads neither TensorFlow nor
    the TensorFlow models."""
    pytest.importorskip("torch")
    code = (
        "import sys\n"
        "from lca.torch import TrajectoryRecorder, build_torch_model, keras_to_torch\n"
        "from lca.torch import load_state_dict, torch_layout\n"
        "from lca.torch.training import TorchTrainer\n"
        "from lca.torch.allocation import load_torch_objective\n"
        "from lca.torch.twin import torch_twin\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "assert 'lca.tensorflow' not in sys.modules, 'lca.torch imported lca.tensorflow'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
