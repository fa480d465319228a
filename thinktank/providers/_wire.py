"""What the three HTTP wire clients share: naming, headers, keys, and error shapes.

``OpenAICompatibleModel``, ``AnthropicModel`` and ``GeminiModel`` differ in their
request and response formats; how they hold their settings, merge headers, keep the
key out of every message, and turn a bad status or body into ``ProviderError`` is the
same, and lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from thinktank.errors import ProviderError
from thinktank.providers._redact import redact_userinfo
from thinktank.providers.http import (
    AsyncClient,
    Response,
    decode_json,
    error_from_response,
    secrets_of,
)

__all__ = ["WireModel"]


class WireModel:
    """Base of the HTTP model clients (one attempt per ``complete`` call)."""

    PROVIDER: ClassVar[str]
    """The wire protocol's name: ``openai``, ``anthropic`` or ``gemini``."""

    def __init__(
        self,
        *,
        name: str,
        model: str,
        http: AsyncClient,
        url: str,
        api_key: str | None,
        key_header: tuple[str, str] | None,
        base_headers: Mapping[str, str],
        headers: Mapping[str, str],
        timeout_s: float,
        input_cost_per_mtok: float | None,
        output_cost_per_mtok: float | None,
    ) -> None:
        self._name = name
        self._model = model
        self._http = http
        self._url = url
        self._timeout_s = timeout_s
        self._input_cost = input_cost_per_mtok
        self._output_cost = output_cost_per_mtok
        base = dict(base_headers)
        if api_key and key_header is not None:
            base[key_header[0]] = key_header[1]
        # The caller's headers win, compared case-insensitively.
        self._headers = {**base, **{k.lower(): v for k, v in headers.items()}}
        self._secrets = secrets_of(api_key, self._headers, url)
        self._key_configured = bool(self._secrets)

    def __repr__(self) -> str:
        url = redact_userinfo(self._url)
        return f"{type(self).__name__}(name={self._name!r}, model={self._model!r}, url={url!r})"

    @property
    def name(self) -> str:
        """The model name sessions use."""
        return self._name

    @property
    def provider(self) -> str:
        """The wire protocol (whoever serves it)."""
        return self.PROVIDER

    def _raise_for_status(self, response: Response, retry_after_s: float | None = None) -> None:
        """Raise the provider's error for a non-2xx response (``retry_after_s``: a hint
        found in the body, used when the headers give none)."""
        if 200 <= response.status_code < 300:
            return
        raise error_from_response(
            provider=self.PROVIDER,
            model=self._name,
            status=response.status_code,
            headers=response.headers,
            body_text=response.text,
            secrets=self._secrets,
            retry_after_s=retry_after_s,
            key_configured=self._key_configured,
        )

    def _decode(self, body: bytes, status: int) -> dict[str, Any]:
        return decode_json(
            body, provider=self.PROVIDER, model=self._name, status=status, secrets=self._secrets
        )

    def _shape_error(self, what: str, partial: str | None = None) -> ProviderError:
        return ProviderError(
            f"{self.PROVIDER} model {self._name!r}: unexpected response: {what}",
            provider=self.PROVIDER,
            model=self._name,
            retryable=False,
            partial=partial,
        )
