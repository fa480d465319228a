"""How answers are compared and weighed: the options every merge and agreement call takes.

One frozen value, :class:`MergeOptions`, carries the choices a step makes about
consensus (which agreement measure, the similarity threshold, model weights, the
embedder), so clustering, quorum checks and every merge method read them from one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from thinktank.consensus.similarity import Embedder

__all__ = ["SHORT_ANSWER_WORDS", "AgreementMode", "MergeOptions", "ResolvedAgreement"]

AgreementMode = Literal["auto", "exact", "lexical", "semantic"]
"""How two answers are judged to agree:

- ``exact``: equal :func:`~thinktank.consensus.normalize.normalize_answer` (short answers);
- ``lexical``: :func:`~thinktank.consensus.similarity.lexical_similarity` at or above
  the threshold (long answers, no model);
- ``semantic``: embedding cosine at or above the threshold (needs an embedder);
- ``auto``: ``exact`` when every extracted answer is short, else ``lexical``.
"""

ResolvedAgreement = Literal["exact", "lexical", "semantic"]
"""The agreement measure actually used once ``auto`` has been decided."""

SHORT_ANSWER_WORDS = 8
"""``auto`` compares exactly when every normalised extracted answer has at most this
many words (a name, a number, a short phrase), and by lexical similarity otherwise."""


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """How a set of answers is compared and weighed.

    Raises:
        ValueError: An unknown agreement mode, a threshold outside [0, 1], a weight
            that is not a finite number > 0, or ``semantic`` without an embedder.
    """

    agreement: AgreementMode = "auto"
    """The agreement measure (see :data:`AgreementMode`)."""
    similarity_threshold: float = 0.6
    """Two long answers (``lexical``/``semantic``) agree at or above this similarity;
    ``union`` also merges list items at or above it."""
    weights: Mapping[str, float] = field(default_factory=dict, hash=False)
    """Model name -> weight (models not listed weigh 1.0); multiplies ``Answer.weight``.
    Stored as a read-only copy (left out of the hash, which stays usable)."""
    embedder: Embedder | None = None
    """The embedding model; required for ``semantic``, unused otherwise."""

    def __post_init__(self) -> None:
        """Validate the fields and freeze ``weights``."""
        if self.agreement not in get_args(AgreementMode):
            known = ", ".join(get_args(AgreementMode))
            raise ValueError(f"unknown agreement mode {self.agreement!r}; known: {known}")
        threshold = self.similarity_threshold
        if not (isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0):
            raise ValueError(f"similarity_threshold must be in [0, 1], got {threshold!r}")
        for model, weight in self.weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"model {model!r} has weight {weight!r}; weights must be finite and > 0"
                )
        if self.agreement == "semantic" and self.embedder is None:
            raise ValueError("agreement 'semantic' needs an embedder (MergeOptions.embedder)")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))

    def model_weight(self, model: str) -> float:
        """The weight of ``model``: its entry in :attr:`weights`, else 1.0."""
        return float(self.weights.get(model, 1.0))
