"""The VMAs training solver: one config -> model, data, losses, optimiser, engine; the step, the loop, logging.

Per optimiser step (SPEC §5)::

    for each of grad_accum micro-batches:
        out  = model(frames, codes, tag_emb, tag_mask)              # VMASOutput, condition dropout inside
        L_ar = beat_weighted_ce(out.logits, out.seq, out.valid, beat_weights)   (+ ce_q1..ce_qK for logging)
        L_c  = model.contrastive(out.video_tokens, out.logits, out.valid, model.codebooks)
        L    = L_ar + alpha * L_c   -> engine.backward(L)
    engine.step()  (clip 1.0, AdamW / D-Adapt Adam, cosine warm-up), then EMA.update

Two engines share one interface: DeepSpeed (ZeRO 0-3, bf16, any number of ranks/nodes; the cluster path) and a
plain PyTorch loop (single process; quick CPU experiments and unit tests). Both checkpoint model, optimiser,
scheduler, EMA, data position and every RNG, so a resumed run continues the exact same trajectory.

Data: the shard loader (``data.train_shards``) or synthetic batches (``train.synthetic``). Synthetic clip ``i`` is
a pure function of ``(train.seed, i)`` and the global sample index of every (step, micro-batch, rank, row) is fixed
by the global batch layout, so 1 process x micro-batch 4 and 2 processes x micro-batch 2 see the same global batch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
import time
import typing as tp
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from vmas.config import Config, config_to_dict, dump_config
from vmas.errors import CheckpointError, ConfigError
from vmas.solvers import checkpoint as ckpt
from vmas.solvers.ema import EMA
from vmas.solvers.optim import apply_freeze, build_optimizer, build_scheduler, param_groups, pretrained_prefixes

log = logging.getLogger("vmas.train")

PRECISIONS = ("fp32", "bf16")
ENGINES = ("deepspeed", "torch")
SYNTHETIC_TAGS = ("piano", "drums", "strings", "synth", "calm", "energetic", "90 BPM", "120 BPM")


# ----------------------------------------------------------------------------------------------- distributed env
def dist_env() -> tp.Tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (1 process when unset)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_single_process_env() -> None:
    """DeepSpeed always initialises torch.distributed: give a lone process (no launcher) a loopback world of 1."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------- config checks
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
        if not d.train_shards:
            raise ConfigError("data.train_shards is empty: point it at the training shards "
                              "(e.g. data/shards/train-{000000..000099}.tar) or run with --synthetic")
        from vmas.data.loader import expand_shards
        from vmas.errors import DataError

        try:
            shards = expand_shards(d.train_shards)
        except DataError as err:
            raise ConfigError(str(err)) from None
        local = [s for s in shards if "://" not in s and not s.startswith("pipe:")]
        missing = [s for s in local if not Path(s).is_file()]
        if missing:
            raise ConfigError(f"data.train_shards: {len(missing)} of {len(shards)} shards do not exist "
                              f"(first: {missing[0]}); fix the path or run with --synthetic")
    if t.deepspeed_config and not Path(t.deepspeed_config).is_file():
        raise ConfigError(f"train.deepspeed_config: {t.deepspeed_config} not found (see configs/deepspeed/)")
    enc_frames = cfg.model.encoder.num_frames
    if d.num_frames != enc_frames or d.image_size != cfg.model.encoder.image_size:
        raise ConfigError(f"data frames {d.num_frames}x{d.image_size}px != model.encoder {enc_frames}x"
                          f"{cfg.model.encoder.image_size}px: make data.num_frames/image_size match the encoder")
    return product


def deepspeed_config(cfg: Config, world_size: int) -> tp.Dict[str, tp.Any]:
    """The DeepSpeed JSON: ``train.deepspeed_config`` (if any) with batch, precision, clip and stage filled in."""
    t = cfg.train
    ds: tp.Dict[str, tp.Any] = {}
    if t.deepspeed_config:
        try:
            ds = json.loads(Path(t.deepspeed_config).read_text())
        except ValueError as err:
            raise ConfigError(f"{t.deepspeed_config}: not valid JSON ({err})") from None
    zero = ds.setdefault("zero_optimization", {})
    if "stage" in zero and zero["stage"] != t.zero_stage:
        raise ConfigError(f"{t.deepspeed_config} sets ZeRO stage {zero['stage']} but train.zero_stage={t.zero_stage}: "
                          "make them agree")
    zero["stage"] = t.zero_stage
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["train_batch_size"] = cfg.data.batch_size * t.grad_accum * world_size
    ds["gradient_clipping"] = cfg.optim.grad_clip
    ds["bf16"] = {"enabled": t.precision == "bf16"}
    ds.pop("fp16", None)
    ds.pop("optimizer", None)  # ours is a client optimiser (param groups, D-Adaptation), see vmas.solvers.optim
    ds.pop("scheduler", None)
    ds["zero_allow_untested_optimizer"] = True
    ds.setdefault("steps_per_print", 10**9)  # our own logging
    ds.setdefault("wall_clock_breakdown", False)
    return ds


