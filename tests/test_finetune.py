"""finetune: both encoder families train, checkpoints round-trip, a killed run resumes exactly."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from hiercaps_gen.config import RunConfig
from hiercaps_gen.encoders import ClipEncoder, SentenceEncoder, TextEmbedder, TextEncoder, load_encoder
from hiercaps_gen.stages.evaluate import d_corr
from hiercaps_gen.stages.finetune import (
    FinetuneError,
    batch_loss,
    buffer_shuffle,
    epoch_batches,
    finetune,
    iter_hierarchies,
    latest_checkpoint,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
)
from hiercaps_gen.models import resolve
from hiercaps_gen.files import atomic_write_bytes, write_parquet
from hiercaps_gen.hierarchy import RELEASE
from hiercaps_gen.release.manifest import ReleaseFile, ReleaseManifest
from hiercaps_gen.release.read import split_files

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Hand-written hierarchies (positive, negative), generic -> specific, negatives are siblings.
HIERARCHIES = [
    ("vehicle => motorcycle => a motorcycle parked outside => A red motorcycle parked outside a small garage.",
     "animal => bicycle => a motorcycle on a race track => a motorcycle parked in a showroom next to cars ."),
    ("animal => dog => a dog playing in a park => A brown dog catching a frisbee in a grassy park.",
     "food => cat => a dog sleeping on a couch => a dog playing in a park with two children on a bench ."),
    ("food => pizza => a pizza on a table => A large pepperoni pizza on a wooden table next to drinks.",
     "furniture => salad => a pizza in an oven => a pizza on a table with a knife and a single candle ."),
    ("furniture => bed => a bed in a bedroom => A neatly made bed with white sheets in a hotel bedroom.",
     "building => chair => a bed in a store => a bed in a bedroom with a cat sleeping on the pillow ."),
    ("sport => tennis => a man playing tennis => A man swinging a tennis racket on a clay court.",
     "music => golf => a man watching tennis => a man playing tennis at night under bright lights ."),
    ("bird => seagull => a seagull on a beach => A white seagull standing on the sand near the waves.",
     "vehicle => pigeon => a seagull flying over a city => a seagull on a beach eating a fish from a bucket ."),
    ("kitchen => stove => a stove with pots => A stainless steel stove with two pots boiling water.",
     "bathroom => fridge => a stove in a store => a stove with pots in an outdoor camping kitchen ."),
    ("train => passenger train => a train at a station => A blue passenger train waiting at a busy station.",
     "boat => freight train => a train crossing a bridge => a train at a station covered in snow and ice ."),
]


def release_rows(n: int, split: str) -> list[dict]:
    rows = []
    for i in range(n):
        positive, negative = (s.split(" => ") for s in HIERARCHIES[i % len(HIERARCHIES)])
        rows.append({
            "id": f"{split}-{i:04d}", "source": "test", "source_id": str(i), "image_id": str(i % len(HIERARCHIES)),
            "image_url": f"http://images.example/img{i % len(HIERARCHIES)}.jpg", "caption": positive[-1],
            "positive": positive, "positive_origin": "llm", "generator_model": "hand", "prompt_version": "v0",
            "prompt_hash": "0", "seed": 0, "attempts": 1, "negative": negative, "ordering_model_hash": "0",
            "filter_score": 1.0, "split": split,
        })
    return rows


def write_release(directory: Path, train: list[dict], test: list[dict] | None = None) -> Path:
    """A release directory with a real manifest, holding rows `release.write` would refuse (bad levels)."""
    test = test if test is not None else release_rows(len(HIERARCHIES), "test")
    files = []
    for split, rows in (("train", train), ("test", test)):
        entry = write_parquet(directory / f"data/{split}-00000-of-00001.parquet",
                              pa.Table.from_pylist(rows, schema=RELEASE), directory)
        files.append(ReleaseFile(**entry.to_dict(), split=split))
    manifest = ReleaseManifest(name="hand", version="0.0.1", files=files, splits={"train": len(train), "test": len(test)})
    atomic_write_bytes(directory / "manifest.json", manifest.to_json_bytes())
    return directory


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve("embedded:minilm").path)


def tiny_sentence_encoder(seed: int = 0) -> SentenceEncoder:
    from transformers import BertConfig, BertModel

    tokenizer = minilm_tokenizer()
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    return SentenceEncoder(model, tokenizer, "mean", max_length=64, base="tiny-bert")


def tiny_clip_encoder(seed: int = 0) -> ClipEncoder:
    """A CLIP built from a config (no hub), with the MiniLM WordPiece tokenizer: [SEP] ends a text."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = minilm_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                     "eos_token_id": tokenizer.sep_token_id, "bos_token_id": tokenizer.cls_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return ClipEncoder.from_clip(CLIPModel(config), tokenizer, base="tiny-clip", image_processor=processor)


