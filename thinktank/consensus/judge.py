"""The judge's prompt: a synthesizer model reads every response and writes one answer.

This module owns what the judge is shown, as pure functions; calling the model and
falling back when it fails belong to the caller. The responses are anonymised: each
is shown only under a label ("Response A", "Response B", ...) and the order is fixed by
a hash of the response text, so neither model names, the order the calls were made or
finished, nor the alphabet of the texts decide which response the judge reads first.
The judge therefore cannot favour a brand, and its position bias falls on no model in
particular. The texts themselves are shown as written: a response that names its own
model is not redacted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from thinktank.consensus.agreement import Answer

__all__ = ["JUDGE_PROMPT", "RESPONSE_TEMPLATE", "judge_labels", "judge_order", "judge_prompt"]

JUDGE_PROMPT = """\
Several assistants answered the same question independently. Their responses follow,
labelled in an arbitrary order: the labels and the order say nothing about where a
response came from or how good it is.

<question>
{question}
</question>

{responses}

Write the single best answer to the question, using the {count} responses above as
material:
- Keep what the responses agree on, unless it is wrong.
- Where they disagree, decide on the merits which is right; do not go by how many
  responses say something.
- If the question asks for a list (for example review findings), include every distinct
  item that holds up, once, and leave out items that are wrong.
- Correct errors you find; add nothing that no response supports unless the answer
  needs it to be correct.
- Follow the format the question asks for.
- Do not mention the responses, their labels, or that this answer was merged.

Reply with the merged answer only."""
"""The judge's prompt. Placeholders (filled by :func:`judge_prompt` with
:meth:`str.format`, so braces inside the values are safe): ``{question}`` the original
prompt, ``{responses}`` the labelled responses (:data:`RESPONSE_TEMPLATE` each, separated
by a blank line), ``{count}`` how many responses there are."""

RESPONSE_TEMPLATE = '<response label="{label}">\n{text}\n</response>'
"""How one response is shown: ``{label}`` is its label, ``{text}`` its stripped text
(``(empty response)`` when blank)."""

_EMPTY = "(empty response)"


def judge_order(answers: Sequence[Answer]) -> list[Answer]:
    """The order the judge sees the responses in.

    Sorted by the SHA-256 of the text (UTF-8), then by key: a fixed order that does not
    depend on the input order, the model names or the call ids, except that identical
    texts follow their keys.

    Raises:
        ValueError: Two answers share a key.
    """
    keys = [answer.key for answer in answers]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"duplicate answer key {duplicate!r}")
    return sorted(answers, key=lambda answer: (_digest(answer.text), answer.key))


def judge_labels(answers: Sequence[Answer]) -> dict[str, str]:
    """The label of each response: answer key -> ``"Response A"``, ``"Response B"``, ...

    Labels follow :func:`judge_order`; after ``Z`` come ``AA``, ``AB``, ... The dict is
    in label order.

    Raises:
        ValueError: Two answers share a key.
    """
    return {
        answer.key: f"Response {_letters(index)}"
        for index, answer in enumerate(judge_order(answers))
    }


def judge_prompt(question: str, answers: Sequence[Answer]) -> str:
    """The prompt asking a judge model to merge ``answers`` into one answer to ``question``.

    Args:
        question: The prompt the answering models were given.
        answers: Their responses (at least one), in any order.

    Returns:
        :data:`JUDGE_PROMPT` filled in; the same for every order of ``answers``.

    Raises:
        ValueError: No answers, or two answers share a key.
    """
    if not answers:
        raise ValueError("no answers to judge")
    labels = judge_labels(answers)
    by_key = {answer.key: answer for answer in answers}
    blocks = [
        RESPONSE_TEMPLATE.format(label=label, text=by_key[key].text.strip() or _EMPTY)
        for key, label in labels.items()
    ]
    return JUDGE_PROMPT.format(
        question=question.strip(), responses="\n\n".join(blocks), count=len(blocks)
    )


def _digest(text: str) -> str:
    """Hex SHA-256 of ``text`` (lone surrogates kept, so every str hashes)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _letters(index: int) -> str:
    """Spreadsheet-style column letters: 0 -> A, 25 -> Z, 26 -> AA, 701 -> ZZ, 702 -> AAA."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters
