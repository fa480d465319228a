"""First contact: the README's test command on a fresh machine, and every command and
snippet of the README run as pasted.

The README's commands run in a copy of the repo (so that ``thinktank schema -o
schemas/...`` never dirties the checkout), with the fake loopback server standing in for
the OpenAI and Anthropic APIs (``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``) and no other
network. Each command's documented exit code is asserted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from thinktank.providers.config import load_config

from .conftest import NEEDS_LOCAL, REPO
from .fakeserver import run_fake_server
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


# -- every command and snippet of the README, as pasted --------------------------------

README = REPO / "README.md"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_EXIT = re.compile(r"\bexit (\d+)\b")
_INSTALL = re.compile(r'^pip install -e "\.\[[\w,]+\]" && ')


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    lang: str
    text: str
    line: int
    """Where it starts in README.md (1-based), for test ids and messages."""

    @property
    def needs_local(self) -> bool:
        """Whether it runs the built-in local model (real llama.cpp: slow, needs [local])."""
        return any(
            re.search(r"-m local\b", line)
            or ("quickstart.yaml" in line and "--model" not in line)
            or "[local]" in line
            # The shipped experiments run on the local model families.
            or ("experiments/" in line and "--dry-run" not in line)
            for line in self.text.splitlines()
        )


def _blocks(lang: str) -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in _FENCE.finditer(text)
        if m.group(1) == lang
    ]


def _cases(lang: str) -> list[Any]:
    return [
        pytest.param(b, id=f"line{b.line}", marks=NEEDS_LOCAL if b.needs_local else [])
        for b in _blocks(lang)
    ]


def _documented_exit(command: str) -> int:
    """The exit code a README command documents in its comment (``exit N``), else 0."""
    _, _, comment = command.partition("  #")
    found = _EXIT.findall(comment)
    return int(found[-1]) if found else 0


def _commands(block: Block) -> list[str]:
    """The block's commands as the test runs them.

    The first block's ``pip install -e ".[extras]" &&`` is left out: this environment has
    the extras already (the test installs nothing). Its ``pytest`` is this very suite
    (what .ci/run runs), so it is not run again from inside it.
    """
    commands = []
    for line in block.text.splitlines():
        command = _INSTALL.sub("", line.strip())
        if command and command.split("#")[0].strip() != "pytest":
            commands.append(command)
    return commands


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """What a README command may touch: a copy of sessions/, schemas/ and experiments/
    (so that ``thinktank schema -o schemas/...`` never rewrites the checkout's file)."""
    work = tmp_path / "repo"
    for name in ("sessions", "schemas", "experiments"):
        shutil.copytree(REPO / name, work / name)
    return work


def _env(work: Path, server_url: str) -> dict[str, str]:
    """The environment of the README's commands: this checkout's thinktank first on the
    path, no config or variable of the developer's, and the provider APIs on loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THINKTANK_")}
    env.update(
        PYTHONPATH=str(REPO),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(work / "home"),
        XDG_CONFIG_HOME=str(work / "xdg-config"),
        THINKTANK_CACHE_DIR=os.environ["THINKTANK_CACHE_DIR"],
        OPENAI_BASE_URL=f"{server_url}/v1",
        ANTHROPIC_BASE_URL=server_url,
        NO_COLOR="1",
    )
    return env


def test_readme_has_runnable_blocks() -> None:
    """The README's blocks are found; line 2 of the first is the test command .ci/run runs."""
    sh = _blocks("sh")
    assert len(sh) >= 4 and _blocks("python") and _blocks("toml")
    assert sh[0].text.splitlines()[1].split("#")[0].strip() == 'pip install -e ".[dev]" && pytest'


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("block", _cases("sh"))
def test_readme_commands_run_as_pasted(block: Block, repo_copy: Path) -> None:
    """Each ```sh block, pasted into bash in the repo, exits as each command documents.

    The block runs as one bash script (so a variable or an ``export`` carries to the next
    line, as in a terminal); after every command its exit code is written to a file.
    """
    commands = _commands(block)
    codes = repo_copy / ".codes"
    script = "".join(f'{c}\necho "$?" >> {shlex.quote(str(codes))}\n' for c in commands)
    with run_fake_server() as server:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=repo_copy,
            env=_env(repo_copy, server.url),
            capture_output=True,
            text=True,
            timeout=1500,
        )
        asked = {(r.wire, (r.json or {}).get("model")) for r in server.requests}
    got = [int(c) for c in codes.read_text().split()] if codes.exists() else []
    expected = [_documented_exit(c) for c in commands]
    assert list(zip(commands, got, strict=False)) == list(zip(commands, expected, strict=True)), (
        f"README.md line {block.line}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    assert "Traceback" not in done.stderr, done.stderr
    # A command on a provider reached the loopback server, not the public API.
    for wire, model in re.findall(r"--model (openai|anthropic)/(\S+)", block.text):
        assert (wire, model) in asked, (wire, model, asked)


@pytest.mark.parametrize("block", _cases("python"))
def test_readme_python_runs_as_a_script(block: Block, repo_copy: Path) -> None:
    """Each ```python snippet runs as a script (no top-level await), in the repo."""
    script = repo_copy / "snippet.py"
    script.write_text(block.text, encoding="utf-8")
    with run_fake_server() as server:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=repo_copy,
            env=_env(repo_copy, server.url),
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, f"README.md line {block.line}:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), "the snippet printed nothing"


@pytest.mark.parametrize("block", _cases("toml"))
def test_readme_config_loads(block: Block, repo_copy: Path) -> None:
    """Each ```toml example is a valid thinktank.toml that `thinktank models` lists."""
    (repo_copy / "thinktank.toml").write_text(block.text, encoding="utf-8")
    config = load_config(repo_copy / "thinktank.toml")
    declared = re.findall(r"^\[models\.(\w+)\]", block.text, re.MULTILINE)
    assert declared and sorted(config.models) == sorted(declared)
    with run_fake_server() as server:
        done = subprocess.run(
            [sys.executable, "-m", "thinktank", "models", "--json"],
            cwd=repo_copy,
            env=_env(repo_copy, server.url),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    listed = {m["name"] for m in json.loads(done.stdout)}
    assert set(declared) <= listed


def test_readme_names_only_files_in_the_repo() -> None:
    """No path outside the repo; every repo path the README names exists."""
    text = README.read_text(encoding="utf-8")
    assert "../" not in text
    named = set(
        re.findall(r"\b((?:sessions|schemas|bench|docs|tests|experiments)/[\w./-]+\w)", text)
    )
    assert named, "the README names no file"
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, missing


def test_model_override_needs_no_local_model(tmp_path: Path) -> None:
    """The README's `run sessions/quickstart.yaml --model openai/...` works without
    [local]: --model replaces the file's local models before they are checked."""
    code = (
        "import sys; sys.modules['llama_cpp'] = None; from thinktank.cli.commands import main; "
        "main(sys.argv[1:])"
    )
    quickstart = str(REPO / "sessions" / "quickstart.yaml")
    args = ["run", quickstart, "--model", "openai/gpt-4o-mini", "--db", str(tmp_path / "t.db")]
    with run_fake_server() as server:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=_env(tmp_path, server.url),
            capture_output=True,
            text=True,
            timeout=300,
        )
        models = [(r.json or {}).get("model") for r in server.requests]
    assert done.returncode == 0, done.stderr
    assert models and set(models) == {"gpt-4o-mini"}
    # The file's own models are still checked when no --model replaces them.
    done = subprocess.run(
        [sys.executable, "-c", code, "validate", quickstart],
        env=_env(tmp_path, "http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "needs the local model" in done.stderr, done.stderr
