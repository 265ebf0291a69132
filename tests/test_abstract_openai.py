"""`abstract --backend openai` against a real server process (tests/llm_server.py running the
embedded SmolLM2) that is killed mid-shard: the stage stops without writing the shard, and once the
server is back the rerun finishes it, re-asking nothing the client had already received, losing
and duplicating no caption."""

from __future__ import annotations

import json
import threading
import time

import pyarrow.parquet as pq
import pytest

from hiercaps_gen.stages.abstract import AbstractStage
from hiercaps_gen.config import RunConfig
from hiercaps_gen.llm.base import BackendUnavailable
from hiercaps_gen.llm.cache import LLMCache

from .test_llm_helpers import ServerProcess, free_port, sample_captions, write_ingest

pytestmark = pytest.mark.slow


def test_server_dies_mid_shard_and_the_stage_resumes(tmp_path):
    rows = write_ingest(tmp_path, sample_captions(120)[::10], shards=1)  # 12 captions
    port = free_port()
    config = RunConfig().with_overrides({
        "abstract.llm.backend": "openai", "abstract.llm.base_urls": [f"http://127.0.0.1:{port}/v1"],
        # a timeout would re-ask a request the server is still working on (a slow shared CI box queued
        # requests for > 120 s): this test is about a dead server, so no request may time out
        "abstract.llm.concurrency": 2, "abstract.llm.max_retries": 2, "abstract.llm.timeout_s": 900,
        "abstract.max_attempts": 1,
        "abstract.prompt": "abstract_v1",  # resume mechanics, not prompt quality: v1's prompt is 1/3 shorter
    })
    first_log, second_log = tmp_path / "served-1.jsonl", tmp_path / "served-2.jsonl"

    server = ServerProcess("embedded:smollm2", port, first_log, batch_size=2).start()
    killer = threading.Thread(target=_kill_after, args=(server, 4), daemon=True)
    killer.start()
    with pytest.raises(BackendUnavailable):
        AbstractStage(config, tmp_path).run()
    killer.join(timeout=5)
    assert not (tmp_path / "abstract" / "_done").exists()  # no half shard claims to be done
    stage = AbstractStage(config, tmp_path)
    requests = {row["id"]: stage.request(row, 1, 0) for row in rows}
    cache = LLMCache(tmp_path / "abstract" / "cache.sqlite")
    kept = {i for i, r in requests.items() if r.key(stage.model_id) in cache.get_many([r.key(stage.model_id)])}
    cache.close()
    assert 0 < len(kept) < len(rows)  # the shard was cut in the middle
    assert len(kept) <= len(_served(first_log))

    with ServerProcess("embedded:smollm2", port, second_log, batch_size=4):
        manifest = AbstractStage(config, tmp_path).run()
    served_after = _served(second_log)
    server_key = {i: r.key("embedded:smollm2") for i, r in requests.items()}
    assert sorted(served_after) == sorted(server_key[i] for i in requests if i not in kept)  # each missing one, once
    assert manifest["stats"]["cache_hits"] == len(kept) and manifest["stats"]["backend_prompts"] == len(rows) - len(kept)

    totals = manifest["totals"]
    assert totals["in"] == len(rows) == totals["accepted"] + totals["rejected"]
    accepted = pq.read_table(tmp_path / "abstract" / "part-00000.parquet").column("id").to_pylist()
    rejected = pq.read_table(tmp_path / "abstract" / "rejects" / "part-00000.parquet").column("id").to_pylist()
    assert sorted(accepted + rejected) == sorted(r["id"] for r in rows)
    assert totals["accepted"] > 0


def _served(log) -> list[str]:
    return [json.loads(line)["key"] for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def _kill_after(server: ServerProcess, answered: int) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(server.served()) < answered:
        time.sleep(0.05)
    server.kill()
