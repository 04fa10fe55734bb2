"""Trained runs of an experiment: where each lives, the pool that trains the missing ones, and scores cached
beside them.

Every benchmark that trains compares variants (config overrides) over training seeds at a step budget. A run is a
folder ``<root>[/steps<S>]/<variant>/seed<N>`` (:func:`run_dir`); it is **finished when its ``model.pt`` exists**
(the solver writes it last), and a finished run is never trained again: a rerun of a benchmark, or a second
benchmark on the same root, reuses it. An unfinished run with a checkpoint resumes from it, so killing a benchmark
loses at most ``train.save_every`` steps of each run. Scores of a finished run are cached beside its model
(:func:`cached_scores`), keyed by the model's bytes and everything that decides the score.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

from vmas.experiments.provenance import ROOT

TRAIN = "import sys; from vmas.solvers.cli import main; sys.exit(main())"
"""The training command's body (``tools/train.py`` is a thin wrapper over the same ``main``)."""


def run_dir(root: tp.Union[str, Path], variant: str, seed: int, steps: tp.Optional[int] = None) -> Path:
    """``<root>/<variant>/seed<N>``, or ``<root>/steps<S>/<variant>/seed<N>`` when runs of several budgets share a
    root (the committed result folders use both layouts)."""
    root = Path(root) / f"steps{steps}" if steps is not None else Path(root)
    return root / variant / f"seed{seed}"


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One run: ``python tools/train.py CONFIG train.out_dir=OUT OVERRIDES...`` (``--resume`` added when a
    checkpoint is there)."""

    out: Path
    config: str
    overrides: tp.Tuple[str, ...] = ()

    @property
    def model(self) -> Path:
        """The run's inference export; its existence marks the run finished."""
        return self.out / "model.pt"


def train_pool(jobs: tp.Iterable[TrainJob], workers: int = 1, retrain: bool = False,
               poll_s: float = 1.0) -> tp.Dict[Path, Path]:
    """Train every unfinished job, ``workers`` processes at once (one thread each); returns {out: model.pt}.

    Jobs sharing a folder are trained once (e.g. a baseline shared by every setting of a grid). ``retrain`` deletes
    the folders first. A failing run stops the others and raises ``SystemExit`` naming its log.
    """
    from vmas.solvers.checkpoint import latest_checkpoint

    jobs = list(jobs)
    todo: tp.List[TrainJob] = []
    seen: tp.Set[Path] = set()
    for job in jobs:
        if job.out in seen:
            continue
        seen.add(job.out)
        if retrain and job.out.exists():
            shutil.rmtree(job.out)
        if not job.model.exists():
            todo.append(job)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    running: tp.Dict[Path, tp.Tuple[subprocess.Popen, tp.Any, TrainJob]] = {}
    while todo or running:
        while todo and len(running) < max(1, workers):
            job = todo.pop(0)
            if job.model.exists():  # finished meanwhile (a second benchmark on the same root)
                continue
            args = [job.config, f"train.out_dir={job.out}", *job.overrides]
            if latest_checkpoint(job.out / "checkpoints") is not None:
                args.append("--resume")
            job.out.mkdir(parents=True, exist_ok=True)
            log = open(job.out / "train.log", "a")
            print(f"training {job.out}: {' '.join(args)}", file=sys.stderr)
            proc = subprocess.Popen([sys.executable, "-c", TRAIN, *args], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
            running[job.out] = (proc, log, job)
        time.sleep(poll_s)
        for out, (proc, log, job) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[out]
            if proc.returncode != 0 or not job.model.exists():
                for other, _, _ in running.values():
                    other.terminate()
                raise SystemExit(f"training {out} failed: see {out / 'train.log'}")
    return {job.out: job.model for job in jobs}


def key_digest(key: tp.Mapping[str, tp.Any]) -> str:
    """12 hex digits naming a cache file by everything its content depends on (``key``, JSON with sorted keys)."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def cached_scores(model: Path, key: tp.Mapping[str, tp.Any], compute: tp.Callable[[], tp.Any],
                  rescore: bool = False) -> tp.Any:
    """``compute()`` once per (model bytes, ``key``): stored as ``<run>/scores_<hash>.json`` and read back on the
    next call (``rescore``: compute again). ``key`` holds everything the score depends on (clips, seeds, sampling
    settings); the model's SHA-1 is added here, so a retrained model is scored again."""
    full = dict(key, model_sha1=hashlib.sha1(model.read_bytes()).hexdigest())
    cache = model.parent / f"scores_{key_digest(full)}.json"
    if cache.exists() and not rescore:
        return json.loads(cache.read_text())
    result = compute()
    cache.write_text(json.dumps(result, indent=1))
    return result
