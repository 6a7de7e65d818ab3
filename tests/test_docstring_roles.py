"""scripts/docstring_roles.py: Sphinx roles in docstrings become mkdocstrings cross-references."""

import importlib.util
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip("griffe")

SCRIPT = Path(__file__).parents[1] / "scripts" / "docstring_roles.py"
spec = importlib.util.spec_from_file_location("docstring_roles", SCRIPT)
roles = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = roles  # dataclasses look their module up
spec.loader.exec_module(roles)


def _package(root: Path) -> Path:
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The package: see :mod:`pkg.sub`."""\n')
    (pkg / "sub" / "__init__.py").write_text(
        '"""Sub: :func:`.tools.helper` and :class:`~pkg.sub.tools.Thing`."""\n'
        "from .tools import Thing, helper\n"
    )
    (pkg / "sub" / "tools.py").write_text(
        '"""Tools, used by :func:`helper`."""\n\n\n'
        "class Thing:\n"
        '    """A thing; :meth:`run` it, or :func:`nowhere`."""\n\n'
        "    def run(self):\n"
        '        """Run (not :data:`x = 1`, a string that is no docstring)."""\n\n\n'
        "def helper():\n"
        '    """Help; see :class:`Thing`."""\n'
        "    return ':func:`helper`'\n"
    )
    return pkg


def _inventory(path: Path, names: list[str]) -> Path:
    body = "".join(f"{n} py:function 1 api/#$ -\n" for n in names).encode()
    header = b"# Sphinx inventory version 2\n# Project: x\n# Version: 0\n# zlib\n"
    path.write_bytes(header + zlib.compress(body))
    return path


def test_roles_become_links_where_the_site_documents_the_target(tmp_path, capsys):
    pkg = _package(tmp_path)
    documented = ["pkg.sub.tools.helper", "pkg.sub.tools.Thing", "pkg.sub.tools.Thing.run"]
    inventory = _inventory(tmp_path / "objects.inv", documented)
    assert roles.main(["--check", str(pkg)]) == 1  # roles left: --check fails, changes nothing
    assert ":func:`.tools.helper`" in (pkg / "sub" / "__init__.py").read_text()
    assert roles.main(["--inventory", str(inventory), str(pkg)]) == 0
    sub = (pkg / "sub" / "__init__.py").read_text()
    assert "[`tools.helper`][pkg.sub.tools.helper]" in sub  # relative, resolved by package
    assert "[`Thing`][pkg.sub.tools.Thing]" in sub  # ~ shows the last component
    tools = (pkg / "sub" / "tools.py").read_text()
    assert "[`run`][pkg.sub.tools.Thing.run]" in tools  # a method, found in its class
    assert "[`Thing`][pkg.sub.tools.Thing]" in tools  # a bare name, found in the module
    assert "`nowhere`" in tools and "[`nowhere`]" not in tools  # unresolved: a code span
    assert "return ':func:`helper`'" in tools  # only docstrings are rewritten
    assert "`pkg.sub`" in (pkg / "__init__.py").read_text()  # not documented: a code span
    assert "names nothing" in capsys.readouterr().err
    assert roles.main(["--check", str(pkg)]) == 0


def test_lca_docstrings_hold_no_sphinx_role(capsys):
    """One docstring style: mkdocstrings cross-references, never a raw ``:func:`` on the page."""
    assert roles.main(["--check", str(SCRIPT.parents[1] / "lca")]) == 0, capsys.readouterr().out
