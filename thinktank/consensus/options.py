"""How answers are compared and weighed: the options every merge and agreement call takes.

One frozen value, :class:`MergeOptions`, carries the choices a step makes about
consensus (which agreement measure, the similarity threshold, model weights, how ties
break, the embedder), so clustering, quorum checks and every merge method read them
from one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from thinktank.consensus.formats import AnswerFormat
from thinktank.consensus.similarity import Embedder

__all__ = [
    "ITEM_THRESHOLD",
    "SHORT_ANSWER_WORDS",
    "AgreementMode",
    "MergeOptions",
    "ResolvedAgreement",
    "TieBreak",
]

AgreementMode = Literal["auto", "exact", "equivalent", "lexical", "semantic"]
"""How two answers are judged to agree:

- ``exact``: equal :func:`~thinktank.consensus.normalize.normalize_answer` (short answers);
- ``equivalent``: :func:`~thinktank.consensus.equivalence.equivalence_reason` finds a
  reason (short answers worded differently: "Paris" and "The capital of France is
  Paris."), never joining answers that contradict;
- ``lexical``: :func:`~thinktank.consensus.similarity.lexical_similarity` at or above
  the threshold (long answers, no model);
- ``semantic``: embedding cosine at or above the threshold (needs an embedder);
- ``auto``: ``equivalent`` when every extracted answer is short or the answer format
  is declared (and not ``free``), else ``lexical``.
"""

ResolvedAgreement = Literal["exact", "equivalent", "lexical", "semantic"]
"""The agreement measure actually used once ``auto`` has been decided."""

TieBreak = Literal["weight_then_earliest", "earliest", "model_order"]
"""Which of two equally supported answers wins (clusters of equal total weight, medoids
of equal centrality, list items found by as many models). Never the alphabet:

- ``weight_then_earliest`` (default): the side with the heaviest single response (the
  most trusted model), then the one that arrived first;
- ``earliest``: the side whose first response arrived first;
- ``model_order``: the side with the model listed first in
  :attr:`MergeOptions.model_order`, then the one that arrived first.

Arrival is :attr:`Answer.arrival <thinktank.consensus.agreement.Answer.arrival>`;
responses that arrived together fall to the smaller key. Empty or unparseable answers
never win, whatever the rule.
"""

ITEM_THRESHOLD = 0.6
"""``union`` merges two list items at or above this similarity when the options set no
``similarity_threshold`` (not calibrated: list items are phrases, not the answers the
long-answer cuts were measured on)."""

SHORT_ANSWER_WORDS = 8
"""``auto`` compares by equivalence when every normalised extracted answer has at most this
many words (a name, a number, a short phrase), and by lexical similarity otherwise."""


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """How a set of answers is compared and weighed.

    Raises:
        ValueError: An unknown agreement mode or tie-break rule, a threshold outside
            [0, 1], a weight that is not a finite number > 0, or ``semantic`` without an
            embedder.
    """

    agreement: AgreementMode = "auto"
    """The agreement measure (see :data:`AgreementMode`)."""
    similarity_threshold: float | None = None
    """Two long answers (``lexical``/``semantic``) agree at or above this similarity;
    ``union`` also merges list items at or above it. None (the default): the calibrated
    cut of the measure for whole answers
    (:data:`~thinktank.consensus.long_equivalence.LEXICAL_CUT`,
    :data:`~thinktank.consensus.long_equivalence.SEMANTIC_CUT`) and
    :data:`ITEM_THRESHOLD` for list items."""
    weights: Mapping[str, float] = field(default_factory=dict, hash=False)
    """Model name -> weight (models not listed weigh 1.0); multiplies ``Answer.weight``.
    Stored as a read-only copy (left out of the hash, which stays usable)."""
    embedder: Embedder | None = None
    """The embedding model; required for ``semantic``, unused otherwise."""
    tie_break: TieBreak = "weight_then_earliest"
    """How ties between equally supported answers break (see :data:`TieBreak`)."""
    model_order: Sequence[str] = ()
    """The models in the step's order, for ``tie_break="model_order"`` (models not
    listed come after those listed). Stored as a tuple."""
    answer_format: AnswerFormat | None = None
    """The step's declared answer format (None: undeclared); extraction and answer
    equivalence follow it."""
    question: str = ""
    """The prompt the answers reply to (the step's rendered prompt; "" when unknown).
    Answer equivalence reads it to tell an answer ("Paris is the capital of France.")
    from a sentence about one. It is the prompt the consensus cache key already holds,
    so stored consensuses keep their keys."""

    def __post_init__(self) -> None:
        """Validate the fields and freeze ``weights`` and ``model_order``."""
        if self.agreement not in get_args(AgreementMode):
            known = ", ".join(get_args(AgreementMode))
            raise ValueError(f"unknown agreement mode {self.agreement!r}; known: {known}")
        threshold = self.similarity_threshold
        if threshold is not None and not (
            isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0
        ):
            raise ValueError(f"similarity_threshold must be in [0, 1], got {threshold!r}")
        for model, weight in self.weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"model {model!r} has weight {weight!r}; weights must be finite and > 0"
                )
        if self.tie_break not in get_args(TieBreak):
            known = ", ".join(get_args(TieBreak))
            raise ValueError(f"unknown tie_break {self.tie_break!r}; known: {known}")
        if self.agreement == "semantic" and self.embedder is None:
            raise ValueError("agreement 'semantic' needs an embedder (MergeOptions.embedder)")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "model_order", tuple(self.model_order))

    def model_weight(self, model: str) -> float:
        """The weight of ``model``: its entry in :attr:`weights`, else 1.0."""
        return float(self.weights.get(model, 1.0))

    def tie_rank(self, model: str, weight: float, arrival: int, key: str) -> tuple[float, int, str]:
        """The sort key that breaks ties between responses under :attr:`tie_break`:
        the smaller key wins.

        Args:
            model: The response's model.
            weight: Its effective weight (answer weight times model weight).
            arrival: Its completion rank (0 = first to arrive).
            key: Its unique key (the last resort, so the order is total).
        """
        if self.tie_break == "weight_then_earliest":
            return (-weight, arrival, key)
        if self.tie_break == "earliest":
            return (0.0, arrival, key)
        order = self.model_order
        position = order.index(model) if model in order else len(order)
        return (float(position), arrival, key)
