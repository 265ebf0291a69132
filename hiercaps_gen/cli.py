"""`hiercaps-gen`: one sub-command per stage, each usable alone on an existing run directory.

The effective config of a run lives in `RUN/config.yaml`: the first command writes it from
`--config` (a shipped profile or a YAML file) plus its flags, later commands read it back and
apply their own flags on top, so a run directory always says how it was made.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from hiercaps_gen import __version__
from hiercaps_gen.config import ConfigError, RunConfig, load_config
from hiercaps_gen.files import atomic_write_bytes
from hiercaps_gen.stages.registry import NAMES

DEFAULT_RUN_DIR = Path("runs/default")
DEFAULT_RELEASES = Path("releases")


def run_config(args: argparse.Namespace, overrides: dict[str, Any]) -> RunConfig:
    """Profile or run's saved config, plus flag overrides; saved back to RUN/config.yaml."""
    saved = Path(args.run_dir) / "config.yaml"
    source = args.config or (saved if saved.exists() else "cpu")
    given = {key: value for key, value in {**overrides, "seed": args.seed}.items() if value is not None}
    config = load_config(source).with_overrides(given)
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True)
    atomic_write_bytes(saved, text.encode("utf-8"))
    return config


def _summary(manifest: dict[str, Any]) -> str:
    totals = manifest.get("totals", {})
    reasons = ", ".join(f"{k}={v}" for k, v in totals.get("reasons", {}).items()) or "none"
    return (f"{manifest['stage']}: in={totals.get('in')} accepted={totals.get('accepted')} "
            f"rejected={totals.get('rejected')} ({reasons})")


def cmd_ingest(args: argparse.Namespace) -> None:
    from hiercaps_gen.stages.ingest import run_ingest

    config = run_config(args, {"ingest.source": args.source, "ingest.input": args.input,
                               "ingest.limit": args.limit, "ingest.num_shards": args.num_shards})
    print(_summary(run_ingest(config, Path(args.run_dir))))


def cmd_abstract(args: argparse.Namespace) -> None:
    from hiercaps_gen.stages.abstract import run_abstract

    config = run_config(args, {"abstract.llm.backend": args.backend, "abstract.llm.model": args.model,
                               "abstract.llm.base_urls": args.base_url or None,
                               "abstract.llm.batch_size": args.batch_size,
                               "abstract.llm.threads": args.threads,
                               "abstract.llm.structured_output": args.structured_output or None,
                               "abstract.llm_budget": args.llm_budget})
    print(_summary(run_abstract(config, Path(args.run_dir))))


def cmd_train_ordering(args: argparse.Namespace) -> None:
    from hiercaps_gen.stages.train_ordering import train_ordering

    config = run_config(args, {"ordering.model": args.model, "ordering.epochs": args.epochs,
                               "ordering.max_steps": args.max_steps, "ordering.distill": args.distill or None})
    manifest = train_ordering(config, Path(args.run_dir))
    print(json.dumps({k: manifest.get(k) for k in ("stage", "model_hash", "stats") if k in manifest}, indent=2))
    if config.ordering.distill:
        from hiercaps_gen.stages.distill import DistillStage

        print(_summary(DistillStage(config, Path(args.run_dir)).run()))


def cmd_negatives(args: argparse.Namespace) -> None:
    from hiercaps_gen.stages.negatives import NegativesStage

    config = run_config(args, {})
    print(_summary(NegativesStage(config, Path(args.run_dir)).run()))


def cmd_filter(args: argparse.Namespace) -> None:
    from hiercaps_gen.stages.filter import FilterStage

    config = run_config(args, {"filter.scorer": args.scorer})
    print(_summary(FilterStage(config, Path(args.run_dir)).run()))


def cmd_release(args: argparse.Namespace) -> None:
    from hiercaps_gen.release import build_release

    config = run_config(args, {"release.name": args.name})
    path = build_release(config, Path(args.run_dir), args.version, Path(args.out), from_stage=args.from_stage)
    print(path)