ENCODERS = {"sentence": tiny_sentence_encoder, "clip": tiny_clip_encoder}


def tiny_config(**finetune: object) -> RunConfig:
    return RunConfig().with_overrides({"finetune.device": "cpu", "finetune.learning_rate": 1e-3,
                                       **{f"finetune.{k}": v for k, v in finetune.items()}})


def lambdas(config: RunConfig) -> dict[str, float]:
    f = config.finetune
    return {"lambda_pull": f.lambda_pull, "lambda_entail": f.lambda_entail, "lambda_margin": f.lambda_margin}


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_training_steps_lower_the_loss_on_a_fixed_batch(kind: str, tmp_path: Path) -> None:
    encoder = ENCODERS[kind]().eval()  # as the stage trains: dropout off
    frozen = encoder.frozen_copy()
    batch = next(epoch_batches(split_files(write_release(tmp_path, release_rows(8, "train")), "train"), 8, 100, 0, 0))
    optimizer = make_optimizer(encoder, 1e-3)
    weights = lambdas(tiny_config())
    losses = []
    for _ in range(6):
        loss = batch_loss(encoder, frozen, batch, weights)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        losses.append(loss.total.item())
    assert losses[0] == pytest.approx(batch_loss(frozen, frozen, batch, weights).total.item(), abs=1e-5)
    assert batch_loss(encoder, frozen, batch, weights).total.item() < losses[0] - 0.05


def _authors_re_loss(encoder: TextEncoder, frozen: TextEncoder, batch: list, lambda_pull: float,
                     lambda_entail: float, lambda_margin: float, pull_texts: int = 8) -> float:
    """The paper's RE loss written out from its formula, one text at a time in float64 (no batching,
    no shared code with re_loss.py): Ξ_r(e, e') = arccos cos(e − r, e' − e); P_k = Ξ(p_k, p_{k+1}),
    N_k = Ξ(p_k, n_k), k = 1..3; pull-back averaged over all eight texts of each pair (the authors'
    `batch2losses`, n_4 included). `pull_texts=7` is the old, wrong definition (n_4 left out)."""
    def enc(model: TextEncoder, text: str) -> list[float]:
        return [float(x) for x in model.encode([text])[0]]

    def sub(a: list[float], b: list[float]) -> list[float]:
        return [x - y for x, y in zip(a, b)]

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b))
        return dot / max(math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)), 1e-8)

    r = enc(encoder, "")

    def xi(e: list[float], child: list[float]) -> float:
        return math.acos(min(max(cos(sub(e, r), sub(child, e)), -1 + 1e-6), 1 - 1e-6))

    P, N, sims = [], [], []
    for h in batch:
        p = [enc(encoder, t) for t in h.positive]
        n = [enc(encoder, t) for t in h.negative]
        P += [xi(p[k], p[k + 1]) for k in range(3)]
        N += [xi(p[k], n[k]) for k in range(3)]
        texts = list(h.positive) + list(h.negative)
        sims += [cos(enc(encoder, t), enc(frozen, t)) for t in texts[:pull_texts]]
    pull = (1 - sum(sims) / len(sims)) / 2
    entail = sum(P) / len(P) - sum(N) / len(N)
    i_max, i_min = max(range(len(P)), key=P.__getitem__), min(range(len(N)), key=N.__getitem__)
    hardest = (P[i_max] - N[i_max]) + (P[i_min] - N[i_min])
    return lambda_pull * pull + lambda_entail * entail + lambda_margin * hardest


