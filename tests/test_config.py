"""Profiles: every shipped profile loads; unknown keys and bad values name the key."""

from __future__ import annotations

import pytest

from components.config import PROFILE_DIR, ConfigError, config_hash, load_config


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_shipped_profiles_load(profile):
    cfg = load_config(profile)
    assert cfg.run.name


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  synthetic:\n    memebrs: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "data.synthetic.memebrs" in msg and "members" in msg  # the key and the fix


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"split\.test_fraction"):
        load_config("local", {"split.test_fraction": 1.5})
    with pytest.raises(ConfigError, match="data.mapping.spec"):
        load_config("local", {"data.source": "mapping"})


def test_missing_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="local"):
        load_config("no-such-profile")


def test_hash_is_stable_and_sensitive():
    a, b = load_config("local"), load_config("local")
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16
    assert config_hash(load_config("local", {"run.seed": 1})) != config_hash(a)
    # key order in the source does not matter
    assert config_hash({"x": 1, "y": 2}) == config_hash({"y": 2, "x": 1})


def test_override_reaches_one_entry_of_a_list_section():
    from pipelines.keys import select_config

    cfg = load_config("local", {"compress.chain.1.train.kd_weight": 0})
    assert [s.train.kd_weight for s in cfg.compress.chain] == [1.0, 0.0]  # only step 1
    assert select_config(cfg, ["compress.chain.1"])["compress.chain.1"]["train"]["kd_weight"] == 0
    with pytest.raises(ConfigError, match="index"):
        load_config("local", {"compress.chain.7.train.kd_weight": 0})
    with pytest.raises(ConfigError, match="hidden_size"):  # pruning keeps the width
        load_config("local", {"compress.chain.0.hidden_size": 64})
