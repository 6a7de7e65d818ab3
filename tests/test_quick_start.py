"""The tiny quick start's quoted figures are what the program prints now.

``python scripts/make_figures.py tiny`` runs ``lca train configs/tiny_fc.yaml``, ``lca
allocate``, ``lca verify-error`` and ``lca report`` and stores what the last two print in
``docs/outputs/tiny_verify_error.txt`` and ``tiny_report.txt``. Here what the same commands
print when README's tiny quick start runs them (conftest's ``tiny_quick_start``, run once per
session and also checked by test_examples.py) is compared, line by line, with the stored text:

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
from pathlib import Path

from test_examples import quick_start_commands

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


def _printed(tiny_quick_start, command: str) -> str:
    """What README's quick start's ``lca COMMAND runs/tiny_fc`` printed, its run's path as
    quoted."""
    workdir, results = tiny_quick_start(quick_start_commands(ROOT / "README.md"))
    run = [done for done in results if done["args"][:1] == [command]]
    assert run, f"README's tiny quick start did not run lca {command}: {results}"
    done = run[0]
    assert done["returncode"] == 0, done["stdout"] + done["stderr"]
    assert done["args"][1:] == [QUOTED_RUN], done["args"]  # the run the quoted figures name
    return done["stdout"].replace(str(workdir / QUOTED_RUN), QUOTED_RUN)


def test_verify_error_prints_the_quoted_figures(tiny_quick_start):
    quoted = (OUTPUTS / "tiny_verify_error.txt").read_text()
    found = differences(quoted, _printed(tiny_quick_start, "verify-error"))
    assert not found, "regenerate: python scripts/make_figures.py tiny\n" + "\n".join(found)


def test_report_prints_the_quoted_figures(tiny_quick_start):
    quoted = (OUTPUTS / "tiny_report.txt").read_text()
    found = differences(quoted, _printed(tiny_quick_start, "report"))
    assert not found, "regenerate: python scripts/make_figures.py tiny\n" + "\n".join(found)
