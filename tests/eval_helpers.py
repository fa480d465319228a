"""Scoring functions that tests reference by name (``tests.eval_helpers:fn``), as a user
names their own in an experiment file's ``callable`` scorer."""

from __future__ import annotations

NOT_CALLABLE = 3
"""A module attribute that is not a function."""


def first_letter(answer: str, targets: tuple[str, ...]) -> bool:
    """Correct when the answer starts with the first target's first letter (case-insensitive)."""
    return bool(answer) and answer[:1].casefold() == targets[0][:1].casefold()


def overlap(answer: str, targets: tuple[str, ...]) -> float:
    """Partial credit: the share of the first target's words that the answer contains."""
    wanted = targets[0].split()
    words = set(answer.split())
    return sum(word in words for word in wanted) / len(wanted)


def out_of_range(answer: str, targets: tuple[str, ...]) -> float:
    """Not a score: 2 is outside [0, 1]."""
    return 2.0


def not_a_number(answer: str, targets: tuple[str, ...]) -> object:
    """Not a score: a string."""
    return "yes"


def nan(answer: str, targets: tuple[str, ...]) -> float:
    """Not a score: NaN."""
    return float("nan")


def broken(answer: str, targets: tuple[str, ...]) -> bool:
    """A user bug, with a two-line message."""
    raise ValueError("bad scorer\nsecond line")
