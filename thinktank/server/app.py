"""The ASGI app: :func:`create_app` builds it from a :class:`ServerConfig`.

This module owns the app's assembly and its process-wide state (``app.state``: the
open :class:`~thinktank.store.Store`, the model registry, the config, the sessions it
runs in the background, and with ``queue`` the worker pool it hands sessions to): the
lifespan opens the store (and the pool's client) once per process and closes it on
shutdown, after cancelling those sessions; the pure ASGI middleware
of :mod:`thinktank.server.middleware` wraps the app; every error is answered in
OpenAI's shape (:mod:`thinktank.server.errors`). Its own routes are the probes
(``GET /healthz``: the process is up; ``GET /readyz``: the store answers) and
``GET /v1/models`` (every model, and the named ensembles of ``thinktank.toml``, which
``model`` may name like a model: ``owned_by: "thinktank-ensemble"``); the route
dependencies are in :mod:`thinktank.server.deps` (re-exported here).
:func:`app_from_env` is the factory ``thinktank serve`` hands to uvicorn, so that
each worker process builds its own app from the environment.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from thinktank.server.auth import KeyChecker
from thinktank.server.deps import CallerDep, caller_of, store_of
from thinktank.server.errors import ApiError, install_error_handlers
from thinktank.server.middleware import BodyLimit, ConcurrencyCap, RequestId

if TYPE_CHECKING:
    from thinktank.distributed.executor import DistributedExecutor
    from thinktank.providers.registry import ModelRegistry
    from thinktank.session.spec import ParallelExecutionConfig
    from thinktank.store import Store

__all__ = [
    "ENV_DB",
    "ENV_NO_AUTH",
    "ENV_QUEUE",
    "CallerDep",
    "ServerConfig",
    "app_from_env",
    "caller_of",
    "create_app",
    "ensembles_of",
    "store_of",
]

ENV_DB = "THINKTANK_DB"
"""The database the server opens (``--db``), as for every command."""
ENV_NO_AUTH = "THINKTANK_SERVER_NO_AUTH"
"""Set to ``1`` by ``thinktank serve --no-auth`` (loopback only) for its workers."""
ENV_QUEUE = "THINKTANK_SERVER_QUEUE"
"""Set to ``1`` by ``thinktank serve --queue``: sessions go to the worker pool."""


@dataclass(frozen=True)
class ServerConfig:
    """How a server runs.

    Attributes:
        db: Database URL or SQLite path (None: ``$THINKTANK_DB``, else ./thinktank.db).
        no_auth: Serve every request without a key (``thinktank serve`` allows it only
            on a loopback host).
        max_body_bytes: Request bodies above this are refused with 413.
        max_concurrent: Requests in flight beyond this are refused with 503.
        max_connections: Connections to the providers open at once, shared by every
            session of the process (calls beyond it wait for one).
        queue: ``POST /v1/sessions`` queues sessions for ``thinktank worker`` processes
            on the same database (``app.state.pool``, a
            :class:`~thinktank.distributed.executor.DistributedExecutor`) instead of
            running them here; chat completions still run here (they are interactive).
    """

    db: str | None = None
    no_auth: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    max_concurrent: int = 1024
    max_connections: int = 1000
    queue: bool = False


def _registry() -> ModelRegistry:
    from thinktank.providers.config import load_config
    from thinktank.providers.registry import ModelRegistry

    return ModelRegistry(config=load_config())


def ensembles_of(registry: ModelRegistry) -> dict[str, ParallelExecutionConfig]:
    """The named ensembles of the registry's config, validated.

    Raises:
        SpecErrors: an ensemble is not a valid ``ParallelExecutionConfig``; every
            problem is listed, naming the file and the field.
    """
    from pydantic import ValidationError

    from thinktank.errors import SpecError, SpecErrors
    from thinktank.session.spec import ParallelExecutionConfig

    config = registry.config
    ensembles: dict[str, ParallelExecutionConfig] = {}
    errors: list[SpecError] = []
    for name, raw in config.ensembles.items():
        try:
            ensembles[name] = ParallelExecutionConfig.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                field = ".".join(["ensembles", name, *(str(p) for p in err["loc"])])
                errors.append(SpecError(err["msg"], file=config.path, field=field))
    if errors:
        raise SpecErrors(errors)
    return ensembles


def create_app(config: ServerConfig | None = None, *, keys: KeyChecker | None = None) -> FastAPI:
    """The ASGI app serving thinktank.

    Args:
        config: How it runs (defaults: ``$THINKTANK_DB``, keys required).
        keys: Checks bearer keys; None denies every request unless ``no_auth``.
    """
    from thinktank.server import chat, page, sessions
    from thinktank.server.keys import sweeping

    cfg = config or ServerConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from thinktank.providers.http import create_http_client
        from thinktank.store import Store

        app.state.store = await Store.open(cfg.db)
        app.state.pool = None
        try:
            # One HTTP client for every session of the process: its connections to the
            # providers stay open between requests (a new one per request would pay a
            # TCP and TLS handshake per call).
            async with (
                create_http_client(
                    max_connections=cfg.max_connections, max_keepalive=cfg.max_connections
                ) as app.state.http,
                sessions.running_sessions(app.state.store) as app.state.sessions,
                sweeping(app.state.store),
                _pool(cfg, app.state.store) as app.state.pool,
            ):
                yield
        finally:
            await app.state.store.close()

    app = FastAPI(title="thinktank", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.config = cfg
    app.state.keys = keys
    app.state.registry = _registry()
    app.state.ensembles = ensembles_of(app.state.registry)
    app.state.started = time.time()
    install_error_handlers(app)
    _probes(app)
    _models(app)
    app.include_router(chat.router)
    app.include_router(sessions.router)
    app.include_router(page.router)
    app.add_middleware(ConcurrencyCap, limit=cfg.max_concurrent)
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(RequestId)
    return app


@asynccontextmanager
async def _pool(cfg: ServerConfig, store: Store) -> AsyncIterator[DistributedExecutor | None]:
    """The worker pool's submitting side on the app's store when ``cfg.queue``, else
    None: one per server process, so DBOS's client (its connection pool) is opened once."""
    if not cfg.queue:
        yield None
        return
    from thinktank.distributed.executor import DistributedExecutor

    # The configured URL, not store.url (which hides the password DBOS needs).
    async with DistributedExecutor(db=cfg.db, store=store) as pool:
        yield pool


