"""thinktank: run reasoning sessions - DAGs of LLM steps - on several models at once.

Load a session file, run it, and every step, model call and consensus is stored::

    import thinktank

    spec = thinktank.load_session("sessions/diamond.yaml")
    result = thinktank.run_sync(spec, store="tt.db", inputs={"question": "..."})
    print(result.status, result.outputs)
"""

from __future__ import annotations

import importlib
import sys
import types
import typing

if typing.TYPE_CHECKING:
    from thinktank.ask import ParallelResult, execute_parallel
    from thinktank.batch import BatchResult, run_many
    from thinktank.client import AsyncClient, Client
    from thinktank.dryrun import DryRun, dry_run
    from thinktank.engine.result import SessionResult, StepResult, Usage
    from thinktank.engine.stream import SessionRun, iter, run, run_sync
    from thinktank.errors import (
        CallTimeoutError,
        InputError,
        ProviderError,
        RunError,
        SpecError,
        SpecErrors,
        StoreError,
        ThinkTankError,
        UnknownSessionError,
        UsageError,
    )
    from thinktank.providers.base import ModelClient, ModelRequest, ModelResponse
    from thinktank.providers.simulated import SimulatedModel, SimulatedModelConfig
    from thinktank.replay import ReplayReport, fork, replay, resume
    from thinktank.session.graph import StepGraph
    from thinktank.session.loading import load_session, parse_session
    from thinktank.session.spec import (
        InputSpec,
        ModelSelection,
        ParallelExecution,
        ParallelExecutionConfig,
        SessionSpec,
        StepSpec,
    )
    from thinktank.store import Store
    from thinktank.store._arg import DEFAULT_STORE
    from thinktank.transfer import export_session, import_session

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_STORE",
    "AsyncClient",
    "BatchResult",
    "CallTimeoutError",
    "Client",
    "DryRun",
    "InputError",
    "InputSpec",
    "ModelClient",
    "ModelRequest",
    "ModelResponse",
    "ModelSelection",
    "ParallelExecution",
    "ParallelExecutionConfig",
    "ParallelResult",
    "ProviderError",
    "ReplayReport",
    "RunError",
    "SessionResult",
    "SessionRun",
    "SessionSpec",
    "SimulatedModel",
    "SimulatedModelConfig",
    "SpecError",
    "SpecErrors",
    "StepGraph",
    "StepResult",
    "StepSpec",
    "Store",
    "StoreError",
    "ThinkTankError",
    "UnknownSessionError",
    "Usage",
    "UsageError",
    "__version__",
    "dry_run",
    "execute_parallel",
    "export_session",
    "fork",
    "import_session",
    "iter",
    "load_session",
    "parse_session",
    "replay",
    "resume",
    "run",
    "run_many",
    "run_sync",
]

_LAZY: dict[str, str] = {
    "AsyncClient": "thinktank.client",
    "BatchResult": "thinktank.batch",
    "CallTimeoutError": "thinktank.errors",
    "Client": "thinktank.client",
    "DEFAULT_STORE": "thinktank.store._arg",
    "DryRun": "thinktank.dryrun",
    "InputError": "thinktank.errors",
    "InputSpec": "thinktank.session.spec",
    "ModelClient": "thinktank.providers.base",
    "ModelRequest": "thinktank.providers.base",
    "ModelResponse": "thinktank.providers.base",
    "ModelSelection": "thinktank.session.spec",
    "ParallelExecution": "thinktank.session.spec",
    "ParallelExecutionConfig": "thinktank.session.spec",
    "ParallelResult": "thinktank.ask",
    "ProviderError": "thinktank.errors",
    "ReplayReport": "thinktank.replay",
    "RunError": "thinktank.errors",
    "SessionResult": "thinktank.engine.result",
    "SessionRun": "thinktank.engine.stream",
    "SessionSpec": "thinktank.session.spec",
    "SimulatedModel": "thinktank.providers.simulated",
    "SimulatedModelConfig": "thinktank.providers.simulated",
    "SpecError": "thinktank.errors",
    "SpecErrors": "thinktank.errors",
    "StepGraph": "thinktank.session.graph",
    "StepResult": "thinktank.engine.result",
    "StepSpec": "thinktank.session.spec",
    "Store": "thinktank.store",
    "StoreError": "thinktank.errors",
    "ThinkTankError": "thinktank.errors",
    "UnknownSessionError": "thinktank.errors",
    "Usage": "thinktank.engine.result",
    "UsageError": "thinktank.errors",
    "dry_run": "thinktank.dryrun",
    "execute_parallel": "thinktank.ask",
    "export_session": "thinktank.transfer",
    "fork": "thinktank.replay",
    "import_session": "thinktank.transfer",
    "iter": "thinktank.engine.stream",
    "load_session": "thinktank.session.loading",
    "parse_session": "thinktank.session.loading",
    "replay": "thinktank.replay",
    "resume": "thinktank.replay",
    "run": "thinktank.engine.stream",
    "run_many": "thinktank.batch",
    "run_sync": "thinktank.engine.stream",
}
"""Where each public name lives. A name is imported on first use, so ``import
thinktank`` (and so every ``thinktank`` command, even ``--help``) does not load the
store, SQLAlchemy, the HTTP client or the model providers until something needs them."""


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thinktank' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package's module type: public names win over same-named submodules."""

    def __setattr__(self, name: str, value: typing.Any) -> None:
        # The import system sets each submodule as an attribute of its package when it
        # first loads it. ``thinktank.replay`` is both a submodule and the public
        # function; once something imports the submodule, the function must still be
        # what ``thinktank.replay`` gives (as it was when this file imported eagerly).
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
