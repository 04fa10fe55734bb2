"""The VMAs training solver: wires the parts of ``vmas.solvers`` together and runs the loop.

Per optimiser step (SPEC §5)::

    for each of grad_accum micro-batches:
        inputs = BatchInputs(stream.next())                                 # device, beat weights, tags, grids
        out    = model(frames, codes, tag_emb, tag_mask, beat)               # VMASOutput, condition dropout inside
        L      = L_ar (beat-weighted CE) + alpha * L_c (InfoNCE)           # VMASObjective
        engine.backward(L); engine.step()
    (clip 1.0, AdamW / D-Adapt Adam, cosine warm-up), then EMA.update

One job per module:

    distributed.py  ranks, world size, process group     checks.py      config validation
    ds_config.py    the DeepSpeed JSON                    synthetic.py   synthetic clips
    stream.py       this rank's micro-batches (resumable) inputs.py      loader batch -> model inputs
    step.py         model + objective (what engines wrap) engines.py     torch / DeepSpeed engines
    optim.py, ema.py  optimiser, schedule, EMA            checkpoint.py  atomic checkpoints, resume
    validation.py   per-condition-branch CE               monitor.py     TensorBoard, progress, log lines
    export.py       the inference export, init_from       cli.py         ``tools/train.py``
    lora.py         LoRA adapters (fine-tuning)

Both engines checkpoint model, optimiser, scheduler, EMA, data position and every RNG, so a resumed run
continues the exact same trajectory.
"""
from __future__ import annotations

import json
import logging
import math
import time
import typing as tp
from pathlib import Path

import torch
from torch import nn

from vmas.builders import build_codec, build_text_encoder
from vmas.config import Config, config_to_dict, dump_config
from vmas.data import loader as shard_loader
from vmas.errors import ConfigError
from vmas.solvers import checkpoint as ckpt
from vmas.solvers.checks import check_config, config_warnings
from vmas.solvers.distributed import barrier, dist_env, mean_over_ranks
from vmas.solvers.ds_config import deepspeed_config
from vmas.solvers.ema import EMA
from vmas.solvers.engines import build_engine
from vmas.solvers.export import export_ema, init_codec
from vmas.solvers.inputs import BatchInputs, run_beat_weights
from vmas.solvers.monitor import TrainMonitor
from vmas.solvers.objects import build_training_objects
from vmas.solvers.optim import build_scheduler
from vmas.solvers.stream import DataStream
from vmas.solvers.synthetic import SyntheticClips
from vmas.solvers.validation import evaluate_sharded
from vmas.utils import seed_everything

log = logging.getLogger("vmas.train")

