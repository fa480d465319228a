"""Experiment files: the pydantic model of an experiment, loading it, and its schema.

An experiment file (YAML or JSON) names a dataset, what each item is asked (a prompt
template over the item's inputs, or a session file whose final step is scored), a grid of
configurations, a scorer, repeats and a budget. This module owns that file format: the
models (the source of ``schemas/experiment.schema.json``), the checks every file passes
before any model is called (every problem a :class:`~thinktank.errors.SpecError` naming
the file, the line and the field, all reported at once in one
:class:`~thinktank.errors.SpecErrors`) and the expansion of the grid into
:class:`Configuration` objects with stable ids. Running an experiment is not here.

The grid is written in one of two forms:

* a **list** of configurations, each one row of the results, with an optional ``id``
  (default ``c1``, ``c2``, ... by position in the file);
* a **mapping** of lists (``models: [[local], [local-s1, local-s2]]``, ``mode: [all,
  race]``): every combination of one value per key, ids ``c1``, ``c2``, ... in the order
  of :func:`itertools.product` over the keys in the order :class:`GridProduct` declares
  them (the last key varies fastest), whatever order the file writes them in.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from thinktank.consensus.formats import FormatKind
from thinktank.errors import DatasetError, ScorerError, SpecError, SpecErrors
from thinktank.eval.dataset import Item, load_dataset, shipped
from thinktank.eval.scoring import ScorerSpec, parse_scorer_spec
from thinktank.session.loading import load_session, read_spec_file, spec_errors_from_pydantic
from thinktank.session.schema import render_schema, schema_document
from thinktank.session.spec import (
    ID_PATTERN,
    SPEC_CONFIG,
    AnswerFormatSpec,
    Mode,
    Synthesis,
    short_form,
)

__all__ = [
    "SCHEMA_ID",
    "BudgetLimits",
    "Configuration",
    "ConfigurationSpec",
    "ExperimentAnswerFormat",
    "ExperimentSpec",
    "GridProduct",
    "configurations",
    "experiment_schema",
    "load_experiment",
    "locate_errors",
    "parse_experiment",
    "prompt_fields",
    "render_experiment_schema",
    "session_template",
]

SCHEMA_ID = "https://thinktank.dev/schemas/experiment.schema.json"
SHIPPED_PREFIX = "shipped:"
"""``dataset: shipped:capitals`` names a dataset that ships with the package."""

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_FIELD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")


class _Spec(BaseModel):
    model_config = SPEC_CONFIG  # as the session file reads


Threshold = Annotated[float, Field(ge=0, le=1)]
Temperature = Annotated[float, Field(ge=0, le=2)]
Samples = Annotated[int, Field(ge=1)]
ModelName = Annotated[str, Field(min_length=1)]
Panel = Annotated[list[ModelName], Field(min_length=1)]
Weights = dict[ModelName, Annotated[float, Field(gt=0)]]
"""Model -> weight (> 0), as a session step's ``weights`` (``thinktank eval weights``
writes them)."""


class ConfigurationSpec(_Spec):
    """One configuration of the list form of ``grid``: how every item is answered."""

    id: Annotated[str, Field(pattern=ID_PATTERN, max_length=100)] | None = None
    """Unique id (default ``c<position>``, from 1); ``baseline`` and reports use it."""
    models: Panel | None = None
    """The models asked (exclusive with ``ensemble``)."""
    ensemble: str | None = None
    """The name of an entry of the experiment's ``ensembles`` (exclusive with ``models``)."""
    mode: Mode = "all"
    """all, race, quorum or cascade (as on a session step)."""
    synthesis: Synthesis = "majority"
    """How answers merge (as on a session step)."""
    threshold: Threshold | None = None
    """Consensus threshold (default the session default, 0.7)."""
    samples: Samples = 1
    """Answers drawn per model, each with its own seed."""
    temperature: Temperature | None = None
    """Sampling temperature per call (default the model's)."""
    seed: int | None = None
    """Base seed the per-sample seeds are drawn from."""
    abstain: bool = False
    """Selective answering: below the threshold the panel answers nothing (the step's
    ``on_low_consensus: abstain``); the report counts the item as not covered, neither
    right nor wrong. Only for panels of more than one answer."""
    weights: Weights = {}
    """Model weights for the merge (the step's ``weights``; a sampled model's weight
    counts for each of its samples)."""

    @model_validator(mode="after")
    def _one_panel(self) -> ConfigurationSpec:
        if (self.models is None) == (self.ensemble is None):
            raise ValueError("give exactly one of 'models' or 'ensemble'")
        if self.models is not None and len(set(self.models)) != len(self.models):
            raise ValueError("'models' lists a model twice")
        return self