def app_from_env() -> FastAPI:
    """The app of one ``thinktank serve`` worker, configured from the environment; its
    keys are those of its store (:class:`~thinktank.server.keys.StoreKeys`)."""
    from thinktank.server.keys import StoreKeys

    config = ServerConfig(
        db=os.environ.get(ENV_DB) or None,
        no_auth=os.environ.get(ENV_NO_AUTH) == "1",
        queue=os.environ.get(ENV_QUEUE) == "1",
    )
    app = create_app(config, keys=StoreKeys(lambda: app.state.store))
    return app


def _probes(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - app.state.started, 3)}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> dict[str, Any]:
        try:
            await store_of(request).list_sessions(limit=1)
        except Exception as exc:  # any failure to read means not ready
            raise ApiError(503, f"store not reachable: {type(exc).__name__}") from exc
        return {"status": "ready"}


def _models(app: FastAPI) -> None:
    @app.get("/v1/models")
    async def models(request: Request, caller: CallerDep) -> dict[str, Any]:
        registry: ModelRegistry = request.app.state.registry
        created = int(app.state.started)
        data = [
            {
                "id": info.name,
                "object": "model",
                "created": created,
                "owned_by": info.provider,
                "thinktank": info.to_dict(),
            }
            for info in registry.describe()
        ]
        ensembles: dict[str, ParallelExecutionConfig] = request.app.state.ensembles
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "thinktank-ensemble",
                "thinktank": ensemble.model_dump(mode="json", exclude_unset=True),
            }
            for name, ensemble in ensembles.items()
        ]
        return {"object": "list", "data": data}
