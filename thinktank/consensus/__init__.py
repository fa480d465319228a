"""Consensus over several models' answers: normalisation, agreement and merge methods.

The package owns comparing and merging answers, as pure functions: :mod:`.normalize`
reduces a response to a comparable answer, :mod:`.readers` reads its number or choice
letter, :mod:`.formats` its answer under a declared format, :mod:`.equivalence`
decides (and says why) when two short responses give the same answer in other words,
:mod:`.similarity` how alike two
long ones are, :mod:`.options` carries a step's choices (measure, threshold, weights,
embedder), :mod:`.agreement` groups responses into clusters and scores their agreement,
:mod:`.items` splits list answers into items, :mod:`.synthesis` holds the merge methods
and :mod:`.judge` builds the prompt for a model that merges. Importing it never imports
torch: the embedding model loads on first use.
"""

from __future__ import annotations

from thinktank.consensus.agreement import (
    Answer,
    Cluster,
    agreement,
    agreement_score,
    cluster_answers,
    largest_cluster_size,
    quorum_reached,
    resolve_agreement,
)
from thinktank.consensus.items import MergedItem, extract_items
from thinktank.consensus.judge import JUDGE_PROMPT, judge_labels, judge_prompt
from thinktank.consensus.normalize import extract_answer, normalize_answer
from thinktank.consensus.options import SHORT_ANSWER_WORDS, AgreementMode, MergeOptions, TieBreak
from thinktank.consensus.similarity import (
    Embedder,
    SentenceTransformerEmbedder,
    lexical_similarity,
    normalize_text,
    semantic_similarity,
)
from thinktank.consensus.synthesis import (
    NO_ANSWER,
    SYNTHESIS_METHODS,
    Synthesis,
    SynthesisMethod,
    majority,
    medoid,
    synthesize,
    union,
    weighted_merge,
)

__all__ = [
    "JUDGE_PROMPT",
    "NO_ANSWER",
    "SHORT_ANSWER_WORDS",
    "SYNTHESIS_METHODS",
    "AgreementMode",
    "Answer",
    "Cluster",
    "Embedder",
    "MergeOptions",
    "MergedItem",
    "SentenceTransformerEmbedder",
    "Synthesis",
    "SynthesisMethod",
    "TieBreak",
    "agreement",
    "agreement_score",
    "cluster_answers",
    "extract_answer",
    "extract_items",
    "judge_labels",
    "judge_prompt",
    "largest_cluster_size",
    "lexical_similarity",
    "majority",
    "medoid",
    "normalize_answer",
    "normalize_text",
    "quorum_reached",
    "resolve_agreement",
    "semantic_similarity",
    "synthesize",
    "union",
    "weighted_merge",
]