class GridProduct(_Spec):
    """The mapping form of ``grid``: lists of values, every combination a configuration.

    Keys left out take the default of :class:`ConfigurationSpec`.
    """

    models: Annotated[list[Panel], Field(min_length=1)] | None = None
    """Panels, each a list of models (exclusive with ``ensemble``)."""
    ensemble: Annotated[list[str], Field(min_length=1)] | None = None
    """Ensemble names (exclusive with ``models``)."""
    mode: Annotated[list[Mode], Field(min_length=1)] = ["all"]
    synthesis: Annotated[list[Synthesis], Field(min_length=1)] = ["majority"]
    threshold: Annotated[list[Threshold | None], Field(min_length=1)] = [None]
    samples: Annotated[list[Samples], Field(min_length=1)] = [1]
    temperature: Annotated[list[Temperature | None], Field(min_length=1)] = [None]
    seed: Annotated[list[int | None], Field(min_length=1)] = [None]
    abstain: Annotated[list[bool], Field(min_length=1)] = [False]
    weights: Annotated[list[Weights], Field(min_length=1)] = [{}]

    @model_validator(mode="after")
    def _one_panel(self) -> GridProduct:
        if (self.models is None) == (self.ensemble is None):
            raise ValueError("give exactly one of 'models' or 'ensemble'")
        for panel in self.models or []:
            if len(set(panel)) != len(panel):
                raise ValueError("a panel in 'models' lists a model twice")
        return self

    def expand(self) -> list[ConfigurationSpec]:
        """Every combination, in :func:`itertools.product` order (last key fastest)."""
        panels: list[dict[str, Any]] = (
            [{"models": m} for m in self.models]
            if self.models is not None
            else [{"ensemble": e} for e in self.ensemble or []]
        )
        rows = itertools.product(
            panels,
            self.mode,
            self.synthesis,
            self.threshold,
            self.samples,
            self.temperature,
            self.seed,
            self.abstain,
            self.weights,
        )
        keys = [
            "mode",
            "synthesis",
            "threshold",
            "samples",
            "temperature",
            "seed",
            "abstain",
            "weights",
        ]
        return [
            ConfigurationSpec(**panel, **dict(zip(keys, values, strict=True)))
            for panel, *values in rows
        ]


class BudgetLimits(_Spec):
    """What a whole experiment may spend; no new model call starts past it."""

    max_cost_usd: Annotated[float, Field(ge=0)] | None = None
    """USD, over every item, configuration and repeat."""
    max_calls: Annotated[int, Field(ge=1)] | None = None
    """Model calls, over every item, configuration and repeat."""


