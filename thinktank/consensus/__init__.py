"""Consensus over several models' answers: normalisation, agreement and merge methods.

The package owns comparing and merging answers, as pure functions: :mod:`.normalize`
decides when two responses give the same answer, :mod:`.agreement` groups responses
into clusters and scores their agreement, and :mod:`.synthesis` holds the merge methods.
"""

from __future__ import annotations

from thinktank.consensus.agreement import Answer, Cluster, agreement_score, cluster_answers
from thinktank.consensus.normalize import extract_answer, normalize_answer
from thinktank.consensus.synthesis import (
    SYNTHESIS_METHODS,
    Synthesis,
    SynthesisMethod,
    majority,
    synthesize,
)

__all__ = [
    "SYNTHESIS_METHODS",
    "Answer",
    "Cluster",
    "Synthesis",
    "SynthesisMethod",
    "agreement_score",
    "cluster_answers",
    "extract_answer",
    "majority",
    "normalize_answer",
    "synthesize",
]
