"""Config system: every preset parses, unknown keys and wrong types fail with a one-line message."""
from pathlib import Path

import pytest

from vmas.config import Config, config_from_dict, config_to_dict, dump_config, load_config
from vmas.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    if path.name.startswith("codec_"):  # codec-training presets only use the codec/optim/data-crop fields
        return
    # Clip geometry must be self-consistent: frames = seconds * fps.
    assert cfg.data.num_frames == round(cfg.data.clip_seconds * cfg.data.fps)
    assert cfg.model.encoder.num_frames == cfg.data.num_frames
    assert cfg.model.encoder.image_size == cfg.data.image_size
    assert cfg.model.codec.n_q == cfg.model.lm.n_q and cfg.model.codec.bins == cfg.model.lm.card


def test_paper_preset_matches_spec():
    cfg = load_config(CONFIGS / "paper.yaml")
    lm = cfg.model.lm
    assert (lm.dim, lm.num_layers, lm.num_heads, lm.ffn_dim, lm.n_q, lm.card) == (1536, 48, 24, 6144, 4, 2048)
    assert cfg.model.encoder.q_strides == [[1, 4, 4], [1, 7, 7], [1, 2, 2]]
    assert cfg.model.codec.ratios == [8, 5, 4, 4] and cfg.model.codec.sample_rate == 32000
    assert (cfg.loss.beat_window, cfg.loss.beat_delta, cfg.loss.beat_lambda) == (5, 3, 0.5)
    assert cfg.generation.cfg == 3.0 and cfg.generation.top_k == 250


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lm:\n    dimm: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'model\.lm\.dimm'"):
        load_config(bad)


def test_wrong_type_and_bad_override(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="'optim.lr' must be float"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must look like"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_inheritance_and_roundtrip(tmp_path):
    child = tmp_path / "child.yaml"
    (tmp_path / "parent.yaml").write_text("optim:\n  lr: 0.5\n  warmup_steps: 7\n")
    child.write_text("base: parent.yaml\noptim:\n  lr: 2\n")
    cfg = load_config(child, ["train.seed=5", "model.lm.dim=64", "optim.lr_pretrained=1e-4"])
    assert cfg.optim.lr_pretrained == 1e-4  # YAML reads 1e-4 as a string; floats accept it
    assert cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)  # int in YAML coerced to float
    assert cfg.optim.warmup_steps == 7  # inherited
    assert cfg.train.seed == 5 and cfg.model.lm.dim == 64
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_one_kwargs_rule_for_every_section():
    """builders.constructor_kwargs passes every field by name unless builders.NOT_ARGS says who reads it; a new field
    that is neither is an error when the module is built (the stale skip list that broke bench_generate)."""
    import dataclasses

    from vmas.builders import NOT_ARGS, build_lm, constructor_kwargs
    from vmas.config import CodecConfig, EncoderConfig, LMConfig
    from vmas.models.codec import Codec
    from vmas.models.hiera import VideoHiera
    from vmas.models.lm import MusicLM

    for section, target in [(EncoderConfig(), VideoHiera), (CodecConfig(), Codec), (LMConfig(), MusicLM)]:
        kwargs = constructor_kwargs(section, target)
        names = {f.name for f in dataclasses.fields(section)}
        assert len(kwargs) + len(NOT_ARGS[type(section)]) == len(names)  # each field: an argument or declared
    assert constructor_kwargs(CodecConfig(ema_decay=0.5), Codec)["decay"] == 0.5  # the one renamed pair
    lm = LMConfig(dim=24, num_layers=1, num_heads=2, ffn_dim=8, card=8)
    assert constructor_kwargs(lm, MusicLM) == dict(dim=24, num_layers=1, num_heads=2, ffn_dim=8, n_q=4, card=8,
                                                   dropout=0.0, max_period=10000.0, grad_checkpointing=False)
    Extended = dataclasses.make_dataclass("Extended", [("new_knob", float, 0.5)], bases=(LMConfig,))
    with pytest.raises(TypeError, match="new_knob is not an argument of MusicLM"):
        build_lm(Extended(dim=24, num_layers=1, num_heads=2, ffn_dim=8, card=8))


def test_generation_config_extends_the_sampling_params():
    import dataclasses

    from vmas.config import GenerationConfig
    from vmas.sampling import SamplingParams

    gen = load_config(CONFIGS / "synthmv_tiny.yaml").generation
    assert isinstance(gen, SamplingParams) and isinstance(gen.sampling, SamplingParams)
    assert gen.sampling == SamplingParams(**{k: getattr(gen, k) for k in SamplingParams.names()})
    assert set(SamplingParams.names()) < {f.name for f in dataclasses.fields(GenerationConfig)}
