"""Automatic model selection: pick models for a domain from the registry.

The spec's ``modelSelection.automatic`` (sessions) and ``agiModelSelection`` with
``domainHints`` (``execute_parallel``) choose models here, before any call, from the
models that are usable right now (declared, key present, local model installed):

1. a model scores one point per tag that matches a hint (case-insensitive);
2. models over the cost cap (USD per million tokens, input + output) are left out, and
   with a cap set, so are models whose price is unknown;
3. picks go greedily by score, then to a provider not picked yet (diversity: three
   answers from three vendors disagree more honestly than three from one), then the
   cheaper price, then the name, so the choice is deterministic.

Every pick carries its reason, which is stored with the step and shown by ``show``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from thinktank.errors import SpecError, SpecErrors
from thinktank.providers.registry import ModelInfo, ModelRegistry
from thinktank.session.spec import SessionSpec

__all__ = ["Selection", "apply_selection", "select_models"]


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen models and why each was chosen."""

    models: tuple[str, ...]
    """Chosen model names, best first."""
    reasons: dict[str, str]
    """Model name -> why it was chosen."""


def _price(info: ModelInfo) -> float | None:
    if info.input_cost_per_mtok is None or info.output_cost_per_mtok is None:
        return None
    return info.input_cost_per_mtok + info.output_cost_per_mtok


def select_models(
    registry: ModelRegistry,
    *,
    hints: Sequence[str],
    count: int = 3,
    max_cost_per_mtok: float | None = None,
) -> Selection:
    """Choose up to ``count`` usable models for ``hints``.

    Raises:
        ValueError: no usable model fits (none declared, none with a key, all over the
            cap); the message says which.
    """
    wanted = {h.strip().casefold() for h in hints if h.strip()}
    candidates: list[tuple[ModelInfo, set[str], float | None]] = []
    skipped: list[str] = []
    for info in registry.describe():
        if registry.check(info.name) is not None:
            skipped.append(f"{info.name} (unusable)")
            continue
        price = _price(info)
        if max_cost_per_mtok is not None and (price is None or price > max_cost_per_mtok):
            skipped.append(
                f"{info.name} (over the cost cap)"
                if price is not None
                else f"{info.name} (no price)"
            )
            continue
        matched = {t.casefold() for t in info.tags} & wanted
        candidates.append((info, matched, price))
    if not candidates:
        detail = ", ".join(skipped) or "no models are configured"
        raise ValueError(f"automatic model selection found no usable model: {detail}")

    chosen: list[str] = []
    reasons: dict[str, str] = {}
    providers: set[str] = set()
    pool = list(candidates)
    while pool and len(chosen) < count:
        pool.sort(
            key=lambda c: (
                -len(c[1]),
                c[0].provider in providers,
                c[2] is None,
                c[2] or 0.0,
                c[0].name,
            )
        )
        info, matched, price = pool.pop(0)
        chosen.append(info.name)
        fresh = info.provider not in providers
        providers.add(info.provider)
        parts = [
            f"tags {', '.join(sorted(matched))} match the hints"
            if matched
            else "no tag matches the hints",
            f"provider {info.provider}" + (" (new)" if fresh else " (repeated)"),
            "price unknown" if price is None else f"${price:g}/Mtok",
        ]
        reasons[info.name] = "; ".join(parts)
    return Selection(models=tuple(chosen), reasons=reasons)


def apply_selection(
    spec: SessionSpec, registry: ModelRegistry
) -> tuple[SessionSpec, dict[str, str]]:
    """The spec with ``modelSelection.automatic`` resolved into preferred models.

    Returns:
        The spec to run (unchanged when selection is off) and the reasons by model.

    Raises:
        SpecErrors: no usable model fits the selection.
    """
    selection = spec.model_selection
    if not selection.automatic:
        return spec, {}
    candidates = registry
    if selection.preferred_models:
        # Explicit preferences narrow the pool automatic selection chooses from.
        candidates = registry.restricted_to(selection.preferred_models)
    try:
        chosen = select_models(
            candidates,
            hints=selection.hints(),
            count=selection.count or spec.parallel_execution.max_concurrent_models,
            max_cost_per_mtok=selection.max_cost_per_mtok,
        )
    except ValueError as exc:
        raise SpecErrors([SpecError(str(exc), field="model_selection.automatic")]) from None
    update = {"preferred_models": list(chosen.models), "automatic": False}
    resolved = spec.model_copy(update={"model_selection": selection.model_copy(update=update)})
    return resolved, chosen.reasons
