"""The model registry: which name means which model, and building the pool for a run.

A model name resolves, in this order, to: a model declared in the session file; a
``[models.NAME]`` entry of ``thinktank.toml``; a built-in local variant (``local``,
``local-s1`` .. ``local-s3``); or a plain ``provider/model`` string such as
``openai/gpt-4o-mini``, ``anthropic/claude-sonnet-4-5`` or ``gemini/gemini-2.0-flash``,
whose key comes from the provider's usual variable. A sample name ``NAME#K`` (K = 1, 2,
...; :func:`~thinktank.providers.base.base_model`) that is not itself declared resolves to
NAME's entry: its client is built under the name ``NAME#K`` (its calls are stored so, and
get their own seeds) but shares NAME's process-wide limiter and, for a local model, NAME's
loaded model; it is checked as NAME and never listed. :meth:`ModelRegistry.check` says,
before any call, why a name cannot be used (unknown, or its key variable unset), and
:meth:`ModelRegistry.build` turns names into :class:`~thinktank.providers.base.PooledModel`
values that share one pooled HTTP client and process-wide per-model limits.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.lowlevel import RunVar

from thinktank.providers._packaged import install_hint
from thinktank.providers._redact import redact_userinfo
from thinktank.providers.base import (
    ModelClient,
    ModelRequest,
    ModelResponse,
    PooledModel,
    base_model,
)
from thinktank.providers.config import (
    BASE_URL_ENVS,
    DEFAULT_BASE_URLS,
    DEFAULT_KEY_ENVS,
    DEFAULT_MODEL,
    HttpModelConfig,
    ThinkTankConfig,
)
from thinktank.providers.local import LOCAL_VARIANTS, LocalLlamaModel, LocalModelConfig
from thinktank.providers.local import local_available as _local_available
from thinktank.providers.retry import RetryPolicy
from thinktank.providers.simulated import SimulatedModel, SimulatedModelConfig

if TYPE_CHECKING:
    from thinktank.providers.http import AsyncClient
    from thinktank.store import Store

__all__ = ["DEFAULT_MODEL", "ModelInfo", "ModelRegistry", "model_limiter"]

_HTTP_PROVIDERS = ("openai", "anthropic", "gemini")
_PACKAGED_LABELS = {
    "gemma-3-270m": "gemma3-270m (packaged)",
    "smollm2-135m": "smollm2-135m-instruct (packaged)",
}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One line of ``thinktank models`` (never the key itself)."""

    name: str
    provider: str
    model: str
    base_url: str | None
    source: str
    key_env: str | None
    key_present: bool | None
    input_cost_per_mtok: float | None
    output_cost_per_mtok: float | None
    max_concurrency: int | None
    tags: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "provider": self.provider,
            "model": self.model,
            "base_url": self.base_url,
            "source": self.source,
            "key_env": self.key_env,
            "key_present": self.key_present,
            "input_cost_per_mtok": self.input_cost_per_mtok,
            "output_cost_per_mtok": self.output_cost_per_mtok,
            "max_concurrency": self.max_concurrency,
            "tags": list(self.tags),
        }


_LIMITERS: RunVar[dict[tuple[str, int], anyio.CapacityLimiter]] = RunVar("thinktank_limiters")


def model_limiter(name: str, limit: int) -> anyio.CapacityLimiter:
    """The limiter of one model, shared by every session running in this event loop
    (anyio limiters belong to the loop that made them, hence a RunVar)."""
    try:
        limiters = _LIMITERS.get()
    except LookupError:
        limiters = {}
        _LIMITERS.set(limiters)
    limiter = limiters.get((name, limit))
    if limiter is None:
        limiter = limiters[(name, limit)] = anyio.CapacityLimiter(limit)
    return limiter


def _prices(entry: Any) -> tuple[float, float] | None:
    """USD per million input and output tokens of an entry; None when unknown (and for
    a client given from Python, which has no entry). A local model's price is a known
    zero unless its config sets one."""
    if entry is None:
        return None
    inp = getattr(entry, "input_cost_per_mtok", None)
    out = getattr(entry, "output_cost_per_mtok", None)
    return None if inp is None or out is None else (inp, out)


