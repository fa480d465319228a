"""Model configuration: one entry per model, in ``thinktank.toml`` or a session file.

It may also name ensembles (``[ensembles.NAME]``: a panel of models and how they
merge, the fields of ``ParallelExecutionConfig``), which ``thinktank serve`` offers
as models of their own.

An entry is a tagged union on ``provider``: ``simulated`` (seeded fake), ``openai``
(any chat-completions server), ``anthropic``, ``gemini``, or ``local`` (llama.cpp
in-process). The fields shared by every provider — prices, tags, ``max_concurrency``,
``timeout_s``, ``max_retries`` — mean the same everywhere. API keys are never part of
an entry: ``api_key_env`` names the variable that holds one.

An HTTP entry's ``shared_limit`` table (:class:`SharedLimit`) declares limits that hold
across every process sharing the store (``serve --workers N``, several servers or
``run-many`` processes on one PostgreSQL database), where ``max_concurrency`` holds in
one process only. It is per model, like ``max_concurrency``, because providers set their
limits per model; entries naming one ``key`` share one limit (a whole account, or two
entries for the same model), and must then agree on its numbers.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from thinktank.errors import SpecError, SpecErrors
from thinktank.providers._redact import redact_userinfo
from thinktank.providers.local import LocalModelConfig
from thinktank.providers.simulated import SimulatedModelConfig

__all__ = [
    "BASE_URL_ENVS",
    "CONFIG_ENV",
    "DEFAULT_BASE_URLS",
    "DEFAULT_KEY_ENVS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_MODEL",
    "HttpModelConfig",
    "ModelConfig",
    "SharedLimit",
    "ThinkTankConfig",
    "find_config",
    "load_config",
]

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""Most bytes of one HTTP response read (``max_response_bytes``): far above any chat
answer, far below what would strain memory with many calls in flight."""

DEFAULT_MODEL = "local"
"""The model of steps that name none, in sessions that set no default either."""

CONFIG_ENV = "THINKTANK_CONFIG"
"""Environment variable naming the config file."""

DEFAULT_KEY_ENVS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
"""Where each provider's key is looked up when an entry names no ``api_key_env``."""

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
"""The public endpoint of each provider."""

BASE_URL_ENVS = {
    "openai": "OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
}
"""Variables that move a plain ``provider/model`` name to another server, as they do in
the official SDKs (which read the same names)."""


_ENTRY_CONFIG = ConfigDict(
    extra="forbid",
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    frozen=True,
)
"""The settings of a config entry's models: unknown fields are errors, camelCase works."""


class SharedLimit(BaseModel):
    """Limits of one model that hold across every process sharing the store.

    Each process keeps them through rows of the store (``thinktank.store._slots``):
    a call waits, before its time limit starts, for one of ``max_concurrent`` slots and
    for room in the current minute's ``requests_per_minute``. A killed process's slots
    come back once its calls' time limits (and retries) have passed.
    """

    model_config = _ENTRY_CONFIG

    max_concurrent: Annotated[int, Field(ge=1, le=10_000)] | None = None
    """Calls in flight to this model from every process together."""
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    """Calls started in one minute (a fixed window from its first call) by every
    process together."""
    key: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """The name the limit is kept under in the store; the model's name when unset.
    Entries with one key share one limit."""

    @model_validator(mode="after")
    def _limits_something(self) -> SharedLimit:
        if self.max_concurrent is None and self.requests_per_minute is None:
            raise ValueError("set max_concurrent, requests_per_minute or both")
        return self


class HttpModelConfig(BaseModel):
    """A model behind an HTTP API (OpenAI-compatible, Anthropic or Gemini)."""

    model_config = _ENTRY_CONFIG

    provider: Literal["openai", "anthropic", "gemini"]
    """Wire protocol. ``openai`` also covers vLLM, Ollama, llama.cpp server, LM Studio,
    OpenRouter, Together, Groq and DeepSeek through ``base_url``."""
    model: Annotated[str, Field(min_length=1)]
    """The provider's model id (``gpt-4o-mini``, ``claude-sonnet-4-5``, ...)."""
    base_url: str | None = None
    """API root; the provider's public endpoint when unset (for a plain ``provider/model``
    name, ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` when set). Credentials in it
    (``https://user:pass@host/v1``) are sent as basic auth but never stored or shown:
    JSON dumps (the stored session, ``show``, ``export``) hide them."""
    api_key_env: str | None = None
    """Variable holding the key. Unset: the provider's usual variable, required for
    the public endpoint and optional for a custom ``base_url``."""
    headers: dict[str, str] = {}
    """Extra request headers (never put keys here: use ``api_key_env``)."""
    stream: bool = False
    """Stream the response (SSE); for long outputs and live progress."""
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    """Calls in flight to this model, shared by every session in the process."""
    shared_limit: SharedLimit | None = None
    """Limits shared by every process on the store's database (see :class:`SharedLimit`);
    unset: none, and calls never touch the database to start."""
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """Time limit of one attempt."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of a failed attempt (connection errors, timeouts, 408/409/429/5xx)."""
    input_cost_per_mtok: Annotated[float, Field(ge=0)] | None = None
    """USD per million input tokens; unset means cost unknown."""
    output_cost_per_mtok: Annotated[float, Field(ge=0)] | None = None
    """USD per million output tokens; unset means cost unknown."""
    tags: list[str] = []
    """Domains the model is good at."""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    """Default output limit when a step sets none (Anthropic requires one)."""
    max_response_bytes: Annotated[int, Field(ge=1024)] = DEFAULT_MAX_RESPONSE_BYTES
    """Most bytes of one response read (streamed or not); a larger response fails the
    call with an error naming the cap, and is not retried."""

    @field_serializer("base_url", when_used="json")
    def _hide_credentials(self, base_url: str | None) -> str | None:
        # JSON is what leaves the process (the store, show, export); the URL in memory
        # keeps its credentials for the requests.
        return redact_userinfo(base_url) if base_url else base_url


