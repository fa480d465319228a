"""The request body of ``POST /v1/chat/completions``: OpenAI's, plus ``parallel``.

This module owns what the endpoint accepts (pydantic models, so FastAPI validates the
body, answers a bad field with 400 naming it, and documents it in ``/docs``). OpenAI's
fields are read as their clients send them; fields thinktank has no use for (``n``,
``top_p``, ``user``, ...) are accepted and ignored, as the openai SDK sends some by
default. ``parallel`` is the spec's ``ParallelExecutionConfig`` (what the openai SDK's
``extra_body={"parallel": {...}}`` sends), with two additions for HTTP:
``response_shape`` and the short name ``threshold`` for ``consensus_threshold``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from thinktank.providers.base import MAX_SEED
from thinktank.session.spec import ParallelExecutionConfig

__all__ = ["ChatMessage", "ChatParallel", "ChatRequest", "StreamOptions", "TextPart"]


class TextPart(BaseModel):
    """One part of a message's content given as a list (only text is understood)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    """Only ``text``: images and audio cannot be passed to every model thinktank asks."""
    text: str
    """The text."""


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    """Who speaks: ``system`` and ``developer`` messages become the system prompt."""
    content: str | list[TextPart] | None = None
    """The text, or a list of text parts (joined by newlines)."""

    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    """Send a last chunk with the usage of every call (and no choices)."""


class ChatParallel(ParallelExecutionConfig):
    """The ``parallel`` extension: how many models answer and how their answers merge."""

    response_shape: Literal["openai", "spec"] = "openai"
    """``openai`` (default): a ``chat.completion`` with a ``parallel`` block, which
    typed OpenAI clients accept; ``spec``: the spec's ``parallel.completion`` object
    (``responses``, ``synthesis``, ``usage.total_cost_usd``), for clients written
    against the spec. Streaming always sends OpenAI chunks."""
    progress_events: bool = False
    """With ``stream``: also send each model's answer as it arrives, as a named SSE
    event ``thinktank.model``. Off by default: the openai SDK (3.x) does not skip
    named events but yields their data as if it were a chunk."""


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    """The model to ask (a registry name); with ``parallel``, the default of
    ``parallel.models`` and the ``model`` the answer reports."""
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    """The conversation; it must end with a user message."""
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    """Sampling temperature of every call (overrides ``parallel.temperature``)."""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    """Output limit of every call (overrides ``parallel.max_tokens``)."""
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    """OpenAI's newer name for ``max_tokens`` (used when ``max_tokens`` is not given)."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    """Base seed of the calls (overrides ``parallel.seed``)."""
    stream: bool = False
    """Answer as server-sent events (``chat.completion.chunk``)."""
    stream_options: StreamOptions | None = None
    """With ``stream``: ``include_usage`` sends a final usage chunk."""
    parallel: ChatParallel | None = None
    """Ask several models and merge their answers (absent: ``model`` alone)."""

    @model_validator(mode="before")
    @classmethod
    def _parallel_defaults(cls, data: Any) -> Any:
        # ``parallel`` without ``models`` asks ``model``; ``threshold`` is the name the
        # issue and most clients use for ``consensus_threshold``.
        if not isinstance(data, dict) or not isinstance(data.get("parallel"), dict):
            return data
        parallel = dict(data["parallel"])
        if "models" not in parallel and isinstance(data.get("model"), str):
            parallel["models"] = [data["model"]]
        if "threshold" in parallel:
            parallel.setdefault("consensus_threshold", parallel.pop("threshold"))
        return {**data, "parallel": parallel}