def _price(entry: Any) -> float | None:
    prices = _prices(entry)
    return None if prices is None else prices[0] + prices[1]


_HOLD_MARGIN_S = 30.0
"""Added to a call's own upper bound to make its shared slot's lapse: a slot must not
lapse under a call still running, only under one whose process died."""


def _limiter(model: str, entry: Any, store: Store | None) -> anyio.CapacityLimiter | None:
    """The limiter of a model's calls: its in-process limit, or, for an entry with a
    ``shared_limit`` in a run with a store, a :class:`SharedLimiter` behind it."""
    limit = getattr(entry, "max_concurrency", None)
    shared = getattr(entry, "shared_limit", None)
    if shared is None or store is None:
        return model_limiter(model, limit) if limit else None
    # Imported here: only models with a shared limit need it.
    from thinktank.providers.shared_limit import SharedLimiter

    caps = [cap for cap in (limit, shared.max_concurrent) if cap]
    policy = _retry_policy(entry.max_retries)
    # A slot is held for the whole call: every attempt and the waits between them.
    ttl_s = (
        entry.timeout_s * (policy.max_retries + 1)
        + policy.max_retries * max(policy.max_delay_s, policy.max_retry_after_s)
        + _HOLD_MARGIN_S
    )
    shared_limiter = SharedLimiter(
        store,
        shared.key or model,
        max_concurrent=shared.max_concurrent,
        requests_per_minute=shared.requests_per_minute,
        ttl_s=ttl_s,
        local=model_limiter(model, min(caps)) if caps else None,
    )
    # The limiter slot takes any async context manager (as the stream's _Room does).
    return cast(anyio.CapacityLimiter, shared_limiter)


@dataclasses.dataclass(frozen=True, slots=True)
class _SampleClient:
    """A client given from Python, called under a sample name ``NAME#K`` of its name: the
    call layer stores and seeds calls by the client's name, so a sample needs its own."""

    client: ModelClient
    name: str

    @property
    def provider(self) -> str:
        return self.client.provider

    async def complete(self, request: ModelRequest) -> ModelResponse:
        response = await self.client.complete(request)
        return dataclasses.replace(response, model=self.name)


@functools.lru_cache(maxsize=32)
def _retry_policy(max_retries: int) -> RetryPolicy:
    """One (frozen) policy per retry count, shared by every run."""
    return RetryPolicy(max_retries=max_retries)


