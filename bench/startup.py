"""Startup benchmark: how long the command line takes before it does anything.

Times, each in a fresh process, ``thinktank --help``, ``thinktank validate
sessions/diamond.yaml``, ``python -c "import thinktank"`` and the imports of pydantic
and networkx alone, and prints the median and
90th percentile over ``--runs`` runs (default 20), after one untimed warm-up run of each
that fills the OS file cache and ``__pycache__`` (``PYTHONDONTWRITEBYTECODE`` is
dropped for the timed processes: an installed package has its bytecode, and compiling
the package's sources on every start would cost more than the imports measured).

Besides wall time it prints the median CPU time (user + system) of the process, which
stays put on a machine shared with other work, where wall time does not.

Run from the repo root: ``python bench/startup.py``. ``--repo PATH`` times another
checkout's code (it is put on ``PYTHONPATH``), e.g. ``--repo /path/to/main`` for a
before/after comparison on the same machine.

Each process runs the console script's own code (``from thinktank.cli.commands import main``),
so the figures include the interpreter's start (``python -c pass`` is printed as the
floor) and every import the command pulls in.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._report import cpu_model, table, version  # noqa: E402

_CLI = (
    "import sys; from thinktank.cli.commands import main; "
    "sys.argv[0] = 'thinktank'; sys.exit(main())"
)


def commands(repo: Path) -> list[tuple[str, list[str]]]:
    """The timed commands: (label, argv)."""
    diamond = str(repo / "sessions" / "diamond.yaml")
    py = sys.executable
    return [
        ("python -c pass (floor)", [py, "-c", "pass"]),
        ("python -c 'import thinktank'", [py, "-c", "import thinktank"]),
        # The two heavy dependencies alone, for what validate cannot go below.
        ("python -c 'import pydantic'", [py, "-c", "import pydantic"]),
        ("python -c 'import networkx'", [py, "-c", "import networkx"]),
        ("thinktank --help", [py, "-c", _CLI, "--help"]),
        ("thinktank validate diamond.yaml", [py, "-c", _CLI, "validate", diamond]),
    ]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(argv: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` in a fresh process (it must exit 0)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    # cwd: ``python -c`` puts the current directory first on sys.path.
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, _children_cpu() - cpu


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def main() -> None:
    """Parse the arguments, time every command, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose code is timed")
    args = parser.parse_args()
    repo = args.repo.resolve()
    # The timed checkout alone on the path (the editable install may point elsewhere).
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    rows = []
    for label, argv in commands(repo):
        time_once(argv, env, repo)
        timed = [time_once(argv, env, repo) for _ in range(args.runs)]
        runs = [wall for wall, _ in timed]
        rows.append(
            [
                label,
                f"{statistics.median(runs) * 1000:.0f}",
                f"{percentile(runs, 0.9) * 1000:.0f}",
                f"{min(runs) * 1000:.0f}",
                f"{statistics.median(cpu for _, cpu in timed) * 1000:.0f}",
            ]
        )
    print(f"code: {repo}  python {sys.version.split()[0]}  click {version('click')}")
    print(f"cpu: {cpu_model()} x {os.cpu_count()}; {args.runs} runs each, fresh processes")
    print(table("startup (ms)", ["command", "median", "p90", "min", "cpu"], rows))


if __name__ == "__main__":
    main()