ModelConfig = Annotated[
    SimulatedModelConfig | HttpModelConfig | LocalModelConfig,
    Field(discriminator="provider"),
]
"""One model entry, tagged by ``provider``."""

_ENTRY: TypeAdapter[Any] = TypeAdapter(ModelConfig)
_PROVIDERS = frozenset({"simulated", "openai", "anthropic", "gemini", "local"})


class ThinkTankConfig(BaseModel):
    """The contents of ``thinktank.toml``."""

    model_config = ConfigDict(frozen=True)

    path: str | None = None
    """The file it was read from (None when there is none)."""
    models: dict[str, Any] = {}
    """Model entries by name (validated ``ModelConfig`` values)."""
    ensembles: dict[str, dict[str, Any]] = {}
    """Named ensembles: ``ParallelExecutionConfig`` fields by ensemble name, as the
    file gives them (the session layer validates them: this layer is below it)."""


def find_config(cwd: Path | None = None) -> Path | None:
    """The config file in force: ``$THINKTANK_CONFIG``, ``./thinktank.toml``, then the
    user config dir (``$XDG_CONFIG_HOME`` or ``~/.config``)/thinktank/thinktank.toml."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    # os.path rather than pathlib: this runs at the start of every session.
    local = os.path.join(cwd if cwd is not None else os.getcwd(), "thinktank.toml")
    if os.path.isfile(local):
        return Path(local)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = os.path.join(base, "thinktank", "thinktank.toml")
    return Path(user) if os.path.isfile(user) else None


_parsed: dict[str, tuple[str, ThinkTankConfig]] = {}
"""The last validated config of each path, with the text it was read from."""


def load_config(path: Path | str | None = None) -> ThinkTankConfig:
    """Read and validate the config file (see :func:`find_config`).

    Raises:
        SpecErrors: the file is unreadable, not TOML, or has invalid entries; every
            problem is listed, each naming the file and the field.
    """
    target = Path(path) if path is not None else find_config()
    if target is None:
        return ThinkTankConfig()
    file = str(target)
    try:
        text = target.read_text(encoding="utf-8")
        cached = _parsed.get(file)
        if cached is not None and cached[0] == text:
            # Every run reads the config: validate it again only when it changed.
            return cached[1]
        data = tomllib.loads(text)
    except OSError as exc:
        raise SpecErrors([SpecError(f"cannot read config: {exc.strerror}", file=file)]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecErrors([SpecError(f"not valid TOML: {exc}", file=file)]) from None
    unknown = sorted(set(data) - {"models", "ensembles"})
    errors = [SpecError("unknown section", file=file, field=key) for key in unknown]
    raw_models = data.get("models", {})
    models: dict[str, Any] = {}
    if not isinstance(raw_models, dict):
        errors.append(SpecError("must be a table of [models.NAME]", file=file, field="models"))
        raw_models = {}
    for name, raw in raw_models.items():
        try:
            models[name] = _ENTRY.validate_python(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = [str(p) for p in err["loc"]]
                if loc and loc[0] in _PROVIDERS:
                    loc = loc[1:]  # the union's tag, not a field
                field = ".".join(["models", name, *loc])
                errors.append(SpecError(err["msg"], file=file, field=field))
    ensembles = _ensembles(data.get("ensembles", {}), set(models), file, errors)
    _check_shared_limits(models, file, errors)
    if errors:
        raise SpecErrors(errors)
    config = ThinkTankConfig(path=file, models=models, ensembles=ensembles)
    _parsed[file] = (text, config)
    return config


def _ensembles(
    raw: Any, models: set[str], file: str, errors: list[SpecError]
) -> dict[str, dict[str, Any]]:
    """The ``[ensembles.NAME]`` tables; a name that is also a model's is an error (a
    request naming it would be ambiguous)."""
    if not isinstance(raw, dict):
        errors.append(
            SpecError("must be a table of [ensembles.NAME]", file=file, field="ensembles")
        )
        return {}
    ensembles: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        field = f"ensembles.{name}"
        if not isinstance(entry, dict):
            errors.append(SpecError("must be a table", file=file, field=field))
        elif name in models:
            errors.append(SpecError("is also the name of a model", file=file, field=field))
        else:
            ensembles[name] = entry
    return ensembles


def _check_shared_limits(models: dict[str, Any], file: str, errors: list[SpecError]) -> None:
    """Entries sharing a limit key must agree on its numbers: each process would
    otherwise enforce its own idea of one limit."""
    first: dict[str, tuple[str, SharedLimit]] = {}
    for name, entry in models.items():
        limit = getattr(entry, "shared_limit", None)
        if limit is None:
            continue
        key = limit.key or name
        seen = first.setdefault(key, (name, limit))
        same = (seen[1].max_concurrent, seen[1].requests_per_minute) == (
            limit.max_concurrent,
            limit.requests_per_minute,
        )
        if not same:
            errors.append(
                SpecError(
                    f"shares the limit {key!r} with model {seen[0]!r} but sets other numbers",
                    file=file,
                    field=f"models.{name}.shared_limit",
                )
            )