class ExperimentAnswerFormat(AnswerFormatSpec):
    """An experiment's ``answer_format``: a session step's, except that ``choice`` may
    leave out ``choices`` to take each item's own (a multiple-choice dataset's options
    differ per item)."""

    choices_field: Annotated[str, Field(min_length=1)] | None = None
    """``choice`` without ``choices`` only: the dataset field holding each item's
    choices, a list of strings (default ``choices``)."""

    @field_validator("choices")
    @classmethod
    def _choices_fit_kind(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("kind") == "choice" and not value:
            return value  # each item's: checked with the dataset
        return super()._choices_fit_kind(value, info)

    @model_validator(mode="after")
    def _field_for_per_item_choices(self) -> ExperimentAnswerFormat:
        if self.choices_field is not None and self.per_item_field() is None:
            raise ValueError("'choices_field' is for answer format 'choice' without 'choices'")
        return self

    def per_item_field(self) -> str | None:
        """The dataset field holding each item's choices, or None when the format is
        the same for every item."""
        if self.kind != "choice" or self.choices:
            return None
        return self.choices_field or "choices"

    def for_item(self, item: Item) -> AnswerFormatSpec:
        """The scored step's format for ``item``: its own choices filled in (the plain
        session-step model, which a stored session reads back)."""
        field = self.per_item_field()
        choices = self.choices if field is None else list(item.inputs[field])
        return AnswerFormatSpec(kind=self.kind, choices=choices, schema=self.json_schema)


ExperimentFormatField = Annotated[
    ExperimentAnswerFormat,
    BeforeValidator(short_form, json_schema_input_type=FormatKind | ExperimentAnswerFormat),
]
"""An experiment's ``answer_format``: a kind alone or an :class:`ExperimentAnswerFormat`."""


class ExperimentSpec(_Spec):
    """A whole experiment file."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    """Human name, shown in reports."""
    description: str = ""
    """What the experiment is for."""
    dataset: Annotated[str, Field(min_length=1)]
    """The dataset file, relative to the experiment file, or ``shipped:NAME``."""
    prompt: Annotated[str, Field(min_length=1)] | None = None
    """A template: ``{{ FIELD }}`` is the item's input FIELD (never ``target``).
    Exclusive with ``session``."""
    session: Annotated[str, Field(min_length=1)] | None = None
    """A session file, relative to the experiment file, whose final step is scored; the
    item's inputs are its inputs. Exclusive with ``prompt``."""
    ensembles: dict[Annotated[str, Field(pattern=ID_PATTERN)], Panel] = {}
    """Named model panels that configurations refer to with ``ensemble: NAME``."""
    grid: Annotated[
        Annotated[Annotated[list[ConfigurationSpec], Field(min_length=1)], Tag("list")]
        | Annotated[GridProduct, Tag("mapping")],
        # One form per value, so an error names the field, not both union members.
        Discriminator(lambda v: "list" if isinstance(v, list) else "mapping"),
    ]
    """A list of configurations, or a mapping of lists whose every combination is one
    (see the module documentation)."""
    scorer: ScorerSpec
    """How an answer is scored: a kind (``normalized``) or a mapping with options."""
    repeats: Annotated[int, Field(ge=1)] = 1
    """Times every item x configuration is run (fresh seeds each time)."""
    budget: BudgetLimits = BudgetLimits()
    """Limits over the whole experiment."""
    baseline: str | None = None
    """The id of the configuration the others are compared with."""
    answer_format: ExperimentFormatField | None = None
    """The kind of answer the scored step asks for (a session step's ``answer_format``:
    ``short``, ``number``, ``choice`` with ``choices``, ``yes_no``, ``json`` with a
    ``schema``, ``free``): the prompt gets its instruction and the consensus compares
    answers by it. Set on the ``answer`` step of a prompt experiment, and on the final
    step of a session experiment (replacing the file's). ``choice`` without ``choices``
    takes each item's from its field ``choices_field`` (default ``choices``)."""

    _base_dir: Path = PrivateAttr(default_factory=Path)

    @model_validator(mode="after")
    def _prompt_or_session(self) -> ExperimentSpec:
        if (self.prompt is None) == (self.session is None):
            raise ValueError("give exactly one of 'prompt' or 'session'")
        return self

    def choices_field(self) -> str | None:
        """The dataset field holding each item's choices, when ``answer_format`` asks
        for ``choice`` without its own."""
        return None if self.answer_format is None else self.answer_format.per_item_field()

    def dataset_path(self) -> Path:
        """The dataset file: a shipped one, or ``dataset`` relative to the experiment file."""
        if self.dataset.startswith(SHIPPED_PREFIX):
            return shipped(self.dataset.removeprefix(SHIPPED_PREFIX))
        return self._base_dir / self.dataset

    def session_path(self) -> Path | None:
        """The session file relative to the experiment file, if ``session`` is given."""
        return None if self.session is None else self._base_dir / self.session


@dataclass(frozen=True)
class Configuration:
    """One expanded configuration: a column of the results.

    Attributes:
        id: Unique in the experiment (given, or ``c<position>``).
        models: The models asked, an ensemble already resolved.
        ensemble: The ensemble's name when the configuration named one.
        mode, synthesis, threshold, samples, temperature, seed: As in the file.
        abstain: Below the threshold, answer nothing (``on_low_consensus: abstain``).
        weights: Model weights, sorted by model (empty: 1 each).
    """

    id: str
    models: tuple[str, ...]
    ensemble: str | None
    mode: str
    synthesis: str
    threshold: float | None
    samples: int
    temperature: float | None
    seed: int | None
    abstain: bool = False
    weights: tuple[tuple[str, float], ...] = ()


def configurations(spec: ExperimentSpec) -> list[Configuration]:
    """The grid expanded, in file order (list form) or product order (mapping form).

    Raises:
        SpecErrors: an unknown ensemble or a duplicate id (a loaded spec has neither).
    """
    rows = spec.grid.expand() if isinstance(spec.grid, GridProduct) else spec.grid
    result: list[Configuration] = []
    problems: list[SpecError] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        cid = row.id or f"c{index + 1}"
        if cid in seen:
            problems.append(
                SpecError(f"duplicate configuration id {cid!r}", field=f"grid.{index}.id")
            )
        seen.add(cid)
        if row.ensemble is not None and row.ensemble not in spec.ensembles:
            problems.append(
                SpecError(
                    f"no ensemble {row.ensemble!r} in 'ensembles'",
                    field=f"grid.{index}.ensemble"
                    if isinstance(spec.grid, list)
                    else "grid.ensemble",
                )
            )
            continue
        models = row.models if row.models is not None else spec.ensembles[row.ensemble or ""]
        result.append(
            Configuration(
                id=cid,
                models=tuple(models),
                ensemble=row.ensemble,
                mode=row.mode,
                synthesis=row.synthesis,
                threshold=row.threshold,
                samples=row.samples,
                temperature=row.temperature,
                seed=row.seed,
                abstain=row.abstain,
                weights=tuple(sorted(row.weights.items())),
            )
        )
    if problems:
        raise SpecErrors(problems)
    return result


def prompt_fields(template: str) -> tuple[list[str], list[str]]:
    """The input fields a prompt template uses, and a message per malformed placeholder."""
    fields: list[str] = []
    problems: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        if m := _FIELD.fullmatch(match.group(1)):
            fields.append(m.group(1))
        else:
            problems.append(f"placeholder {match.group(0)!r} is not allowed: use {{{{ FIELD }}}}")
    return fields, problems


def session_template(template: str) -> str:
    """An experiment prompt as a session step's template: ``{{ FIELD }}`` becomes
    ``{{ inputs.FIELD }}`` (the item's inputs are the session's inputs)."""
    return _PLACEHOLDER.sub(lambda m: "{{ inputs." + m.group(1).strip() + " }}", template)


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read and check an experiment file (``.yaml``, ``.yml`` or ``.json``).

    Beyond the fields, the dataset is read and the prompt's placeholders checked against
    its first item (``target`` may never be used), a session file is loaded and checked,
    configuration ids must be unique and ``baseline`` must be one of them.

    Raises:
        SpecErrors: every problem, one line each: ``file:line: field: message``.
    """
    path = Path(path)
    data, text = read_spec_file(path)
    return parse_experiment(data, file=str(path), base_dir=path.parent, text=text)


def parse_experiment(
    data: Any, *, file: str | None = None, base_dir: str | Path = ".", text: str | None = None
) -> ExperimentSpec:
    """Check an experiment given as a mapping; ``text`` (the file's) locates lines.

    Raises:
        SpecErrors: every problem found, each naming the file, line and field.
    """
    lines = _LineFinder(text)
    if not isinstance(data, Mapping):
        raise SpecErrors(
            [SpecError("an experiment file must hold a mapping at the top", file=file)]
        )
    raw = dict(data)
    problems: list[SpecError] = []
    if "scorer" in raw:
        try:
            raw["scorer"] = parse_scorer_spec(
                raw["scorer"], file=file, line=lines.line(["scorer"]), field="scorer"
            )
        except ScorerError as exc:
            problems.append(SpecError(exc.message, file=_where(file, exc.line), field=exc.field))
            raw.pop("scorer")
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        for err in spec_errors_from_pydantic(exc, raw, None):
            if problems and err.field == "scorer" and err.message.startswith("Field required"):
                continue  # the scorer's own error is already reported
            if err.field is not None and err.field.startswith(("grid.list", "grid.mapping")):
                # Drop the grid form's tag from the path: grid.list.0.x is grid.0.x.
                field = re.sub(r"^grid\.(list|mapping)", "grid", err.field)
                err = SpecError(err.message, field=field)
            if err.field is None:
                # The one whole-file rule pydantic checks is prompt-or-session: name it.
                err = SpecError(err.message, field="session" if "session" in raw else "prompt")
            problems.append(lines.locate(err, file))
        raise SpecErrors(problems) from None
    if problems:
        raise SpecErrors(problems)
    spec._base_dir = Path(base_dir)
    problems = _cross_checks(spec)
    if problems:
        raise SpecErrors([lines.locate(p, file) for p in problems])
    return spec


def _cross_checks(spec: ExperimentSpec) -> list[SpecError]:
    """What one field cannot say alone: ids, baseline, the dataset and the prompt."""
    problems: list[SpecError] = []
    ids: list[str] = []
    try:
        ids = [c.id for c in configurations(spec)]
    except SpecErrors as exc:
        problems.extend(exc.errors)
    if spec.baseline is not None and ids and spec.baseline not in ids:
        problems.append(
            SpecError(
                f"no configuration {spec.baseline!r} (ids: {', '.join(ids)})", field="baseline"
            )
        )
    try:
        dataset = spec.dataset_path()
    except DatasetError as exc:  # an unknown shipped name: the message says it all
        return [*problems, SpecError(exc.message, field="dataset")]
    try:
        first = load_dataset(dataset, choices_field=spec.choices_field())[0]
    except DatasetError as exc:
        # The dataset's own file:line: field, after the experiment's.
        return [*problems, SpecError(exc.one_line(), field="dataset")]
    if spec.prompt is not None:
        problems.extend(_check_prompt(spec.prompt, first.inputs))
    session = spec.session_path()
    if session is not None:
        problems.extend(_check_session(session, first.inputs))
    return problems


def _check_prompt(prompt: str, inputs: Mapping[str, Any]) -> list[SpecError]:
    fields, malformed = prompt_fields(prompt)
    problems = [SpecError(m, field="prompt") for m in malformed]
    for name in dict.fromkeys(fields):
        if name == "target":
            # The answer must never reach a model.
            problems.append(SpecError("the prompt may not use {{ target }}", field="prompt"))
        elif name not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            problems.append(
                SpecError(
                    f"placeholder {{{{ {name} }}}} is not a field of the dataset's first item"
                    f" (fields: {known})",
                    field="prompt",
                )
            )
    return problems


def _check_session(path: Path, inputs: Mapping[str, Any]) -> list[SpecError]:
    try:
        session = load_session(path)
    except SpecErrors as exc:
        return [SpecError(line, field="session") for line in exc.lines()]
    problems: list[SpecError] = []
    for name, declared in session.inputs.items():
        if name == "target":
            problems.append(
                SpecError("the session may not take 'target' as an input", field="session")
            )
        elif declared.required and name not in inputs:
            problems.append(
                SpecError(
                    f"the session's required input {name!r} is not a field of the dataset's"
                    " first item",
                    field="session",
                )
            )
    return problems


def locate_errors(errors: Sequence[SpecError], path: str | Path | None) -> SpecErrors:
    """Problems found after loading (an unknown model), each naming the experiment file
    ``path`` and the line of its field (``path`` None: as they are)."""
    if path is None:
        return SpecErrors(list(errors))
    _, text = read_spec_file(Path(path))
    lines = _LineFinder(text)
    return SpecErrors([lines.locate(error, str(path)) for error in errors])


def _where(file: str | None, line: int | None) -> str | None:
    if file is None or line is None:
        return file
    return f"{file}:{line}"


class _LineFinder:
    """Lines of fields in the file's text, found by walking its YAML nodes."""

    def __init__(self, text: str | None) -> None:
        self._root: yaml.Node | None = None
        if text is not None:
            try:
                # The text already passed the bounded loader; composing shares aliased
                # nodes and so cannot blow up.
                self._root = yaml.compose(text, Loader=yaml.SafeLoader)
            except yaml.YAMLError:
                self._root = None

    def line(self, path: Sequence[str]) -> int | None:
        """The 1-based line of the deepest node of ``path`` that exists."""
        node = self._root
        if node is None:
            return None
        line: int | None = node.start_mark.line + 1
        for part in path:
            node = _child(node, part)
            if node is None:
                break
            line = node.start_mark.line + 1
        return line

    def locate(self, error: SpecError, file: str | None) -> SpecError:
        """``error`` naming ``file`` and the line of its field."""
        if error.file is not None and error.file != file:
            return error
        path = error.field.split(".") if error.field else []
        line = self.line(path) if path else None
        return SpecError(error.message, file=_where(file, line), field=error.field)


def _child(node: yaml.Node, part: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        names = {part, to_camel(part), _snake(part)}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in names:
                return value if isinstance(value, yaml.Node) else None
        return None
    if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
        child = node.value[int(part)]
        return child if isinstance(child, yaml.Node) else None
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def experiment_schema() -> dict[str, Any]:
    """The JSON Schema of an experiment file (snake_case names; camelCase also accepted)."""
    return schema_document(
        SCHEMA_ID,
        "Generated from thinktank/eval/experiment.py (render_experiment_schema); do not "
        "edit. Every key may also be written in camelCase (e.g. maxCostUsd).",
        ExperimentSpec.model_json_schema(by_alias=False, mode="validation"),
    )


def render_experiment_schema() -> str:
    """The schema as the text committed in ``schemas/experiment.schema.json``."""
    return render_schema(experiment_schema())
