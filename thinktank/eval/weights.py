"""Model weights from evidence: per-model reliability fitted on a stored experiment.

This module owns ``thinktank eval weights``: it estimates each base model's
reliability from the calls an experiment stored (every answered call, scored with the
experiment's scorer), turns it into the weight of the optimal weighted majority
(Nitzan & Paroush 1982; Grofman, Owen & Feld 1983: a voter right with probability p,
independent of the others, weighs log(p / (1 - p))), checks on held-out items whether
the weights help, and writes them in the form a session step's ``weights:`` and an
experiment configuration's ``weights:`` take.

* p is Laplace-smoothed, (correct + 1) / (answered + 2), so a model with few calls is
  pulled towards chance and no weight is infinite.
* A weight must be > 0 (``MergeOptions``): a model no better than chance (p <= 0.5,
  log-odds <= 0) gets :data:`WEIGHT_FLOOR`, a near-mute vote. The optimal rule would
  give a worse-than-chance model a negative weight (vote against it); a merge cannot.
* The log-odds rule is derived for two alternatives. With K possible answers and a
  wrong voter's answer spread evenly over the K - 1 wrong ones, the optimal weight is
  log((K - 1) p / (1 - p)) (Ben-Yashar & Paroush 2001): a voter right 49% of the time
  among ten answers is far better than chance. ``alternatives`` is K; ``"auto"``
  estimates K - 1 from the stored answers as the inverse of how often two wrong answers
  to one item coincide (Laplace-smoothed), which is 1 / (K - 1) under that model.
* Per-domain weights, when the dataset's items have a ``domain`` input field: the same
  fit within each domain (a step that knows its domain takes that table).
* The file also lists the models in descending reliability (``models``): a cascade asks
  the cheapest model first and keeps the step's order among equal prices, so with equal
  prices that list, as the step's ``models:``, asks the most reliable model first.

The held-out check splits the items in two with a seeded shuffle, fits on one part and,
on the other, re-merges each multi-model configuration's stored answers with equal
weights and with the fitted ones (no model call,
:func:`thinktank.eval.analysis.weighted_remerge`), with Wilson intervals and the exact
McNemar test on the pairs.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from thinktank.errors import UsageError
from thinktank.eval.analysis import DERIVED, Kind, StoredAnswers, weighted_remerge
from thinktank.eval.stats import Interval, McNemar, mcnemar, wilson

__all__ = [
    "WEIGHT_FLOOR",
    "WEIGHT_SUFFIXES",
    "FittedWeights",
    "HeldOut",
    "Reliability",
    "check_weights_path",
    "estimate_alternatives",
    "fit_weights",
    "held_out",
    "reliability",
    "split_items",
    "weights_document",
    "write_weights",
]

WEIGHT_FLOOR = 0.01
"""The weight of a model no better than chance: weights must be > 0."""
WEIGHT_SUFFIXES = (".toml", ".yaml", ".yml", ".json")
"""The files ``write_weights`` writes, chosen by suffix."""
DOMAIN_FIELD = "domain"
"""The item input field that names an item's domain."""


@dataclass(frozen=True)
class Reliability:
    """One base model's fitted reliability.

    Attributes:
        model: The base model (samples ``m#k`` count as ``m``).
        answered: Its answered calls fitted on.
        correct: Of them, the ones the scorer accepts.
        p: (correct + 1) / (answered + 2), the Laplace-smoothed accuracy.
        weight: max(:data:`WEIGHT_FLOOR`, log((K - 1) p / (1 - p))) for K alternatives.
    """

    model: str
    answered: int
    correct: int
    p: float
    weight: float


def reliability(model: str, correct: int, answered: int, alternatives: float = 2) -> Reliability:
    """The smoothed accuracy and weight of ``correct`` of ``answered`` calls among
    ``alternatives`` possible answers (2: the log-odds rule).

    Raises:
        ValueError: fewer than 2 alternatives.
    """
    if not alternatives >= 2:
        raise ValueError(f"a vote needs at least 2 alternatives, not {alternatives}")
    p = (correct + 1) / (answered + 2)
    weight = math.log((alternatives - 1) * p / (1 - p))
    return Reliability(model, answered, correct, p, max(WEIGHT_FLOOR, weight))


