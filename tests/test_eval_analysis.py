"""Zero-cost analyses against direct recomputations written plainly here."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.eval_records_factory import call, config, experiment, random_records, sample
from thinktank.consensus.agreement import Answer
from thinktank.consensus.normalize import normalize_answer
from thinktank.consensus.synthesis import synthesize
from thinktank.eval.analysis import (
    StoredAnswers,
    accuracy_vs_calls,
    analyse,
    cascade_orderings,
    drop_model,
    drop_models,
    remerge,
    threshold_sweep,
)


def hand_majority(texts: list[str | None]) -> tuple[str | None, float]:
    """The winning normalised answer by hand: most votes, ties to the first arrival."""
    answered = [t for t in texts if t is not None]
    if not answered:
        return None, 0.0
    forms = [normalize_answer(t) for t in answered]
    counts = Counter(f for f in forms if f)
    if not counts:
        return None, 0.0
    top = max(counts.values())
    winner = next(f for f in forms if counts.get(f) == top)
    return winner, top / len(answered)


# Four items, a panel of three models: (m1, m2, m3) answers in arrival order.
ITEMS = {
    "i1": ("Paris", ["Paris", "paris", "Lyon"]),
    "i2": ("Rome", ["Milan", "Rome", "Milan"]),
    "i3": ("Bern", ["Bern", None, "Zurich"]),  # m2 failed: a 1-1 tie, earliest wins
    "i4": ("Oslo", ["Bergen", "Oslo", "Oslo"]),
}


def trio_records() -> tuple[StoredAnswers, dict[str, list[str | None]]]:
    models = ["m1", "m2", "m3"]
    samples = [
        sample(
            "trio",
            item,
            [target],
            [call(m, t, a) for a, (m, t) in enumerate(zip(models, texts, strict=True))],
        )
        for item, (target, texts) in ITEMS.items()
    ]
    samples += [
        sample("one", item, [target], [call("m1", texts[0], 0)])
        for item, (target, texts) in ITEMS.items()
    ]
    exp = experiment([config("one", ["m1"]), config("trio", models)], baseline="one")
    return StoredAnswers(exp, samples), {k: v[1] for k, v in ITEMS.items()}


def test_remerge_matches_a_majority_vote_by_hand() -> None:
    answers, texts = trio_records()
    results, skipped = remerge(answers)
    right = sum(hand_majority(texts[i])[0] == normalize_answer(ITEMS[i][0]) for i in ITEMS)
    assert right == 3  # i1, i3 (tie to Bern, first), i4; i2 goes to Milan
    by_method = {r.method: r for r in results if r.config_id == "trio"}
    assert set(by_method) == {"majority", "medoid", "weighted_merge"}
    for r in by_method.values():
        assert (r.n, r.correct, r.kind) == (4, right, "derived")
        assert r.accuracy.low <= 0.75 <= r.accuracy.high
    reasons = {(s.config_id, s.analysis) for s in skipped}
    assert ("trio", "remerge:judge") in reasons  # needs a model call
    assert ("trio", "remerge:union") in reasons  # single answers, not lists
    assert ("one", "remerge") in reasons  # one call: nothing to merge


def test_union_is_re_merged_only_for_list_answers_or_a_union_configuration() -> None:
    """A union of single answers concatenates the voters' answers, which a ``contains``
    scorer would credit for any voter being right: it is skipped unless the answers are
    lists or the configuration itself merged by union."""
    texts = ["Paris", "The capital is Lyon.\nOr maybe Paris.", "Lyon"]
    calls = [call(m, t, a) for a, (m, t) in enumerate(zip(["m1", "m2", "m3"], texts, strict=True))]
    for synthesis, derived in (("majority", False), ("union", True)):
        exp = experiment([config("p", ["m1", "m2", "m3"], synthesis=synthesis)])
        results, skipped = remerge(StoredAnswers(exp, [sample("p", "i", ["Paris"], calls)]))
        assert any(r.method == "union" for r in results) is derived
        assert any(s.analysis == "remerge:union" for s in skipped) is not derived


def test_threshold_sweep_matches_coverage_by_hand() -> None:
    answers, texts = trio_records()
    (sweep,) = threshold_sweep(answers)
    merged = {i: hand_majority(texts[i]) for i in ITEMS}
    for point in sweep.points:
        covered = [i for i in ITEMS if merged[i][1] >= point.threshold - 1e-9]
        assert point.answered == len(covered)
        assert point.coverage == len(covered) / 4
        if covered:
            acc = sum(merged[i][0] == normalize_answer(ITEMS[i][0]) for i in covered) / len(covered)
            assert point.accuracy == pytest.approx(acc)
        else:
            assert point.accuracy is None
    thresholds = [p.threshold for p in sweep.points]
    assert 0.5 in thresholds and 2 / 3 in [pytest.approx(t) for t in thresholds]


def test_k_of_n_enumerates_every_subset_at_k1_and_matches_the_full_merge_at_n() -> None:
    answers, _ = trio_records()
    (curve,) = accuracy_vs_calls(answers)
    per_call = []
    for target, ts in ITEMS.values():
        answered = [t for t in ts if t is not None]
        per_call.append(
            sum(normalize_answer(t) == normalize_answer(target) for t in answered) / len(answered)
        )
    k1, k2, k3 = curve.points
    assert k1.accuracy == pytest.approx(sum(per_call) / 4)  # exact: every 1-subset
    assert k1.subsets == 3 + 3 + 2 + 3
    # k=2 by hand: each pair's majority, ties to the earlier arrival.
    pairs = []
    for target, ts in ITEMS.values():
        answered = [t for t in ts if t is not None]
        votes = [
            hand_majority(list(p))[0] == normalize_answer(target)
            for p in itertools.combinations(answered, 2)
        ]
        pairs.append(sum(votes) / len(votes))
    assert k2.accuracy == pytest.approx(sum(pairs) / 4)
    assert k3.accuracy == pytest.approx(0.75)
    assert k3.short_items == 1  # i3 has two answered calls
    # Cost at k: the mean cost of k calls (0.001 each), the short item paying for 2.
    assert k3.cost_per_item == pytest.approx((0.003 * 3 + 0.002) / 4)


def test_dropping_a_model_by_hand_and_a_one_model_panel_is_refused() -> None:
    answers, texts = trio_records()
    dropped = drop_model(answers, "trio", "m1")
    without = {i: hand_majority(ts[1:]) for i, ts in texts.items()}
    right = [without[i][0] == normalize_answer(ITEMS[i][0]) for i in ITEMS]
    assert dropped.accuracy.estimate == sum(right) / 4  # i1, i2 (ties to m2's answer), i4
    full = [True, False, True, True]
    assert dropped.mcnemar.b == sum(f and not r for f, r in zip(full, right, strict=True))
    assert dropped.mcnemar.c == sum(r and not f for f, r in zip(full, right, strict=True))
    assert dropped.delta == pytest.approx(sum(right) / 4 - 0.75)
    with pytest.raises(ValueError, match="panel has one model"):
        drop_model(answers, "one", "m1")
    with pytest.raises(ValueError, match="asks m1, m2, m3"):
        drop_model(answers, "trio", "m9")
    results, skipped = drop_models(answers)
    assert [d.dropped for d in results] == ["m1", "m2", "m3"]
    assert [(s.config_id, s.analysis) for s in skipped] == [("one", "drop_model")]


def hand_cascade(
    texts: dict[str, str | None], order: tuple[str, ...], threshold: float
) -> tuple[str | None, int]:
    """Ask the first two, then one more while fewer than two agree at the threshold.

    The first two arrive in their stored order (m1, m2, m3), the later ones after."""
    order = (*sorted(order[:2]), *order[2:])
    made = 2
    while True:
        asked = [texts[m] for m in order[:made]]
        answered = [t for t in asked if t is not None]
        winner, score = hand_majority(answered)
        agree = sum(normalize_answer(t) == winner for t in answered) if winner else 0
        if made == len(order) or (agree >= 2 and score >= threshold):
            return winner, made
        made += 1


def test_cascade_orderings_match_a_cascade_by_hand() -> None:
    answers, texts = trio_records()
    results, skipped = cascade_orderings(answers)
    assert len(results) == 6  # 3! orderings
    assert [(s.config_id, s.analysis) for s in skipped] == [("one", "cascade")]
    for r in results:
        runs = [
            hand_cascade(dict(zip(["m1", "m2", "m3"], texts[i], strict=True)), r.order, 0.7)
            for i in ITEMS
        ]
        right = sum(
            w == normalize_answer(ITEMS[i][0]) for (w, _), i in zip(runs, ITEMS, strict=True)
        )
        assert r.accuracy.estimate == right / 4, r.order
        assert r.mean_calls == sum(n for _, n in runs) / 4
        assert r.mean_cost == pytest.approx(0.001 * r.mean_calls)


def test_cascade_needs_every_call_stored() -> None:
    exp = experiment([config("q", ["a", "b"], mode="quorum")])
    answers = StoredAnswers(exp, [sample("q", "i", ["x"], [call("a", "x", 0), call("b", "x", 1)])])
    results, skipped = cascade_orderings(answers)
    assert results == [] and "stopped early" in skipped[0].reason


def test_unfinished_samples_count_as_not_answered() -> None:
    exp = experiment([config("p", ["a", "b"])])
    calls = [call("a", "x", 0), call("b", "x", 1)]
    samples = [sample("p", "i1", ["x"], calls), sample("p", "i2", ["x"], calls, status="running")]
    (result, *_), _ = remerge(StoredAnswers(exp, samples))
    assert (result.n, result.correct) == (2, 1)


def test_a_changed_scorer_rescores_the_stored_answers() -> None:
    exp = experiment([config("p", ["a", "b", "c"])], scorer="exact")
    calls = [call("a", "paris", 0), call("b", "paris", 1), call("c", "Paris", 2)]
    (exact, *_), _ = remerge(StoredAnswers(exp, [sample("p", "i", ["Paris"], calls)]))
    exp = experiment([config("p", ["a", "b", "c"])], scorer="normalized")
    (normalized, *_), _ = remerge(StoredAnswers(exp, [sample("p", "i", ["Paris"], calls)]))
    assert (exact.correct, normalized.correct) == (0, 1)


def test_a_scorer_stored_as_a_full_dump_reads_back() -> None:
    from thinktank.eval.scoring import ScorerSpec

    dumped = ScorerSpec(kind="numeric", abs_tol=0.5).model_dump()
    assert dumped["pattern"] is None and dumped["rel_tol"] == 0.0  # every field, defaults too
    exp = experiment([config("p", ["a", "b"])], scorer=dumped)
    calls = [call("a", "41.6", 0), call("b", "41.6", 1)]
    (result, *_), _ = remerge(StoredAnswers(exp, [sample("p", "i", ["42"], calls)]))
    assert result.correct == 1


def test_a_sample_of_an_unknown_configuration_is_refused() -> None:
    exp = experiment([config("p", ["a"])])
    with pytest.raises(ValueError, match="configuration 'zz'"):
        StoredAnswers(exp, [sample("zz", "i", ["x"], [call("a", "x", 0)])])


texts = st.sampled_from(
    ["Paris", "paris", "The answer is Paris.", "Lyon", "lyon.", "", "  ", "Nice", None]
)


@given(
    st.lists(texts, min_size=1, max_size=7),
    st.sampled_from(["majority", "medoid", "weighted_merge"]),
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_the_fast_vote_is_the_engines_merge(answers_texts: list[str | None], method: str) -> None:
    calls = [call(f"m{i}", t, i) for i, t in enumerate(answers_texts)]
    exp = experiment([config("p", [f"m{i}" for i in range(len(calls))])], scorer="exact")
    answers = StoredAnswers(exp, [sample("p", "i", ["Paris"], calls, merge=False)])
    pool = answers.pools["p"][0]
    mine = pool.full(method)
    answered = [c for c in calls if c.text is not None]
    if not answered:
        assert (mine.correct, mine.score) == (False, 0.0)
        return
    merged = synthesize(
        method,
        [Answer(key=c.key, model=c.model, text=c.text or "", arrival=c.arrival) for c in answered],
        0.7,
    )
    assert mine.correct == (merged.content.strip() == "Paris")
    assert mine.score == pytest.approx(merged.score)


@given(st.integers(0, 10_000), st.integers(1, 3), st.floats(0.1, 0.9))
@settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_properties_on_random_experiments(seed: int, repeats: int, accuracy: float) -> None:
    exp, samples = random_records(
        seed, items=12, repeats=repeats, accuracy=accuracy, unfinished_rate=0.05
    )
    answers = StoredAnswers(exp, samples)
    result = analyse(answers, rounds=200)
    full = {(r.config_id, r.method): r for r in result.remerge}
    for r in result.remerge:
        assert 0.0 <= r.accuracy.low <= r.accuracy.estimate <= r.accuracy.high <= 1.0
    for curve in result.calls:
        for p in curve.points:
            assert 0.0 <= p.low <= p.accuracy <= p.high <= 1.0
        # k = n merges every answered call: the full re-merge.
        assert curve.points[-1].accuracy == pytest.approx(
            full[(curve.config_id, "majority")].accuracy.estimate
        )
    for d in result.dropped:
        assert d.delta == pytest.approx(d.accuracy.estimate - d.full.estimate)
    for c in result.cascades:
        # A cascade never asks more than the panel, nor pays more than asking it all.
        pools = answers.pools[c.config_id]
        assert 0 <= c.mean_calls <= max(len(p.calls) for p in pools)
        assert c.mean_cost <= sum(sum(x.cost for x in p.calls) for p in pools) / len(pools) + 1e-12
    # Seeded: the same records give the same figures.
    assert analyse(StoredAnswers(exp, samples), rounds=200) == result


def test_derived_votes_join_equivalent_wordings_as_the_engine_does() -> None:
    """A sentence stating the answer and the bare answer are one vote, in the derived
    re-merge, its agreement score and the k-of-n curve, as in the engine's merge."""
    texts = ["Lyon", "The capital of France is Paris.", "Paris"]
    calls = [call(m, t, a) for a, (m, t) in enumerate(zip(["m1", "m2", "m3"], texts, strict=True))]
    exp = experiment([config("p", ["m1", "m2", "m3"])])
    answers = StoredAnswers(exp, [sample("p", "i", ["Paris"], calls)])
    engine = synthesize(
        "majority", [Answer(key=c.key, model=c.model, text=c.text or "", arrival=c.arrival)
                     for c in calls], 0.5
    )  # fmt: skip
    assert engine.content == "Paris" and engine.score == pytest.approx(2 / 3)
    (majority,) = [r for r in remerge(answers)[0] if r.method == "majority"]
    assert (majority.correct, majority.mean_score) == (1, pytest.approx(2 / 3))
    (curve,) = accuracy_vs_calls(answers, draws=50, rounds=20)
    # k = 2 subsets: {Lyon, sentence} and {Lyon, Paris} tie to the earlier (Lyon),
    # {sentence, Paris} agree: 1 of 3 right.
    assert [round(p.accuracy, 4) for p in curve.points][1] == round(1 / 3, 4)


