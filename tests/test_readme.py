"""First contact: the README's test command on a fresh machine, and every command and
snippet of the README run as pasted.

The README's commands run in a copy of the repo (so that ``thinktank schema -o
schemas/...`` never dirties the checkout), with the fake loopback server standing in for
the OpenAI and Anthropic APIs (``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``) and no other
network. Each command's documented exit code is asserted.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO
from .pg import find_bindir


def _pytest_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest on ``args`` in a fresh interpreter where ``module`` cannot be imported, as on
    a machine where the extra bringing it was not installed."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; import pytest; "
        "sys.exit(pytest.main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "-q", "-rs", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


@pytest.mark.timeout(600)
def test_quickstart_example_is_skipped_without_the_local_model() -> None:
    """Without [local], the examples on the real model skip, saying what to install."""
    done = _pytest_without("llama_cpp", "tests/test_examples.py", "-k", "quickstart")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout and "needs the local model" in done.stdout, done.stdout


@pytest.mark.timeout(600)
@pytest.mark.skipif(find_bindir() is None, reason="needs a PostgreSQL server to be found")
def test_postgres_tests_skip_without_asyncpg() -> None:
    """A PostgreSQL server but no asyncpg: the PostgreSQL tests skip, saying why."""
    done = _pytest_without("asyncpg", "tests/test_store.py::test_full_session_round_trip[postgres]")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout and "asyncpg is not installed" in done.stdout, done.stdout