class ModelRegistry:
    """Resolves model names for a session and builds its model pool."""

    def __init__(
        self,
        *,
        session_models: Mapping[str, Any] | None = None,
        config: ThinkTankConfig | Callable[[], ThinkTankConfig] | None = None,
        clients: Mapping[str, ModelClient] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``config`` may be a loader (``load_config``): it is called the first time a
        name is not found among ``clients`` and ``session_models``, which win over the
        config anyway (a session whose models are all its own reads no file)."""
        self.session_models = dict(session_models or {})
        self._config = config
        self.clients = dict(clients or {})
        self.environ = environ if environ is not None else os.environ
        self._only: list[str] | None = None

    @property
    def config(self) -> ThinkTankConfig:
        """The ``thinktank.toml`` in force (loaded on first use when given a loader)."""
        if not isinstance(self._config, ThinkTankConfig):
            self._config = self._config() if self._config is not None else ThinkTankConfig()
        return self._config

    # -- resolution -------------------------------------------------------------------

    def _resolved(self, name: str) -> tuple[str, str, Any] | None:
        """(the name that resolved, its source, its entry): ``name`` itself, or for an
        undeclared sample ``NAME#K``, NAME."""
        found = self._lookup(name)
        if found is not None:
            return name, *found
        base = base_model(name)
        if base != name and (found := self._lookup(base)) is not None:
            return base, *found
        return None

    def _source_and_entry(self, name: str) -> tuple[str, Any] | None:
        resolved = self._resolved(name)
        return None if resolved is None else resolved[1:]

    def _lookup(self, name: str) -> tuple[str, Any] | None:
        if name in self.clients:
            return "python", None
        if name in self.session_models:
            return "session", self.session_models[name]
        if name in self.config.models:
            return self.config.path or "config", self.config.models[name]
        if name in LOCAL_VARIANTS:
            return "built-in", LOCAL_VARIANTS[name]
        provider, sep, model = name.partition("/")
        # A sample mark is never part of a provider's model id: provider/model#K is
        # resolved as a sample of provider/model.
        if sep and model and provider in _HTTP_PROVIDERS and base_model(name) == name:
            env = BASE_URL_ENVS.get(provider)
            base = self.environ.get(env) if env else None
            return "provider/model", HttpModelConfig.model_validate(
                {"provider": provider, "model": model, "base_url": base or None}
            )
        return None

    def entry(self, name: str) -> Any:
        """The config entry of ``name`` (None for a client given from Python).

        Raises:
            KeyError: the name resolves to nothing.
        """
        found = self._source_and_entry(name)
        if found is None:
            raise KeyError(name)
        return found[1]

    def _key(self, entry: HttpModelConfig) -> tuple[str | None, bool]:
        """The key variable of an HTTP entry and whether it is required."""
        if entry.api_key_env:
            return entry.api_key_env, True
        public = entry.base_url is None or entry.base_url.rstrip("/") == DEFAULT_BASE_URLS[
            entry.provider
        ].rstrip("/")
        return DEFAULT_KEY_ENVS[entry.provider], public

    def check(self, name: str) -> str | None:
        """Why ``name`` cannot be used, or None when it can."""
        found = self._source_and_entry(name)
        if found is None:
            known = ", ".join(self.names()) or "none"
            base = base_model(name)
            what = f"{base!r} (sampled by {name!r})" if base != name else repr(name)
            return (
                f"unknown model {what} (known: {known}); declare it under 'models:' in "
                "the session or thinktank.toml, or use provider/model such as "
                "openai/gpt-4o-mini"
            )
        _, entry = found
        if isinstance(entry, HttpModelConfig):
            env, required = self._key(entry)
            if required and env and not self.environ.get(env):
                return f"model {name!r} needs an API key: set {env}"
        if isinstance(entry, LocalModelConfig) and not _local_available(entry.packaged_model):
            why = (
                " (the built-in default for steps that name no model)"
                if (name == DEFAULT_MODEL)
                else ""
            )
            hint = install_hint(entry.packaged_model)
            return f"model {name!r}{why} needs the local model: {hint}"
        return None

    def names(self) -> list[str]:
        """Every name known without the provider/model form, in resolution order."""
        if self._only is not None:
            return list(self._only)
        seen: dict[str, None] = {}
        for group in (self.clients, self.session_models, self.config.models, LOCAL_VARIANTS):
            for name in group:
                seen.setdefault(name)
        return list(seen)

    def describe(self, names: Iterable[str] | None = None) -> list[ModelInfo]:
        """What ``thinktank models`` prints, for ``names`` or every known model."""
        infos = []
        for name in names if names is not None else self.names():
            resolved = self._resolved(name)
            if resolved is None:
                continue
            model, source, entry = resolved
            infos.append(self._info(model, source, entry))
        return infos

    def _info(self, name: str, source: str, entry: Any) -> ModelInfo:
        if entry is None:
            client = self.clients[name]
            return ModelInfo(
                name, client.provider, name, None, source, None, None, None, None, None, ()
            )
        key_env: str | None = None
        present: bool | None = None
        base_url: str | None = None
        model = name
        if isinstance(entry, HttpModelConfig):
            key_env, _required = self._key(entry)
            present = bool(self.environ.get(key_env)) if key_env else None
            base_url = redact_userinfo(entry.base_url or DEFAULT_BASE_URLS[entry.provider])
            model = entry.model
        elif isinstance(entry, LocalModelConfig):
            model = entry.model_path or _PACKAGED_LABELS[entry.packaged]
        return ModelInfo(
            name=name,
            provider=entry.provider,
            model=model,
            base_url=base_url,
            source=source,
            key_env=key_env,
            key_present=present,
            input_cost_per_mtok=getattr(entry, "input_cost_per_mtok", None),
            output_cost_per_mtok=getattr(entry, "output_cost_per_mtok", None),
            max_concurrency=getattr(entry, "max_concurrency", None),
            tags=tuple(getattr(entry, "tags", ())),
        )

    def prices_of(self, name: str) -> tuple[float, float] | None:
        """(input, output) USD per million tokens of a model; None when unknown."""
        return _prices(self.entry(name))

    def price_of(self, name: str) -> float | None:
        """USD per million tokens (input + output) of a model; None when unknown.

        A client given from Python under a declared model's name (replay's recorded
        clients) keeps the declared model's price.
        """
        entry = self.entry(name)
        if entry is None:
            base = base_model(name)
            entry = (
                self.session_models.get(name)
                or self.config.models.get(name)
                or self.session_models.get(base)
                or self.config.models.get(base)
            )
        return _price(entry)

    def restricted_to(self, names: Iterable[str]) -> ModelRegistry:
        """A view of this registry that lists only ``names`` (resolution unchanged)."""
        view = ModelRegistry(
            session_models=self.session_models,
            config=self._config,
            clients=self.clients,
            environ=self.environ,
        )
        view._only = list(dict.fromkeys(names))
        return view

    def needs_http(self, names: Iterable[str]) -> bool:
        """Whether any of ``names`` is an HTTP model."""
        return any(isinstance(self.entry(n), HttpModelConfig) for n in names)

    # -- building ---------------------------------------------------------------------

    def build(
        self, names: Iterable[str], http: AsyncClient | None, store: Store | None = None
    ) -> dict[str, PooledModel]:
        """The pool for a run: one :class:`PooledModel` per name.

        A model with a ``shared_limit`` keeps it in ``store`` (the run's); without a
        store it has only its in-process limit. Call :meth:`check` first; this raises
        KeyError for an unknown name.
        """
        return {name: self._pooled(name, http, store) for name in dict.fromkeys(names)}

    def _pooled(self, name: str, http: AsyncClient | None, store: Store | None) -> PooledModel:
        resolved = self._resolved(name)
        if resolved is None:
            raise KeyError(name)
        model, _, entry = resolved
        if entry is None:
            client = self.clients[model]
            return PooledModel(client=client if model == name else _SampleClient(client, name))
        client = self._client(name, entry, http)
        retries = getattr(entry, "max_retries", 0)
        return PooledModel(
            client=client,
            retry=_retry_policy(retries),
            # Keyed by the model resolved: the samples NAME#K of NAME share its limit.
            limiter=_limiter(model, entry, store),
            # HTTP clients enforce timeout_s on the wire per phase; the call layer adds
            # the same bound around the whole attempt (a slow trickle of bytes).
            timeout_s=getattr(entry, "timeout_s", None),
            max_tokens=getattr(entry, "max_tokens", None),
            price_per_mtok=_price(entry),
        )

    def _client(self, name: str, entry: Any, http: AsyncClient | None) -> ModelClient:
        if isinstance(entry, SimulatedModelConfig):
            return SimulatedModel(name, entry)
        if isinstance(entry, LocalModelConfig):
            return LocalLlamaModel(name, entry)
        assert isinstance(entry, HttpModelConfig)
        if http is None:
            raise ValueError("an HTTP model needs the run's HTTP client")
        # Imported here: the HTTP client stack costs ~0.2 s to import, and listing,
        # validating or running simulated and local models never needs it.
        from thinktank.providers.anthropic import AnthropicModel
        from thinktank.providers.gemini import GeminiModel
        from thinktank.providers.openai import OpenAICompatibleModel

        env, _ = self._key(entry)
        key = self.environ.get(env) if env else None
        common: dict[str, Any] = {
            "name": name,
            "model": entry.model,
            "http": http,
            "api_key": key or None,
            "headers": entry.headers,
            "timeout_s": entry.timeout_s,
            "max_response_bytes": entry.max_response_bytes,
            "input_cost_per_mtok": entry.input_cost_per_mtok,
            "output_cost_per_mtok": entry.output_cost_per_mtok,
            "base_url": entry.base_url or DEFAULT_BASE_URLS[entry.provider],
        }
        if entry.provider == "openai":
            return OpenAICompatibleModel(stream=entry.stream, **common)
        if entry.provider == "anthropic":
            return AnthropicModel(stream=entry.stream, **common)
        return GeminiModel(**common)
