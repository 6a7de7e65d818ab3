"""Every figure and quoted output of README and docs comes from scripts/make_figures.py.

The pages quote command output only inside ``<!-- output: NAME -->`` blocks, which must equal
``docs/outputs/NAME.txt`` as the script last wrote it, and show only images the script makes.
"""

import re
from pathlib import Path

import pytest
from helpers import MEASURING_NOW, load_make_figures

ROOT = Path(__file__).parents[1]
IMAGE = re.compile(r"images/([A-Za-z0-9_.-]+\.(?:png|gif|jpg|svg))")


make_figures = load_make_figures()
PAGES = make_figures.pages()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_outputs_are_the_scripts(page):
    for name, bodies in make_figures.marked_blocks(page.read_text()).items():
        assert name in make_figures.produced_outputs(), f"{page.name}: no target makes {name!r}"
        stored = ROOT / "docs" / "outputs" / f"{name}.txt"
        if name in MEASURING_NOW and not stored.exists():
            continue  # the suite quoting its own last line, while make_figures.py times it
        assert stored.exists(), f"{stored} is missing: run scripts/make_figures.py"
        for body in bodies:
            assert body == stored.read_text(), f"{page.name}: block {name!r} differs from {stored}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_image_shown_is_made_by_the_script(page):
    for image in IMAGE.findall(page.read_text()):
        assert image in make_figures.produced_images(), f"{page.name}: {image} has no target"
        assert (ROOT / "docs" / "images" / image).exists()


def test_marked_blocks_are_filled_in_place():
    page = (
        "before\n<!-- output: a -->\n```text\nold\n```\n<!-- /output -->\n"
        "<!-- output: b -->\n```\nkept\n```\n<!-- /output -->\n"
        "<!-- output: c -->\n| old | table |\n<!-- /output -->\nafter\n"
    )
    filled = make_figures.fill_marked_blocks(page, {"a": "new 1\nnew 2", "c": "| new |"})
    assert make_figures.marked_blocks(filled) == {
        "a": ["new 1\nnew 2\n"],
        "b": ["kept\n"],
        "c": ["| new |\n"],
    }
    assert "```text\nnew 1" in filled and "-->\n| new |\n<!-- /output" in filled
    assert filled.startswith("before\n") and filled.endswith("after\n")


def test_output_is_cleaned_of_progress_bars_and_tensorflow_logs():
    raw = (
        "I0000 00:00:17.1 port.cc:153] oneDNN custom operations are on.\n"
        "train x:  50%|#####     | 1/2 [00:01<00:01, 1.00it/s]\r"
        "recorded 3 steps in runs/x\n\nPASS: every iteration\n"
    )
    assert make_figures._clean(raw, "all") == "recorded 3 steps in runs/x\nPASS: every iteration\n"
    assert make_figures._clean(raw, "tail:1") == "PASS: every iteration\n"
    table = "| a | b |\n| --- | --- |\n| 1 | 2 |\nwritten to runs/x/prune\n"
    assert make_figures._clean(table, "table") == "| a | b |\n| --- | --- |\n| 1 | 2 |\n"
