"""Generated from the stage registry: changing any config value a stage reads changes that stage's
fingerprint (so its shards are redone) and no upstream stage's, unless that stage reads it too.

Fingerprints are computed the way each stage computes them at run time (`current_fingerprint`),
over a run directory holding the upstream manifests they read (abstract's shard hashes, the
trained ordering model's hash). A completed shard is reused only under an equal fingerprint
(`stages/base.py: completed_record`, tested in test_stage_resume.py).
"""

from __future__ import annotations

import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hiercaps_gen.config import RunConfig
from hiercaps_gen.llm.prompts import prompt_path
from hiercaps_gen.stages.base import FileRecord, ShardRecord, StageManifest
from hiercaps_gen.stages.registry import NAMES, SPECS, STAGES, StageSpec, current_fingerprint


# Values another leaf needs before it can change (a config validator ties them): set on the base first.
REQUIRES = {"negatives.level1_pair": {"negatives.level1_source": "categories"}}


def _leaves(data: Any, prefix: str) -> list[str]:
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _leaves(value, f"{prefix}.{key}")]
    return [prefix]


def _field(path: str) -> Any:
    model: Any = RunConfig
    for key in path.split("."):
        annotation = model.model_fields[key].annotation
        model = annotation
    return annotation


def _candidates(path: str, value: Any, tmp_path: Path) -> list[Any]:
    """Other values for one config leaf, most likely valid first."""
    if path.endswith(".prompt"):  # a prompt is a file: an edited copy is another prompt
        copy = tmp_path / "other_prompt.yaml"
        shutil.copy(prompt_path(value), copy)
        copy.write_text(copy.read_text() + "\n# edited\n")
        return [str(copy)]
    literal = [a for arg in [_field(path), *typing.get_args(_field(path))] for a in typing.get_args(arg)
               if typing.get_origin(arg) is typing.Literal]
    if literal:
        return [c for c in literal if c != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [value / 2 if value else 0.25, value + 0.125, value - 0.125]
    if isinstance(value, str):
        return [value + "-other", "other"]
    if isinstance(value, list):
        return [value + value[:1] if value else ["http://127.0.0.1:1/v1"]]
    return [2, 0.5, 2048, "other", True, ["http://127.0.0.1:1/v1"]]  # None: an optional value set


def _changed(config: RunConfig, path: str, tmp_path: Path) -> RunConfig:
    data = config.model_dump(mode="json")
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    for candidate in _candidates(path, node[leaf], tmp_path):
        node[leaf] = candidate
        try:
            return RunConfig.model_validate(data)
        except ValidationError:
            continue
    raise AssertionError(f"no valid other value for {path}")


def _upstream(spec: StageSpec) -> set[str]:
    found: set[str] = set()
    todo = list(spec.upstream)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(SPECS[name].upstream)
    return found


def _reads(spec: StageSpec, path: str) -> bool:
    def under(prefix: str) -> bool:
        return path == prefix or path.startswith(prefix + ".")
    return any(under(p) for p in spec.reads) and not any(under(p) for p in spec.ignores)


def _manifest(stage: str, **fields: Any) -> StageManifest:
    return StageManifest(stage=stage, fingerprint="0", code_version="0", created_at="2026-01-01T00:00:00+00:00",
                         config={}, totals={"in": 1, "accepted": 1, "rejected": 0}, stats={}, **fields)


def _ordering_model(run_dir: Path, model_hash: str) -> None:
    _manifest("train-ordering", model_hash=model_hash).write(run_dir / "train-ordering")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The upstream manifests fingerprints read: abstract's shard hashes, the ordering model's hash."""
    shard = FileRecord(path="part-00000.parquet", rows=1, bytes=1, sha256="ab" * 32)
    _manifest("abstract", shards=[ShardRecord(name="part-00000", fingerprint="0", input_sha256=None, in_rows=1,
                                              output=shard, rejects=shard, reasons={}, stats={}, seconds=0.0)],
              ).write(tmp_path / "abstract")
    _ordering_model(tmp_path, "0123456789abcdef")
    return tmp_path


def test_registry_order_puts_upstream_first() -> None:
    for i, spec in enumerate(STAGES):
        assert all(NAMES.index(u) < i for u in spec.upstream), spec.name
        assert all(any(i.startswith(r + ".") for r in spec.reads) for i in spec.ignores), spec.name


@pytest.mark.parametrize("spec", STAGES, ids=NAMES)
def test_changing_what_a_stage_reads_redoes_it_and_nothing_upstream(spec: StageSpec, run_dir: Path,
                                                                     tmp_path: Path) -> None:
    base = RunConfig()
    stages = [spec.name, *sorted(_upstream(spec))]
    paths = sorted({leaf for p in spec.reads for leaf in _leaves(_at(base.model_dump(mode="json"), p), p)})
    assert paths
    for path in paths:
        start = base.with_overrides(REQUIRES.get(path, {}))
        before = {name: current_fingerprint(name, start, run_dir) for name in stages}
        changed = _changed(start, path, tmp_path)
        for name in stages:
            after = current_fingerprint(name, changed, run_dir)
            assert (after != before[name]) == _reads(SPECS[name], path), f"{name} on {path}"


def test_seed_and_model_hash_are_inputs(run_dir: Path) -> None:
    base = RunConfig()
    before = {name: current_fingerprint(name, base, run_dir) for name in NAMES}
    reseeded = base.with_overrides({"seed": 1})
    assert all(current_fingerprint(n, reseeded, run_dir) != before[n] for n in NAMES)
    _ordering_model(run_dir, "fedcba9876543210")
    retrained = {n for n in NAMES if current_fingerprint(n, base, run_dir) != before[n]}
    assert retrained == {"distill", "negatives"}


def _at(data: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        data = data[key]
    return data
