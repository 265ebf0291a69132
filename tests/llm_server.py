"""A small OpenAI-compatible chat server over any local backend: `vllm serve` for machines without vLLM.

It serves one model with the real transformers backend, micro-batching concurrent requests into
one `generate` call (up to `batch_size`, waiting at most `max_wait_s` for a batch to fill). Tests
use it as the real endpoint of the `openai` backend; `--request-log` appends one JSON line per
answered request so a test can tell which prompts the server actually ran.

    python -m tests.llm_server --model embedded:smollm2 --port 8000   # from the repo root
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hiercaps_gen.llm.base import Generation, GenerationRequest, Generator, Sampling


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    """The subset of the chat-completions body this server honours; other fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = 1
    structured_outputs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def to_request(self, default_max_tokens: int) -> GenerationRequest:
        sampling = Sampling(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed or 0,
        )
        return GenerationRequest(tuple((m.role, m.content) for m in self.messages), sampling)


class MicroBatcher:
    """Collects concurrent requests into batches for one generator, run on a worker thread."""

    def __init__(self, generator: Generator, batch_size: int, max_wait_s: float) -> None:
        self.generator = generator
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[tuple[GenerationRequest, asyncio.Future[Generation]]] = asyncio.Queue()
        self.lock = threading.Lock()

    async def submit(self, request: GenerationRequest) -> Generation:
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        await self.queue.put((request, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.batch_size and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                results = await asyncio.to_thread(self._generate, [request for request, _ in batch])
            except Exception as exc:  # the backend broke: fail this batch, keep serving
                results = [Generation.failed(f"{type(exc).__name__}: {exc}")] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        with self.lock:
            return self.generator.generate(requests)


def create_app(
    generator: Generator, served_model: str, batch_size: int = 16, max_wait_s: float = 0.05,
    default_max_tokens: int = 256, request_log: Path | None = None,
):
    """A FastAPI app answering `/v1/chat/completions`, `/v1/models` and `/health`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    batcher = MicroBatcher(generator, batch_size, max_wait_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="hiercaps-gen LLM server", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": served_model}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_model, "object": "model", "owned_by": "hiercaps-gen"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        if body.model != served_model:
            return error(404, f"model {body.model!r} is not served here (serving {served_model!r})")
        if body.n != 1:
            return error(400, "only n=1 is supported")
        if body.structured_outputs or (body.response_format or {}).get("type", "text") != "text":
            return error(400, "structured outputs are not supported by this server's backend")
        request = body.to_request(default_max_tokens)
        result = await batcher.submit(request)
        if result.error is not None:
            return error(400, result.error)
        if request_log is not None:
            line = {"key": request.key(served_model), "completion_tokens": result.completion_tokens, "time": time.time()}
            with open(request_log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": served_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens},
        }

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2", help="model to load (embedded:<name>, directory, hub id)")
    parser.add_argument("--served-model-name", default=None, help="name clients send (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-wait", type=float, default=0.05, help="seconds a batch waits to fill")
    parser.add_argument("--request-log", type=Path, default=None)
    args = parser.parse_args(argv)

    import uvicorn

    from hiercaps_gen.llm.transformers_backend import TransformersGenerator

    generator = TransformersGenerator(args.model, device=args.device, batch_size=args.batch_size)
    app = create_app(generator, args.served_model_name or args.model, args.batch_size, args.max_wait,
                     request_log=args.request_log)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
