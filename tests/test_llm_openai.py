"""The openai backend against a real OpenAI-compatible server on loopback (this project's server
running the real transformers backend on a tiny model): same answers as the local backend,
bounded concurrency, back-off that honours Retry-After, no retry storm, 4xx final per request."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn

from hiercaps_gen.llm.base import BackendUnavailable, GenerationRequest, Sampling
from hiercaps_gen.llm.openai_backend import OpenAIGenerator, chat_url
from tests.llm_server import create_app
from hiercaps_gen.llm.transformers_backend import TransformersGenerator
from hiercaps_gen.llm.prompts import load_prompt

from .test_llm_helpers import build_tiny_model, free_port, sample_captions

MODEL = "tiny-test-model"


class Faults:
    """ASGI wrapper in front of the real app: answers the first `fail` requests with `status`
    and records how many requests were in flight when each one arrived."""

    def __init__(self, app) -> None:
        self.app, self.fail, self.status, self.retry_after = app, 0, 503, None
        self.in_flight, self.arrivals, self.first_failure = 0, [], None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        self.arrivals.append((time.monotonic(), self.in_flight))
        self.in_flight += 1
        try:
            if self.fail > 0:
                self.fail -= 1
                self.first_failure = self.first_failure or time.monotonic()
                headers = [(b"content-type", b"application/json")]
                if self.retry_after is not None:
                    headers.append((b"retry-after", str(self.retry_after).encode()))
                await send({"type": "http.response.start", "status": self.status, "headers": headers})
                await send({"type": "http.response.body", "body": b'{"error": {"message": "injected"}}'})
                return
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def reset(self, fail: int = 0, status: int = 503, retry_after: float | None = None) -> None:
        self.fail, self.status, self.retry_after = fail, status, retry_after
        self.arrivals, self.first_failure = [], None


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return TransformersGenerator(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")), device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def server(local):
    faults = Faults(create_app(local, MODEL, batch_size=4, max_wait_s=0.02))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(faults, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.05)
    yield faults, f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


def requests(n: int) -> list[GenerationRequest]:
    template = load_prompt("abstract_v1")
    return [GenerationRequest(template.messages(c), Sampling(max_new_tokens=6)) for c in sample_captions(n)]


def client(url: str, **kwargs) -> OpenAIGenerator:
    options = {"concurrency": 4, "timeout_s": 30.0, "max_retries": 3, "backoff_s": 0.1, **kwargs}
    return OpenAIGenerator([url] if isinstance(url, str) else url, MODEL, **options)


def test_chat_url():
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("https://h/proxy/v1") == "https://h/proxy/v1/chat/completions"


def test_answers_match_the_local_backend(server, local):
    faults, url = server
    faults.reset()
    reqs = requests(6)
    reported = []
    remote = client(url).generate(reqs, on_result=lambda i, g: reported.append(i))
    assert [g.text for g in remote] == [g.text for g in local.generate(reqs)]
    assert sorted(reported) == list(range(6))
    assert all(g.completion_tokens > 0 and g.prompt_tokens > 0 and g.error is None for g in remote)


def test_concurrency_is_bounded(server):
    faults, url = server
    faults.reset()
    client(url, concurrency=2).generate(requests(8))
    assert max(in_flight for _, in_flight in faults.arrivals) <= 1  # at most 2 at once: one sees the other


def test_429_with_retry_after_is_retried_after_waiting(server):
    faults, url = server
    faults.reset(fail=3, status=429, retry_after=0.3)
    gen = client(url, concurrency=1)
    start = time.monotonic()
    out = gen.generate(requests(2))
    assert all(g.error is None for g in out)
    assert gen.sent == 2 + 3
    assert time.monotonic() - start >= 0.6  # two rounds of waiting at least Retry-After (waits overlap)


def test_outage_gives_up_with_a_trickle_not_a_storm(server):
    faults, url = server
    faults.reset(fail=10_000, status=503)
    gen = client(url, concurrency=8, max_retries=2)
    with pytest.raises(BackendUnavailable, match="gave up after 3 tries"):
        gen.generate(requests(8))
    assert gen.sent <= 8 * 3
    later = [in_flight for t, in_flight in faults.arrivals if t > faults.first_failure + 0.03]
    assert later and max(later) == 0  # after the first failure: one probe at a time
    faults.reset()


def test_client_errors_are_final_per_request(server):
    faults, url = server
    faults.reset()
    good = client(url)
    wrong = OpenAIGenerator([url], "no-such-model", concurrency=2, max_retries=3, backoff_s=0.1)
    out = wrong.generate(requests(2))
    assert all(g.error and "HTTP 404" in g.error for g in out) and wrong.sent == 2
    assert all(g.error is None for g in good.generate(requests(2)))


def test_several_endpoints_share_the_load_and_cover_a_dead_one(server):
    faults, url = server
    faults.reset()
    dead = f"http://127.0.0.1:{free_port()}"
    gen = client([dead, url], concurrency=2, max_retries=2, backoff_s=0.05)
    out = gen.generate(requests(4))
    assert all(g.error is None for g in out)
    assert gen.sent == 4 + 2  # the two requests that started on the dead endpoint moved on once


def test_generate_works_inside_a_running_event_loop(server):
    faults, url = server
    faults.reset()

    async def call():
        return client(url).generate(requests(1))

    assert asyncio.run(call())[0].error is None
