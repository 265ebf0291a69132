import csv
import json
import subprocess
import sys
from pathlib import Path


from hiercaps_gen.cli import build_parser
from hiercaps_gen.config import RunConfig
from hiercaps_gen.hierarchy import FILTERED
from hiercaps_gen.stages.base import ShardOutput, write_shard, write_stage_manifest

from .conftest import REPO, synthetic_rows


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hiercaps_gen.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_every_subcommand_has_real_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"ingest", "abstract", "train-ordering", "negatives", "filter", "release", "pull", "export",
            "finetune", "evaluate", "report"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        assert options or sub._positionals._group_actions, name
        assert all(a.help for a in options), name
        assert sub.description, name
        assert "--" in text


def write_filter_stage(run_dir: Path, rows: list[dict]) -> None:
    directory = run_dir / "filter"
    record = write_shard(directory, "filter", "part-00000", FILTERED, ShardOutput(rows, []), in_rows=len(rows),
                         fingerprint="test", input_sha256=None, seconds=0.0)
    write_stage_manifest(directory, "filter", "test", {}, [record])


def test_ingest_release_export_pull_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    done = cli("ingest", "--run-dir", str(run), "--limit", "40")
    assert done.returncode == 0, done.stderr
    assert "in=759 accepted=40" in done.stdout
    saved = (run / "config.yaml").read_text()
    assert "limit: 40" in saved

    write_filter_stage(run, synthetic_rows(40))
    done = cli("release", "--run-dir", str(run), "--version", "0.3.0", "--out", str(tmp_path / "rel"))
    assert done.returncode == 0, done.stderr
    release = Path(done.stdout.strip())
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["stages"]["ingest"]["totals"]["accepted"] == 40
    assert manifest["config"]["ingest"]["limit"] == 40

    done = cli("export", "--release", str(release), "--out", str(tmp_path / "h.csv"))
    assert done.returncode == 0 and "wrote 40 rows" in done.stdout
    with open(tmp_path / "h.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 40

    done = cli("pull", str(release.parent), "--version", "0.3.0", "--dest", str(tmp_path / "pulled"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pulled/hierarcaps-gen-sample/0.3.0/manifest.json").exists()


def test_errors_are_one_clear_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    done = cli("ingest", "--run-dir", str(tmp_path / "run"), "--input", str(bad))
    assert done.returncode == 2
    assert "error:" in done.stderr and "invalid JSON" in done.stderr and "Traceback" not in done.stderr
    done = cli("negatives", "--run-dir", str(tmp_path / "empty"))
    assert done.returncode == 2 and "run it first" in done.stderr
    done = cli("release", "--run-dir", str(tmp_path / "run"), "--version", "x")
    assert done.returncode == 2 and "semantic" in done.stderr


def test_config_command_prints_fingerprint():
    done = cli("config", "--config", "gpu")
    assert done.returncode == 0
    assert done.stdout.strip().endswith(RunConfig.model_validate(
        __import__("yaml").safe_load(done.stdout)).fingerprint())
    assert "meta-llama/Llama-2-7b-chat-hf" in done.stdout


def test_same_rows_release_by_cli_twice_is_idempotent(tmp_path):
    run = tmp_path / "run"
    assert cli("ingest", "--run-dir", str(run), "--limit", "10").returncode == 0
    write_filter_stage(run, synthetic_rows(10))
    args = ["release", "--run-dir", str(run), "--version", "1.0.0", "--out", str(tmp_path / "rel")]
    assert cli(*args).returncode == 0
    assert cli(*args).returncode == 0
    changed = cli("release", "--run-dir", str(run), "--version", "1.0.0", "--out", str(tmp_path / "rel"), "--seed", "5")
    assert changed.returncode == 2 and "immutable" in changed.stderr
