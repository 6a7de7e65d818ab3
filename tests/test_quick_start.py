"""The tiny quick start's quoted figures are what the program prints now.

``python scripts/make_figures.py tiny`` runs ``lca train configs/tiny_fc.yaml``, ``lca
allocate``, ``lca verify-error`` and ``lca report`` and stores what the last two print in
``docs/outputs/tiny_verify_error.txt`` and ``tiny_report.txt``. Here the same pipeline (the
shared tiny_fc run, trained and allocated with the config's settings, as the two commands do)
is verified and reported again, and every line is compared with the stored one:

* labels, verdicts and counts (iterations, sub-interval counts, PASS) exactly;
* every other number printed in the same format and within one unit of its last
  printed digit (a figure printed as 67.86 may be 67.85 or 67.87 after a change in the last
  bits of a float32 sum, not 67.9); together with the exact count of numbers per line this
  holds the quoted figures to the program's to about 1e-4 relative or better;
* paths are the run's own and are not compared; timings are not printed by these commands.
"""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path

import pytest
from helpers import cli_in_process

ROOT = Path(__file__).parents[1]
OUTPUTS = ROOT / "docs" / "outputs"
QUOTED_RUN = "runs/tiny_fc"  # the run directory as make_figures' tiny target names it
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?")


def _numbers(line: str) -> tuple[str, list[str]]:
    """A line's words with its numbers taken out, and the numbers as printed."""
    return NUMBER.sub("#", line), NUMBER.findall(line)


def _last_digit(printed: str) -> float:
    """One unit of the last digit a number is printed with (0.01 for 67.86, 1e-6 for 2.8e-05)."""
    mantissa, _, exponent = printed.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def differences(quoted: str, printed: str) -> list[str]:
    """Lines of ``printed`` that do not agree with ``quoted`` (see the module's rules)."""
    quoted_lines, printed_lines = quoted.strip().splitlines(), printed.strip().splitlines()
    if len(quoted_lines) != len(printed_lines):
        diff = difflib.unified_diff(quoted_lines, printed_lines, "quoted", "printed", lineterm="")
        return [f"{len(printed_lines)} lines printed, {len(quoted_lines)} quoted", *diff]
    found = []
    for old, new in zip(quoted_lines, printed_lines):
        (old_words, old_numbers), (new_words, new_numbers) = _numbers(old), _numbers(new)
        if old_words != new_words or len(old_numbers) != len(new_numbers):
            found.append(f"quoted {old.strip()!r}, printed {new.strip()!r}")
            continue
        for a, b in zip(old_numbers, new_numbers):
            integer = not re.search(r"[.e]", a.lower() + b.lower())
            allowed = 0.0 if integer else _last_digit(a)
            if _last_digit(a) != _last_digit(b) or abs(float(a) - float(b)) > allowed * (1 + 1e-9):
                found.append(f"quoted {a} printed {b} in {new.strip()!r}")
    return found


def test_differences_holds_figures_to_their_printed_precision():
    assert differences("x 67.86 of 40 PASS", "x 67.87 of 40 PASS") == []
    assert differences("x 2.827e-05", "x 2.828e-05") == []
    assert differences("x 67.86", "x 67.9")  # a digit less is another figure
    assert differences("x 67.86", "x 67.88")
    assert differences("x 40 of 40", "x 39 of 40")  # counts exactly
    assert differences("PASS: all", "FAIL: all")


@pytest.fixture(scope="module")
def quick_start_run(allocated_tiny_run, tmp_path_factory) -> Path:
    """The tiny quick start's run (trained and allocated with tiny_fc's settings), copied."""
    run = tmp_path_factory.mktemp("quick_start") / "tiny_fc"
    shutil.copytree(allocated_tiny_run, run)
    return run


def _as_quoted(text: str, run: Path) -> str:
    return text.replace(str(run), QUOTED_RUN)


def test_verify_error_prints_the_quoted_figures(quick_start_run):
    done = cli_in_process("verify-error", str(quick_start_run))
    assert done.returncode == 0, done.stdout + done.stderr
    quoted = (OUTPUTS / "tiny_verify_error.txt").read_text()
    found = differences(quoted, _as_quoted(done.stdout, quick_start_run))
    assert not found, "regenerate: python scripts/make_figures.py tiny\n" + "\n".join(found)


def test_report_prints_the_quoted_figures(quick_start_run, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # one animation frame: what the report prints does not depend on the animation
    done = cli_in_process("report", str(quick_start_run), "--frames", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    quoted = (OUTPUTS / "tiny_report.txt").read_text()
    found = differences(quoted, _as_quoted(done.stdout, quick_start_run))
    assert not found, "regenerate: python scripts/make_figures.py tiny\n" + "\n".join(found)
