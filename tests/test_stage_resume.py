import json
import os
import subprocess
import sys

import pytest
import yaml

from hiercaps_gen.config import RunConfig
from hiercaps_gen.stages.ingest import run_ingest
from hiercaps_gen.stages.base import StageError, load_manifest, read_stage_rows

from .conftest import REPO


def _run(run_dir, config_path, kill_at=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KILL_AT", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "tests.resumable_stage", str(run_dir), str(config_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_killed_stage_resumes_without_duplicates_or_losses(tmp_path):
    config = RunConfig().with_overrides({"ingest.input": str(REPO / "data/coco_val2014_sample/captions.json"),
                                         "ingest.num_shards": 5})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    for name in ("killed", "clean"):
        run_ingest(config, tmp_path / name)

    killed = _run(tmp_path / "killed", config_path, kill_at="part-00002")
    assert killed.returncode == -9
    done = sorted(p.name for p in (tmp_path / "killed/lowercase/_done").glob("*.json"))
    assert done == ["part-00000.json", "part-00001.json"]
    assert not (tmp_path / "killed/lowercase/manifest.json").exists()
    # a crash between the data file and its completion record: garbage under the real name
    (tmp_path / "killed/lowercase/part-00002.parquet").write_bytes(b"PAR1 truncated")
    stamp = (tmp_path / "killed/lowercase/part-00000.parquet").stat().st_mtime_ns

    assert _run(tmp_path / "killed", config_path).returncode == 0
    assert _run(tmp_path / "clean", config_path).returncode == 0
    assert (tmp_path / "killed/lowercase/part-00000.parquet").stat().st_mtime_ns == stamp  # not redone
    resumed = read_stage_rows(tmp_path / "killed", "lowercase")
    clean = read_stage_rows(tmp_path / "clean", "lowercase")
    assert resumed == clean
    assert len({r["id"] for r in resumed}) == len(resumed)
    manifest = yaml.safe_load((tmp_path / "killed/lowercase/manifest.json").read_text())
    assert manifest["totals"]["in"] == 759 == manifest["totals"]["accepted"] + manifest["totals"]["rejected"]
    assert manifest["stats"]["rows_seen"] == 759


def test_changed_upstream_shard_is_redone(tmp_path):
    from .resumable_stage import LowercaseStage

    sample = str(REPO / "data/coco_val2014_sample/captions.json")
    config = RunConfig().with_overrides({"ingest.input": sample, "ingest.num_shards": 2, "ingest.limit": 40})
    run_ingest(config, tmp_path)
    LowercaseStage(config, tmp_path).run()
    bigger = config.with_overrides({"ingest.limit": 60})
    run_ingest(bigger, tmp_path)
    manifest = LowercaseStage(bigger, tmp_path).run()
    assert manifest["totals"]["in"] == 60
    assert len(read_stage_rows(tmp_path, "lowercase")) == manifest["totals"]["accepted"]


def test_a_malformed_stage_manifest_is_a_clear_error(tmp_path):
    sample = str(REPO / "data/coco_val2014_sample/captions.json")
    run_ingest(RunConfig().with_overrides({"ingest.input": sample, "ingest.limit": 10}), tmp_path / "run")
    path = tmp_path / "run" / "ingest" / "manifest.json"
    data = json.loads(path.read_text())
    del data["totals"]["accepted"]
    path.write_text(json.dumps(data))
    with pytest.raises(StageError, match="not a stage manifest.*totals.*accepted"):
        load_manifest(tmp_path / "run", "ingest")
