"""The whole pipeline as one Prefect flow: ingest → abstract → train-ordering → negatives → filter → release.

    python -m flows.pipeline --config cpu --run-dir runs/default --version 0.1.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from flows.stages import (
    abstract_flow,
    filter_flow,
    ingest_flow,
    negatives_flow,
    release_flow,
    ConfigParam,
    resolve_config,
    task_runner,
    train_ordering_flow,
)
from hiercaps_gen.config import RunConfig, load_config
from hiercaps_gen.stages.registry import NAMES


def _with_runner(sub_flow, config: RunConfig):
    return sub_flow.with_options(task_runner=task_runner(config))


@flow(name="hierarcaps-pipeline")
def pipeline_flow(config: ConfigParam, run_dir: Path, version: str, out: Path, until: str = "release") -> str | None:
    """Run the registry's stages in order; `until` stops after a named stage (distill runs
    inside train-ordering when `ordering.distill` is on)."""
    config = resolve_config(config)
    flows = {
        "ingest": lambda: ingest_flow(config, run_dir),
        "abstract": lambda: _with_runner(abstract_flow, config)(config, run_dir),
        "train-ordering": lambda: train_ordering_flow(config, run_dir),
        "negatives": lambda: _with_runner(negatives_flow, config)(config, run_dir),
        "filter": lambda: _with_runner(filter_flow, config)(config, run_dir),
    }
    for name in NAMES:
        if name in flows:
            flows[name]()
        if name == until:
            return None
    return release_flow(config, run_dir, version, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu", help="profile name or YAML path")
    parser.add_argument("--run-dir", default="runs/default")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--out", default="releases")
    parser.add_argument("--until", default="release", choices=[*NAMES, "release"], help="stop after this stage")
    args = parser.parse_args()
    print(pipeline_flow(load_config(args.config), Path(args.run_dir), args.version, Path(args.out), args.until))


if __name__ == "__main__":
    main()
