"""Any OpenAI-compatible chat endpoint (`vllm serve` on one or many nodes, or the test server `tests/llm_server.py`).

Requests run concurrently under a bound; each is retried on connection errors, timeouts, 408, 429
and 5xx with capped exponential back-off and jitter (honouring Retry-After), moving to the next
endpoint on each retry. While any request is failing, the client sends one request at a time
(a half-open circuit), so an outage sees a trickle of probes, never a retry storm. A request that
exhausts its retries stops the call: results already finished are reported first, then
`BackendUnavailable` is raised and a rerun resumes from the cache. A 4xx answer is final for that
request and comes back as a failed `Generation`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from hiercaps_gen.config import LLMConfig
from hiercaps_gen.llm.base import BackendUnavailable, Generation, GenerationRequest, Generator, OnResult
from hiercaps_gen.llm.identity import model_identity

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


def chat_url(base_url: str) -> str:
    """`…/v1/chat/completions` for a base URL given with or without its `/v1`."""
    base = base_url.rstrip("/")
    if urlsplit(base).path in ("", "/"):
        base += "/v1"
    return base + "/chat/completions"


def chat_payload(model: str, request: GenerationRequest) -> dict[str, Any]:
    """The JSON body for one request (vLLM's `structured_outputs` extension for a regex)."""
    s = request.sampling
    payload: dict[str, Any] = {
        "model": model, "messages": request.chat(), "max_tokens": s.max_new_tokens,
        "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed, "n": 1,
    }
    if request.regex is not None:
        payload["structured_outputs"] = {"regex": request.regex}
    return payload


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


class OpenAIGenerator(Generator):
    """Chat completions over HTTP with bounded concurrency and bounded, backed-off retries."""

    def __init__(
        self, base_urls: Sequence[str], model: str, revision: str | None = None, api_key: str | None = None,
        concurrency: int = 16, timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0,
        backoff_max_s: float = 30.0, seed: int = 0,
    ) -> None:
        if not base_urls:
            raise ValueError("the openai backend needs at least one base URL (abstract.llm.base_urls / --base-url)")
        self.urls = [chat_url(u) for u in base_urls]
        self.model = model
        self.model_id = model_identity(model, revision)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency = concurrency
        self.timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._jitter = random.Random(seed)
        self.sent = 0  # HTTP requests made, retries included

    @classmethod
    def from_config(cls, llm: LLMConfig) -> OpenAIGenerator:
        return cls(
            llm.base_urls, llm.model, revision=llm.revision, api_key=os.environ.get(llm.api_key_env),
            concurrency=llm.concurrency, timeout_s=llm.timeout_s, max_retries=llm.max_retries,
        )

    def generate(self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None) -> list[Generation]:
        call = self._generate(list(requests), on_result)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(call)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code: own loop, own thread
            return pool.submit(asyncio.run, call).result()

    async def _generate(self, requests: list[GenerationRequest], on_result: OnResult | None) -> list[Generation]:
        state = _CallState(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, headers=self.headers) as client:

            async def one(index: int) -> Generation:
                generation = await self._complete(client, state, index, requests[index])
                if on_result is not None:
                    on_result(index, generation)
                return generation

            results = await asyncio.gather(*(one(i) for i in range(len(requests))), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    async def _complete(self, client: httpx.AsyncClient, state: _CallState, index: int, request: GenerationRequest) -> Generation:
        payload = chat_payload(self.model, request)
        problem = ""
        for attempt in range(self.max_retries + 1):
            url = self.urls[(index + attempt) % len(self.urls)]
            if state.broken is not None:
                raise BackendUnavailable(state.broken)
            retry_after = None
            async with state.slots:
                async with state.probe if state.failing else contextlib.nullcontext():
                    if state.broken is not None:
                        raise BackendUnavailable(state.broken)
                    self.sent += 1
                    try:
                        response = await client.post(url, json=payload)
                    except httpx.TransportError as exc:
                        problem = f"{url}: {type(exc).__name__}: {exc}"
                    else:
                        if response.status_code == 200:
                            state.failing = 0
                            return _parse(response)
                        if response.status_code not in RETRYABLE:
                            state.failing = 0  # the server answered: it is up
                            return Generation.failed(f"HTTP {response.status_code}: {response.text[:500]}")
                        problem = f"{url}: HTTP {response.status_code}: {response.text[:200]}"
                        retry_after = _retry_after(response)
            state.failing += 1
            if attempt < self.max_retries:
                delay = min(self.backoff_max_s, self.backoff_s * 2**attempt) * self._jitter.uniform(0.5, 1.0)
                await asyncio.sleep(max(delay, retry_after or 0.0))
        state.broken = f"gave up after {self.max_retries + 1} tries: {problem}"
        raise BackendUnavailable(state.broken)


class _CallState:
    """What the requests of one `generate` call share: slots, the probe lock, failure state."""

    def __init__(self, concurrency: int) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.probe = asyncio.Lock()
        self.failing = 0
        self.broken: str | None = None


def _parse(response: httpx.Response) -> Generation:
    try:
        body = response.json()
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Generation(
            text=choice["message"]["content"] or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason") or "stop",
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Generation.failed(f"malformed response: {exc}: {response.text[:300]}")
