"""Simulated fleets, question sets and the ideal (zero-overhead) outcome of each mode.

Used by ``bench/parallel.py``. Everything is seeded. A simulated model's latency,
fault and answer for a prompt are a pure function of (seed, model, prompt, attempt,
retry) (``SimulatedModel._rng``), so :func:`predict` replays ``SimulatedModel.complete``
draw for draw without sleeping, and :func:`ideal` replays each multi-model mode on those
draws in virtual time with the engine's own agreement rule
(``thinktank.consensus.agreement``, as ``thinktank.engine.parallel._agrees`` calls it):

* ``all``: the slowest response (failures included: they fail after their latency);
* ``race``: the fastest success (the slowest response when nothing succeeds);
* ``quorum``: the success at which, in arrival order, at least ``quorum`` answers agree
  and the agreement score reaches the threshold; the slowest response when that never
  happens;
* ``cascade``: rounds in price order (the ``first`` cheapest together, then one model a
  round), each as long as its slowest call, until two or more answers agree at the
  threshold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thinktank.consensus import Answer, MergeOptions, quorum_reached
from thinktank.engine.parallel import Mode, order_by_price
from thinktank.providers.base import ModelRequest
from thinktank.providers.simulated import SimulatedModel, SimulatedModelConfig

__all__ = [
    "DECOYS",
    "STEP_ID",
    "Draw",
    "Fleet",
    "Ideal",
    "ModelDef",
    "Question",
    "ideal",
    "latency_fleets",
    "predict",
    "question_fleet",
    "questions",
    "zero_latency_fleet",
]

STEP_ID = "ask"
"""The step id of the one-step sessions (``execute_parallel`` uses it too)."""
GOLD_PATTERN = r"\[gold:(\d+)\]"
"""The scripted reply: a right model answers the number in the prompt's gold tag."""
DECOYS = ["7", "12", "42"]
"""The wrong answers every model picks from: a small set, so wrong answers collide."""
_CONTEXT = (
    "Read the passage and answer with one number only. The survey counted households "
    "in each district over three seasons; some districts were merged half-way and "
    "their earlier figures were carried over, others were split and counted twice. "
)


@dataclass(frozen=True, slots=True)
class ModelDef:
    """One simulated model of a fleet."""

    name: str
    median_ms: float
    sigma: float
    accuracy: float
    failure_rate: float
    input_per_mtok: float
    output_per_mtok: float

    @property
    def price(self) -> float:
        """USD per million tokens, input + output (cascade's order)."""
        return self.input_per_mtok + self.output_per_mtok

    def config(self, seed: int) -> dict[str, Any]:
        """The session-file ``models:`` entry."""
        latency: dict[str, Any] = (
            {"kind": "lognormal", "median_ms": self.median_ms, "sigma": self.sigma}
            if self.median_ms > 0
            else {"kind": "fixed", "ms": 0.0}
        )
        return {
            "provider": "simulated",
            "seed": seed,
            "latency": latency,
            "replies": [{"pattern": GOLD_PATTERN, "reply": r"\1"}],
            "default_reply": "0",
            "accuracy": self.accuracy,
            "wrong_replies": list(DECOYS),
            "failure_rate": self.failure_rate,
            "input_cost_per_mtok": self.input_per_mtok,
            "output_cost_per_mtok": self.output_per_mtok,
        }

    def client(self, seed: int) -> SimulatedModel:
        """The same model as a Python client (identical draws for the same prompt)."""
        return SimulatedModel(self.name, SimulatedModelConfig.model_validate(self.config(seed)))


@dataclass(frozen=True, slots=True)
class Fleet:
    """Models asked together, listed cheapest first."""

    name: str
    models: tuple[ModelDef, ...]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def prices(self) -> dict[str, float | None]:
        return {m.name: m.price for m in self.models}

    def describe(self) -> str:
        return ", ".join(f"{m.median_ms:g}/{m.sigma:g}" for m in self.models)


def latency_fleets() -> list[Fleet]:
    """Part 1: five models, medians 50-200 ms, cheapest (and fastest) first.

    ``tight``: every sigma 0.25; ``mixed``: sigmas 0.2 to 1.0 (heavy tails).
    Accuracies 0.65-0.9 with shared decoys so that quorum sometimes needs a fourth
    or fifth answer; 3 % of calls fail, so race sometimes needs the second fastest.
    """
    medians = (50.0, 80.0, 110.0, 150.0, 200.0)
    accuracy = (0.65, 0.72, 0.8, 0.85, 0.9)
    prices = ((0.1, 0.4), (0.25, 1.0), (0.5, 2.0), (1.0, 4.0), (3.0, 12.0))

    def fleet(name: str, sigmas: Sequence[float]) -> Fleet:
        return Fleet(
            name,
            tuple(
                ModelDef(f"m{i}", med, sig, acc, 0.03, pin, pout)
                for i, (med, sig, acc, (pin, pout)) in enumerate(
                    zip(medians, sigmas, accuracy, prices, strict=True)
                )
            ),
        )

    return [fleet("tight", (0.25,) * 5), fleet("mixed", (0.2, 0.4, 0.6, 0.8, 1.0))]


def zero_latency_fleet() -> Fleet:
    """For the overhead profile: the part 1 fleet with zero latency (one checkpoint)."""
    base = latency_fleets()[0]
    return Fleet(
        "zero",
        tuple(
            ModelDef(
                m.name, 0.0, 0.0, m.accuracy, m.failure_rate, m.input_per_mtok, m.output_per_mtok
            )
            for m in base.models
        ),
    )