def test_batch_loss_equals_the_authors_formula(tmp_path: Path) -> None:
    frozen = tiny_sentence_encoder(seed=0).eval()
    encoder = tiny_sentence_encoder(seed=0).eval()
    with torch.no_grad():
        for i, p in enumerate(encoder.trainable_state().values()):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    batch = next(epoch_batches(split_files(write_release(tmp_path, release_rows(8, "train")), "train"), 8, 100, 0, 0))
    weights = lambdas(tiny_config())
    got = batch_loss(encoder, frozen, batch, weights).total.item()
    assert got == pytest.approx(_authors_re_loss(encoder, frozen, batch, **weights), abs=1e-4)
    # The pull-back without n_4 is a different number on this batch: the check above can fail.
    assert abs(got - _authors_re_loss(encoder, frozen, batch, **weights, pull_texts=7)) > 1e-3


def test_clip_trains_only_its_text_path() -> None:
    encoder = tiny_clip_encoder()
    trainable = set(encoder.trainable_state())
    assert trainable and all(n.startswith(("text_model.", "text_projection.")) for n in trainable)
    assert not any(p.requires_grad for p in encoder.vision_model.parameters())


MIXED_LENGTHS = ["a red motorcycle parked outside a small garage", "dog", "", "two people on a beach", "cat",
                 "a man riding a wave on top of a surfboard", "bus"]


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_encode_batches_by_length_and_keeps_the_texts_order(kind: str) -> None:
    """Batches are cut from the texts sorted by length; each text's vector is the one it gets alone."""
    encoder = ENCODERS[kind]()
    together = encoder.encode(MIXED_LENGTHS, batch_size=3)
    alone = torch.cat([encoder.encode([t]) for t in MIXED_LENGTHS])
    assert together.shape == alone.shape and torch.allclose(together, alone, atol=1e-5)


def test_the_scorer_batches_by_length_and_keeps_the_texts_order() -> None:
    scorer = TextEmbedder("embedded:minilm", device="cpu", batch_size=3)  # the filter's frozen MiniLM
    together = scorer.encode(MIXED_LENGTHS)
    assert np.allclose(together, np.concatenate([scorer.encode([t]) for t in MIXED_LENGTHS]), atol=1e-5)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_encoder_directory_round_trips(kind: str, tmp_path: Path) -> None:
    encoder = ENCODERS[kind]()
    with torch.no_grad():
        for p in encoder.trainable_state().values():
            p.add_(0.01)  # differ from any freshly initialised model
    encoder.save(tmp_path / "enc")
    assert list((tmp_path / "enc").glob("*.safetensors")) and not list((tmp_path / "enc").glob("*.bin"))
    loaded = load_encoder(tmp_path / "enc", device="cpu")
    assert type(loaded) is type(encoder) and loaded.tuned and loaded.base == encoder.base
    texts = ["a dog", "", "a red motorcycle parked outside"]
    assert torch.allclose(loaded.encode(texts), encoder.encode(texts), atol=1e-6)
    assert torch.allclose(loaded.encode(texts).norm(dim=-1), torch.ones(3), atol=1e-5)


