"""The allocate settings: one definition, overrides checked against it, old names still read.

Old config keys and CLI flags keep working with one ``note:`` line naming the new one, and a
store's recorded identity keeps its names, so stores made before resume.
"""

import dataclasses

import numpy as np
import pytest
import zarr
from helpers import assert_one_line_error, cli_in_process

import lca.config.schema as schema
from lca.allocation import AllocationSettings, Execution, allocate, resolve_settings
from lca.allocation.settings import continued_from, current_identity
from lca.config import AllocateConfig, config_from_dict
from lca.storage import RunError


@pytest.fixture
def notes(monkeypatch, capsys):
    """Rename notes on again for this test (each is given once per process); read stderr."""
    monkeypatch.setattr(schema, "_notes_given", set())
    return capsys


def test_old_config_keys_read_as_the_new_ones_with_one_note(notes):
    old = config_from_dict({"allocate": {"max_splits": 8, "chunk_iterations": 4}}).allocate
    new = config_from_dict({"allocate": {"max_intervals": 8, "block_iterations": 4}}).allocate
    assert old == new and (new.max_intervals, new.block_iterations) == (8, 4)
    config_from_dict({"allocate": {"max_splits": 8}})  # a second time: no second note
    assert notes.readouterr().err.splitlines() == [
        "note: allocate.max_splits is now allocate.max_intervals",
        "note: allocate.chunk_iterations is now allocate.block_iterations",
    ]
    with pytest.raises(schema.ConfigError, match="allocate.max_splits: the old name of"):
        config_from_dict({"allocate": {"max_splits": 8, "max_intervals": 8}})


def test_allow_tf32_reads_as_precision_tf32_with_one_note(notes):
    def allocate_section(**keys):
        return config_from_dict({"allocate": keys}).allocate

    tf32 = allocate_section(precision="tf32")
    assert allocate_section(allow_tf32=True) == tf32
    assert allocate_section(allow_tf32=True, precision="float32") == tf32
    assert allocate_section(allow_tf32=False) == AllocateConfig()  # false: the default, dropped
    assert allocate_section(allow_tf32=False, precision="bfloat16").precision == "bfloat16"
    assert notes.readouterr().err.splitlines() == [
        "note: allocate.allow_tf32 is now allocate.precision: tf32"
    ]
    with pytest.raises(schema.ConfigError) as caught:
        allocate_section(allow_tf32=True, precision="bfloat16")
    assert "\n" not in str(caught.value)
    assert "allocate.allow_tf32" in str(caught.value) and "allocate.precision" in str(caught.value)
    # overrides, as `lca.allocate(run, allow_tf32=True)` passes them: the same settings
    base = AllocateConfig(precision="float32")
    assert resolve_settings(base, 10, allow_tf32=True) == resolve_settings(
        base, 10, precision="tf32"
    )
    # a store that recorded allow_tf32 resumes in those terms
    made = {**OLD_IDENTITY, "allow_tf32": True}
    assert current_identity(made)["precision"] == "tf32"
    settings = resolve_settings(
        AllocateConfig(eval_batch_size=700, threshold=1e-4, block_iterations=8),
        10,
        **continued_from(made, {}),
    )
    assert settings.precision == "tf32" and settings.made(made)
    assert not settings.made(OLD_IDENTITY)


def test_overrides_are_checked_against_the_settings_and_errors_name_them():
    config = AllocateConfig(precision="float32")
    assert resolve_settings(config, 10, rule="simpson").rule == "simpson"
    for overrides, message in [
        ({"max_intervals": 3}, "allocate.max_intervals: must be a power of two >= 2"),
        ({"rule": "rk45"}, "allocate.rule: must be one of simpson, adaptive, got 'rk45'"),
        ({"max_interval": 8}, "allocate.max_interval: unknown key (allowed: "),
        ({"splits": ["test"]}, "allocate.splits[0]: must be one of train, val"),
    ]:
        with pytest.raises(RunError) as caught:
            resolve_settings(config, 10, **overrides)
        assert str(caught.value).startswith(message), caught.value
        assert "--" not in str(caught.value)  # a Python caller typed no flag


def test_settings_are_the_config_resolved():
    config = AllocateConfig(precision="auto", rule="simpson")
    settings = resolve_settings(config, 84_060, on_gpu=True)
    assert isinstance(settings, AllocateConfig)
    assert {f.name for f in dataclasses.fields(settings)} == {
        f.name for f in dataclasses.fields(AllocateConfig)
    }
    assert settings.precision == "float32" and settings.block_iterations > 0  # resolved
    with pytest.raises(ValueError, match="resolve_settings"):
        AllocationSettings()  # precision auto, no block size: not settings for a run


