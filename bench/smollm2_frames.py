"""How well SmolLM2-135M-Instruct answers in each prompt frame (quality, not speed).

Run from the repo root: ``python bench/smollm2_frames.py`` (all 62 items of the shipped
``capitals`` dataset) or ``--items 10``. Needs ``pip install -e '.[local,local-smollm2]'``.

Each item asks "What is the capital of X?" greedily (48 tokens at most) through the
real client (:class:`thinktank.providers.local.LocalLlamaModel`), in four frames:
ChatML with no system turn, with the chat template's default system turn, with a short
"Answer briefly." system turn, and the few-shot ``Q:``/``A:`` frame used for Gemma. An
answer counts when it contains one of the item's targets (case-insensitive). The items
are shuffled with seed 0, so ``--items 10`` is the same ten every run.

What it showed (2 cores), and why ``smollm2`` uses ChatML without a system turn:
first 10 / all 62 correct: ChatML no system 6 / 44 (~370 ms an item), default system
8 / 42, "Answer briefly." 5 / 33, few-shot 4 / 29 (~70 ms an item: one line, and it
mostly answers with the country's name).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path: put the repo root there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402

from thinktank.eval.dataset import load_dataset, shipped  # noqa: E402
from thinktank.providers.base import ModelRequest  # noqa: E402
from thinktank.providers.local import LocalLlamaModel, LocalModelConfig  # noqa: E402

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
FRAMES: dict[str, tuple[LocalModelConfig, str | None]] = {
    "chatml, no system turn": (LocalModelConfig(packaged="smollm2-135m"), None),
    "chatml, default system turn": (LocalModelConfig(packaged="smollm2-135m"), DEFAULT_SYSTEM),
    "chatml, 'Answer briefly.'": (LocalModelConfig(packaged="smollm2-135m"), "Answer briefly."),
    "few-shot Q:/A:": (LocalModelConfig(packaged="smollm2-135m", chatml=False), None),
}


async def main(items: int) -> None:
    dataset = load_dataset(shipped("capitals"))
    random.Random(0).shuffle(dataset)
    chosen = dataset[:items]
    print(f"{len(chosen)} capitals items, greedy, 48 tokens")
    for label, (config, system) in FRAMES.items():
        client = LocalLlamaModel("smollm2", config)
        correct = 0
        start = time.perf_counter()
        for item in chosen:
            question = f"What is the capital of {item.inputs['country']}?"
            answer = await client.complete(
                ModelRequest(prompt=question, system=system, max_tokens=48)
            )
            correct += any(t.lower() in answer.content.lower() for t in item.targets)
        per_item = (time.perf_counter() - start) * 1000 / max(1, len(chosen))
        print(f"{label:30} {correct:3} / {len(chosen)}   {per_item:6.0f} ms/item")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=62)
    anyio.run(main, parser.parse_args().items, backend="asyncio")
