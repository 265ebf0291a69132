"""One Prefect flow per stage. Shard-parallel stages map their shards as Prefect tasks.

Flows run in Prefect's ephemeral mode (no server needed) or against a server/work pool; the
task runner comes from `execution.task_runner` in the run config (local threads or Dask).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from hiercaps_gen.config import RunConfig, load_config
from hiercaps_gen.stages.base import ShardStage

ConfigParam = RunConfig | str  # deployments pass a profile name or YAML path


def resolve_config(config: ConfigParam) -> RunConfig:
    return config if isinstance(config, RunConfig) else load_config(config)


def task_runner(config: RunConfig):
    """Local threads by default; a Dask cluster (address, or a local one) when configured."""
    if config.execution.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.execution.dask_address:
            return DaskTaskRunner(address=config.execution.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.execution.workers, "threads_per_worker": 1})
    return ThreadPoolTaskRunner(max_workers=1)


@task(name="shard", retries=1)
def run_shard_task(stage: ShardStage, upstream: dict[str, Any]) -> dict[str, Any]:
    return stage.run_shard(upstream)


def _placement(stage: ShardStage):
    """On an external Dask cluster, GPU stages' shards go only to workers started with
    `--resources GPU=1` (the stage's declared resources); elsewhere nothing is constrained."""
    execution = stage.config.execution
    if execution.task_runner == "dask" and execution.dask_address and stage.resources.gpus:
        import dask

        return dask.annotate(resources={"GPU": stage.resources.gpus})
    return nullcontext()


def run_sharded(stage: ShardStage) -> dict[str, Any]:
    """Map a stage's shards as tasks on the flow's task runner, then write its manifest."""
    with _placement(stage):
        futures = run_shard_task.with_options(name=f"{stage.name}-shard").map(stage, stage.shards())
    return stage.finalize([f.result() for f in futures])


@flow(name="ingest")
def ingest_flow(config: ConfigParam, run_dir: Path) -> dict[str, Any]:
    from hiercaps_gen.stages.ingest import run_ingest

    return run_ingest(resolve_config(config), run_dir)


@flow(name="abstract")
def abstract_flow(config: ConfigParam, run_dir: Path) -> dict[str, Any]:
    from hiercaps_gen.stages.abstract import AbstractStage

    return run_sharded(AbstractStage(resolve_config(config), run_dir))


@flow(name="train-ordering")
def train_ordering_flow(config: ConfigParam, run_dir: Path) -> dict[str, Any]:
    from hiercaps_gen.stages.train_ordering import train_ordering

    config = resolve_config(config)
    manifest = train_ordering(config, run_dir)
    if config.ordering.distill:
        from hiercaps_gen.stages.distill import DistillStage

        run_sharded(DistillStage(config, run_dir))
    return manifest


@flow(name="negatives")
def negatives_flow(config: ConfigParam, run_dir: Path) -> dict[str, Any]:
    from hiercaps_gen.stages.negatives import NegativesStage

    return run_sharded(NegativesStage(resolve_config(config), run_dir))


@flow(name="filter")
def filter_flow(config: ConfigParam, run_dir: Path) -> dict[str, Any]:
    from hiercaps_gen.stages.filter import FilterStage

    return run_sharded(FilterStage(resolve_config(config), run_dir))


@flow(name="release")
def release_flow(config: ConfigParam, run_dir: Path, version: str, out: Path) -> str:
    from hiercaps_gen.release import build_release

    return str(build_release(resolve_config(config), run_dir, version, out))