def test_checkpoint_round_trips_weights_optimizer_and_rng(tmp_path: Path) -> None:
    encoder = tiny_sentence_encoder()
    optimizer = make_optimizer(encoder, 1e-3)
    batch = next(epoch_batches(split_files(write_release(tmp_path, release_rows(8, "train")), "train"), 4, 100, 0, 0))
    loss = batch_loss(encoder, encoder.frozen_copy(), batch, lambdas(tiny_config()))
    loss.total.backward()
    optimizer.step()
    torch.manual_seed(123)
    path = save_checkpoint(tmp_path / "ckpt", encoder, optimizer, {"step": 7, "note": "x"})
    expected_draw = torch.rand(3)
    assert latest_checkpoint(tmp_path / "ckpt") == path

    fresh = tiny_sentence_encoder(seed=1)
    fresh_opt = make_optimizer(fresh, 1e-3)
    state = load_checkpoint(path, fresh, fresh_opt)
    assert state["step"] == 7 and state["note"] == "x"
    assert torch.rand(3).tolist() == expected_draw.tolist()  # RNG restored
    for name, value in encoder.trainable_state().items():
        assert torch.equal(fresh.trainable_state()[name], value)
    a, b = optimizer.state_dict(), fresh_opt.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"]
    for index, entry in a["state"].items():
        for key, value in entry.items():
            assert torch.equal(b["state"][index][key], value)


def test_stream_counts_invalid_rows_and_shuffles_by_seed(tmp_path: Path) -> None:
    rows = release_rows(20, "train")
    rows[3]["positive"] = rows[3]["positive"][:3]
    rows[5]["negative"] = None
    rows[7]["positive"] = ["a", "", "c", "d"]
    files = split_files(write_release(tmp_path, rows), "train")
    skipped: Counter[str] = Counter()
    assert len(list(iter_hierarchies(files, skipped))) == 17
    assert skipped == {"positive_not_4_levels": 1, "negative_not_4_levels": 1, "positive_empty_level": 1}
    order = lambda seed, epoch: [h.id for b in epoch_batches(files, 4, 100, seed, epoch) for h in b]  # noqa: E731
    assert order(0, 0) == order(0, 0) and sorted(order(0, 0)) == sorted(order(0, 1)) and order(0, 0) != order(0, 1)
    assert [len(b) for b in epoch_batches(files, 4, 100, 0, 0)] == [4, 4, 4, 4, 1]
    items = list(iter_hierarchies(files))
    small_buffer = list(buffer_shuffle(items, 3, random.Random(1)))
    assert sorted(h.id for h in small_buffer) == sorted(h.id for h in items) and small_buffer != items