#: ``settings`` attrs of a store made before the config names changed and before rule,
#: precision, store, store_grad and causes existed (absent: simpson, float32, parameters, …).
OLD_IDENTITY = {
    "splits": ["train", "val"],
    "threshold": 1e-4,
    "max_splits": 32,
    "chunk_iterations": 8,
    "eval_batch_size": 700,
    "allow_tf32": False,
    "jit_compile": False,
    "reuse_input_layer": True,
}
#: What a store with those settings records today.
NEW_IDENTITY = {k: v for k, v in OLD_IDENTITY.items() if k != "allow_tf32"}


def test_an_old_store_identity_equals_the_settings_it_was_made_with():
    base = AllocateConfig(eval_batch_size=700, threshold=1e-4, block_iterations=8)
    chosen = continued_from(OLD_IDENTITY, {})  # resuming: nothing chosen on the command line
    assert chosen == {
        "rule": "simpson",
        "trapezoid_threshold": None,
        "precision": "float32",
        "store": "parameters",
        "store_grad": True,
        "causes": False,
    }
    settings = resolve_settings(base, 10, **chosen)
    assert settings.made(OLD_IDENTITY)
    # recorded the same way, in the same order; allow_tf32: false is no setting any more
    assert list(settings.identity().items()) == list(NEW_IDENTITY.items())
    changed = resolve_settings(base, 10, **continued_from(OLD_IDENTITY, {"max_intervals": 8}))
    assert changed.differences(OLD_IDENTITY) == "made with max_intervals: 32; asked for " + (
        "max_intervals: 8"
    )


def test_an_old_store_resumes(fresh_run):
    run_dir = fresh_run()  # tiny_fc: its config says rule adaptive
    allocate(run_dir, rule="simpson", iterations=(0, 8), progress=False)
    group = zarr.open_group(run_dir / "lca.zarr", mode="r+")
    assert dict(group.attrs["settings"]) == NEW_IDENTITY  # as stores made before, but TF32
    group.attrs["settings"] = OLD_IDENTITY  # written the old way, key by key
    summary = allocate(run_dir, progress=False)  # continues with the store's simpson
    assert summary.complete and summary.iterations_this_run == 32


def test_execution_options_are_one_object_checked_once():
    with pytest.raises(RunError, match="execution.gpus, execution.workers and execution.ray"):
        Execution(workers=2, ray="auto")
    with pytest.raises(RunError, match="execution.gpus_per_task .* need execution.ray"):
        Execution(gpus_per_task=1)
    assert Execution(gpus=[0, 2]).gpus == (0, 2)


def test_old_allocate_flags_note_the_new_ones_and_do_the_same(fresh_run, notes):
    old, new = fresh_run(), fresh_run()
    result = cli_in_process(
        "allocate", old, "--max-splits", "8", "--iterations", "0:8", "--restart"
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("note:")] == [
        "note: --max-splits is now --max-intervals",
        "note: --iterations is now --range",
        "note: --restart is now --overwrite",
    ]
    result = cli_in_process("allocate", new, "--max-intervals", "8", "--range=0:8", "--overwrite")
    assert result.returncode == 0 and "note:" not in result.stderr, result.stderr
    for name in ("train/lca", "val/lca"):
        a = zarr.open_group(old / "lca.zarr", mode="r")[name][:]
        b = zarr.open_group(new / "lca.zarr", mode="r")[name][:]
        assert np.array_equal(a, b, equal_nan=True), name
    assert zarr.open_group(old / "lca.zarr", mode="r").attrs["settings"]["max_splits"] == 8


def test_allocate_errors_name_the_flag_typed(fresh_run):
    run_dir = fresh_run()
    result = cli_in_process("allocate", run_dir, "--max-intervals", "3")
    assert_one_line_error(result, "error: --max-intervals: must be a power of two", alone=True)
    result = cli_in_process("allocate", run_dir, "--workers", "2", "--ray", "auto")
    assert_one_line_error(result, "--gpus, --workers and --ray are exclusive", alone=True)


def test_every_option_has_help_and_shows_its_default_one_way():
    import click

    from lca.cli import main

    for name, command in main.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            assert param.help, f"lca {name} {param.opts[0]} has no help"
            assert "[config" not in param.help and "[default" not in param.help, param.help
            assert not param.help.endswith(("the", "the paper's", ":")), param.help
    text = cli_in_process("allocate", "--help").stdout
    assert "[default: adaptive (config)]" in text and "[default: 32 (config)]" in text
    assert "(old name: --restart)" in text and "--max-splits" not in text
