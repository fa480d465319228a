"""Session definitions: pydantic models of a session file, and loading them.

A session file (YAML or JSON) holds a name, typed inputs, the models it may call,
the spec's ``ThinkTankSessionConfig`` blocks (``parallelExecution``,
``modelSelection``) and a list of steps. Field names are snake_case in Python; the
seed's camelCase names are accepted everywhere as aliases.

These models are the source of ``schemas/session.schema.json``. Reading a file into
them, with every problem reported at once, is :mod:`thinktank.session.loading`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from thinktank._text import repaired
from thinktank.consensus.formats import AnswerFormat, FormatKind
from thinktank.errors import InputError
from thinktank.providers.base import MAX_SEED
from thinktank.providers.config import DEFAULT_MODEL, ModelConfig
from thinktank.session.formats import schema_problem

__all__ = [
    "ID_PATTERN",
    "AnswerFormatField",
    "AnswerFormatSpec",
    "BudgetSpec",
    "InputSpec",
    "ModelSelection",
    "ParallelExecution",
    "ParallelExecutionConfig",
    "SessionSpec",
    "StepSpec",
    "validate_inputs",
]

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
"""Step ids and model names: letters, digits, ``_`` and ``-``, not starting with a digit."""


SPEC_CONFIG = ConfigDict(
    extra="forbid",
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=False,
    frozen=True,
)
"""How every model of a file a user writes reads it: unknown keys refused, snake_case in
Python and camelCase accepted as aliases, frozen (the experiment file shares it)."""


class _Spec(BaseModel):
    model_config = SPEC_CONFIG


InputType = Literal["string", "integer", "number", "boolean", "list", "object"]
Mode = Literal["all", "race", "quorum", "cascade"]
Synthesis = Literal["majority", "medoid", "weighted_merge", "judge", "union"]
TieBreak = Literal["weight_then_earliest", "earliest", "model_order"]


def _schema_key(schema: dict[str, Any]) -> None:
    # The field is ``json_schema`` in Python (``schema`` would shadow a BaseModel
    # attribute) and ``schema`` in a file: the file's name is the one documented.
    properties = schema.get("properties", {})
    if "json_schema" in properties:
        properties["schema"] = properties.pop("json_schema")


class AnswerFormatSpec(_Spec):
    """What kind of answer a step asks for (``answer_format``).

    Written as a kind alone (``answer_format: number``) or as a mapping
    (``{kind: choice, choices: [Paris, Lyon]}``, ``{kind: json, schema: {...}}``). The
    step's prompt gets a matching instruction appended, providers with structured
    output are given the ``json`` schema (or the letters of ``choice``, ``yes``/``no``
    of ``yes_no``, as an enum), and answer extraction and equivalence follow the format.
    """

    # Its fields' docstrings become the schema's descriptions of each kind (only
    # here: parsing every spec model's source would slow every CLI start).
    model_config = ConfigDict(json_schema_extra=_schema_key, use_attribute_docstrings=True)

    kind: FormatKind
    """``short``: a name, word or short phrase ("Answer with the answer only: a name,
    word or short phrase."); ``number``: one number ("Answer with the number only.");
    ``choice``: one of ``choices``, listed as ``A) ...`` lines ("Answer with the letter
    only."); ``yes_no``: yes or no ("Answer yes or no."); ``json``: JSON matching
    ``schema`` ("Answer with JSON only, matching this schema: ...", and structured
    output at OpenAI-compatible servers and Gemini); ``free``: free text (no
    instruction)."""
    choices: Annotated[list[str], Field(validate_default=True)] = []
    """``choice`` only: the options in letter order (A is the first); at least two,
    distinct, at most 26."""
    json_schema: Annotated[dict[str, JsonValue] | None, Field(alias="schema")] = None
    """``json`` only: the JSON Schema an answer must match (a mapping; ``type``,
    ``properties``, ``required``, ``enum`` and ``items`` are checked for shape). Written
    ``schema`` in a file."""
    instruction: bool | Annotated[str, Field(min_length=1)] = True
    """What the prompt is told about the format: ``true`` appends the kind's instruction
    (above); a sentence replaces the kind's asking sentence (``"Think step by step, then
    end with: The answer is N."``; a ``choice`` keeps its listed options); ``false``
    appends nothing, for a prompt that already says how to answer (extraction and
    equivalence still follow the format)."""

    @field_validator("choices")
    @classmethod
    def _choices_fit_kind(cls, value: list[str], info: ValidationInfo) -> list[str]:
        kind = info.data.get("kind")
        if kind is not None and (kind == "choice" or value):
            # AnswerFormat holds the rules (count, distinct, at most 26, kind).
            AnswerFormat(kind, choices=value, schema={} if kind == "json" else None)
        return value

    @field_validator("json_schema", mode="after")
    @classmethod
    def _schema_fits_kind(
        cls, value: dict[str, JsonValue] | None, info: ValidationInfo
    ) -> dict[str, JsonValue] | None:
        kind = info.data.get("kind")
        if kind is not None and kind != "json" and value is not None:
            raise ValueError(f"a schema is for answer format 'json', not {kind!r}")
        problem = None if value is None else schema_problem(value)
        if problem is not None:
            raise ValueError(f"not a JSON Schema: {problem}")
        return value

    @model_validator(mode="after")
    def _json_has_schema(self) -> AnswerFormatSpec:
        if self.kind == "json" and self.json_schema is None:
            raise ValueError("answer format 'json' needs a 'schema' (a JSON Schema mapping)")
        return self

    def asking(self) -> str | None:
        """The sentence that asks for the format in place of the kind's own (None: the
        kind's own; the empty string: no instruction at all)."""
        if self.instruction is True:
            return None
        return "" if self.instruction is False else self.instruction

    def to_format(self) -> AnswerFormat:
        """The :class:`~thinktank.consensus.formats.AnswerFormat` this declares (the one
        place a file's format becomes the engine's)."""
        return AnswerFormat(self.kind, choices=tuple(self.choices), schema=self.json_schema)


def short_form(value: object) -> object:
    """``answer_format: number`` is ``answer_format: {kind: number}``."""
    return {"kind": value} if isinstance(value, str) else value


AnswerFormatField = Annotated[
    AnswerFormatSpec,
    BeforeValidator(short_form, json_schema_input_type=FormatKind | AnswerFormatSpec),
]
"""An ``answer_format`` field: a kind alone or an :class:`AnswerFormatSpec` mapping."""


class InputSpec(_Spec):
    """A declared session input."""

    type: InputType = "string"
    """The input's JSON type."""
    description: str = ""
    """What the input is for."""
    default: JsonValue = None
    """Value used when none is given; an input without a default is required."""

    @property
    def required(self) -> bool:
        """True when the input has no default."""
        return self.default is None


class ParallelExecution(_Spec):
    """The spec's ``parallelExecution`` block: how much runs at once."""

    enabled: bool = True
    """False runs one step and one model call at a time."""
    max_concurrent_steps: Annotated[int, Field(ge=1)] | Literal["unlimited"] = 5
    """Steps of one session in flight at once; ``unlimited`` starts every ready step
    (one task per step in flight, never one per step of the session)."""

    @field_validator("max_concurrent_steps", mode="wrap")
    @classmethod
    def _steps_limit(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        # One error that names both forms, not one per member of the union.
        if value == "unlimited":
            return value
        try:
            return handler(value)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise PydanticCustomError(error["type"], f'{error["msg"]} or "unlimited"') from None

    max_concurrent_models: Annotated[int, Field(ge=1)] = 3
    """Model calls one step makes at once; extra models start as slots free."""
    consensus_threshold: Annotated[float, Field(ge=0, le=1)] = 0.7
    """Agreement at or above this is consensus."""
    timeout_per_step_ms: Annotated[int, Field(ge=1)] = 30_000
    """Time limit of one step attempt, all its calls included."""
    max_concurrent_calls: Annotated[int, Field(ge=1)] | None = None
    """Model calls in flight across the whole session (no limit when unset)."""
    scheduling: Literal["eager", "layered"] = "eager"
    """``eager`` starts each step as soon as its dependencies finish; ``layered`` runs
    one topological generation at a time."""
    failure_strategy: Literal["fail_fast", "best_effort"] = "best_effort"
    """``fail_fast`` cancels the session at the first failed step; ``best_effort``
    skips the failed step's descendants and runs everything else."""
    cache: bool = True
    """Reuse stored consensus results (per step too: ``cache: false`` opts out)."""

    def effective(self) -> ParallelExecution:
        """The limits in force: ``enabled: false`` means one at a time."""
        if self.enabled:
            return self
        return self.model_copy(
            update={
                "max_concurrent_steps": 1,
                "max_concurrent_models": 1,
                "max_concurrent_calls": 1,
            }
        )


class BudgetSpec(_Spec):
    """What a session may spend; no new model call starts past it."""

    max_cost_usd: Annotated[float, Field(ge=0)] | None = None
    """USD (every model the session uses needs a price)."""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    """Tokens, input plus output."""


class ModelSelection(_Spec):
    """The spec's ``modelSelection`` block."""

    automatic: bool = False
    """Pick models for steps that name none from the registry by ``domain_hint``
    (tags), preferring provider diversity, within ``max_cost_per_mtok``; the reasons
    are stored with the session."""
    preferred_models: list[str] = []
    """Models for steps that name none (before ``default_model``); with ``automatic``,
    the candidates to choose from."""
    domain_hint: str | None = None
    """The session's domain (comma-separated for several), for automatic selection."""
    count: Annotated[int, Field(ge=1)] | None = None
    """How many models automatic selection picks (default ``maxConcurrentModels``)."""
    max_cost_per_mtok: Annotated[float, Field(ge=0)] | None = None
    """Cost cap of automatic selection: USD per million tokens, input + output."""

    def hints(self) -> list[str]:
        """The domain hints, split on commas."""
        return [h.strip() for h in (self.domain_hint or "").split(",") if h.strip()]


class ParallelExecutionConfig(_Spec):
    """The spec's ``ParallelExecutionConfig``: one prompt to several models.

    Used by :func:`thinktank.execute_parallel` and ``thinktank ask``; the same fields
    exist on every multi-model step of a session file.
    """

    enabled: bool = True
    """False asks only the first model."""
    mode: Mode = "all"
    """all, race, quorum or cascade."""
    models: list[str] = []
    """The models to ask (may be empty with ``agi_model_selection``)."""
    min_models: Annotated[int, Field(ge=1)] | None = None
    """quorum: agreeing answers needed (default a majority); cascade: first round."""
    max_models: Annotated[int, Field(ge=1)] | None = None
    """Use at most this many models."""
    agi_model_selection: bool = False
    """Choose the models from the registry by ``domain_hints`` (tags)."""
    domain_hints: list[str] = []
    """Domains for automatic selection."""
    timeout_ms: Annotated[int, Field(ge=1)] | None = None
    """Time limit of one model call."""
    timeout_per_step_ms: Annotated[int, Field(ge=1)] = 30_000
    """Time limit of the whole execution; the answers that arrived by then are merged
    (outcome ``k_of_n``)."""
    failure_strategy: Literal["fail_fast", "best_effort"] = "best_effort"
    """fail_fast fails at the first failed call; best_effort merges what answered."""
    consensus_threshold: Annotated[float, Field(ge=0, le=1)] = 0.7
    """Agreement that counts as consensus (quorum stops there)."""
    synthesis: Synthesis = "majority"
    """How answers merge."""
    synthesizer: str | None = None
    """The judge model for ``synthesis: judge``."""
    judge_fallback: Literal["majority", "medoid", "weighted_merge", "union"] = "majority"
    """Used when the judge fails."""
    weights: dict[str, Annotated[float, Field(gt=0)]] = {}
    """Model weights (default 1 each) for every merge method and quorum agreement."""
    tie_break: TieBreak = "weight_then_earliest"
    """Which of two equally supported answers wins (as on a step)."""
    agreement: Literal["auto", "exact", "equivalent", "lexical", "semantic"] = "auto"
    """How answers are compared."""
    similarity_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    """Two long answers agree at or above this similarity (as on a step)."""
    max_concurrent_models: Annotated[int, Field(ge=1)] = 3
    """Calls in flight at once."""
    system: str | None = None
    """System prompt."""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    """Output limit per call."""
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    """Sampling temperature per call."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    """Base seed of the calls (as a step's ``seed``)."""
    cache: bool = True
    """Reuse a stored consensus for the same prompt and settings."""
    answer_format: AnswerFormatField | None = None
    """What kind of answer is asked for (as a step's ``answer_format``): ``short``,
    ``number``, ``choice`` with ``choices``, ``yes_no``, ``json`` with a ``schema``,
    ``free``."""

    @model_validator(mode="after")
    def _has_models(self) -> ParallelExecutionConfig:
        if not self.models and not self.agi_model_selection:
            raise ValueError("give 'models', or set 'agi_model_selection' with 'domain_hints'")
        if len(set(self.models)) != len(self.models):
            raise ValueError("'models' lists a model twice")
        if self.synthesis == "judge" and self.synthesizer is None:
            raise ValueError("synthesis 'judge' needs a 'synthesizer' model")
        return self


class StepSpec(_Spec):
    """One reasoning step."""

    id: Annotated[str, Field(pattern=ID_PATTERN, max_length=100)]
    """Unique id; other steps refer to the output as ``{{ steps.ID.output }}``."""
    kind: Literal["prompt", "decompose"] = "prompt"
    """``prompt`` asks its model(s) the prompt; ``decompose`` asks each of its models
    to split the problem into sub-problems, merges the plans, and adds one step per
    sub-problem plus a synthesis step to the DAG while the session runs."""
    prompt: Annotated[str, Field(min_length=1)]
    """Prompt template (see :mod:`thinktank.session.templates`)."""
    description: str = ""
    """What the step is for."""
    system: str | None = None
    """Optional system prompt (not a template)."""
    depends_on: list[str] = []
    """Steps that must finish first."""
    model: str | None = None
    """One model to ask (exclusive with ``models``)."""
    models: list[str] = []
    """Several models asked the same prompt; their answers are merged."""
    mode: Mode = "all"
    """Multi-model mode: ``all`` waits for every model; ``race`` takes the first
    answer; ``quorum`` stops once ``min_models`` agree; ``cascade`` asks the cheapest
    first and adds dearer models only while they disagree."""
    synthesis: Synthesis = "majority"
    """How answers merge: ``majority`` (largest agreeing group), ``medoid`` (the most
    central answer), ``weighted_merge`` (by model ``weights``), ``judge`` (a
    ``synthesizer`` model merges them), ``union`` (list items, deduplicated and
    credited to the models that found them)."""
    min_models: Annotated[int, Field(ge=1)] | None = None
    """quorum: agreeing answers needed (default a majority); cascade: first round size
    (default 2)."""
    max_models: Annotated[int, Field(ge=1)] | None = None
    """Use at most this many of the step's models (in order; cheapest for cascade)."""
    failure_strategy: Literal["fail_fast", "best_effort"] = "best_effort"
    """Model calls of this step: ``fail_fast`` fails the step at the first failed
    call; ``best_effort`` merges whatever answered."""
    synthesizer: str | None = None
    """The model that merges answers when ``synthesis: judge``."""
    judge_fallback: Literal["majority", "medoid", "weighted_merge", "union"] = "majority"
    """The method used when the judge fails (the result says so)."""
    weights: dict[str, Annotated[float, Field(gt=0)]] = {}
    """Model weights (default 1 each): a model's vote counts this much in every merge
    method and in quorum agreement; ``weighted_merge`` exists to make it explicit."""
    tie_break: TieBreak = "weight_then_earliest"
    """Which of two equally supported answers wins (never the alphabet; empty or
    unparseable answers never win): ``weight_then_earliest`` the side with the heaviest
    model, then the one that answered first; ``earliest`` the one that answered first;
    ``model_order`` the side with the model listed first in ``models``."""
    agreement: Literal["auto", "exact", "equivalent", "lexical", "semantic"] = "auto"
    """How answers are compared: ``exact`` after normalisation (short answers),
    ``equivalent`` (short answers worded differently: a sentence stating the answer,
    the same number or choice; never answers that contradict), ``lexical`` or
    ``semantic`` similarity (long answers; semantic needs the ``embeddings`` extra),
    ``auto`` picks equivalent for short answers, else lexical. Long answers that
    contradict (one negates the other's main clause, or they state different numbers)
    never agree, whatever their similarity. Embeddings are used only when asked for
    (``semantic``), since loading the model takes seconds."""
    similarity_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    """Two long answers agree at or above this similarity; list items (``union``) and
    sub-problems (``decompose``) merge at or above it too. Unset: the calibrated cut of
    the measure for whole answers (lexical 0.90; MiniLM cosine 1.0, since no lower cut
    reached precision 0.95 on the labelled long answers: see
    ``thinktank.consensus.long_equivalence``) and 0.6 for items and sub-problems."""
    on_low_consensus: Literal["continue", "escalate", "fail", "abstain"] = "continue"
    """Below the threshold: flag it and go on, ``escalate`` (ask ``escalate_to`` as
    well and merge again), fail the step, or ``abstain``: the step completes with the
    outcome ``no_consensus`` and no output (None, not the low-agreement merge, so
    nothing downstream mistakes it for an answer); the consensus is still stored, and
    the steps that depend on it are skipped with the reason. Selective answering: an
    abstention is neither a right nor a wrong answer."""
    escalate_to: list[str] = []
    """Extra models asked when ``on_low_consensus: escalate``."""
    consensus_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    """Overrides the session's threshold for this step."""
    cache: bool = True
    """Reuse a stored consensus for the same prompt, models and settings."""
    max_subproblems: Annotated[int, Field(ge=1, le=50)] = 8
    """decompose: at most this many sub-steps (the most-proposed are kept)."""
    sub_models: list[str] = []
    """decompose: the model(s) of each sub-step (default: the step's first model)."""
    synthesis_prompt: str | None = None
    """decompose: the synthesis step's instruction (literal text; the sub-steps' answers
    are appended). Default: answer the original problem from the sub-answers."""
    template: bool = True
    """False: ``prompt`` is literal text, not a template, and the outputs of
    ``depends_on`` are appended to it as data (the steps decompose adds are so)."""
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    """Extra attempts after a failed one."""
    timeout_ms: Annotated[int, Field(ge=1)] | None = None
    """Overrides ``timeoutPerStepMs`` for this step."""
    call_timeout_ms: Annotated[int, Field(ge=1)] | None = None
    """Time limit of one model call (the spec's ``timeoutMs``)."""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    """Output token limit per call."""
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    """Sampling temperature per call."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    """Base seed of the step's calls: each model's call gets its own seed derived from
    it and the model name (``providers.base.call_seed``), so models and samples
    ``NAME#1``, ``NAME#2`` never share one and every run sends the same seeds. None
    leaves sampling to each provider's default. Sent to OpenAI-compatible servers and
    Gemini, used by local and simulated models; Anthropic has no seed parameter."""
    answer_format: AnswerFormatField | None = None
    """What kind of answer the step asks for (``prompt`` steps): ``short``, ``number``,
    ``choice`` (with ``choices``), ``yes_no``, ``json`` (with a ``schema``) or ``free``;
    a kind alone (``answer_format: number``) or a mapping (``{kind: choice, choices:
    [Paris, Lyon]}``). The rendered prompt gets the matching instruction appended (the
    stored prompt is the one sent); ``json`` is also sent as structured output to
    OpenAI-compatible servers and Gemini (Anthropic, local and simulated models get the
    instruction alone); answers are extracted and compared by the format. None: no
    instruction, answers compared as before."""

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> StepSpec:
        if self.model is not None and self.models:
            raise ValueError("give either 'model' or 'models', not both")
        if len(set(self.models)) != len(self.models):
            raise ValueError("'models' lists a model twice")
        if self.synthesis == "judge" and self.synthesizer is None:
            raise ValueError("synthesis 'judge' needs a 'synthesizer' model")
        if self.on_low_consensus == "escalate" and not self.escalate_to:
            raise ValueError("on_low_consensus 'escalate' needs 'escalate_to' models")
        return self

    def declared_format(self) -> AnswerFormat | None:
        """The :class:`~thinktank.consensus.formats.AnswerFormat` of ``answer_format``
        (None when the step declares none)."""
        return None if self.answer_format is None else self.answer_format.to_format()

    def format_asking(self) -> str | None:
        """The step's own sentence asking for its format (see
        :meth:`AnswerFormatSpec.asking`); None for the kind's own or no format."""
        return None if self.answer_format is None else self.answer_format.asking()

    def extra_models(self) -> list[str]:
        """Models the step may call besides its own: the judge, escalations, and the
        models of the steps a decompose step adds."""
        extra = [self.synthesizer] if self.synthesizer is not None else []
        return extra + list(self.escalate_to) + list(self.sub_models)

    def named_models(self) -> list[str]:
        """The models the step itself names (may be empty)."""
        return [self.model] if self.model is not None else list(self.models)


class SessionSpec(_Spec):
    """A whole session definition."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    """Human name, shown in listings."""
    description: str = ""
    """What the session does."""
    inputs: dict[str, InputSpec] = {}
    """Declared inputs by name."""
    models: dict[str, ModelConfig] = {}
    """Models declared inline, by name."""
    default_model: str | None = None
    """Model for steps that name none (after ``modelSelection.preferredModels``)."""
    parallel_execution: ParallelExecution = ParallelExecution()
    """The spec's ``parallelExecution`` block."""
    model_selection: ModelSelection = ModelSelection()
    """The spec's ``modelSelection`` block."""
    budget: BudgetSpec = BudgetSpec()
    """Cost and token limits of one run."""
    steps: Annotated[list[StepSpec], Field(min_length=1)]
    """The steps, in file order."""

    def step_models(self, step: StepSpec) -> list[str]:
        """The models ``step`` calls: its own, else preferred, else the session's
        default, else the built-in local model."""
        named = step.named_models()
        if named:
            return named
        if self.model_selection.preferred_models:
            return list(self.model_selection.preferred_models)
        return [self.default_model or DEFAULT_MODEL]

    def with_model(self, name: str | Sequence[str]) -> SessionSpec:
        """A copy with every model choice replaced by ``name`` (``run --model``).

        One name: every step asks that model alone. Several: every step asks all of
        them, with its own mode and synthesis (a judge step's judge is the first).
        Either way the session default, automatic selection, escalations and the
        models of the steps a decompose step adds are replaced too, so no model the
        file names is needed.
        """
        names = [name] if isinstance(name, str) else list(name)
        if len(names) == 1:
            one: dict[str, Any] = {
                "model": names[0],
                "models": [],
                "synthesizer": None,
                "synthesis": "majority",
                "on_low_consensus": "continue",
                "escalate_to": [],
                "sub_models": [],
            }
            steps = [s.model_copy(update=one) for s in self.steps]
        else:
            steps = [
                s.model_copy(
                    update={
                        "model": None,
                        "models": names,
                        "synthesizer": names[0] if s.synthesizer is not None else None,
                        "on_low_consensus": "continue"
                        if s.on_low_consensus == "escalate"
                        else s.on_low_consensus,
                        "escalate_to": [],
                        "sub_models": names,
                    }
                )
                for s in self.steps
            ]
        return self.model_copy(
            update={"steps": steps, "default_model": names[0], "model_selection": ModelSelection()}
        )

    def step(self, step_id: str) -> StepSpec:
        """The step with id ``step_id`` (KeyError if none)."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def parallel_execution_wire(self) -> dict[str, Any]:
        """The ``parallelExecution`` block with camelCase keys, as the seed stores it."""
        return self.parallel_execution.model_dump(mode="json", by_alias=True)


_TYPE_CHECKS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "list": (list,),
    "object": (dict,),
}


def _coerce(kind: str, value: Any) -> Any:
    """Parse a value given as text (CLI ``--input k=v``) into the declared type."""
    if not isinstance(value, str) or kind == "string":
        return value
    if kind == "integer":
        return int(value)
    if kind == "number":
        return float(value)
    if kind == "boolean":
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ValueError(value)
    return json.loads(value)


def validate_inputs(
    spec: SessionSpec, provided: Mapping[str, Any] | None, *, from_text: bool = False
) -> dict[str, Any]:
    """The inputs a run uses: defaults filled in, types checked.

    Args:
        spec: The session.
        provided: Values given by the caller.
        from_text: Values are strings from the command line, to parse by type.

    Text that cannot be encoded as UTF-8 (lone surrogates) and NUL characters are
    replaced by U+FFFD.

    Raises:
        InputError: listing every missing, unknown or mistyped input, one per line.
    """
    provided = dict(provided or {})
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in sorted(set(provided) - set(spec.inputs)):
        declared = ", ".join(sorted(spec.inputs)) or "none"
        problems.append(f"input {name!r}: not declared by the session (declared: {declared})")
    for name, decl in spec.inputs.items():
        if name not in provided:
            if decl.required:
                problems.append(f"input {name!r}: required ({decl.type}) but not given")
            else:
                values[name] = decl.default
            continue
        value = provided[name]
        if from_text:
            try:
                value = _coerce(decl.type, value)
            except ValueError:
                problems.append(f"input {name!r}: expected {decl.type}, got {provided[name]!r}")
                continue
        ok = isinstance(value, _TYPE_CHECKS[decl.type])
        if decl.type in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            problems.append(
                f"input {name!r}: expected {decl.type}, got {type(value).__name__} {value!r}"
            )
            continue
        # Text no provider or database takes (lone surrogates, NUL) is sent and
        # stored with U+FFFD in its place, rather than failing every call.
        values[name] = repaired(value, name, [])
    if problems:
        raise InputError("\n".join(problems))
    return values
