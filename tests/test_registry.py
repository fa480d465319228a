"""Model registry and thinktank.toml: resolution order, keys, limits, the models command."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.errors import SpecErrors
from thinktank.providers.config import HttpModelConfig, load_config
from thinktank.providers.registry import ModelRegistry
from thinktank.session.loading import parse_session

from .conftest import CallLog, CountingModel

SENTINEL = "sk-SENTINEL-registry-0123456789"

CONFIG = """
[models.fast]
provider = "openai"
model = "gpt-4o-mini"
api_key_env = "MY_OPENAI_KEY"
input_cost_per_mtok = 0.15
output_cost_per_mtok = 0.6
max_concurrency = 2
tags = ["general"]

[models.claude]
provider = "anthropic"
model = "claude-sonnet-4-5"

[models.ollama]
provider = "openai"
model = "llama3"
base_url = "http://127.0.0.1:11434/v1"

[models.sim]
provider = "simulated"
default_reply = "from config"
"""


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "thinktank.toml"
    path.write_text(CONFIG)
    return path


def test_config_is_found_in_the_working_dir_and_validated(tmp_path: Path) -> None:
    """./thinktank.toml is read; entries are typed by provider."""
    write_config(tmp_path)
    config = load_config()
    assert config.path == str(tmp_path / "thinktank.toml")
    assert isinstance(config.models["fast"], HttpModelConfig)
    assert config.models["fast"].max_concurrency == 2


def test_bad_config_lists_every_problem_with_file_and_field(tmp_path: Path) -> None:
    """Unknown providers, bad values and unknown sections are one line each."""
    path = tmp_path / "bad.toml"
    path.write_text(
        '[models.a]\nprovider = "nope"\n[models.b]\nprovider = "openai"\n'
        "max_concurrency = 0\n[extra]\nx = 1\n"
    )
    with pytest.raises(SpecErrors) as info:
        load_config(path)
    lines = info.value.lines()
    assert any(line.startswith(f"{path}: extra: unknown section") for line in lines)
    assert any(line.startswith(f"{path}: models.a") for line in lines)
    assert any(line.startswith(f"{path}: models.b.model: Field required") for line in lines)
    assert any(line.startswith(f"{path}: models.b.max_concurrency") for line in lines)
    path.write_text("not = [valid")
    with pytest.raises(SpecErrors, match="not valid TOML"):
        load_config(path)


def test_thinktank_config_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$THINKTANK_CONFIG names the file explicitly."""
    elsewhere = tmp_path / "conf" / "tt.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(CONFIG)
    monkeypatch.setenv("THINKTANK_CONFIG", str(elsewhere))
    assert load_config().path == str(elsewhere)


def test_resolution_order_and_missing_keys(tmp_path: Path) -> None:
    """Session models shadow config ones; keys are checked by variable name."""
    config = load_config(write_config(tmp_path))
    env = {"ANTHROPIC_API_KEY": SENTINEL}
    registry = ModelRegistry(
        session_models={"fast": thinktank.SimulatedModelConfig()}, config=config, environ=env
    )
    assert registry.check("fast") is None  # the session's simulated one
    plain = ModelRegistry(config=config, environ=env)
    assert plain.check("fast") == "model 'fast' needs an API key: set MY_OPENAI_KEY"
    assert plain.check("claude") is None
    assert plain.check("ollama") is None  # custom base_url: no key required
    assert plain.check("openai/gpt-4o-mini") == (
        "model 'openai/gpt-4o-mini' needs an API key: set OPENAI_API_KEY"
    )
    assert plain.check("gemini/gemini-2.0-flash") == (
        "model 'gemini/gemini-2.0-flash' needs an API key: set GEMINI_API_KEY"
    )
    problem = plain.check("nosuch")
    assert problem is not None and problem.startswith("unknown model 'nosuch' (known: ")


