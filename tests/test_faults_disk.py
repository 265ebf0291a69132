"""Storage faults: an unwritable output directory and a full disk give a clear error, no half shard."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hiercaps_gen.config import RunConfig
from hiercaps_gen.stages.ingest import run_ingest
from hiercaps_gen.stages.base import StageError, load_manifest

from .conftest import REPO

SAMPLE = str(REPO / "data/coco_val2014_sample/captions.json")

FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from hiercaps_gen.config import RunConfig
from hiercaps_gen.stages.ingest import run_ingest
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # so writes fail with EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))  # no file may grow past 3 kB: a full disk
config = RunConfig().with_overrides({"ingest.input": sys.argv[2], "ingest.num_shards": 2})
run_ingest(config, Path(sys.argv[1]))
"""


def real_files(directory):
    return sorted(p for p in directory.rglob("*") if p.is_file() and ".tmp-" not in p.name)


def _make_unwritable(directory: Path) -> bool:
    """chmod for ordinary users; root ignores modes, so use the immutable attribute there."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o555)
        return True
    return subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0


def _make_writable(directory: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
    os.chmod(directory, 0o755)


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    if not _make_unwritable(run):
        pytest.skip("cannot make a directory unwritable here (no chattr)")
    try:
        with pytest.raises(PermissionError):
            run_ingest(RunConfig().with_overrides({"ingest.input": SAMPLE}), run)
        assert not any(run.rglob("*"))
    finally:
        _make_writable(run)
    assert run_ingest(RunConfig().with_overrides({"ingest.input": SAMPLE}), run)["totals"]["accepted"] == 759


def test_output_path_blocked_by_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "ingest").write_text("not a directory")  # works as root too
    with pytest.raises((FileExistsError, NotADirectoryError)):
        run_ingest(RunConfig().with_overrides({"ingest.input": SAMPLE}), tmp_path)


def test_full_disk_leaves_no_half_shard_and_rerun_completes(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(run), SAMPLE], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "File too large" in done.stderr or "No space" in done.stderr
    assert not list(run.rglob("*.tmp-*")), "temporary files must be cleaned up"
    for shard in (run / "ingest").glob("part-*.parquet"):  # whatever got renamed is complete
        import pyarrow.parquet as pq

        pq.read_table(shard)
    with pytest.raises(StageError):
        load_manifest(run, "ingest")
    manifest = run_ingest(RunConfig().with_overrides({"ingest.input": SAMPLE, "ingest.num_shards": 2}), run)
    assert manifest["totals"]["accepted"] == 759
    assert real_files(run / "ingest")


def test_real_full_filesystem_gives_enospc_and_no_half_shard(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root / no CAP_SYS_ADMIN)")
    try:
        with pytest.raises(OSError, match="No space left"):
            run_ingest(RunConfig().with_overrides({"ingest.input": SAMPLE}), mnt / "run")
        assert not list(mnt.rglob("*.tmp-*"))
        import pyarrow.parquet as pq

        for shard in (mnt / "run/ingest").glob("part-*.parquet"):
            pq.read_table(shard)  # anything under a real name is whole
        with pytest.raises(StageError):
            load_manifest(mnt / "run", "ingest")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
