"""Fuzzing the readers of untrusted bytes: ingest formats and release manifests.

They must either accept, reject with a counted reason, or fail with their own clear error —
never an unhandled exception, never a write outside their directory, never an unsafe path.
"""

import json
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiercaps_gen.config import RunConfig
from hiercaps_gen.stages.ingest import IngestError, run_ingest
from hiercaps_gen.release.manifest import ManifestError, parse_manifest, safe_relative_path

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
annotation = st.fixed_dictionaries(
    {}, optional={"id": json_values, "image_id": json_values, "caption": st.text(max_size=80) | json_values}
)


def _ingest(tmp_path: Path, name: str, data: bytes, source: str) -> None:
    work = tmp_path / "case"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir()
    path = work / name
    path.write_bytes(data)
    config = RunConfig().with_overrides({"ingest.input": str(path), "ingest.source": source, "ingest.num_shards": 2})
    try:
        manifest = run_ingest(config, work / "run")
    except IngestError:
        return
    totals = manifest["totals"]
    assert totals["in"] == totals["accepted"] + totals["rejected"]
    written = {p.relative_to(work) for p in work.rglob("*") if p.is_file()}
    assert all(str(p).startswith("run/") or p.name == name for p in written)


@FUZZ
@given(data=st.binary(max_size=400))
def test_coco_reader_on_random_bytes(tmp_path, data):
    _ingest(tmp_path, "c.json", data, "coco")


@FUZZ
@given(doc=st.fixed_dictionaries({"annotations": st.lists(annotation | json_values, max_size=8)},
                                 optional={"images": json_values}))
def test_coco_reader_on_random_structures(tmp_path, doc):
    _ingest(tmp_path, "c.json", json.dumps(doc).encode(), "coco")


@FUZZ
@given(lines=st.lists(st.binary(max_size=60), max_size=10))
def test_cc_reader_on_random_lines(tmp_path, lines):
    _ingest(tmp_path, "c.tsv", b"\n".join(lines), "cc")


path_parts = st.sampled_from(["..", ".", "", "a", "b.parquet", "/", "\\", "~", ".git", "x\x00", "%2e%2e", "ü"])


@FUZZ
@given(parts=st.lists(path_parts, min_size=1, max_size=5), sep=st.sampled_from(["/", "\\", ""]))
def test_manifest_paths_never_escape(parts, sep):
    path = sep.join(parts)
    try:
        safe = safe_relative_path(path)
    except ManifestError:
        return
    resolved = (Path("/dest") / safe).resolve()
    assert resolved.is_relative_to(Path("/dest")) and resolved != Path("/dest")
    assert ".." not in safe.split("/") and not safe.startswith("/")


@FUZZ
@given(doc=json_values | st.fixed_dictionaries({
    "name": st.text(alphabet=string.printable, max_size=12), "version": st.sampled_from(["1.0.0", "x", "1.0"]),
    "files": st.lists(st.fixed_dictionaries({
        "path": st.text(alphabet=string.printable, max_size=20), "bytes": st.integers(-5, 10**6),
        "sha256": st.sampled_from(["0" * 64, "zz", "A" * 64])}), max_size=4)}))
def test_manifest_parser_accepts_only_safe_manifests(doc):
    try:
        manifest = parse_manifest(json.dumps(doc).encode())
    except ManifestError:
        return
    for entry in manifest.files:
        assert safe_relative_path(entry.path) == entry.path
        assert entry.bytes >= 0 and len(entry.sha256) == 64


@FUZZ
@given(data=st.binary(max_size=200))
def test_manifest_parser_on_random_bytes(data):
    try:
        parse_manifest(data)
    except ManifestError:
        pass