def _ranked(counts: Mapping[str, list[int]], alternatives: float) -> tuple[Reliability, ...]:
    """Reliabilities, most reliable first (ties by name)."""
    fitted = [reliability(m, right, n, alternatives) for m, (right, n) in counts.items()]
    return tuple(sorted(fitted, key=lambda r: (-r.weight, -r.p, r.model)))


@dataclass(frozen=True)
class FittedWeights:
    """Weights fitted on some items of an experiment.

    Attributes:
        models: Every base model, most reliable first.
        domains: The same per domain (empty without domains).
        items: The item ids fitted on.
    """

    models: tuple[Reliability, ...]
    domains: Mapping[str, tuple[Reliability, ...]] = field(default_factory=dict)
    items: tuple[str, ...] = ()
    alternatives: float = 2
    """K, the number of possible answers the weights assume (given or estimated)."""

    def weights(self, domain: str | None = None) -> dict[str, float]:
        """Base model -> weight, overall or for ``domain`` (overall when it has none)."""
        table = self.domains.get(domain, self.models) if domain is not None else self.models
        return {r.model: r.weight for r in table}


def fit_weights(
    answers: StoredAnswers,
    items: Collection[str] | None = None,
    *,
    configs: Collection[str] | None = None,
    domains: Mapping[str, str] | None = None,
    alternatives: float | Literal["auto"] = 2,
) -> FittedWeights:
    """Fit each base model's reliability on the answered calls of finished samples.

    Args:
        answers: The experiment's prepared records.
        items: Fit on these items only (default all).
        configs: Fit on these configurations' calls only (default all).
        domains: Item id -> domain, for per-domain weights.
        alternatives: K, the number of possible answers (2: the log-odds rule), or
            ``"auto"`` to estimate it from the fitted calls (:func:`estimate_alternatives`).

    A call stored under two configurations of the same content is counted once.

    Raises:
        ValueError: fewer than 2 alternatives.
    """
    overall: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_domain: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    seen: set[str] = set()
    fitted: set[str] = set()
    wrong: dict[str, list[str]] = defaultdict(list)
    for cid, pools in answers.pools.items():
        if configs is not None and cid not in configs:
            continue
        for pool in pools:
            item = pool.sample.item_id
            if not pool.finished or (items is not None and item not in items):
                continue
            fitted.add(item)
            wrong[item] += [pool.calls[i].form for i in pool.answered if not pool.calls[i].correct]
            domain = domains.get(item) if domains is not None else None
            for call in (pool.calls[i] for i in pool.answered):
                if call.key in seen:
                    continue
                seen.add(call.key)
                tables = [overall] if domain is None else [overall, by_domain[domain]]
                for table in tables:
                    table[call.base][0] += call.correct
                    table[call.base][1] += 1
    k = estimate_alternatives(wrong.values()) if alternatives == "auto" else alternatives
    return FittedWeights(
        models=_ranked(overall, k),
        domains={d: _ranked(t, k) for d, t in sorted(by_domain.items())},
        items=tuple(sorted(fitted)),
        alternatives=k,
    )