def _trained_state(encoder: TextEncoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.trainable_state().items()}


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = write_release(tmp_path / "release", release_rows(16, "train"))
    config = tiny_config(batch_size=4, epochs=2, checkpoint_every=3)  # 8 steps over 2 epochs

    straight = tiny_sentence_encoder()
    result = finetune(config, release, tmp_path / "straight", encoder=straight, progress=False)
    assert result["steps"] == 8 and result["epochs_completed"] == 2 and result["hierarchies"] == 32
    log = json.loads((tmp_path / "straight" / "loss_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == list(range(1, 9))

    import hiercaps_gen.stages.finetune as stage

    calls = {"n": 0}
    real = stage.batch_loss

    def dies_at_step_8(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # killed in the second epoch, after the step-6 checkpoint
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "batch_loss", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, release, tmp_path / "killed", encoder=tiny_sentence_encoder(), progress=False)
    monkeypatch.setattr(stage, "batch_loss", real)
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step-0000006"

    resumed_encoder = tiny_sentence_encoder()
    resumed = finetune(config, release, tmp_path / "killed", encoder=resumed_encoder, progress=False)
    assert resumed["resumed_from_step"] == 6 and resumed["steps"] == 8
    for name, value in _trained_state(straight).items():
        assert torch.allclose(resumed_encoder.trainable_state()[name], value, atol=1e-6), name
    resumed_log = json.loads((tmp_path / "killed" / "loss_log.json").read_text())["steps"]
    assert [s["loss"] for s in resumed_log] == pytest.approx([s["loss"] for s in log["steps"]], abs=1e-5)
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step-0000008"  # the final state

    again = finetune(config, release, tmp_path / "killed", encoder=tiny_sentence_encoder(), progress=False)
    assert again == resumed  # a finished run is not redone


def test_a_finished_run_extends_from_its_final_checkpoint(tmp_path: Path) -> None:
    release = write_release(tmp_path / "release", release_rows(12, "train"))  # 3 steps of 4 per epoch
    straight = tiny_sentence_encoder()
    finetune(tiny_config(batch_size=4, epochs=2), release, tmp_path / "straight", encoder=straight, progress=False)
    first = finetune(tiny_config(batch_size=4, epochs=1), release, tmp_path / "out",
                     encoder=tiny_sentence_encoder(), progress=False)
    assert first["steps"] == 3 and first["resumed_from_step"] is None
    extended_encoder = tiny_sentence_encoder()
    extended = finetune(tiny_config(batch_size=4, epochs=2), release, tmp_path / "out",
                        encoder=extended_encoder, progress=False)
    assert extended["resumed_from_step"] == 3 and extended["steps"] == 6 and extended["epochs_completed"] == 2
    for name, value in _trained_state(straight).items():
        assert torch.allclose(extended_encoder.trainable_state()[name], value, atol=1e-6), name


def test_refuses_checkpoints_of_another_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = write_release(tmp_path / "release", release_rows(16, "train"))
    import hiercaps_gen.stages.finetune as stage

    real = stage.batch_loss
    calls = {"n": 0}

    def dies_at_step_3(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "batch_loss", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_config(batch_size=4, checkpoint_every=2), release, tmp_path / "out",
                 encoder=tiny_sentence_encoder(), progress=False)
    monkeypatch.setattr(stage, "batch_loss", real)
    with pytest.raises(FinetuneError, match="different run"):
        finetune(tiny_config(batch_size=4, checkpoint_every=2, lambda_pull=1.0), release, tmp_path / "out",
                 encoder=tiny_sentence_encoder(), progress=False)


def test_no_valid_rows_is_an_error(tmp_path: Path) -> None:
    rows = release_rows(2, "train")
    for row in rows:
        row["negative"] = row["negative"][:2]
    with pytest.raises(FinetuneError, match="no valid train hierarchies"):
        finetune(tiny_config(), write_release(tmp_path, rows), tmp_path / "out", encoder=tiny_sentence_encoder(),
                 progress=False)


def test_clip_finetune_writes_an_encoder_evaluate_can_load(tmp_path: Path) -> None:
    release = write_release(tmp_path / "release", release_rows(8, "train"))
    result = finetune(tiny_config(batch_size=4), release, tmp_path / "out", encoder=tiny_clip_encoder(), progress=False)
    loaded = load_encoder(result["encoder_dir"], device="cpu")
    assert isinstance(loaded, ClipEncoder) and loaded.has_images and loaded.base == "tiny-clip"
    assert result["encoder_type"] == "clip" and result["steps"] == 2


@pytest.mark.slow
def test_real_minilm_learns_the_hierarchy_order(tmp_path: Path) -> None:
    """The one test on the embedded MiniLM with the default config: d_corr on the train chains rises."""
    release = write_release(tmp_path / "release", release_rows(32, "train"))
    config = RunConfig().with_overrides({"finetune.device": "cpu"})
    before = d_corr(load_encoder("embedded:minilm", device="cpu"), [h.split(" => ") for h, _ in HIERARCHIES])
    result = finetune(config, release, tmp_path / "out", progress=False)
    after = d_corr(load_encoder(result["encoder_dir"], device="cpu"), [h.split(" => ") for h, _ in HIERARCHIES])
    assert result["steps"] == 4 and result["learning_rate"] == SentenceEncoder.default_learning_rate
    assert after > before
