from pathlib import Path

import pytest

from hiercaps_gen.config import PROFILES_DIR, ConfigError, load_config


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_shipped_profiles_load(profile):
    config = load_config(profile)
    assert len(config.fingerprint()) == 16


def test_fingerprint_follows_canonical_content(tmp_path: Path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("seed: 1\ningest: {limit: 5, num_shards: 2}\n")
    b.write_text("ingest:\n  num_shards: 2\n  limit: 5\nseed: 1\n")  # same content, other order
    assert load_config(a).fingerprint() == load_config(b).fingerprint()
    assert load_config(a).fingerprint() != load_config(a).with_overrides({"seed": 2}).fingerprint()


def test_an_override_to_none_sets_none():
    """An optional field can be switched off by override (`filter.fluency_model: None`)."""
    assert load_config("gpu").filter.fluency_model is not None
    assert load_config("gpu").with_overrides({"filter.fluency_model": None}).filter.fluency_model is None
    with pytest.raises(ConfigError, match="filter.fluency_model"):  # the cpu profile's negatives use the rule
        load_config("cpu").with_overrides({"filter.fluency_model": None})


def test_unknown_keys_and_bad_values_are_clear_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: {num_shard: 3}\n")
    with pytest.raises(ConfigError, match="ingest.num_shard"):
        load_config(bad)
    bad.write_text("abstract: {llm: {temperature: -1}}\n")
    with pytest.raises(ConfigError, match="abstract.llm.temperature"):
        load_config(bad)
    bad.write_text("release: {name: ../../etc}\n")
    with pytest.raises(ConfigError, match="release.name"):
        load_config(bad)
    bad.write_text("negatives: {level1_pair: margin}\n")  # p_1 beside n_1 needs n_1 drawn from the table
    with pytest.raises(ConfigError, match="level1_source: categories"):
        load_config(bad)
    bad.write_text("negatives: {fluent: true}\nfilter: {fluency_model: null}\n")  # the filter's rule needs its model
    with pytest.raises(ConfigError, match="filter.fluency_model"):
        load_config(bad)
    bad.write_text("seed: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-profile")
