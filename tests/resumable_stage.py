"""A small real ShardStage used to test the runner: it can SIGKILL itself mid-shard on request."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from hiercaps_gen.config import RunConfig, load_config
from hiercaps_gen.hierarchy import CAPTION
from hiercaps_gen.stages.base import Reject, ShardOutput, ShardStage
from hiercaps_gen.stages.registry import StageSpec


class LowercaseStage(ShardStage):
    """Lower-cases captions; rejects captions of more than 12 words. Kills itself at shard KILL_AT."""

    name = "lowercase"
    input_stage = "ingest"
    config_section = "release"  # unrelated to ingest: upstream changes are seen only via checksums
    output_schema = CAPTION
    spec = StageSpec("lowercase", reads=("release",), upstream=("ingest",))

    def process(self, rows, shard):
        if os.environ.get("KILL_AT") == shard:
            os.kill(os.getpid(), signal.SIGKILL)
        kept = [{**r, "caption": r["caption"].lower()} for r in rows if len(r["caption"].split()) <= 12]
        dropped = [Reject(r, "too_many_words") for r in rows if len(r["caption"].split()) > 12]
        return ShardOutput(kept, dropped, {"rows_seen": len(rows), "pid": os.getpid()})


if __name__ == "__main__":
    config: RunConfig = load_config(sys.argv[2])
    print(LowercaseStage(config, Path(sys.argv[1])).run()["totals"])
