"""Shared pieces of the LLM / abstract tests (no tests here): a tiny real model built from config,
an ingest stage written from given captions, and a real OpenAI-compatible server process.

The tiny model is a 2-layer Llama with random weights and a BPE tokenizer trained on the sample
captions, carrying SmolLM2's chat template: it runs through exactly the code the embedded model
does, in milliseconds, and its (meaningless) text exercises batching, caching and accounting.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from hiercaps_gen.llm.prompts import load_prompt
from hiercaps_gen.hierarchy import CAPTION
from hiercaps_gen.stages.base import ShardOutput, shard_name, stage_dir, write_shard, write_stage_manifest

from .conftest import REPO

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def sample_captions(n: int | None = None) -> list[str]:
    data = json.loads((REPO / "data/coco_val2014_sample/captions.json").read_text(encoding="utf-8"))
    captions = [a["caption"].strip() for a in data["annotations"]]
    return captions if n is None else captions[:n]


def build_tiny_model(directory: Path, max_positions: int = 1024) -> Path:
    """A random 2-layer Llama + trained BPE tokenizer, saved like any model directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (directory / "config.json").exists():
        return directory
    template = load_prompt("abstract_v1")
    # The first 305 shipped captions (the original sample): the tiny model must not change when more ship.
    corpus = sample_captions(305) + [template.system] + [c for c, _ in template.examples] + ["Level 1: Level 2: Level 3:"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.5,  # large random weights: the text depends strongly on the prompt
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_ingest(run_dir: Path, captions: list[str], shards: int = 1) -> list[dict]:
    """An ingest stage holding exactly `captions` (no normalisation), as the runner expects it."""
    rows = [
        {"id": f"test:{i}", "source": "test", "source_id": str(i), "image_id": str(i // 5),
         "image_url": f"http://example.invalid/{i // 5}.jpg", "caption": caption}
        for i, caption in enumerate(captions)
    ]
    directory = stage_dir(run_dir, "ingest")
    records = []
    for s in range(shards):
        part = rows[s::shards]
        records.append(write_shard(directory, "ingest", shard_name(s), CAPTION, ShardOutput(part, []),
                                   in_rows=len(part), fingerprint="test", input_sha256=None, seconds=0.0))
    write_stage_manifest(directory, "ingest", "test", {}, records)
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m tests.llm_server` in a child process, on a fixed loopback port."""

    def __init__(self, model: str, port: int, request_log: Path, batch_size: int = 8, timeout_s: float = 120) -> None:
        self.model, self.port, self.request_log = model, port, request_log
        self.batch_size, self.timeout_s = batch_size, timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.llm_server", "--model", self.model, "--port", str(self.port),
             "--device", "cpu", "--batch-size", str(self.batch_size), "--request-log", str(self.request_log)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError("server did not become ready")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def served(self) -> list[dict]:
        if not self.request_log.exists():
            return []
        return [json.loads(line) for line in self.request_log.read_text().splitlines() if line.strip()]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
