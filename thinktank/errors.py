"""The whole thinktank exception tree, in one place.

::

    ThinkTankError
    ├── UsageError                 you configured or called it wrong; fix the input
    │   ├── SpecError              one problem in a session file (file, step, field)
    │   │   └── SpecErrors         several SpecErrors reported at once
    │   ├── InputError             a session input is missing or of the wrong type
    │   ├── DatasetError           one problem in an eval dataset file (file, line, field)
    │   ├── ScorerError            an eval scorer is misconfigured or misbehaves
    │   └── UnknownSessionError    no stored session has that id (or prefix)
    └── RunError                   the run itself failed
        ├── ProviderError          a model call failed (provider, model, status, body)
        │   └── CallTimeoutError   a model call or step ran past its time limit
        └── StoreError             the database could not be read or written
            └── NoDatabaseError    (also a UsageError) no database at the path given

Misuse (``UsageError``) is reported before any model is called and before anything is
written to the store. Failures a session policy tolerates (a model that errors in a
``best_effort`` step) are recorded as values, not raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "CallTimeoutError",
    "DatasetError",
    "InputError",
    "NoDatabaseError",
    "ProviderError",
    "RunError",
    "ScorerError",
    "SpecError",
    "SpecErrors",
    "StoreError",
    "ThinkTankError",
    "UnknownSessionError",
    "UsageError",
]


class ThinkTankError(Exception):
    """Root of every error thinktank raises on purpose."""


class UsageError(ThinkTankError):
    """The caller asked for something that cannot work; nothing was run or written."""


class SpecError(UsageError):
    """One problem in a session definition.

    Attributes:
        message: What is wrong and, where it helps, how to fix it.
        file: The session file, when the spec came from one.
        step: The step id the problem belongs to, if any.
        field: The dotted field path inside the step or session, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        step: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.step = step
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The problem as one line: ``file: step 'x': field: message``."""
        parts: list[str] = []
        if self.file:
            parts.append(self.file)
        if self.step:
            parts.append(f"step {self.step!r}")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def with_file(self, file: str | None) -> SpecError:
        """A copy of this error that names ``file``."""
        return SpecError(self.message, file=file, step=self.step, field=self.field)


class SpecErrors(SpecError):
    """Every problem found in a session definition, reported at once.

    ``str(err)`` is one line per problem; ``err.errors`` holds them.
    """

    def __init__(self, errors: Iterable[SpecError]) -> None:
        self.errors: list[SpecError] = list(errors)
        first = self.errors[0] if self.errors else SpecError("invalid session")
        super().__init__(first.message, file=first.file, step=first.step, field=first.field)
        Exception.__init__(self, "\n".join(e.one_line() for e in self.errors))

    def lines(self) -> list[str]:
        """One line per problem."""
        return [e.one_line() for e in self.errors]

    def one_line(self) -> str:
        errors: Sequence[SpecError] = getattr(self, "errors", ())
        return "\n".join(e.one_line() for e in errors) if errors else super().one_line()


class InputError(UsageError):
    """A session input is missing, unknown, or of the wrong type."""


class DatasetError(UsageError):
    """One problem in an evaluation dataset file, found before any model is called.

    Attributes:
        message: What is wrong.
        file: The dataset file.
        line: The 1-based line the problem is on, when it is on one.
        field: The field (``target``, ``target[1]``, ``id``, a CSV column), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The problem as one line: ``file:line: field: message`` (the form compilers use)."""
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [where, self.field, self.message] if self.field else [where, self.message]
        return ": ".join(parts)


class ScorerError(UsageError):
    """An eval scorer cannot score: bad options, an unimportable callable, or a value
    that is not a score.

    A usage error because every cause is in what the user wrote (the experiment's
    ``scorer`` block, a target the scorer cannot read, or the user's own scoring
    function), never in a model's answer: an answer that cannot be read scores 0.

    Attributes:
        message: What is wrong.
        scorer: The scorer, as :meth:`thinktank.eval.scoring.ScorerSpec.describe` names it.
        file: The experiment or dataset file, when known.
        line: The line in ``file``, when known.
        field: The dotted field path (``scorer.abs_tol``), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        scorer: str | None = None,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.scorer = scorer
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The problem as one line: ``file:line: field: scorer 'x': message``."""
        parts: list[str] = []
        if self.file:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.field:
            parts.append(self.field)
        if self.scorer:
            parts.append(f"scorer {self.scorer!r}")
        parts.append(self.message)
        return ": ".join(parts)


class UnknownSessionError(UsageError):
    """No stored session matches the id or prefix given."""


class UnknownExperimentError(UsageError):
    """No stored experiment matches the id or prefix given."""


class RunError(ThinkTankError):
    """The session ran and something failed while it ran."""


class ProviderError(RunError):
    """A model call failed.

    Attributes:
        provider: Provider kind (``simulated``, ``openai``, ...).
        model: The model name as configured in the session.
        status_code: HTTP status when there was one.
        body: The provider's error message or body, secrets removed.
        retryable: Whether a retry could help.
        retry_after_s: The server's hint (``retry-after-ms`` / ``retry-after``), if any.
        partial: Text received before the failure (an interrupted stream), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status_code: int | None = None,
        body: str | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
        partial: str | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.status_code = status_code
        self.body = body
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.partial = partial
        super().__init__(message)


class CallTimeoutError(ProviderError, TimeoutError):
    """A model call (or a whole step) ran past its time limit."""


class StoreError(RunError):
    """The database could not be opened, read or written."""


class NoDatabaseError(StoreError, UsageError):
    """The database named does not exist, or cannot be created there.

    A mistyped ``--db`` or ``THINKTANK_DB``: bad input (the CLI exits 2), and nothing
    was created. Commands that only read, or continue, stored sessions never create a
    database.
    """
