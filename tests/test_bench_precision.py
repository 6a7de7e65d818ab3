"""scripts/bench.py precision: float32 against lca's bfloat16 on one full-set gradient."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # scripts/benchmarks, as scripts/bench.py imports it

from benchmarks import precision  # noqa: E402

# as tests/test_modes.py: bfloat16's relative L2 error on the tiny models is 1.4e-3 to 4.7e-3
TINY_BF16_ERROR = 5e-3


def test_precision_measures_bitwise_losses_small_errors_and_a_ratio(trained_runs):
    name = "tiny_fc"  # the Conv2D path of bfloat16 is tests/test_modes.py's
    result = precision.measure(trained_runs(name), rounds=3, min_seconds=0)
    assert result["loss_bitwise"]
    assert set(result["errors"]) == {"train", "val", "all"}
    for error in result["errors"].values():
        assert 0 < error < TINY_BF16_ERROR  # bfloat16's rounding, whatever the CPU's units
    assert result["rounds"] == 3
    assert all(seconds > 0 for seconds in result["seconds"].values())
    assert result["speed_up"] > 0
    text = precision.lines(result)
    assert text[0].startswith(f"{Path(trained_runs(name)).name}: K = ")
    assert text[-1] == "  loss bitwise float32: yes"
    assert all(len(line) <= 130 for line in text)


def test_precision_is_a_subcommand_and_names_what_auto_picks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", SCRIPTS / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parser().parse_args(["precision", "configs/tiny_fc.yaml", "--rounds", "4"])
    assert args.run is precision.run and args.targets == ["configs/tiny_fc.yaml"]
    assert args.rounds == 4 and args.min_seconds == 10
    line = precision.machine_line()
    assert "avx512_bf16" in line and line.split()[-1] in ("float32", "bfloat16")
