"""Helpers shared by test modules (not fixtures): running the real command line."""

import os
import subprocess
import sys


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``lca ARGS`` in a fresh Python process, as a user's shell would."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "lca.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
