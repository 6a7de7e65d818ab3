"""The documentation site builds cleanly, and its configuration reference is complete."""

import dataclasses
import html
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
pytest.importorskip("mkdocs_click")
pytest.importorskip("mkdocstrings_handlers.python")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``mkdocs build --strict``: a broken link, anchor or identifier is an error."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    return out, result


def test_site_builds_strict(site):
    _, result = site
    assert result.returncode == 0, result.stdout + result.stderr


def _config_dataclasses():
    """Every config dataclass, found independently of the docs hook: by scanning the schema."""
    import lca.config.schema as module

    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
    }


def test_configuration_reference_lists_every_field(site):
    out, result = site
    assert result.returncode == 0, result.stdout + result.stderr
    page = (out / "reference" / "configuration" / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    classes = _config_dataclasses()
    assert "Config" in classes and len(classes) >= 6
    keys = {html.unescape(k) for k in re.findall(r"<code>([^<]+)</code>", page)}
    missing = [
        f"{name}.{f.name}"
        for name, cls in classes.items()
        for f in dataclasses.fields(cls)
        if not any(k == f.name or k.endswith("." + f.name) for k in keys)
    ]
    assert not missing, f"fields missing from the configuration reference: {missing}"
    # and every dotted key the hook generates is on the page, with its section's docstring
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import config_reference
    finally:
        sys.path.pop(0)
    sections = config_reference.sections()
    documented = {s.cls for s in sections}
    assert set(classes.values()) <= documented, set(classes.values()) - documented
    for s in sections:
        hints = typing.get_type_hints(s.cls)
        assert [r.key.rsplit(".", 1)[-1] for r in s.rows] == list(hints)
        for r in s.rows:
            assert r.key in text, r.key


def test_cli_page_follows_the_pipeline_with_its_examples():
    """The CLI page lists the commands in `lca --help`'s order, each with its example, and
    renders them in that order."""
    from lca.cli import PIPELINE

    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    rows = re.findall(r"^\| \[`([\w-]+)`\]\(#lca-[\w-]+\) \| `([^`]+)` \|$", page, re.M)
    assert rows == list(PIPELINE.items())
    rendered = re.findall(r"^    :prog_name: lca ([\w-]+)$", page, re.M)
    assert rendered == list(PIPELINE)