def cmd_pull(args: argparse.Namespace) -> None:
    from hiercaps_gen.release.pull import pull

    print(pull(args.source, args.version, Path(args.dest), args.manifest_sha256, progress=not args.quiet))


def cmd_push(args: argparse.Namespace) -> None:
    from hiercaps_gen.release.push import plan_push, push

    plan = plan_push(Path(args.release), args.repo)
    if args.dry_run:
        print(f"would push {plan.name} {plan.tag} to dataset repo {plan.repo_id} as one commit, tagged {plan.tag}:")
        print("\n".join(f"  {path}" for path in plan.files))
        return
    commit = push(plan, private=args.private)
    print(f"pushed {plan.name} {plan.tag} to {plan.repo_id} (commit {commit}, tag {plan.tag})")
    print(f"from datasets import load_dataset; ds = {plan.load_line}")


def cmd_export(args: argparse.Namespace) -> None:
    from hiercaps_gen.release.export import export_hierarcaps_csv

    rows = export_hierarcaps_csv(Path(args.release), Path(args.out), args.split)
    print(f"wrote {rows} rows to {args.out}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from hiercaps_gen.stages.finetune import finetune

    config = run_config(args, {"finetune.encoder": args.encoder, "finetune.max_steps": args.max_steps,
                               "finetune.learning_rate": args.lr})
    result = finetune(config, Path(args.release), Path(args.out))
    print(json.dumps(result, indent=2, default=str))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from hiercaps_gen.stages.evaluate import evaluate

    out = Path(args.out) if args.out else Path(args.encoder) / "eval"
    evaluate(args.encoder, Path(args.test), out, images_dir=Path(args.images) if args.images else None,
             baseline=args.baseline, limit=args.limit, device=args.device)


def cmd_report(args: argparse.Namespace) -> None:
    from hiercaps_gen.report.report import build_report

    print(build_report(Path(args.release), Path(args.out), reference=Path(args.reference) if args.reference else None,
                       seed=args.seed))


def cmd_config(args: argparse.Namespace) -> None:
    config = load_config(args.config or "cpu")
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True), end="")
    print(f"# fingerprint: {config.fingerprint()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hiercaps-gen",
        description="Build HierarCaps-style caption hierarchies: ingest → abstract → train-ordering → "
                    "negatives → filter → release, then finetune / evaluate / report.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, func, help: str, run_dir: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--config", help="profile name (cpu, gpu) or YAML path; default: RUN/config.yaml, else cpu")
        p.add_argument("--seed", type=int, default=None, help="override the config's seed")
        if run_dir:
            p.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR), help="run directory (default: %(default)s)")
        return p

    p = stage("ingest", cmd_ingest, "read captions into normalised, de-duplicated, hash-sharded Parquet")
    p.add_argument("--source", choices=["coco", "cc", "parquet"], help="input format")
    p.add_argument("--input", help="COCO captions JSON, Conceptual Captions TSV, Parquet or datasets dir")
    p.add_argument("--limit", type=int, help="keep this many captions (seeded sample)")
    p.add_argument("--num-shards", type=int, help="number of hash shards")

    p = stage("abstract", cmd_abstract, "LLM-write three more generic levels per caption (positive hierarchies)")
    p.add_argument("--backend", choices=["transformers", "vllm", "openai"], help="generation backend")
    p.add_argument("--model", help="model id, directory, or embedded:<name>")
    p.add_argument("--base-url", action="append", help="OpenAI-compatible endpoint (repeat for several)")
    p.add_argument("--batch-size", type=int, help="prompts per generate call")
    p.add_argument("--llm-budget", type=int, help="send at most this many captions to the LLM")
    p.add_argument("--threads", type=int, help="torch CPU threads for the transformers backend")
    p.add_argument("--structured-output", action="store_true", help="constrain answers to the format (vLLM)")

    p = stage("train-ordering", cmd_train_ordering, "train the seq2seq ordering model on the positive hierarchies")
    p.add_argument("--model", help="seq2seq model id, directory, or embedded:<name>")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--distill", action="store_true", help="then write positives for captions beyond the LLM budget (specific→generic)")

    stage("negatives", cmd_negatives, "sample sibling negatives generic→specific with the ordering model")

    p = stage("filter", cmd_filter, "keep rows whose positives entail upward and whose negatives differ")
    p.add_argument("--scorer", choices=["embedding", "nli"], help="entailment scorer")

    p = stage("release", cmd_release, "write an immutable, versioned, checksummed Parquet release")
    p.add_argument("--version", required=True, help="semantic version X.Y.Z")
    p.add_argument("--out", default=str(DEFAULT_RELEASES), help="releases root (default: %(default)s)")
    p.add_argument("--name", help="release name (default: from config)")
    p.add_argument("--from-stage", default="filter", choices=NAMES, help="stage whose accepted rows are released")

    p = sub.add_parser("push", help="publish a release to a Hugging Face dataset repo, tagged with its version",
                       description="upload one release version as one commit to a Hub dataset repo and tag it with "
                                   "the version (never moves an existing tag); token and endpoint from HF_TOKEN / "
                                   "`hf auth login` and HF_ENDPOINT")
    p.set_defaults(func=cmd_push)
    p.add_argument("release", help="release directory RELEASES/<name>/<version>")
    p.add_argument("--repo", required=True, help="dataset repo id <org>/<name>")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--dry-run", action="store_true", help="list the files and the tag that would be sent; send nothing")

    p = sub.add_parser("pull", help="fetch a release and verify every file's sha256",
                       description="fetch a release by manifest from a path, file://, http(s):// or hf://")
    p.set_defaults(func=cmd_pull)
    p.add_argument("source", help="path, file:// or http(s):// URL of releases/<name>, or hf://<org>/<repo> "
                                  "(the version's tag; hf://<org>/<repo>/<dir> for repos with version folders)")
    p.add_argument("--version", required=True, help="release version X.Y.Z")
    p.add_argument("--dest", default=str(DEFAULT_RELEASES), help="destination root (default: %(default)s)")
    p.add_argument("--manifest-sha256", help="expected sha256 of manifest.json (pin a release)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("export", help="write a release in another layout", description="export a release")
    p.set_defaults(func=cmd_export)
    p.add_argument("--release", required=True, help="release directory")
    p.add_argument("--format", choices=["hierarcaps-csv"], default="hierarcaps-csv", help="output layout")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--split", choices=["train", "test"], help="one split only")

    p = stage("finetune", cmd_finetune, "fine-tune a text encoder with the Radial Embedding loss on a release")
    p.add_argument("--release", required=True, help="release directory")
    p.add_argument("--encoder", help="encoder id, directory, or embedded:minilm")
    p.add_argument("--out", required=True, help="output directory for checkpoints and the encoder")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--lr", type=float, help="learning rate")

    p = sub.add_parser("evaluate", help="d_corr, retention and hierarchical precision/recall of an encoder",
                       description="evaluate an encoder on test hierarchies")
    p.set_defaults(func=cmd_evaluate)
    p.add_argument("--encoder", required=True, help="fine-tuned encoder directory, id, or embedded:minilm")
    p.add_argument("--test", required=True, help="release directory (its test split) or HierarCaps CSV")
    p.add_argument("--images", help="directory of images (enables precision/recall for encoders with an image tower)")
    p.add_argument("--baseline", help="encoder to compare against (default: the fine-tune's original encoder)")
    p.add_argument("--out", help="output directory (default: ENCODER/eval)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test hierarchies only")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run the encoder")

    p = sub.add_parser("report", help="HTML quality report with figures", description="write a quality report of a release")
    p.set_defaults(func=cmd_report)
    p.add_argument("--release", required=True, help="release directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--reference", help="reference CSV (HierarCaps layout) to compare against")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample shown")

    p = sub.add_parser("config", help="print a resolved config and its fingerprint", description="print a config")
    p.set_defaults(func=cmd_config)
    p.add_argument("--config", help="profile name or YAML path (default: cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, ValueError, RuntimeError, OSError) as exc:
        print(f"hiercaps-gen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