def test_openai_base_url_applies_to_plain_names() -> None:
    """OPENAI_BASE_URL points openai/<model> at another server, and no key is needed."""
    registry = ModelRegistry(environ={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    entry = registry.entry("openai/llama")
    assert entry.base_url == "http://127.0.0.1:9/v1"
    assert registry.check("openai/llama") is None


def test_anthropic_base_url_applies_to_plain_names() -> None:
    """ANTHROPIC_BASE_URL moves anthropic/<model> as the official SDK does; no key needed."""
    registry = ModelRegistry(environ={"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"})
    assert registry.entry("anthropic/claude").base_url == "http://127.0.0.1:9"
    assert registry.check("anthropic/claude") is None
    assert ModelRegistry(environ={}).entry("anthropic/claude").base_url is None


def test_missing_key_is_a_validation_error_before_any_call(tmp_path: Path) -> None:
    """A session on a keyless model fails to load, naming the model and the variable."""
    write_config(tmp_path)
    data = {"name": "k", "steps": [{"id": "a", "prompt": "p", "model": "fast"}]}
    with pytest.raises(SpecErrors) as info:
        parse_session(data, file="s.yaml")
    assert info.value.lines() == [
        "s.yaml: step 'a': model: model 'fast' needs an API key: set MY_OPENAI_KEY"
    ]


def test_models_command_shows_key_presence_never_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`thinktank models` says whether a key is set, and never prints it."""
    write_config(tmp_path)
    monkeypatch.setenv("MY_OPENAI_KEY", SENTINEL)
    runner = CliRunner()
    text = runner.invoke(main, ["models"]).stdout
    data = json.loads(runner.invoke(main, ["models", "--json"]).stdout)
    assert SENTINEL not in text and SENTINEL not in json.dumps(data)
    fast = next(m for m in data if m["name"] == "fast")
    assert fast["key_env"] == "MY_OPENAI_KEY" and fast["key_present"] is True
    claude = next(m for m in data if m["name"] == "claude")
    assert claude["key_present"] is False
    assert "MY_OPENAI_KEY: yes" in text
    assert {m["name"] for m in data} >= {"fast", "claude", "ollama", "sim", "local"}


def test_run_model_override_puts_every_step_on_one_model(tmp_path: Path) -> None:
    """--model replaces every step's models (and is validated like any other)."""
    write_config(tmp_path)
    session = tmp_path / "s.yaml"
    session.write_text(
        "name: o\nmodels:\n  a: {provider: simulated, default_reply: A}\n"
        "  b: {provider: simulated, default_reply: B}\n"
        "steps:\n  - {id: x, models: [a, b], prompt: p}\n  - {id: y, model: a, prompt: q}\n"
    )
    runner = CliRunner()
    result = runner.invoke(
        main, ["run", str(session), "--model", "sim", "--json", "--db", str(tmp_path / "t.db")]
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {s["output"] for s in data["steps"].values()} == {"from config"}
    assert all(s["models"] == ["sim"] for s in data["steps"].values())
    bad = runner.invoke(main, ["run", str(session), "--model", "fast"])
    assert bad.exit_code == 2
    assert "needs an API key: set MY_OPENAI_KEY" in bad.stderr


async def test_per_model_limit_is_shared_by_concurrent_sessions(tmp_path: Path) -> None:
    """max_concurrency of a model holds across sessions running in one process."""
    (tmp_path / "thinktank.toml").write_text(
        '[models.slow]\nprovider = "simulated"\nmax_concurrency = 2\n'
        'latency = { kind = "fixed", ms = 20 }\n'
    )
    spec = parse_session(
        {
            "name": "lim",
            "parallel_execution": {"max_concurrent_steps": 8},
            "steps": [{"id": f"s{i}", "prompt": f"p{i}", "model": "slow"} for i in range(6)],
        }
    )
    in_flight = 0
    peak = 0

    def watch(event: thinktank.events.Event) -> None:
        nonlocal in_flight, peak
        if isinstance(event, thinktank.events.CallStarted):
            in_flight += 1
            peak = max(peak, in_flight)
        elif isinstance(event, thinktank.events.CallFinished):
            in_flight -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(lambda: thinktank.run(spec, store=None, on_event=watch))
    assert peak == 2


async def test_python_clients_need_no_config() -> None:
    """Clients passed to run() are valid model names without any declaration."""
    spec = parse_session(
        {"name": "py", "steps": [{"id": "a", "prompt": "p", "model": "mine"}]},
        known_models=["mine"],
    )
    result = await thinktank.run(
        spec, store=None, models={"mine": CountingModel("mine", CallLog())}
    )
    assert result.status == "completed"
