"""thinktank: run reasoning sessions - DAGs of LLM steps - on several models at once.

Load a session file, run it, and every step, model call and consensus is stored::

    import thinktank

    spec = thinktank.load_session("sessions/diamond.yaml")
    result = thinktank.run_sync(spec, store="tt.db", inputs={"question": "..."})
    print(result.status, result.outputs)
"""

from __future__ import annotations

from thinktank.ask import ParallelResult, execute_parallel
from thinktank.batch import BatchResult, run_many
from thinktank.dryrun import DryRun, dry_run
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
from thinktank.graph import StepGraph
from thinktank.providers.base import ModelClient, ModelRequest, ModelResponse
from thinktank.providers.simulated import SimulatedModel, SimulatedModelConfig
from thinktank.replay import ReplayReport, fork, replay, resume
from thinktank.result import SessionResult, StepResult, Usage
from thinktank.runner import DEFAULT_STORE, run, run_sync
from thinktank.spec import (
    InputSpec,
    ModelSelection,
    ParallelExecution,
    ParallelExecutionConfig,
    SessionSpec,
    StepSpec,
    load_session,
    parse_session,
)
from thinktank.store import Store
from thinktank.transfer import export_session, import_session

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_STORE",
    "BatchResult",
    "CallTimeoutError",
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
    "load_session",
    "parse_session",
    "replay",
    "resume",
    "run",
    "run_many",
    "run_sync",
]
