"""An LLM server that stalls, 500s, drops connections or sends malformed JSON, behind a real
fault-injecting proxy in front of a real OpenAI-compatible server: bounded retries, then a clear
error (the shard stays undone and a rerun resumes) or counted rejects — never a hang, never a loss."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hiercaps_gen.stages.abstract import AbstractStage
from hiercaps_gen.config import RunConfig
from hiercaps_gen.llm.base import BackendUnavailable

from .conftest import REPO
from .test_llm_helpers import ServerProcess, build_tiny_model, free_port, sample_captions, write_ingest

CAPTIONS = 6


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    directory = tmp_path_factory.mktemp("upstream")
    model = build_tiny_model(directory / "tiny")
    with ServerProcess(str(model), free_port(), directory / "served.jsonl", batch_size=8) as server:
        yield server


class Proxy:
    def __init__(self, tmp_path: Path, upstream: str, script: str, then: str) -> None:
        self.port, self.log = free_port(), tmp_path / f"proxy-{script}-{then}.jsonl"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_proxy", "--port", str(self.port), "--upstream", upstream,
             "--script", script, "--then", then, "--log", str(self.log)], cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("proxy did not start")

    def faults(self) -> list[str]:
        return [json.loads(line)["fault"] for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _config(proxy: Proxy, model: str, timeout_s: float) -> RunConfig:
    settings = {"backend": "openai", "model": model, "base_urls": [f"http://127.0.0.1:{proxy.port}/v1"],
                "concurrency": 3, "max_retries": 2, "timeout_s": timeout_s}
    return RunConfig().with_overrides({**{f"abstract.llm.{k}": v for k, v in settings.items()},
                                       "abstract.max_attempts": 1,
                                       "abstract.prompt": "abstract_v1"})  # v2's prompt overflows the tiny model


def _run(tmp_path, upstream, script: str, then: str, timeout_s: float = 60.0):
    write_ingest(tmp_path, sample_captions(CAPTIONS), shards=1)
    proxy = Proxy(tmp_path, upstream.url.removesuffix("/v1"), script, then)
    try:
        start = time.monotonic()
        try:
            result = AbstractStage(_config(proxy, upstream.model, timeout_s), tmp_path).run()
        except BackendUnavailable as exc:
            result = exc
        return result, time.monotonic() - start, proxy.faults()
    finally:
        proxy.stop()


@pytest.mark.parametrize("fault", ["stall", "500", "close"])
def test_a_server_that_never_recovers_fails_clearly_and_quickly(tmp_path, upstream, fault):
    result, seconds, seen = _run(tmp_path, upstream, "", fault, timeout_s=3.0)
    assert isinstance(result, BackendUnavailable)
    assert "gave up after 3 tries" in str(result)
    assert seconds < 60, "bounded retries must not hang"
    assert len(seen) <= CAPTIONS * 3, "never a retry storm"
    assert not (tmp_path / "abstract" / "_done").exists()


@pytest.mark.parametrize("script", ["500,500,500", "close,close,close", "stall,stall"])
def test_transient_faults_are_retried_and_nothing_is_lost(tmp_path, upstream, script):
    result, _, seen = _run(tmp_path, upstream, script, "pass", timeout_s=10.0 if "stall" in script else 60.0)
    assert isinstance(result, dict), result
    totals = result["totals"]
    assert totals["in"] == CAPTIONS == totals["accepted"] + totals["rejected"]
    assert "llm_error" not in totals["reasons"]
    assert seen[: len(script.split(","))] == script.split(",")
    assert seen.count("pass") >= CAPTIONS  # every caption answered after the faults (a slow one may be re-asked)
    ids = pq.read_table(tmp_path / "abstract/part-00000.parquet").column("id").to_pylist()
    ids += pq.read_table(tmp_path / "abstract/rejects/part-00000.parquet").column("id").to_pylist()
    assert sorted(ids) == sorted(f"test:{i}" for i in range(CAPTIONS))


def test_malformed_answers_become_counted_rejects(tmp_path, upstream):
    result, _, seen = _run(tmp_path, upstream, "", "malformed")
    assert isinstance(result, dict)
    assert result["totals"]["rejected"] == CAPTIONS and result["totals"]["reasons"] == {"llm_error": CAPTIONS}
    detail = pq.read_table(tmp_path / "abstract/rejects/part-00000.parquet").column("detail").to_pylist()
    assert all("malformed response" in d for d in detail)
    assert len(seen) == CAPTIONS  # a malformed 200 is not retried into a storm
