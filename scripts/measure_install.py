"""Measure what installing torch costs a fresh virtual environment: wall time and size on disk.

    python scripts/measure_install.py                   # both candidates (downloads about 3 GB)
    python scripts/measure_install.py --only cpu        # one candidate: default or cpu
    python scripts/measure_install.py --dry-run         # what each would install; no install
    python scripts/measure_install.py --package six     # try the script on a small package

The install advice of docs/pytorch.md rests on these figures: on Linux, PyPI's default torch
wheel is the CUDA build, which brings the nvidia-*/cuda-* libraries along, while the CPU wheel
from PyTorch's own index (``--index-url https://download.pytorch.org/whl/cpu``) brings none, so
a machine without a GPU is advised to install the CPU wheel before ``pip install -e
'.[torch]'`` (which keeps an installed torch: the extra asks for ``torch>=2.2`` only). The
candidates install torch alone: the rest of lca's dependencies (TensorFlow above all) are the
same on either path, so the difference between the two is the torch wheel and what it pulls.

For each candidate the script makes a fresh virtual environment in a temporary folder
(``python -m venv``, upgrading nothing, not even pip), then times ``pip install --no-cache-dir``
of the requirement (wall clock: resolving, downloading, installing) and measures what the
install added to the environment's site-packages: the sum of the files' sizes (decimal MB),
the distributions installed, how many of them are CUDA's (a name that starts with ``nvidia-``
or contains ``cuda``), torch's version, and where pip took each file from (pip's ``--report``).
Each environment is deleted once measured.

pip installs from PyPI alone, as on a user's machine: the machine's pip config files and the
``PIP_*`` variables that add indexes, wheel folders or constraints are left out (the second
line names them); ``--keep-pip-config`` keeps them. When PyTorch's CPU index cannot be
reached, the CPU candidate installs the newest ``+cpu`` torch wheel of a wheel folder of pip's
``find-links`` configuration instead, its dependencies from PyPI, and its line says so;
without such a wheel, its line says that it was skipped. Results go to stdout, one line per
candidate (``python scripts/make_figures.py torch_install`` stores them as the block
``torch_install``); progress and pip's errors go to stderr. The exit status is 1 when a pip
install failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass
class Candidate:
    """One way of installing the package: pip's arguments and what they stand for."""

    name: str  # the --only name
    about: str  # what is installed, from where
    args: list[str] = field(default_factory=list)  # pip install's arguments
    skipped: str = ""  # why it is not measured here


@dataclass
class Measurement:
    seconds: float | None  # None: resolved only (--dry-run)
    added_bytes: int | None
    installed: dict[str, str]  # distribution -> version, the ones the install added
    sources: dict[str, str]  # distribution -> where pip took it from (empty before pip 22.2)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    if not match:
        sys.exit(f"not a requirement: {spec!r}")
    return match[1]


