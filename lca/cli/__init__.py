"""The ``lca`` command line: parse, call the library, turn known errors into one line.

lca describe configs/mnist_fc_sgd.yaml
lca train configs/mnist_fc_sgd.yaml --set data.path=../shared/data/mnist.npz
lca allocate runs/mnist_fc_sgd --workers 2
lca verify-error runs/mnist_fc_sgd
lca report runs/mnist_fc_sgd --out /tmp/report
lca tensorboard runs/mnist_fc_sgd

This package holds the group `main` and the commands' order; the commands live by phase:
`record` (describe, train, import), `allocation` (allocate, verify-error, check) and
`results` (report, tensorboard, prune), on what `common` shares (the option class, renamed
flags, one-line errors, the native-stderr filter); `__main__` is ``python -m lca.cli``.
"""

from __future__ import annotations

import os
import warnings

# TensorFlow's start-up chatter (oneDNN, cuInit on machines without a GPU, …) stays out of the
# output: set before anything imports TensorFlow; a value the user set wins (and shows all)
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click  # noqa: E402

from .allocation import ALLOCATE_FLAGS, allocate, check, verify_error  # noqa: E402
from .common import (  # noqa: E402
    NATIVE_NOISE,
    PRECISION_NAMES,
    RENAMED_FLAGS,
    RULE_NAMES,
    STORE_NAMES,
    Option,
    RenamingCommand,
    friendly_errors,
    option,
    override_option,
    quiet_native_stderr,
)
from .record import describe, import_checkpoints, train  # noqa: E402
from .results import prune, report, tensorboard  # noqa: E402

#: The commands in the order a run goes through them, each with one example.
PIPELINE = {
    "describe": "lca describe configs/mnist_fc_sgd.yaml",
    "train": "lca train configs/mnist_fc_sgd.yaml",
    "import": "lca import configs/mnist_fc_sgd.yaml checkpoints/",
    "allocate": "lca allocate runs/mnist_fc_sgd",
    "verify-error": "lca verify-error runs/mnist_fc_sgd",
    "report": "lca report runs/mnist_fc_sgd",
    "tensorboard": "lca tensorboard runs/mnist_fc_sgd",
    "prune": "lca prune runs/mnist_fc_sgd --by lca,magnitude",
    "check": "lca check runs/mnist_fc_sgd",
}


class PipelineGroup(click.Group):
    """``lca --help`` lists the commands in pipeline order, each with an example."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = list(PIPELINE)
        return sorted(self.commands, key=lambda n: (order.index(n) if n in order else 99, n))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            rows.append((name, command.get_short_help_str(limit=300)))
            if name in PIPELINE:
                rows.append(("", f"$ {PIPELINE[name]}"))
        with formatter.section("Commands, in pipeline order"):
            formatter.write_dl(rows)


@click.group(cls=PipelineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lca")
def main() -> None:
    """Loss Change Allocation: record a training run, allocate its loss change, verify it.

    `lca COMMAND --help` lists a command's options. Documentation: the docs/ folder of the
    repository (browse it with `mkdocs serve`).
    """
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    if USER_TF_LOG_LEVEL is None:
        quiet_native_stderr()


for _command in (
    describe,
    train,
    allocate,
    verify_error,
    report,
    tensorboard,
    prune,
    import_checkpoints,
    check,
):
    main.add_command(_command)
del _command

__all__ = [
    "ALLOCATE_FLAGS",
    "NATIVE_NOISE",
    "PIPELINE",
    "PRECISION_NAMES",
    "RENAMED_FLAGS",
    "RULE_NAMES",
    "STORE_NAMES",
    "USER_TF_LOG_LEVEL",
    "Option",
    "PipelineGroup",
    "RenamingCommand",
    "allocate",
    "check",
    "describe",
    "friendly_errors",
    "import_checkpoints",
    "main",
    "option",
    "override_option",
    "prune",
    "quiet_native_stderr",
    "report",
    "tensorboard",
    "train",
    "verify_error",
]