def estimate_alternatives(wrong_answers: Iterable[Sequence[str]]) -> float:
    """K estimated from the wrong answers of each item (their cluster forms): if a wrong
    answer falls evenly on K - 1 alternatives, two wrong answers to one item coincide
    with probability 1 / (K - 1). Over every pair of wrong answers to one item,
    1 / (K - 1) = (coinciding + 1) / (pairs + 2) (Laplace-smoothed, so no pair gives
    K = 3 and every pair coinciding stays above 2)."""
    pairs = same = 0
    for forms in wrong_answers:
        counts = Counter(forms)
        n = len(forms)
        pairs += n * (n - 1) // 2
        same += sum(c * (c - 1) // 2 for c in counts.values())
    return 1 + (pairs + 2) / (same + 1)


def split_items(item_ids: Iterable[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(fit, held out): the distinct items shuffled with ``random.Random(seed)``, the
    first ``round(n * holdout)`` held out; each part sorted.

    Raises:
        UsageError: ``holdout`` not strictly between 0 and 1, or a part left empty.
    """
    if not 0 < holdout < 1:
        raise UsageError(f"--holdout must be between 0 and 1 (exclusive), not {holdout}")
    ids = sorted(set(item_ids))
    random.Random(seed).shuffle(ids)
    k = round(len(ids) * holdout)
    if k == 0 or k == len(ids):
        raise UsageError(
            f"--holdout {holdout} of {len(ids)} items leaves nothing to "
            + ("hold out" if k == 0 else "fit on")
        )
    return sorted(ids[k:]), sorted(ids[:k])


@dataclass(frozen=True)
class HeldOut:
    """One configuration's held-out items re-merged with equal and fitted weights.

    ``mcnemar.b``: samples right with equal weights and wrong with fitted ones;
    ``mcnemar.c``: the other way round.
    """

    config_id: str
    n: int
    equal: Interval
    weighted: Interval
    mcnemar: McNemar
    kind: Kind = DERIVED


def held_out(
    answers: StoredAnswers,
    fitted: FittedWeights,
    items: Collection[str],
    *,
    configs: Collection[str] | None = None,
    domains: Mapping[str, str] | None = None,
) -> list[HeldOut]:
    """Every configuration of two or more base models, re-merged on ``items``."""
    out: list[HeldOut] = []
    for cid in answers.pools:
        if (configs is not None and cid not in configs) or len(answers.panel(cid)) < 2:
            continue

        def weights_of(item: str) -> Mapping[str, float]:
            return fitted.weights(domains.get(item) if domains is not None else None)

        equal, weighted = weighted_remerge(answers, cid, weights_of, items)
        if not equal:
            continue
        b = sum(1 for e, w in zip(equal, weighted, strict=True) if e and not w)
        c = sum(1 for e, w in zip(equal, weighted, strict=True) if w and not e)
        n = len(equal)
        out.append(HeldOut(cid, n, wilson(sum(equal), n), wilson(sum(weighted), n), mcnemar(b, c)))
    return out


def _table(models: Sequence[Reliability]) -> dict[str, Any]:
    return {
        "weights": {r.model: round(r.weight, 6) for r in models},
        "models": [r.model for r in models],
    }


def weights_document(fitted: FittedWeights, experiment_id: str) -> dict[str, Any]:
    """What ``write_weights`` writes: ``weights`` (a step's or a configuration's
    ``weights:`` as is), ``models`` (most reliable first: a step's ``models:`` order),
    per-domain tables under ``domains``, and where they came from under ``fitted``."""
    doc: dict[str, Any] = _table(fitted.models)
    if fitted.domains:
        doc["domains"] = {d: _table(t) for d, t in fitted.domains.items()}
    doc["fitted"] = {
        "experiment": experiment_id,
        "items": len(fitted.items),
        "rule": "log((K-1)p/(1-p)), p = (correct+1)/(answered+2), floor 0.01",
        "alternatives": round(fitted.alternatives, 6),
        "reliability": {
            r.model: {"answered": r.answered, "correct": r.correct, "p": round(r.p, 6)}
            for r in fitted.models
        },
    }
    return doc


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string escapes as JSON does
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _toml(doc: Mapping[str, Any], prefix: str = "") -> list[str]:
    """A TOML document of scalars, lists and nested tables (what the weights file holds);
    keys are quoted, since model names may hold ``/``, ``.`` or ``#``."""
    lines = [
        f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)
    ]
    for key, value in doc.items():
        if isinstance(value, dict):
            name = f"{prefix}{json.dumps(key)}"
            lines += ["", f"[{name}]", *_toml(value, name + ".")]
    return lines


def check_weights_path(path: Path) -> None:
    """Refuse a file the writer cannot write, before any work.

    Raises:
        UsageError: the suffix is not one of :data:`WEIGHT_SUFFIXES`.
    """
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        found = repr(path.suffix) if path.suffix else "no suffix"
        raise UsageError(f"{path}: write weights to a .toml, .yaml or .json file, not {found}")


def write_weights(doc: Mapping[str, Any], path: Path) -> Path:
    """Write ``doc`` as TOML, YAML or JSON, by the file's suffix.

    Raises:
        UsageError: an unknown suffix.
        OSError: the file cannot be written.
    """
    check_weights_path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(doc, indent=2) + "\n"
    elif suffix == ".toml":
        text = "\n".join(_toml(doc)).lstrip("\n") + "\n"
    else:
        import yaml

        text = yaml.safe_dump(dict(doc), sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path