def reachable(url: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Whether ``url`` answers at all (any HTTP status), and why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True, ""
    except urllib.error.HTTPError:
        return True, ""  # it answered
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return False, str(reason)


def pip_configuration(python: Path) -> dict[str, str]:
    """pip's settings in effect, by option name: its config files', then ``PIP_*`` variables'."""
    done = subprocess.run(
        [str(python), "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        where, _, option = key.rpartition(".")
        (env if where == ":env:" else files)[option] = value.strip().strip("'\"")
    return {**files, **env}


def constraints_naming(settings: dict[str, str], name: str) -> list[str]:
    """The lines of the configured constraint files that name the package."""
    lines = []
    for path in settings.get("constraint", "").split():
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line[:1].isalnum() and _normalize(_requirement_name(line)) == _normalize(name):
                lines.append(line)
    return lines


def _version_key(version: str) -> tuple:
    public = version.split("+", 1)[0]
    return tuple(int(p) if p.isdigit() else 0 for p in public.split("."))


def local_cpu_wheel(name: str, folders: list[str]) -> tuple[str, str] | None:
    """(folder, version) of the newest ``+cpu`` wheel of ``name`` for this Python and machine."""
    stem = re.sub(r"[-.]+", "_", name)
    python_tags = {f"cp{sys.version_info.major}{sys.version_info.minor}", "py3"}
    machine = platform.machine().lower()
    found = []
    for folder in folders:
        path = Path(unquote(urlparse(folder).path)) if folder.startswith("file:") else Path(folder)
        if not path.is_dir():
            continue
        for wheel in path.glob(f"{stem}-*+cpu*.whl"):
            parts = wheel.name[: -len(".whl")].split("-")
            if len(parts) < 5 or _normalize(parts[0]) != _normalize(name):
                continue
            python_tag, platform_tag = parts[-3], parts[-1]
            if not python_tags & set(python_tag.split(".")):
                continue
            if platform_tag != "any" and (
                machine not in platform_tag or sys.platform not in platform_tag
            ):
                continue
            found.append((str(path), parts[1]))
    return max(found, key=lambda f: _version_key(f[1])) if found else None


def candidates(
    spec: str, settings: dict[str, str], only: str | None, keep_config: bool
) -> list[Candidate]:
    """The default wheel, and the CPU wheel from PyTorch's index (or a local wheel folder)."""
    name = _requirement_name(spec)
    chosen = []
    if only in (None, "default"):
        about = "the default of this machine's pip" if keep_config else "PyPI's default wheel"
        chosen.append(Candidate("default", about, [spec]))
    if only in (None, "cpu"):
        up, why = reachable(f"{CPU_INDEX}/")
        if up:
            about = "the CPU wheel from PyTorch's index"
            chosen.append(Candidate("cpu", about, [spec, "--index-url", CPU_INDEX]))
        else:
            unreached = f"{urlparse(CPU_INDEX).netloc} not reachable here"
            print(f"{CPU_INDEX}: {why}", file=sys.stderr)
            local = local_cpu_wheel(name, settings.get("find-links", "").split())
            if local:
                folder, version = local
                about = f"the CPU wheel from the wheel folder {folder}, {unreached}"
                args = ["--find-links", folder, f"{name}=={version}"]
                chosen.append(Candidate("cpu", about, args))
            else:
                skipped = f"{unreached}; no +cpu wheel of {name} in pip's find-links"
                chosen.append(Candidate("cpu", "the CPU wheel", skipped=skipped))
    return chosen


def _python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / "python"


def _query(python: Path, code: str):
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def site_packages(python: Path) -> list[Path]:
    paths = _query(
        python,
        "import json, sysconfig; p = sysconfig.get_paths(); print(json.dumps([p['purelib'], p['platlib']]))",
    )
    return sorted({Path(p) for p in paths})


def distributions(python: Path) -> dict[str, str]:
    return _query(
        python,
        "import json, importlib.metadata as m; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    )


def size_on_disk(folders: list[Path]) -> int:
    """The sum of the sizes of the regular files under ``folders`` (links not followed)."""
    total = 0
    for folder in folders:
        for root, _, files in os.walk(folder):
            for file in files:
                path = os.path.join(root, file)
                if not os.path.islink(path):
                    total += os.lstat(path).st_size
    return total


def source(url: str) -> str:
    """Where a file came from, in words: PyPI, PyTorch's index, or a local folder."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        return str(Path(path).parent if path.endswith((".whl", ".tar.gz", ".zip")) else path)
    if parsed.netloc in ("files.pythonhosted.org", "pypi.org"):
        return "PyPI"
    if parsed.netloc == urlparse(CPU_INDEX).netloc:
        return "PyTorch's index"
    return parsed.netloc or url


def pip_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=True
    )
    return done.stdout.split()[1]


# pip's environment variables that add or replace where packages come from
SOURCE_VARIABLES = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")


def pip_environment(keep_config: bool) -> dict[str, str]:
    """pip's environment: this machine's configuration, or PyPI alone as a user's pip has it."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if not keep_config:
        for name in (*SOURCE_VARIABLES, "PIP_CONSTRAINT"):
            env.pop(name, None)
        env["PIP_CONFIG_FILE"] = os.devnull  # no config file: no extra indexes, wheel folders
    return env


def measure(python: Path, args: list[str], scratch: Path, env: dict[str, str]) -> Measurement:
    """Time ``pip install --no-cache-dir ARGS`` and measure what it added."""
    folders = site_packages(python)
    before_bytes, before = size_on_disk(folders), distributions(python)
    report = scratch / "report.json"
    supports_report = _version_key(pip_version(python)) >= (22, 2)
    command = [str(python), "-m", "pip", "install", "--no-cache-dir", *args]
    if supports_report:
        command[4:4] = ["--report", str(report)]
    log = scratch / "pip.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = log.read_text().strip().splitlines()[-15:]
        raise RuntimeError(f"pip exited {done.returncode}:\n" + "\n".join(tail))
    after = distributions(python)
    installed = {n: v for n, v in after.items() if before.get(n) != v}
    sources: dict[str, str] = {}
    if supports_report:
        for item in json.loads(report.read_text()).get("install", []):
            url = item.get("download_info", {}).get("url", "unknown")
            sources[item.get("metadata", {}).get("name", url)] = source(url)
    return Measurement(seconds, size_on_disk(folders) - before_bytes, installed, sources)


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _megabytes(n: int) -> str:
    mb = n / 1e6
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2f} MB"


def line(candidate: Candidate, name: str, m: Measurement) -> str:
    """One candidate's result: the command, the figures, where pip took the files from."""
    version = next((v for n, v in m.installed.items() if _normalize(n) == _normalize(name)), "?")
    cuda = [n for n in m.installed if _normalize(n).startswith("nvidia-") or "cuda" in n.lower()]
    about = candidate.about
    if m.sources:
        origin = next(
            (w for n, w in m.sources.items() if _normalize(n) == _normalize(name)), "unknown"
        )
        counts: dict[str, int] = {}
        for where in m.sources.values():
            counts[where] = counts.get(where, 0) + 1
        every = ", ".join(f"{where} {count}" for where, count in sorted(counts.items()))
        about += f"; {name} from {origin}; files from {every}"
    figures = (
        "" if m.seconds is None else f"{_seconds(m.seconds)}  {_megabytes(m.added_bytes or 0)}  "
    )
    return (
        f"pip install {' '.join(candidate.args)}  {name} {version}  {figures}{len(cuda)} "
        f"nvidia/cuda packages of {len(m.installed)} distributions  ({about})"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", choices=["default", "cpu"], help="measure one candidate")
    p.add_argument(
        "--package",
        default="torch",
        metavar="SPEC",
        help="the requirement to install instead of torch (to try the script on a small package)",
    )
    p.add_argument(
        "--keep-pip-config",
        action="store_true",
        help="install with this machine's pip configuration (its extra indexes, wheel folders "
        "and constraints) instead of from PyPI alone",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve each candidate (pip install --dry-run): what it would install, nothing timed",
    )
    return p


def dry_run(python: Path, candidate: Candidate, name: str, scratch: Path, env) -> str:
    """What the candidate would install, resolved by pip without installing it."""
    report = scratch / "report.json"
    command = [str(python), "-m", "pip", "install", "--dry-run", "--no-cache-dir", "--report"]
    done = subprocess.run(
        [*command, str(report), *candidate.args], capture_output=True, text=True, env=env
    )
    if done.returncode:
        return f"pip install {' '.join(candidate.args)}: failed\n{done.stdout[-1500:]}"
    items = json.loads(report.read_text()).get("install", [])
    installed = {i["metadata"]["name"]: i["metadata"]["version"] for i in items}
    sources = {i["metadata"]["name"]: source(i["download_info"]["url"]) for i in items}
    return "would run: " + line(candidate, name, Measurement(None, None, installed, sources))


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    name = _requirement_name(options.package)
    env = pip_environment(options.keep_pip_config)
    failed = False
    with tempfile.TemporaryDirectory(prefix="measure_install-") as tmp:
        probe = Path(tmp) / "probe"
        subprocess.run([sys.executable, "-m", "venv", str(probe)], check=True)
        settings = pip_configuration(_python(probe))  # this machine's, kept or not
        print(
            f"pip {pip_version(_python(probe))}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}: each line a fresh venv, "
            "pip install --no-cache-dir, its wall time and the size added to site-packages"
        )
        configured = [
            f"{option} {settings[option]}"
            for option in ("index-url", "extra-index-url", "find-links")
            if settings.get(option)
        ] + [f"constraint {c}" for c in constraints_naming(settings, name)]
        if configured:
            kept = "kept" if options.keep_pip_config else "ignored (PyPI alone)"
            print(f"pip's configuration on this machine, {kept}: " + "; ".join(configured))
        chosen = candidates(options.package, settings, options.only, options.keep_pip_config)
        for candidate in chosen:
            if candidate.skipped:
                print(f"{candidate.about}: skipped, {candidate.skipped}")
                continue
            scratch = Path(tmp) / candidate.name
            scratch.mkdir()
            if options.dry_run:
                print(dry_run(_python(probe), candidate, name, scratch, env), flush=True)
                continue
            venv = scratch / "venv"
            print(f"[{candidate.name}] python -m venv, then pip install ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            try:
                result = measure(_python(venv), candidate.args, scratch, env)
            except (RuntimeError, subprocess.CalledProcessError) as error:
                print(f"[{candidate.name}] {error}", file=sys.stderr)
                print(f"pip install {' '.join(candidate.args)}: failed (see stderr)")
                failed = True
            else:
                print(line(candidate, name, result), flush=True)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
