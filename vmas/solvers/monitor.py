"""What a run shows while it trains (rank 0 only): TensorBoard scalars, a progress bar and periodic log lines.

Kept apart from the loop so the loop reads as the algorithm; every method is a no-op on the other ranks.
"""
from __future__ import annotations

import sys
import typing as tp
from pathlib import Path


def fmt_time(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; under an hour ``mm:ss``."""
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class TrainMonitor:
    """TensorBoard (``out/tb``), tqdm bar and log lines for one run.

    Args:
        out (Path): run folder. name (str): run name (bar title). max_steps / start_step: bar range.
        stat_names (list[str]): the step stats (``ce_q*`` ones are printed per codebook).
        progress (bool): show the bar. log_every (int): log-line interval in steps. enabled (bool): rank 0.
    """

    def __init__(self, out: Path, name: str, max_steps: int, start_step: int, stat_names: tp.Sequence[str],
                 progress: bool, log_every: int, enabled: bool):
        self.enabled, self.max_steps, self.log_every = enabled, max_steps, log_every
        self.ce_names = [k for k in stat_names if k.startswith("ce_q")]
        self.writer = self.bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, desc=name, dynamic_ncols=True, file=sys.stderr)

    def _print(self, line: str) -> None:
        (self.bar.write if self.bar is not None else print)(line)

    def train(self, step: int, values: tp.Mapping[str, float], clips_per_s: float, eta_s: float) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.add_scalar("train/clips_per_s", clips_per_s, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {values['loss']:.3f} ar {values['ar']:.3f} "
                                     f"c {values['contrastive']:.3f} {clips_per_s:.1f} clips/s")
        if step % self.log_every == 0 or step == self.max_steps:
            ce = " ".join(f"{k} {values[k]:.3f}" for k in self.ce_names)
            self._print(f"step {step}/{self.max_steps} loss {values['loss']:.4f} ar {values['ar']:.4f} ({ce}) "
                        f"contrastive {values['contrastive']:.4f} beat_w {values['beat_w']:.3f} "
                        f"lr {values['lr']:.2e} gnorm {values['grad_norm']:.3f} {clips_per_s:.2f} clips/s "
                        f"eta {fmt_time(eta_s)}")

    def val(self, step: int, ev: tp.Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in ev.items():
            self.writer.add_scalar(f"val/{k}", v, step)
        self._print(f"val step {step}: ce {ev['ce']:.4f} video {ev['ce_video']:.4f} tags {ev['ce_tags']:.4f} "
                    f"null {ev['ce_null']:.4f} cond_gain {ev['cond_gain']:.4f} "
                    f"video_gain {ev.get('video_gain', float('nan')):.4f} "
                    f"beat_gain {ev.get('beat_gain', float('nan')):.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