def question_fleet() -> Fleet:
    """Part 2: cheap models are fast and weak, dear ones slow and strong (USD / Mtok)."""
    return Fleet(
        "qa",
        (
            ModelDef("nano", 60.0, 0.35, 0.55, 0.01, 0.05, 0.2),
            ModelDef("mini", 90.0, 0.4, 0.62, 0.01, 0.15, 0.6),
            ModelDef("mid", 140.0, 0.45, 0.72, 0.01, 1.0, 4.0),
            ModelDef("large", 220.0, 0.5, 0.82, 0.01, 3.0, 15.0),
            ModelDef("xl", 320.0, 0.55, 0.9, 0.01, 10.0, 40.0),
        ),
    )


@dataclass(frozen=True, slots=True)
class Question:
    """A prompt and its gold answer."""

    prompt: str
    gold: str


def questions(seed: int, n: int, *, tag: str) -> list[Question]:
    """``n`` distinct questions; the gold answer is a number in 100-999 (never a decoy)."""
    rng = random.Random(f"{seed}:{tag}")
    out = []
    for i in range(n):
        gold = str(rng.randrange(100, 1000))
        prompt = f"[{tag} {seed} #{i}] {_CONTEXT * 3}How many households? [gold:{gold}]"
        out.append(Question(prompt, gold))
    return out


@dataclass(frozen=True, slots=True)
class Draw:
    """What one simulated model does with one prompt."""

    model: str
    latency_ms: float
    ok: bool
    content: str | None


def predict(client: SimulatedModel, prompt: str) -> Draw:
    """``SimulatedModel.complete`` for the step's first attempt, replayed without sleeping.

    Mirrors its order of draws: latency, fault, then (when it answers) accuracy and the
    wrong reply. ``bench/parallel.py`` checks every answered call against this.
    """
    cfg = client.config
    rng = client._rng(ModelRequest(prompt=prompt, step_id=STEP_ID, attempt=1))
    latency_ms = cfg.latency.draw_ms(rng)
    fault = rng.random()
    if fault < cfg.timeout_rate:
        raise ValueError("the replay does not model hanging calls")
    if fault < cfg.timeout_rate + cfg.failure_rate:
        return Draw(client.name, latency_ms, False, None)
    content = client.gold_reply(prompt)
    if rng.random() >= cfg.accuracy:
        wrong = cfg.wrong_replies or [f"not {content}"]
        content = wrong[rng.randrange(len(wrong))]
    return Draw(client.name, latency_ms, True, content)


@dataclass(frozen=True, slots=True)
class Ideal:
    """A mode's outcome with zero overhead, in virtual time."""

    ms: float
    """When the mode can return: the deciding response's arrival."""
    finished: frozenset[str]
    """Models whose calls end (answer or fail) by then; the rest are cancelled."""
    rounds: int
    """Cascade: rounds used; 1 otherwise."""
    answered: tuple[Draw, ...]
    """The answers the merge sees."""
    stop_after: str | None
    """race/quorum: the model whose answer stops the step (None: everyone finished)."""


def _agrees(answered: Sequence[Draw], need: int, threshold: float, options: MergeOptions) -> bool:
    # thinktank.engine.parallel._agrees on the same answers (keys only need to be unique;
    # ``answered`` is in arrival order).
    answers = [
        Answer(key=d.model, model=d.model, text=d.content or "", arrival=i)
        for i, d in enumerate(answered)
    ]
    return quorum_reached(answers, min_models=need, threshold=threshold, options=options)


def ideal(
    mode: Mode,
    draws: Sequence[Draw],
    *,
    prices: dict[str, float | None],
    threshold: float,
    min_models: int | None = None,
    options: MergeOptions | None = None,
) -> Ideal:
    """The zero-overhead outcome of ``mode`` on ``draws`` (given in the step's order)."""
    options = options or MergeOptions()
    everyone = frozenset(d.model for d in draws)
    slowest = max((d.latency_ms for d in draws), default=0.0)
    if mode == "cascade":
        by_name = {d.model: d for d in draws}
        ordered = order_by_price([d.model for d in draws], prices)
        first = min(len(ordered), min_models if min_models is not None else 2)
        rounds = [ordered[:first]] + [[m] for m in ordered[first:]]
        clock = 0.0
        done: list[Draw] = []
        used = 0
        for batch in rounds:
            used += 1
            clock += max(by_name[m].latency_ms for m in batch)
            done += [by_name[m] for m in batch]
            answered = [d for d in done if d.ok]
            if len(answered) >= 2 and _agrees(answered, 2, threshold, options):
                break
        return Ideal(
            clock,
            frozenset(d.model for d in done),
            used,
            tuple(d for d in done if d.ok),
            None,
        )
    arrivals = sorted(draws, key=lambda d: d.latency_ms)  # stable: ties in step order
    quorum = min_models if min_models is not None else max(1, math.ceil(len(draws) / 2))
    seen: list[Draw] = []
    for d in arrivals:
        seen.append(d)
        if mode == "all" or not d.ok:
            continue
        answered = [x for x in seen if x.ok]
        if mode == "race" or (mode == "quorum" and _agrees(answered, quorum, threshold, options)):
            return Ideal(
                d.latency_ms, frozenset(x.model for x in seen), 1, tuple(answered), d.model
            )
    return Ideal(slowest, everyone, 1, tuple(d for d in draws if d.ok), None)
