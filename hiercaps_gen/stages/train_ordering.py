"""train-ordering: fine-tune one seq2seq model on a run's positive hierarchies, both directions.

Writes RUN/train-ordering/model/ (model.safetensors, config, tokenizer files), training_log.json
(loss per step, held-out loss every `eval_every` steps) and manifest.json last, so a manifest
proves a complete model. A rerun with the same settings and the same abstract shards is a no-op.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from hiercaps_gen import __version__
from hiercaps_gen.config import RunConfig
from hiercaps_gen.models import pick_device
from hiercaps_gen.ordering.generate import MODEL_DIR, TRAIN_STAGE
from hiercaps_gen.ordering.model import Seq2Seq, build, freeze_below, prompt_ids, torch_threads
from hiercaps_gen.hierarchy import is_hierarchy
from hiercaps_gen.ordering.tasks import Example, examples, heldout_ids
from hiercaps_gen.files import atomic_write_json, read_json, sha256_file
from hiercaps_gen.stages.base import MANIFEST, StageManifest, load_manifest, read_stage_rows, stage_dir
from hiercaps_gen.stages.registry import SPECS

STAGE = TRAIN_STAGE
INPUT_STAGE = "abstract"
LOG = "training_log.json"

Batch = dict[str, torch.Tensor]


def fingerprint(config: RunConfig, run_dir: Path) -> str:
    """Training settings + seed + the exact abstract shards it learns from (toggling distillation or
    the thread count does not retrain: the registry ignores them)."""
    upstream = [s["output"]["sha256"] for s in load_manifest(run_dir, INPUT_STAGE)["shards"]]
    return SPECS[STAGE].fingerprint(config, abstract=upstream)


def _encode(s2s: Seq2Seq, batch: list[Example], max_source: int, max_target: int) -> Batch:
    if s2s.causal:
        return _encode_causal(s2s, batch, max_source, max_target)
    tok = s2s.tokenizer
    enc = tok([e.source for e in batch], truncation=True, max_length=max_source, padding=True, return_tensors="pt")
    targets = [tok(e.target, add_special_tokens=False)["input_ids"][: max_target - 1] + [s2s.eos_id] for e in batch]
    width = max(len(t) for t in targets)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, ids in enumerate(targets):
        labels[i, : len(ids)] = torch.tensor(ids)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def _encode_causal(s2s: Seq2Seq, batch: list[Example], max_source: int, max_target: int) -> Batch:
    """prompt + target + eos, right-padded; only the target (and eos) is scored."""
    tok = s2s.tokenizer
    prompts = prompt_ids(s2s.tokenizer, [e.source for e in batch], max_source)
    targets = [ids[: max_target - 1] + [s2s.eos_id] for ids in tok([e.target for e in batch], add_special_tokens=False)["input_ids"]]
    width = max(len(p) + len(t) for p, t in zip(prompts, targets))
    input_ids = torch.full((len(batch), width), s2s.pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        input_ids[i, : len(p) + len(t)] = torch.tensor(p + t)
        mask[i, : len(p) + len(t)] = 1
        labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _batches(items: list[Example], size: int) -> list[list[Example]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _autocast(device: str, bf16: bool) -> Any:
    """bf16 autocast (CPU or CUDA) when asked; weights and optimizer state stay float32."""
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                          enabled=bf16)


@torch.inference_mode()
def heldout_loss(s2s: Seq2Seq, batches: list[Batch], device: str, bf16: bool = False) -> float:
    """Mean cross-entropy per target token over the held-out hierarchies."""
    s2s.model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        n = int((batch["labels"] != -100).sum())
        with _autocast(device, bf16):
            out = s2s.model(**{k: v.to(device) for k, v in batch.items()})
        total += float(out.loss) * n
        tokens += n
    s2s.model.train()
    return total / max(tokens, 1)


def _training_data(config: RunConfig, run_dir: Path) -> tuple[list[Example], list[Example], dict[str, int]]:
    rows = read_stage_rows(run_dir, INPUT_STAGE)
    usable = [r for r in rows if is_hierarchy(r["positive"])]
    held = heldout_ids([r["id"] for r in usable], config.ordering.heldout_fraction, config.seed)
    train = [e for r in usable if r["id"] not in held for e in examples(r["id"], r["positive"])]
    test = [e for r in usable if r["id"] in held for e in examples(r["id"], r["positive"])]
    counts = {
        "rows": len(rows), "malformed_rows": len(rows) - len(usable), "train_hierarchies": len(usable) - len(held),
        "heldout_hierarchies": len(held), "train_examples": len(train), "heldout_examples": len(test),
    }
    return train, test, counts


def _valid_existing(directory: Path, fp: str) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if manifest.get("fingerprint") != fp:
        return None
    for name, sha in manifest["files"].items():
        if not (directory / name).is_file() or sha256_file(directory / name) != sha:
            return None
    return manifest


def _snapshot(s2s: Seq2Seq) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in s2s.model.state_dict().items()}


def _save(s2s: Seq2Seq, directory: Path) -> None:
    """Save to a temporary directory, then swap it in: never a half-written model under model/."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    s2s.model.save_pretrained(tmp, safe_serialization=True)
    s2s.tokenizer.save_pretrained(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def train_ordering(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Train (or reuse) the ordering model of `run_dir`; return the train-ordering manifest."""
    with torch_threads(config.ordering.threads):
        return _train(config, Path(run_dir))


def _train(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    cfg = config.ordering
    directory = stage_dir(run_dir, STAGE)
    fp = fingerprint(config, run_dir)
    if (existing := _valid_existing(directory, fp)) is not None:
        return existing
    train, test, counts = _training_data(config, run_dir)
    if not train or not test:
        raise ValueError(f"{STAGE}: need at least 2 valid hierarchies in {run_dir}/{INPUT_STAGE}, got {counts}")

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(cfg.device)
    s2s = build(cfg, config.seed, [t for e in train for t in (e.source, e.target)]).to(device)
    trainable = freeze_below(s2s, cfg.train_layers)
    s2s.model.train()
    test_batches = [_encode(s2s, b, cfg.max_source_len, cfg.max_target_len) for b in _batches(test, cfg.batch_size)]

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = min(cfg.max_steps or 10**12, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_fraction * total)
    optimizer = torch.optim.AdamW([p for p in s2s.model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    order = random.Random(config.seed)
    start_loss = heldout_loss(s2s, test_batches, device, cfg.bf16)
    log: dict[str, Any] = {"steps": [], "heldout": [{"step": 0, "loss": start_loss}]}
    best = (start_loss, 0, _snapshot(s2s))
    start, step, stop = time.perf_counter(), 0, False
    while step < total and not stop:
        shuffled = train[:]
        order.shuffle(shuffled)
        for examples_ in _batches(shuffled, cfg.batch_size):
            batch = _encode(s2s, examples_, cfg.max_source_len, cfg.max_target_len)
            with _autocast(device, cfg.bf16):
                loss = s2s.model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in s2s.model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            log["steps"].append({"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0]})
            if step % cfg.eval_every == 0 or step == total:
                held = heldout_loss(s2s, test_batches, device, cfg.bf16)
                log["heldout"].append({"step": step, "loss": held})
                if held < best[0]:
                    best = (held, step, _snapshot(s2s))
                stop = cfg.patience is not None and step - best[1] >= cfg.patience * cfg.eval_every
            if step == total or stop:
                break
    seconds = time.perf_counter() - start
    s2s.model.load_state_dict(best[2])  # early stopping: the weights with the lowest held-out loss
    log["best_step"] = best[1]

    target = directory / MODEL_DIR
    _save(s2s, target)
    log.update(counts=counts, seconds=seconds, device=device)
    atomic_write_json(directory / LOG, log)
    files = {str(p.relative_to(directory)): sha256_file(p) for p in sorted(target.iterdir()) if p.is_file()}
    files[LOG] = sha256_file(directory / LOG)
    return StageManifest(
        stage=STAGE,
        fingerprint=fp,
        code_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=cfg.model_dump(mode="json"),
        base_model=cfg.model,
        model_dir=MODEL_DIR,
        model_hash=files[f"{MODEL_DIR}/model.safetensors"][:16],
        files=files,
        # rows read / trained on / skipped as malformed (the negatives stage rejects those with a reason)
        totals={"in": counts["rows"], "accepted": counts["rows"] - counts["malformed_rows"],
                "rejected": counts["malformed_rows"]},
        stats={**counts, "steps": step, "seconds": seconds, "device": device, "best_step": best[1],
               "stopped_early": stop, "heldout_loss_start": start_loss, "heldout_loss_best": best[0],
               "heldout_loss_last": log["heldout"][-1]["loss"],
               "parameters": sum(p.numel() for p in s2s.model.parameters()), "trainable_parameters": trainable},
    ).write(directory)
