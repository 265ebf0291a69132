"""Prefect flows run the same stage code: ephemeral mode, thread pool and a real Dask cluster."""

from pathlib import Path

from flows.pipeline import pipeline_flow
from flows.stages import release_flow, run_sharded, task_runner
from hiercaps_gen.config import RunConfig
from hiercaps_gen.stages.ingest import run_ingest
from hiercaps_gen.release import read_release
from hiercaps_gen.stages.base import read_stage_rows

from .conftest import REPO, synthetic_rows
from .resumable_stage import LowercaseStage
from .test_cli import write_filter_stage

SAMPLE = str(REPO / "data/coco_val2014_sample/captions.json")


def _config(**overrides) -> RunConfig:
    return RunConfig().with_overrides({"ingest.input": SAMPLE, "ingest.num_shards": 6, **overrides})


def test_pipeline_flow_runs_ingest_without_a_server(tmp_path):
    pipeline_flow(_config(), tmp_path, "0.1.0", tmp_path / "rel", until="ingest")
    assert len(read_stage_rows(tmp_path, "ingest")) == 759


def test_release_flow(tmp_path):
    config = _config()
    run_ingest(config, tmp_path)
    write_filter_stage(tmp_path, synthetic_rows(30))
    path = release_flow(config, tmp_path, "0.1.0", tmp_path / "rel")
    assert read_release(Path(path)).num_rows == 30


def _sharded(config: RunConfig, run_dir: Path):
    from prefect import flow

    @flow(name="lowercase", task_runner=task_runner(config))
    def lowercase_flow():
        return run_sharded(LowercaseStage(config, run_dir))

    return lowercase_flow()


def test_dask_cluster_gives_the_same_rows_as_a_local_run(tmp_path):
    local, distributed = tmp_path / "local", tmp_path / "dask"
    for run_dir in (local, distributed):
        run_ingest(_config(), run_dir)
    LowercaseStage(_config(), local).run()
    manifest = _sharded(_config(**{"execution.task_runner": "dask", "execution.workers": 2}), distributed)
    assert manifest["totals"]["in"] == 759
    assert read_stage_rows(distributed, "lowercase") == read_stage_rows(local, "lowercase")
    pids = {r["stats"].get("pid") for r in manifest["shards"]}
    assert len(pids) >= 2, "shards should have run in more than one worker process"
