"""How a step's execution ends, as the scheduler reads it: the value ``execute(step_id)``
returns.

None: the step completed; an error string: it failed; :class:`Abstained`: it completed
without an answer (``on_low_consensus: abstain`` below the threshold), so the steps that
depend on it have nothing to work on. This module is the one vocabulary the scheduler and
the step executor share, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NO_CONSENSUS", "Abstained", "StepEnd", "below_threshold"]

NO_CONSENSUS = "no_consensus"
"""The outcome of a step that abstained, on its consensus row and its result."""


@dataclass(frozen=True, slots=True)
class Abstained:
    """A step completed without an answer: its dependants have nothing to work on."""

    reason: str
    """Why (the agreement that fell below the threshold)."""


StepEnd = str | Abstained | None
"""What running a step returns: None (completed), the error, or :class:`Abstained`."""


def below_threshold(score: float, threshold: float) -> str:
    """Why a step found no consensus, in words."""
    return f"consensus {score:.2f} is below the threshold {threshold:g}"