# ----------------------------------------------------------------------------------------------- data
def _split_tags(text: str, max_tags: int) -> tp.List[str]:
    return [t.strip() for t in text.split(",") if t.strip()][:max_tags]


class SyntheticClips:
    """Random clips with the config's shapes; clip ``i`` depends only on ``(seed, i % num_clips)``.

    Beat weights have the same number of aligned frames in every clip, so every micro-batch has the same
    ``Σ W`` and the beat-weighted CE of a global batch is the same however it is split over ranks.
    """

    def __init__(self, cfg: Config, seed: int, num_clips: int):
        d, m = cfg.data, cfg.model
        self.T = d.num_frames
        self.H = d.image_size
        self.Ta = round(d.clip_seconds * d.frame_rate)
        self.K, self.card = m.lm.n_q, m.lm.card
        self.lam = cfg.loss.beat_lambda
        self.seed, self.num_clips = seed, max(1, num_clips)
        self.tags = m.tags.enabled

    def clip(self, index: int) -> tp.Dict[str, tp.Any]:
        c = index % self.num_clips
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + c)
        n_beats = max(2, self.Ta // 10)
        beats = torch.zeros(self.Ta, dtype=torch.bool)
        beats[torch.randperm(self.Ta, generator=g)[:n_beats]] = True
        aligned = torch.zeros(self.Ta, dtype=torch.bool)
        aligned[beats.nonzero()[torch.randperm(n_beats, generator=g)[: n_beats // 2], 0]] = True
        tags = ""
        if self.tags:
            pick = torch.randperm(len(SYNTHETIC_TAGS), generator=g)[:3]
            tags = ", ".join(SYNTHETIC_TAGS[i] for i in pick)
        return {
            "frames": torch.randint(0, 256, (self.T, self.H, self.H, 3), generator=g, dtype=torch.uint8),
            "codes": torch.randint(0, self.card, (self.K, self.Ta), generator=g),
            "music_beats": beats,
            "motion": torch.rand(self.T - 1, generator=g),
            "beat_weights": torch.where(aligned, 1.0, self.lam).float(),
            "tags": tags, "key": f"synthetic/{c:06d}", "start": 0.0,
        }


class DataStream:
    """This rank's micro-batches in order, with a position that checkpoints can save and restore.

    Position = micro-batches consumed by this rank. Synthetic: batch ``n`` of rank ``r`` holds global clips
    ``(n·world + r)·micro + j``. Shards: the loader's stream is deterministic for a fixed (seed, world size,
    workers), so resuming replays it and skips the ``n`` consumed batches (reading, not training, them).
    """

    def __init__(self, cfg: Config, rank: int, world_size: int):
        self.cfg, self.rank, self.world = cfg, rank, world_size
        self.micro = cfg.data.batch_size
        self.position = 0
        self._iter: tp.Optional[tp.Iterator] = None
        self.synthetic = SyntheticClips(cfg, cfg.train.seed, cfg.train.synthetic_clips) if cfg.train.synthetic else None

    def state_dict(self) -> tp.Dict[str, int]:
        return {"position": self.position, "world_size": self.world, "micro": self.micro}

    def load_state_dict(self, state: tp.Mapping[str, int]) -> None:
        if state["world_size"] != self.world or state["micro"] != self.micro:
            raise CheckpointError(f"checkpoint was written with world size {state['world_size']} x micro-batch "
                                  f"{state['micro']}, this run has {self.world} x {self.micro}: resume with the same "
                                  "layout to reproduce the data order")
        self.position = int(state["position"])
        self._iter = None

    def _loader_iter(self) -> tp.Iterator:
        from vmas.data.loader import build_loader

        loader = build_loader(self.cfg.data, rank=self.rank, world_size=self.world, train=True, repeat=True)
        it = iter(loader)
        for _ in range(self.position):  # replay to the saved position
            next(it)
        return it

    def next(self) -> tp.Dict[str, tp.Any]:
        if self.synthetic is not None:
            base = (self.position * self.world + self.rank) * self.micro
            from vmas.data.loader import collate

            batch = collate([self.synthetic.clip(base + j) for j in range(self.micro)])
        else:
            if self._iter is None:
                self._iter = self._loader_iter()
            batch = next(self._iter)
        self.position += 1
        return batch


# ----------------------------------------------------------------------------------------------- step module
class TrainStep(nn.Module):
    """The model plus its loss: what the engine wraps, so one ``engine(...)`` call is one micro-batch's loss.

    Returns ``(total, stats)`` where stats (detached, float32) = ``[total, ar, ce_q1..ce_qK, contrastive,
    beat_weight_mean, temperature]``; see :meth:`stat_names`.
    """

    def __init__(self, model: nn.Module, alpha: float):
        super().__init__()
        self.model = model
        self.alpha = alpha

    def stat_names(self) -> tp.List[str]:
        return ["loss", "ar", *[f"ce_q{k + 1}" for k in range(self.model.n_q)], "contrastive", "beat_w", "temp"]

    def forward(self, frames: torch.Tensor, codes: torch.Tensor, beat_weights: torch.Tensor,
                tag_emb: tp.Optional[torch.Tensor] = None, tag_mask: tp.Optional[torch.Tensor] = None,
                beat: tp.Optional[torch.Tensor] = None, onsets: tp.Optional[torch.Tensor] = None):
        from vmas.losses import beat_weighted_ce

        if tag_emb is not None:  # text-encoder output is float32; the fuser may run in bf16
            tag_emb = tag_emb.to(next(self.model.fuser.parameters()).dtype)
        out = self.model(frames, codes, tag_emb, tag_mask, beat=beat, onsets=onsets)
        ar, per_cb = beat_weighted_ce(out.logits, out.seq, out.valid, beat_weights,
                                      global_normalizer=True)  # scalar, [K]
        head = self.model.contrastive
        if head is not None and self.alpha > 0:
            # only clips that kept their video condition: a CFG-dropped clip's logits never saw its video
            kept = out.video_kept
            lc = head(out.video_tokens[kept], out.logits[kept], out.valid, self.model.codebooks)
            temp = (1.0 / head.logit_scale.detach().float()).reshape(())
        else:
            lc = ar.new_zeros(())
            temp = ar.new_zeros(()).float()
        total = ar + self.alpha * lc
        stats = torch.cat([total.detach().float()[None], ar.detach().float()[None], per_cb.float(),
                           lc.detach().float()[None], beat_weights.float().mean()[None], temp[None]])
        return total, stats


# ----------------------------------------------------------------------------------------------- engines
class TorchEngine:
    """Single-process stand-in for DeepSpeed's engine (same calls): accumulation, clipping, bf16 autocast."""

    def __init__(self, module: nn.Module, optimizer, scheduler, grad_accum: int, grad_clip: float,
                 precision: str, device: torch.device):
        self.module = module.to(device)
        self.optimizer, self.lr_scheduler = optimizer, scheduler
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.precision, self.device = precision, device
        self.micro_steps = 0
        self.grad_norm = 0.0

    def __call__(self, *args, **kwargs):
        ctx = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
               else contextlib.nullcontext())
        with ctx:
            return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> bool:
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            return False
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.grad_clip > 0:
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def save(self, folder: Path, rank: int) -> None:
        ckpt.atomic_save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                          "scheduler": self.lr_scheduler.state_dict(), "micro_steps": self.micro_steps},
                         folder / "engine.pt")

    def load(self, folder: Path) -> None:
        state = torch.load(folder / "engine.pt", map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = state["micro_steps"]


@contextlib.contextmanager
def _scalar_safe_broadcast():
    """DeepSpeed 0.19 broadcasts every parameter as ``p.data.view(torch.uint8)`` at initialisation, which fails on
    0-dim parameters (the contrastive temperature). During that broadcast only (before ZeRO registers its gradient
    hooks), scalars are viewed as shape [1]; the same storage is written, and the shapes are back afterwards."""
    from deepspeed.runtime.engine import DeepSpeedEngine as _DSEngine

    original = _DSEngine._broadcast_model

    def _broadcast_model(engine):
        scalars = [p for p in engine.module.parameters() if p.ndim == 0]
        for p in scalars:
            p.data = p.data.reshape(1)
        try:
            original(engine)
        finally:
            for p in scalars:
                p.data = p.data.reshape(())

    _DSEngine._broadcast_model = _broadcast_model
    try:
        yield
    finally:
        _DSEngine._broadcast_model = original


class DeepSpeedEngine:
    """Thin adapter over ``deepspeed.DeepSpeedEngine`` with the :class:`TorchEngine` interface."""

    def __init__(self, module: nn.Module, optimizer, scheduler, ds_config: tp.Dict[str, tp.Any]):
        import deepspeed

        with _scalar_safe_broadcast():
            self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
                model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.module = self.engine.module
        self.device = self.engine.device
        self.grad_norm = 0.0

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self.grad_norm = float(norm) if norm is not None else 0.0
        return boundary

    def save(self, folder: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(folder), tag="engine", save_latest=False)

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag="engine", load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"{folder}: DeepSpeed could not load engine/ (saved with another engine?)")


# ----------------------------------------------------------------------------------------------- solver
class Solver:
    """Builds everything from ``cfg`` and trains for ``optim.max_steps`` optimiser steps.

    Args:
        cfg (Config): the full config (``optim``/``train`` drive the solver; ``model``/``loss``/``data`` the rest).
        resume (str | bool): ``True`` = newest complete checkpoint in ``train.out_dir`` (fresh start if none);
            a path = that checkpoint folder; ``False`` = fresh start (an existing run folder is refused).
        model (nn.Module, optional): use this model instead of ``build_model(cfg)`` (tests, custom models).
    """

    def __init__(self, cfg: Config, resume: tp.Union[bool, str] = False, model: tp.Optional[nn.Module] = None):
        self.cfg = cfg
        self.rank, self.local_rank, self.world = dist_env()
        self.global_batch = check_config(cfg, self.world)
        self.out = Path(cfg.train.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.is_main = self.rank == 0
        self._resume_from = self._resolve_resume(resume)
        self.step = 0
        self.history: tp.List[tp.Dict[str, float]] = []
        self._build(model)

    # ---- setup
    def _resolve_resume(self, resume: tp.Union[bool, str]) -> tp.Optional[Path]:
        if isinstance(resume, (str, os.PathLike)) and str(resume) not in ("", "auto"):
            folder = Path(resume)
            if not (folder / "meta.json").is_file():
                raise CheckpointError(f"--resume {folder}: not a complete checkpoint folder (expected "
                                      f"{self.ckpt_root}/step_XXXXXXXX with meta.json)")
            return folder
        if resume:
            return ckpt.latest_checkpoint(self.ckpt_root)
        if ckpt.list_checkpoints(self.ckpt_root):
            raise ConfigError(f"{self.out} already has checkpoints: pass --resume to continue it, or choose another "
                              "train.out_dir")
        return None

    def _build(self, model: tp.Optional[nn.Module]) -> None:
        from vmas.builders import build_codec, build_model
        from vmas.utils import seed_everything

        cfg = self.cfg
        # same seed on every rank: identical initial weights (DeepSpeed also broadcasts rank 0's)
        seed_everything(cfg.train.seed)
        self.codec = build_codec(cfg.model.codec)
        self.model = model if model is not None else build_model(cfg, codec=self.codec)
        if cfg.optim.freeze:
            apply_freeze(self.model, cfg.optim.freeze)
        groups = param_groups(self.model, cfg.optim, pretrained_prefixes(cfg))
        self.param_summary = {g["name"]: sum(p.numel() for p in g["params"]) for g in groups}
        self.frozen_params = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        optimizer = build_optimizer(groups, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim)
        step_module = TrainStep(self.model, cfg.loss.contrastive_weight)
        self.stat_names = step_module.stat_names()
        if cfg.train.engine == "deepspeed":
            _set_single_process_env()
            # DeepSpeed JIT-builds a small op on first use (~1 min): cache it inside the repo, not in ~/.cache
            os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".cache" /
                                                              "torch_extensions"))
            import deepspeed

            if not dist.is_initialized():
                deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                           verbose=False)
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
            self.engine = DeepSpeedEngine(step_module, optimizer, scheduler, deepspeed_config(cfg, self.world))
        else:
            from vmas.utils import resolve_device

            self.engine = TorchEngine(step_module, optimizer, scheduler, cfg.train.grad_accum, cfg.optim.grad_clip,
                                      cfg.train.precision, resolve_device(cfg.train.device))
        self.device = torch.device(self.engine.device)
        self.codec.to(self.device)
        self.ema = EMA(self.model, decay=cfg.optim.ema_decay, every=cfg.optim.ema_every)
        self.data = DataStream(cfg, self.rank, self.world)
        self.text_encoder = None
        if cfg.model.tags.enabled:
            from vmas.tags.text_encoder import build_text_encoder

            self.text_encoder = build_text_encoder(cfg.model.tags.text_encoder, device="cpu")
        if self._resume_from is not None:
            self.load(self._resume_from)

    # ---- checkpoints
    def save(self) -> Path:
        """Atomic checkpoint of everything needed to continue (all ranks call this)."""
        final = self.ckpt_root / ckpt.step_dir_name(self.step)
        tmp = self.ckpt_root / f".tmp_{final.name}"
        if self.is_main:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        _barrier()
        self.engine.save(tmp, self.rank)
        ckpt.save_rank_state(tmp, self.rank, self.data.state_dict())
        _barrier()
        if self.is_main:
            ckpt.atomic_save(self.ema.state_dict(), tmp / "ema.pt")
            ckpt.write_meta(tmp, {"step": self.step, "world_size": self.world, "engine": self.cfg.train.engine,
                                  "history": self.history, "config": config_to_dict(self.cfg)})
            ckpt.commit(tmp, final)
            ckpt.prune(self.ckpt_root, self.cfg.train.keep_last)
        _barrier()
        return final

    def load(self, folder: Path) -> None:
        meta = ckpt.read_meta(folder)
        if meta.get("engine") != self.cfg.train.engine:
            raise CheckpointError(f"{folder} was written by train.engine={meta.get('engine')}, this run uses "
                                  f"{self.cfg.train.engine}: resume with the same engine")
        if meta["world_size"] != self.world:
            raise CheckpointError(f"{folder} was written by {meta['world_size']} ranks, this run has {self.world}: "
                                  "resume with the same number of processes")
        self.engine.load(folder)
        self.ema.load_state_dict(torch.load(folder / "ema.pt", map_location="cpu", weights_only=False))
        state = ckpt.load_rank_state(folder, self.rank)
        self.data.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"])
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        if self.is_main:
            log.info("resumed from %s at step %d", folder, self.step)

    def export(self, path: tp.Optional[tp.Union[str, Path]] = None) -> Path:
        """Write the inference checkpoint (EMA weights + config + codec), rank 0 only; see ``export_inference``."""
        path = Path(path) if path is not None else self.out / "model.pt"
        return ckpt.export_inference(
            path, config_to_dict(self.cfg), self.ema.weights(), self.codec.state_dict(),
            {"step": self.step, "ema_decay": self.ema.decay, "ema_every": self.ema.every,
             "ema_updates": self.ema.num_updates, "note": f"{self.cfg.name} step {self.step} (EMA weights)"})

    def _beat_weights(self, batch: tp.Dict[str, tp.Any]) -> torch.Tensor:
        """Beat weights of this run's ``loss`` config from the shard's raw music beats and motion curve.

        The shards also store weights, but those froze the preprocessing-time w, δ, λ; recomputing (cheap vector
        ops) keeps an ablation such as ``loss.beat_lambda=1`` honest without re-sharding.
        """
        from vmas.alignment import beat_weights, video_beats

        if "music_beats" not in batch or "motion" not in batch:
            return batch["beat_weights"]
        loss, fps = self.cfg.loss, self.cfg.data.fps
        bm = batch["music_beats"].bool()  # [B, Ta]
        vb = torch.stack([video_beats(m, num_frames=bm.shape[-1], window=loss.beat_window, fps=fps,
                                      frame_rate=self.cfg.data.frame_rate) for m in batch["motion"]])  # [B, Ta]
        return beat_weights(bm, vb, delta=loss.beat_delta, lam=loss.beat_lambda).float()

    # ---- one optimiser step
    def _to_device(self, batch: tp.Dict[str, tp.Any]) -> tp.Dict[str, tp.Any]:
        out = {
            "frames": batch["frames"].to(self.device),  # uint8 [B, T, H, W, 3]
            "codes": batch["codes"].to(self.device),  # long [B, K, Ta]
            "beat_weights": self._beat_weights(batch).to(self.device),  # float [B, Ta]
        }
        tags = [_split_tags(t, self.cfg.model.tags.max_tags) for t in batch["tags"]]
        if self.text_encoder is not None:
            emb, mask = self.text_encoder(tags)  # [B, N, Ct], [B, N]
            out["tag_emb"], out["tag_mask"] = emb.to(self.device), mask.to(self.device)
        if self.cfg.model.lm.beat_condition:  # tempo control: each clip's beat grid, fitted to its own music
            from vmas.modules.rhythm import clip_grids

            out["beat"] = clip_grids(batch["music_beats"], tags, self.cfg.data.frame_rate).to(self.device)  # [B, 2]
        if self.cfg.model.lm.onset_oracle:  # diagnostic: the music's own onsets at each step (issue 17)
            out["onsets"] = batch["music_beats"].float().to(self.device)  # [B, Ta]
        return out

    def train_step(self) -> tp.Dict[str, float]:
        """Run ``grad_accum`` micro-batches and one optimiser update; returns the step's stats (mean over ranks)."""
        self.engine.module.train()
        lr = self.engine.optimizer.param_groups[0]["lr"]  # the lr this update uses (the scheduler moves it after)
        acc = None
        for _ in range(self.cfg.train.grad_accum):
            batch = self._to_device(self.data.next())
            total, stats = self.engine(**batch)
            self.engine.backward(total)
            self.engine.step()
            acc = stats if acc is None else acc + stats
        acc = acc / self.cfg.train.grad_accum
        if self.world > 1:
            dist.all_reduce(acc)
            acc /= self.world
        self.step += 1
        self.ema.update(self.model, self.step)
        values = dict(zip(self.stat_names, acc.tolist()))
        values["grad_norm"] = self.engine.grad_norm
        values["lr"] = lr
        return values

    # ---- validation
    @torch.no_grad()
    def evaluate(self, max_batches: int = 0) -> tp.Dict[str, float]:
        """Teacher-forced CE on ``data.val_shards`` (live weights, not EMA) under each condition branch.

        ``ce`` uses video + tags, ``ce_video`` video only, ``ce_tags`` tags only, ``ce_null`` nothing (the CFG
        branch), ``ce_wrong_video`` the video of the next clip in the batch; with the beat condition, every branch
        but ``ce_null`` carries the clip's beat grid and ``ce_no_beat`` is video + tags without it. Their
        differences say how many nats per token each condition is worth: ``cond_gain = ce_null - ce`` near 0 means
        the model ignores its conditions and predicts music statistics only (the failure CFG cannot fix).
        """
        from vmas.data.loader import build_loader
        from vmas.losses import beat_weighted_ce

        model = self.model
        was_training = model.training
        model.eval()
        loader = build_loader(self.cfg.data, self.cfg.data.val_shards, train=False)
        sums: tp.Dict[str, float] = {}
        n = 0
        for i, raw in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            b = self._to_device(raw)
            B = b["codes"].shape[0]
            yes = torch.ones(B, dtype=torch.bool, device=self.device)
            no = ~yes
            vt = model.encode_video(b["frames"])  # [B, Tv, C]
            tags = (b.get("tag_emb"), b.get("tag_mask"))
            beat = b.get("beat")
            branches = {"ce": (vt, no, no, no), "ce_video": (vt, no, yes, no), "ce_tags": (vt, yes, no, no),
                        "ce_null": (vt, yes, yes, yes), "ce_wrong_video": (vt.roll(1, dims=0), no, yes, no)}
            if beat is not None:
                branches["ce_no_beat"] = (vt, no, no, yes)
            if B < 2:
                branches.pop("ce_wrong_video")
            for name, (tokens, dv, dt, db) in branches.items():
                out = model(None, b["codes"], *tags, drop_video=dv, drop_tags=dt, video_tokens=tokens, beat=beat,
                            drop_beat=db, onsets=b.get("onsets"))
                ce, _ = beat_weighted_ce(out.logits, out.seq, out.valid, torch.ones_like(b["beat_weights"]))
                sums[name] = sums.get(name, 0.0) + float(ce) * B
            n += B
        model.train(was_training)
        if n == 0:
            raise ConfigError(f"data.val_shards={self.cfg.data.val_shards!r} holds no clips")
        res = {k: v / n for k, v in sums.items()}
        res["cond_gain"] = res["ce_null"] - res["ce"]
        if "ce_wrong_video" in res:
            res["video_gain"] = res["ce_wrong_video"] - res["ce_video"]
        if "ce_no_beat" in res:
            res["beat_gain"] = res["ce_no_beat"] - res["ce"]
        res["clips"] = n
        return res

    # ---- loop
    def fit(self, stop_after: tp.Optional[int] = None) -> tp.Dict[str, tp.Any]:
        """Train to ``optim.max_steps`` (``stop_after``: return after that step without a final save, like a kill)."""
        cfg, t = self.cfg, self.cfg.train
        max_steps = cfg.optim.max_steps
        writer = bar = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.clean_partial(self.ckpt_root)
            dump_config(cfg, self.out / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1 if self.step else None)
            if t.progress:
                from tqdm import tqdm

                bar = tqdm(total=max_steps, initial=self.step, desc=cfg.name, dynamic_ncols=True, file=sys.stderr)
            log.info("params: %s trainable by group, %d frozen; global batch %d = %d x %d x %d ranks",
                     self.param_summary, self.frozen_params, self.global_batch, cfg.data.batch_size, t.grad_accum,
                     self.world)
        start_step, t0 = self.step, time.time()
        last_ckpt = None
        values: tp.Dict[str, float] = {}
        while self.step < max_steps:
            values = self.train_step()
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"loss is {values['loss']} at step {self.step} (lower optim.lr or check data)")
            elapsed = time.time() - t0
            done = self.step - start_step
            clips_per_s = done * self.global_batch / max(elapsed, 1e-9)
            eta = (max_steps - self.step) * elapsed / max(done, 1)
            self.history.append({"step": self.step, **{k: round(v, 6) for k, v in values.items()}})
            if self.is_main:
                for k, v in values.items():
                    writer.add_scalar(f"train/{k}", v, self.step)
                writer.add_scalar("train/clips_per_s", clips_per_s, self.step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"loss {values['loss']:.3f} ar {values['ar']:.3f} "
                                        f"c {values['contrastive']:.3f} {clips_per_s:.1f} clips/s")
                if self.step % t.log_every == 0 or self.step == max_steps:
                    ce = " ".join(f"{k} {values[k]:.3f}" for k in self.stat_names if k.startswith("ce_q"))
                    line = (f"step {self.step}/{max_steps} loss {values['loss']:.4f} ar {values['ar']:.4f} ({ce}) "
                            f"contrastive {values['contrastive']:.4f} beat_w {values['beat_w']:.3f} "
                            f"lr {values['lr']:.2e} gnorm {values['grad_norm']:.3f} {clips_per_s:.2f} clips/s "
                            f"eta {_fmt_time(eta)}")
                    (bar.write if bar is not None else print)(line)
            if t.eval_every and self.cfg.data.val_shards and (self.step % t.eval_every == 0 or self.step == max_steps):
                ev = self.evaluate(t.eval_batches)
                self.history[-1].update({f"val_{k}": round(v, 6) for k, v in ev.items()})
                if self.is_main:
                    for k, v in ev.items():
                        writer.add_scalar(f"val/{k}", v, self.step)
                    (bar.write if bar is not None else print)(
                        f"val step {self.step}: ce {ev['ce']:.4f} video {ev['ce_video']:.4f} tags {ev['ce_tags']:.4f} "
                        f"null {ev['ce_null']:.4f} cond_gain {ev['cond_gain']:.4f} "
                        f"video_gain {ev.get('video_gain', float('nan')):.4f} "
                        f"beat_gain {ev.get('beat_gain', float('nan')):.4f}")
            if self.step % t.save_every == 0 or self.step == max_steps:
                last_ckpt = self.save()
            if stop_after is not None and self.step >= stop_after:
                break
        wall = time.time() - t0
        summary = {"name": cfg.name, "steps": self.step, "resumed_from_step": start_step, "world_size": self.world,
                   "global_batch": self.global_batch, "engine": t.engine, "zero_stage": t.zero_stage,
                   "final": values, "wall_s": round(wall, 2),
                   "clips_per_s": round((self.step - start_step) * self.global_batch / max(wall, 1e-9), 3),
                   "loss_curve": [h["loss"] for h in self.history],
                   "checkpoint": str(last_ckpt) if last_ckpt else None, "export": None}
        if self.is_main:
            if bar is not None:
                bar.close()
            writer.close()
            if self.step >= max_steps:
                summary["export"] = str(self.export())
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        _barrier()
        return summary


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