# re-exported: the solver's public names before the split (tests and tools import them from here)
__all__ = ["Solver", "SyntheticClips", "DataStream", "check_config", "deepspeed_config"]


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
        self._resume_from = ckpt.resolve_resume(resume, self.ckpt_root)
        self.step = 0
        self.history: tp.List[tp.Dict[str, float]] = []
        self._build(model)

    # ---- setup
    def _build(self, model: tp.Optional[nn.Module]) -> None:
        cfg = self.cfg
        # same seed on every rank: identical initial weights (DeepSpeed also broadcasts rank 0's)
        seed_everything(cfg.train.seed)
        self.codec = build_codec(cfg.model.codec) if not cfg.train.init_from else init_codec(cfg)
        # model (+ train.init_from weights: the step starts at 0), freeze, LoRA, optimiser, step: the same objects
        # the memory estimator measures (vmas.solvers.objects)
        built = build_training_objects(cfg, self.codec, model)
        self.model, self.param_summary, self.frozen_params = built.model, built.param_summary, built.frozen_params
        scheduler = build_scheduler(built.optimizer, cfg.optim)
        self.stat_names = built.step.stat_names()
        self.engine = build_engine(cfg, built.step, built.optimizer, scheduler, self.world, self.local_rank)
        self.device = torch.device(self.engine.device)
        self.codec.to(self.device)
        self.ema = EMA(self.model, decay=cfg.optim.ema_decay, every=cfg.optim.ema_every)
        self.data = DataStream(cfg, self.rank, self.world)
        self.text_encoder = build_text_encoder(cfg.model.tags, device="cpu")  # None without a tag branch
        self.inputs = BatchInputs(cfg.loss, cfg.data, cfg.model.tags.max_tags, cfg.model.lm.beat_condition,
                                  self.text_encoder, onset_oracle=cfg.model.lm.onset_oracle,
                                  motion=cfg.model.lm.motion_condition)
        if self._resume_from is not None:
            self.load(self._resume_from)

    # ---- checkpoints
    def save(self) -> Path:
        """Atomic checkpoint of everything needed to continue (all ranks call this)."""
        meta = {"step": self.step, "world_size": self.world, "engine": self.cfg.train.engine,
                "history": self.history, "config": config_to_dict(self.cfg)}
        return ckpt.save_checkpoint(self.ckpt_root, self.step, self.rank, self.engine, self.ema, self.data, meta,
                                    self.cfg.train.keep_last)

    def load(self, folder: Path) -> None:
        meta = ckpt.load_checkpoint(folder, self.rank, self.world, self.cfg.train.engine, self.engine, self.ema,
                                    self.data)
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        if self.is_main:
            log.info("resumed from %s at step %d", folder, self.step)

    def export(self, path: tp.Optional[tp.Union[str, Path]] = None) -> Path:
        """Write the inference checkpoint (EMA weights + config + codec), rank 0 only; see :mod:`.export`."""
        path = Path(path) if path is not None else self.out / "model.pt"
        return export_ema(path, self.cfg, self.ema.state_dict(), self.codec.state_dict(), self.step)

    # ---- inputs
    def _beat_weights(self, batch: tp.Dict[str, tp.Any]) -> torch.Tensor:
        """Beat weights [B, Ta] of this run's ``loss`` config (see :func:`vmas.solvers.inputs.run_beat_weights`)."""
        return run_beat_weights(batch, self.cfg.loss, self.cfg.data)

    def _to_device(self, batch: tp.Dict[str, tp.Any]) -> tp.Dict[str, tp.Any]:
        """Loader batch -> the model inputs on this rank's device (:class:`vmas.solvers.inputs.BatchInputs`)."""
        return self.inputs(batch, self.device)

    # ---- one optimiser step
    def train_step(self) -> tp.Dict[str, float]:
        """Run ``grad_accum`` micro-batches and one optimiser update; returns the step's stats (mean over ranks)."""
        self.engine.module.train()
        lr = self.engine.optimizer.param_groups[0]["lr"]  # the lr this update uses (the scheduler moves it after)
        acc = None
        for _ in range(self.cfg.train.grad_accum):
            total, stats = self.engine(**self._to_device(self.data.next()))  # scalar, [K + 5]
            self.engine.backward(total)
            self.engine.step()
            acc = stats if acc is None else acc + stats
        acc = mean_over_ranks(acc / self.cfg.train.grad_accum, self.world)
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
        but ``ce_null`` carries the clip's beat grid and ``ce_no_beat`` is video + tags without it. See
        :mod:`vmas.solvers.validation` for the gains.

        Sharded: rank ``r`` scores the batches ``r, r + world, ...`` of the 1-rank order (``ShardStream(block=B)``)
        through the engine's forward (ZeRO-3 safe), and the sums are all-reduced, so every rank returns the
        1-rank result. ``max_batches`` counts global batches; all ranks call this.
        """
        cfg = self.cfg
        B = cfg.train.eval_batch_size or cfg.data.batch_size
        loader = shard_loader.build_loader(cfg.data, cfg.data.val_shards, rank=self.rank, world_size=self.world,
                                           train=False, batch_size=B, block=B)
        nw = max(cfg.data.num_workers, 1)  # rank r's k-th batch is block (k // nw)·world·nw + r·nw + k % nw

        def global_index(k: int) -> int:
            return (k // nw) * self.world * nw + self.rank * nw + k % nw

        def call(inputs, names):
            return self.engine(**inputs, validate=list(names))

        def dummy():  # for a rank with fewer batches than another (ZeRO-3 forwards are collective)
            return shard_loader.collate([SyntheticClips(cfg, cfg.train.seed, 1).clip(0)])

        res = evaluate_sharded(call, self.engine.module, loader, self._to_device, max_batches, self.rank,
                               self.world, global_index, dummy)
        if not res["clips"]:
            raise ConfigError(f"data.val_shards={self.cfg.data.val_shards!r} holds no clips")
        return res

    # ---- loop
    def fit(self, stop_after: tp.Optional[int] = None) -> tp.Dict[str, tp.Any]:
        """Train to ``optim.max_steps`` (``stop_after``: return after that step without a final save, like a kill)."""
        cfg, t = self.cfg, self.cfg.train
        max_steps = cfg.optim.max_steps
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.clean_partial(self.ckpt_root)
            dump_config(cfg, self.out / "config.yaml")
            log.info("params: %s trainable by group, %d frozen; global batch %d = %d x %d x %d ranks",
                     self.param_summary, self.frozen_params, self.global_batch, cfg.data.batch_size, t.grad_accum,
                     self.world)
            log.info("data: %s", self.data.describe())
            for line in config_warnings(cfg):
                log.warning("warning: %s", line)
        monitor = TrainMonitor(self.out, cfg.name, max_steps, self.step, self.stat_names, t.progress, t.log_every,
                               enabled=self.is_main)
        start_step, t0 = self.step, time.time()
        last_ckpt = None
        values: tp.Dict[str, float] = {}
        best_val, bad_evals, stopped_early = math.inf, 0, False
        while self.step < max_steps:
            values = self.train_step()
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"loss is {values['loss']} at step {self.step} (lower optim.lr or check data)")
            elapsed = time.time() - t0
            done = self.step - start_step
            clips_per_s = done * self.global_batch / max(elapsed, 1e-9)
            eta = (max_steps - self.step) * elapsed / max(done, 1)
            self.history.append({"step": self.step, **{k: round(v, 6) for k, v in values.items()}})
            monitor.train(self.step, values, clips_per_s, eta)
            if t.eval_every and cfg.data.val_shards and (self.step % t.eval_every == 0 or self.step == max_steps):
                ev = self.evaluate(t.eval_batches)  # all-reduced: every rank takes the same early-stop decision
                self.history[-1].update({f"val_{k}": round(v, 6) for k, v in ev.items()})
                monitor.val(self.step, ev)
                if ev["ce"] < best_val:
                    best_val, bad_evals = ev["ce"], 0
                else:
                    bad_evals += 1
                stopped_early = bool(t.early_stop) and bad_evals >= t.early_stop
                if stopped_early and self.is_main:
                    log.info("early stop at step %d: val ce %.4f has not improved on %.4f for %d evaluations",
                             self.step, ev["ce"], best_val, bad_evals)
            if self.step % t.save_every == 0 or self.step == max_steps or stopped_early:
                last_ckpt = self.save()
            if stopped_early or (stop_after is not None and self.step >= stop_after):
                break
        wall = time.time() - t0
        summary = {"name": cfg.name, "steps": self.step, "resumed_from_step": start_step, "world_size": self.world,
                   "global_batch": self.global_batch, "engine": t.engine, "zero_stage": t.zero_stage,
                   "final": values, "wall_s": round(wall, 2),
                   "clips_per_s": round((self.step - start_step) * self.global_batch / max(wall, 1e-9), 3),
                   "loss_curve": [h["loss"] for h in self.history],
                   "checkpoint": str(last_ckpt) if last_ckpt else None, "export": None,
                   "early_stopped": stopped_early, "best_val_ce": best_val if math.isfinite(best_val) else None}
        monitor.close()
        if self.is_main:
            if self.step >= max_steps or stopped_early:
                summary["export"] = str(self.export())
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        barrier()
        return summary
