"""The ordering model: examples in both directions, and a real (tiny) training run that learns."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from hiercaps_gen.ordering.generate import OrderingModel
from hiercaps_gen.stages.train_ordering import train_ordering
from hiercaps_gen.ordering.tasks import (
    DOWN, UP, down_source, examples, heldout_ids, parse_up, up_target,
)
from hiercaps_gen.files import sha256_file

from .test_ordering_data import hierarchy_rows, tiny_config, trained_run, write_abstract

POSITIVE = ["animal", "dog", "a dog on a couch", "A small dog asleep on a couch."]


def test_examples_cover_both_directions() -> None:
    ex = examples("r1", POSITIVE)
    down = [e for e in ex if e.source.startswith(DOWN)]
    up = [e for e in ex if e.source.startswith(UP)]
    assert [e.target for e in down] == POSITIVE
    assert down[0].source == down_source([]) and down[0].source.endswith("anything")
    assert down[3].source.endswith("animal => dog => a dog on a couch")
    assert len(up) == 1 and up[0].source.endswith(POSITIVE[-1])
    assert parse_up(up[0].target) == POSITIVE[:3]
    assert parse_up("a dog on a couch = > dog= >animal") == ["animal", "dog", "a dog on a couch"]
    assert parse_up("only => two") is None and parse_up(up_target(POSITIVE) + " => extra") is None


def test_heldout_split_is_seeded_and_never_empty() -> None:
    ids = [f"id{i}" for i in range(50)]
    held = heldout_ids(ids, 0.1, seed=0)
    assert len(held) == 5 and held == heldout_ids(list(reversed(ids)), 0.1, seed=0)
    assert held != heldout_ids(ids, 0.1, seed=1)
    assert len(heldout_ids(ids[:3], 0.01, seed=0)) == 1


def test_training_lowers_heldout_loss_and_saves_a_loadable_model() -> None:
    run_dir = trained_run()
    directory = run_dir / "train-ordering"
    manifest = json.loads((directory / "manifest.json").read_text())
    log = json.loads((directory / "training_log.json").read_text())
    stats = manifest["stats"]
    assert len(log["steps"]) == stats["steps"] <= 80
    start, best = log["heldout"][0]["loss"], min(h["loss"] for h in log["heldout"])
    assert stats["heldout_loss_start"] == start and stats["heldout_loss_best"] == best
    assert log["heldout"][[h["loss"] for h in log["heldout"]].index(best)]["step"] == stats["best_step"] > 0
    vocab = len(OrderingModel.from_run(run_dir, "cpu").s2s.tokenizer)
    assert best < 0.8 * start and best < math.log(vocab) - 1.0, (start, best, vocab)  # well below uniform
    assert [h["step"] for h in log["heldout"]][:3] == [0, 40, 80][: len(log["heldout"])]
    assert manifest["stats"]["heldout_hierarchies"] == 6 and manifest["totals"]["in"] == 60
    assert manifest["model_hash"] == sha256_file(directory / "model" / "model.safetensors")[:16]
    for name in ("model/model.safetensors", "model/config.json", "model/tokenizer_config.json"):
        assert (directory / name).is_file()
    model = OrderingModel.from_run(run_dir, "cpu")
    outs = model.generate([down_source(POSITIVE[:1])], n=3, sample=True, seed=5)
    assert len(outs) == 1 and len(outs[0]) == 3
    assert outs == model.generate([down_source(POSITIVE[:1])], n=3, sample=True, seed=5)
    scored = model.scored([down_source(POSITIVE[:1])], n=3, sample=True, seed=5)[0]
    assert [text for text, _ in scored] == outs[0] and all(logprob <= 0 for _, logprob in scored)


def test_rerun_reuses_the_model_and_new_input_retrains(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run(), run_dir)
    before = json.loads((run_dir / "train-ordering" / "manifest.json").read_text())
    config = tiny_config()
    assert train_ordering(config, run_dir) == before  # same settings and input: nothing redone
    assert train_ordering(tiny_config(**{"ordering.distill": True, "ordering.threads": 2}), run_dir) == before
    retrained = train_ordering(tiny_config(**{"ordering.max_steps": 2}), run_dir)
    assert retrained["fingerprint"] != before["fingerprint"]
    assert retrained["model_hash"] != before["model_hash"]
    assert len(hierarchy_rows(60)) == retrained["totals"]["accepted"]


def test_same_seed_trains_the_same_model(tmp_path: Path) -> None:
    hashes = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_dir = tmp_path / name
        write_abstract(run_dir, hierarchy_rows(20))
        hashes.append(train_ordering(tiny_config(**{"seed": seed, "ordering.max_steps": 3}), run_dir)["model_hash"])
    assert hashes[0] == hashes[1] != hashes[2]
