"""Config validation before anything is built: one line per mistake, naming the key and the fix.

A run that fails after minutes of model building (or on rank 7 of 32) because of a batch-size typo wastes a
cluster slot; these checks need only the config, the world size and the file system.
"""
from __future__ import annotations

import typing as tp
from pathlib import Path

from vmas.config import Config
from vmas.data.loader import expand_shards
from vmas.errors import ConfigError, DataError

PRECISIONS = ("fp32", "bf16")
ENGINES = ("deepspeed", "torch")


def check_config(cfg: Config, world_size: int) -> int:
    """Fail early with one line per mistake; returns the global batch (clips per optimiser step)."""
    t, d, o = cfg.train, cfg.data, cfg.optim
    if t.engine not in ENGINES:
        raise ConfigError(f"train.engine: unknown '{t.engine}' (use one of {', '.join(ENGINES)})")
    if t.engine == "torch" and world_size > 1:
        raise ConfigError(f"train.engine=torch runs one process but WORLD_SIZE={world_size}: use train.engine=deepspeed")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision: unknown '{t.precision}' (use one of {', '.join(PRECISIONS)})")
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage must be 0, 1, 2 or 3, got {t.zero_stage}")
    if d.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError(f"data.batch_size ({d.batch_size}) and train.grad_accum ({t.grad_accum}) must be >= 1")
    product = d.batch_size * t.grad_accum * world_size
    if t.global_batch and t.global_batch != product:
        raise ConfigError(
            f"train.global_batch={t.global_batch} but data.batch_size x train.grad_accum x world size = "
            f"{d.batch_size} x {t.grad_accum} x {world_size} = {product}: change one of them (or set global_batch=0)")
    if o.max_steps < 1 or o.warmup_steps < 0:
        raise ConfigError(f"optim.max_steps ({o.max_steps}) must be >= 1 and optim.warmup_steps >= 0")
    if not t.synthetic:
        _check_train_shards(d.train_shards)
    if not 0.0 <= d.unpaired_fraction < 1.0:
        raise ConfigError(f"data.unpaired_fraction must be in [0, 1), got {d.unpaired_fraction} (the share of "
                          "music-only clips; 0 = paired only)")
    if d.unpaired_fraction > 0 and not t.synthetic:
        _check_train_shards(d.unpaired_shards, "data.unpaired_shards")
    if t.deepspeed_config and not Path(t.deepspeed_config).is_file():
        raise ConfigError(f"train.deepspeed_config: {t.deepspeed_config} not found (see configs/deepspeed/)")
    if t.early_stop > 0 and not (t.eval_every > 0 and d.val_shards):
        raise ConfigError(f"train.early_stop={t.early_stop} can never stop the run: it counts validations, which need "
                          f"train.eval_every > 0 (is {t.eval_every}) and data.val_shards (is {d.val_shards!r}); set "
                          "both, or train.early_stop=0")
    enc_frames = cfg.model.encoder.num_frames
    if d.num_frames != enc_frames or d.image_size != cfg.model.encoder.image_size:
        raise ConfigError(f"data frames {d.num_frames}x{d.image_size}px != model.encoder {enc_frames}x"
                          f"{cfg.model.encoder.image_size}px: make data.num_frames/image_size match the encoder")
    return product


def _check_train_shards(pattern, key: str = "data.train_shards") -> None:
    """Local shards must exist (remote ``://`` and ``pipe:`` sources are only found out when read)."""
    if not pattern:
        raise ConfigError(f"{key} is empty: point it at the training shards "
                          "(e.g. data/shards/train-{000000..000099}.tar) or run with --synthetic")
    try:
        shards = expand_shards(pattern)
    except DataError as err:
        raise ConfigError(str(err)) from None
    local = [s for s in shards if "://" not in s and not s.startswith("pipe:")]
    missing = [s for s in local if not Path(s).is_file()]
    if missing:
        raise ConfigError(f"{key}: {len(missing)} of {len(shards)} shards do not exist "
                          f"(first: {missing[0]}); fix the path or run with --synthetic")


def config_warnings(cfg: Config) -> tp.List[str]:
    """Settings this run will not use although they look meant to be used (one line each, logged at start-up):
    a run must not look as if it validated or mixed music-only clips when it does not (issue 36)."""
    t, d = cfg.train, cfg.data
    out = []
    if d.val_shards and t.eval_every <= 0:
        out.append(f"data.val_shards={d.val_shards!r} is not read: train.eval_every=0 turns validation off "
                   "(best_val_ce stays null); set train.eval_every=N")
    if t.eval_every > 0 and not d.val_shards:
        out.append(f"train.eval_every={t.eval_every} does nothing: data.val_shards is empty (no validation runs)")
    if t.synthetic and d.unpaired_fraction > 0:
        out.append(f"data.unpaired_fraction={d.unpaired_fraction:g} is not used: synthetic batches (train.synthetic="
                   "true) are all paired clips")
    return out


UNREAD_BY_TRAINING = {"data.curation.": "curation (python -m vmas.disco_mv)",
                      "data.preprocess.": "preprocessing (tools/preprocess.py)"}
"""Config sections a training run carries (they are stored with it) but never reads, and who does."""


def unread_overrides(overrides: tp.Sequence[str]) -> tp.List[str]:
    """One line per command-line override that training never reads (it would look applied and do nothing)."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        for prefix, reader in UNREAD_BY_TRAINING.items():
            if key.startswith(prefix):
                out.append(f"{key} has no effect on training: it is read by {reader}")
    return out