def test_derived_votes_follow_the_experiments_declared_answer_format() -> None:
    """With ``answer_format: short`` the engine compares every answer for equivalence,
    long ones too; the derived merge does the same, and without the format it does not."""
    import dataclasses

    from thinktank.consensus.formats import AnswerFormat
    from thinktank.consensus.options import MergeOptions

    texts = [
        "Lyon",
        "After thinking about it for quite a while, I am sure the capital is Paris.",
        "Paris",
    ]
    calls = [call(m, t, a) for a, (m, t) in enumerate(zip(["m1", "m2", "m3"], texts, strict=True))]
    votes = [Answer(key=c.key, model=c.model, text=c.text or "", arrival=c.arrival) for c in calls]
    declared = MergeOptions(answer_format=AnswerFormat("short"))
    engine = synthesize("majority", votes, 0.5, declared)
    assert engine.content == "Paris" and engine.score == pytest.approx(2 / 3)
    plain = experiment([config("p", ["m1", "m2", "m3"])])
    with_format = dataclasses.replace(plain, spec={**plain.spec, "answer_format": "short"})
    for exp, right, score in ((with_format, 1, 2 / 3), (plain, 0, 1 / 3)):
        answers = StoredAnswers(exp, [sample("p", "i", ["Paris"], calls)])
        (majority,) = [r for r in remerge(answers)[0] if r.method == "majority"]
        assert (majority.correct, majority.mean_score) == (right, pytest.approx(score))


def test_derived_votes_read_the_stored_question_as_the_engine_does() -> None:
    """The scored step's stored prompt is the question answer equivalence reads: with it
    "Paris is the capital of France." states Paris and joins "Paris" (as the engine's
    merge of that step did); without a stored prompt it is a sentence about Paris."""
    import dataclasses

    texts = ["Lyon", "Paris is the capital of France.", "Paris"]
    calls = [call(m, t, a) for a, (m, t) in enumerate(zip(["m1", "m2", "m3"], texts, strict=True))]
    exp = experiment([config("p", ["m1", "m2", "m3"])])
    asked = dataclasses.replace(
        sample("p", "i", ["Paris"], calls), prompt="What is the capital of France?"
    )
    for record, right, score in (
        (asked, 1, 2 / 3),
        (dataclasses.replace(asked, prompt=""), 0, 1 / 3),
    ):
        answers = StoredAnswers(exp, [record])
        (majority,) = [r for r in remerge(answers)[0] if r.method == "majority"]
        assert (majority.correct, majority.mean_score) == (right, pytest.approx(score))
