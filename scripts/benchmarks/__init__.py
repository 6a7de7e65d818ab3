"""The subcommands of ``scripts/bench.py``, one module each (``add_arguments`` and ``run``);
:mod:`.common` holds what they share: the run measured and side-by-side timing."""
