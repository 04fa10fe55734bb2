"""Training solver: schedule, param groups, EMA, checkpoints, config errors, overfit, resume, export, DeepSpeed.

In-process tests use the plain PyTorch engine (``train.engine=torch``) on the debug preset; the DeepSpeed tests
(marked ``deepspeed`` + ``slow``) launch ``train.sh`` on the CPU for a real kill + resume; every ZeRO stage on 2 ranks
is in tests/test_distributed.py.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from vmas.config import load_config
from vmas.errors import CheckpointError, ConfigError
from vmas.solvers import checkpoint as ckpt
from vmas.solvers.ema import EMA
from vmas.solvers.optim import apply_freeze, build_optimizer, lr_factor, param_groups
from vmas.solvers.solver import Solver, SyntheticClips, check_config, deepspeed_config

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


def debug_cfg(tmp_path, *overrides):
    return load_config(DEBUG, [f"train.out_dir={tmp_path}", "train.engine=torch", "train.progress=false",
                               "optim.max_steps=4", "train.save_every=2", *overrides])


# --------------------------------------------------------------------------------------------------- optim
def test_lr_factor_hand_values():
    # warm-up 4: updates 0..3 -> 1/4, 2/4, 3/4, 1; then cosine from update 4 (1.0) over 8 updates to min 0.1
    got = [lr_factor(s, 4, 12, 0.1) for s in range(14)]
    want = [0.25, 0.5, 0.75, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)] + [0.1]
    assert got == pytest.approx(want)
    assert got[4] == pytest.approx(1.0) and got[8] == pytest.approx(0.55) and got[12] == pytest.approx(0.1)
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.lm = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.fuser = nn.Linear(4, 2, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(1.0))


def test_param_groups_lr_decay_and_freeze():
    cfg = load_config(None, ["optim.lr=1.0e-3", "optim.lr_pretrained=1.0e-5", "optim.weight_decay=0.1"]).optim
    m = _Tiny()
    groups = {g["name"]: g for g in param_groups(m, cfg, pretrained=["lm."])}
    assert set(groups) == {"new", "new_no_decay", "pretrained", "pretrained_no_decay"}
    ids = lambda g: {id(p) for p in groups[g]["params"]}  # noqa: E731
    assert ids("pretrained") == {id(m.lm[0].weight)}
    assert ids("pretrained_no_decay") == {id(m.lm[0].bias), id(m.lm[1].weight), id(m.lm[1].bias)}
    assert ids("new") == {id(m.encoder.weight), id(m.fuser.weight)}
    assert ids("new_no_decay") == {id(m.encoder.bias), id(m.log_scale)}
    assert groups["pretrained"]["lr"] == 1e-5 and groups["new"]["lr"] == 1e-3
    assert groups["new_no_decay"]["weight_decay"] == 0.0 and groups["new"]["weight_decay"] == 0.1
    # one AdamW step with zero gradients: only weight decay moves decayed weights, by lr * wd * w
    opt = build_optimizer(list(groups.values()), cfg)
    w0 = m.encoder.weight.detach().clone()
    b0 = m.encoder.bias.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(m.encoder.weight.detach(), w0 * (1 - 1e-3 * 0.1))
    torch.testing.assert_close(m.encoder.bias.detach(), b0)

    frozen = apply_freeze(m, ["encoder"])
    assert frozen == ["encoder.weight", "encoder.bias"]
    names = {g["name"]: len(g["params"]) for g in param_groups(m, cfg)}
    assert names == {"new": 2, "new_no_decay": 4}  # lm + fuser weights; lm biases, norm, log_scale
    with pytest.raises(ConfigError, match="optim.freeze: 'decoder'"):
        apply_freeze(m, ["decoder"])


def test_dadapt_builds_and_steps():
    cfg = load_config(None, ["optim.optimizer=dadam", "optim.lr=1.0"]).optim
    m = nn.Linear(3, 2)
    opt = build_optimizer(param_groups(m, cfg), cfg)
    before = m.weight.detach().clone()
    m(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    assert type(opt).__name__ == "DAdaptAdam" and not torch.equal(before, m.weight)


# --------------------------------------------------------------------------------------------------- EMA
def test_ema_hand_computation():
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.5, every=2)
    for step, w in enumerate([4.0, 8.0, 2.0, 6.0], start=1):
        with torch.no_grad():
            m.weight.fill_(w)
        ema.update(m, step)
    # updates at steps 2 (w=8) and 4 (w=6): 0 -> 4 -> 5
    assert ema.shadow["weight"].item() == pytest.approx(5.0) and ema.num_updates == 2
    other = EMA(m, decay=0.5, every=2)
    other.load_state_dict(ema.state_dict())
    assert other.shadow["weight"].item() == pytest.approx(5.0)


# --------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_listing_ignores_partial_and_prunes(tmp_path):
    for step in (2, 4, 6):
        d = tmp_path / ckpt.step_dir_name(step)
        d.mkdir()
        ckpt.write_meta(d, {"step": step})
    (tmp_path / ckpt.step_dir_name(8)).mkdir()  # killed before meta.json: incomplete
    (tmp_path / ".tmp_step_00000010").mkdir()  # killed mid-save
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004", "step_00000006"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000006"
    assert [p.name for p in ckpt.clean_partial(tmp_path)] == [".tmp_step_00000010"]
    assert [p.name for p in ckpt.prune(tmp_path, 2)] == ["step_00000002"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]


# --------------------------------------------------------------------------------------------------- config
def test_config_errors_are_one_line(tmp_path):
    cfg = debug_cfg(tmp_path, "train.global_batch=8")
    with pytest.raises(ConfigError, match=r"2 x 1 x 1 = 2"):
        check_config(cfg, world_size=1)
    assert check_config(debug_cfg(tmp_path, "train.global_batch=8", "train.engine=deepspeed"), world_size=4) == 8
    with pytest.raises(ConfigError, match="data.train_shards is empty"):
        check_config(debug_cfg(tmp_path, "train.synthetic=false"), 1)
    with pytest.raises(ConfigError, match="do not exist"):
        check_config(debug_cfg(tmp_path, "train.synthetic=false", f"data.train_shards={tmp_path}/a-{{0..3}}.tar"), 1)
    with pytest.raises(ConfigError, match="unknown config key 'train.zero'"):
        debug_cfg(tmp_path, "train.zero=2")
    with pytest.raises(ConfigError, match="sets ZeRO stage 3 but train.zero_stage=2"):
        deepspeed_config(debug_cfg(tmp_path, "train.deepspeed_config=configs/deepspeed/zero3.json"), 1)
    ds = deepspeed_config(debug_cfg(tmp_path, "train.grad_accum=3", "train.deepspeed_config=configs/deepspeed/zero2.json"), 2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (12, 2, 3)
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 1.0 and ds["bf16"]["enabled"] is False
    # the CLI prints the one line, no traceback, exit code 2
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), str(DEBUG), "train.global_batch=3",
                        f"train.out_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: train.global_batch=3")


def test_synthetic_clips_are_deterministic_with_equal_weight_sums():
    cfg = load_config(DEBUG)
    clips = SyntheticClips(cfg, seed=0, num_clips=4)
    a, b, c = clips.clip(1), clips.clip(5), clips.clip(2)
    assert torch.equal(a["codes"], b["codes"]) and torch.equal(a["frames"], b["frames"])  # 5 % 4 == 1
    assert not torch.equal(a["codes"], c["codes"])
    Ta = 125  # 2.5 s x 50 Hz; 12 beats, 6 aligned (weight 1), the rest lambda = 0.5
    assert a["beat_weights"].shape == (Ta,) and a["beat_weights"].sum().item() == pytest.approx(6 + 0.5 * (Ta - 6))
    assert c["beat_weights"].sum() == a["beat_weights"].sum() and a["music_beats"].sum() == 12


# --------------------------------------------------------------------------------------------------- solver
def test_overfit_fixed_batch(tmp_path):
    # 2 clips of random codes, one batch: the unigram floor is ln(64) = 4.16, below it the model memorises
    cfg = debug_cfg(tmp_path, "optim.max_steps=14", "optim.warmup_steps=0", "optim.lr=2.0e-2", "optim.min_lr_ratio=1.0",
                    "train.save_every=100", "train.synthetic_clips=2", "model.lm.cond_dropout=0", "optim.ema_decay=0")
    summary = Solver(cfg).fit()
    curve = summary["loss_curve"]
    assert len(curve) == 14
    assert curve[-1] < min(0.85 * curve[0], math.log(64) - 0.25), curve


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Uninterrupted torch-engine run: 4 steps, checkpoints at 2 and 4, condition dropout on (RNG matters)."""
    out = tmp_path_factory.mktemp("ref")
    return out, Solver(debug_cfg(out)).fit()


def test_resume_reproduces_uninterrupted_run(tmp_path, reference_run):
    _, ref = reference_run
    cfg = debug_cfg(tmp_path)
    Solver(cfg).fit(stop_after=3)  # "killed" after step 3: only the step-2 checkpoint is on disk
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    with pytest.raises(ConfigError, match="already has checkpoints"):
        Solver(cfg)
    resumed = Solver(cfg, resume=True)
    assert resumed.step == 2 and resumed.data.position == 2
    summary = resumed.fit()
    assert summary["resumed_from_step"] == 2
    assert summary["loss_curve"] == pytest.approx(ref["loss_curve"], abs=1e-6)
    assert summary["final"]["ce_q4"] == pytest.approx(ref["final"]["ce_q4"], abs=1e-6)
    a = torch.load(tmp_path / "model.pt", weights_only=False)["model"]
    b = torch.load(Path(ref["export"]), weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_export_loads_with_hub_and_holds_ema(reference_run, tmp_path):
    out, ref = reference_run
    from vmas.hub import load_model

    pipe = load_model(ref["export"])
    exported = torch.load(ref["export"], weights_only=False)
    assert exported["meta"]["step"] == 4 and exported["meta"]["ema_updates"] == 4  # debug: ema_every 1
    ema = torch.load(out / "checkpoints" / "step_00000004" / "ema.pt", weights_only=False)["shadow"]
    state = pipe.model.state_dict()
    for k, v in ema.items():
        torch.testing.assert_close(state[k].float(), v)
    # tools/train.py --export rebuilds the same file from the training checkpoint
    from vmas.solvers.export import export_checkpoint

    again = export_checkpoint(pipe.config, out / "checkpoints" / "step_00000004", tmp_path / "again.pt")
    again_state = torch.load(again, weights_only=False)["model"]
    assert all(torch.equal(again_state[k], exported["model"][k]) for k in again_state)
    with pytest.raises(CheckpointError):
        Solver(debug_cfg(out), resume=str(out / "checkpoints" / "nope"))


def test_export_from_before_the_shape_1_temperature_loads(reference_run, tmp_path):
    """Exports written when the contrastive temperature was 0-dim load into the [1] parameter."""
    _, ref = reference_run
    from vmas.hub import load_model

    old = torch.load(ref["export"], weights_only=False)
    key = next(k for k in old["model"] if k.endswith("log_scale"))
    assert old["model"][key].shape == (1,)
    old["model"][key] = old["model"][key].reshape(())  # as written before
    torch.save(old, tmp_path / "old.pt")
    pipe = load_model(tmp_path / "old.pt")
    loaded = pipe.model.state_dict()[key]
    assert loaded.shape == (1,) and loaded.item() == pytest.approx(old["model"][key].item())


def test_resume_from_a_checkpoint_with_0_dim_temperature(tmp_path, reference_run):
    """A torch-engine checkpoint written when the temperature was 0-dim (weight, Adam moments, EMA) resumes onto
    the reference trajectory."""
    _, ref = reference_run
    cfg = debug_cfg(tmp_path)
    solver = Solver(cfg)
    solver.fit(stop_after=2)
    params = [p for g in solver.engine.optimizer.param_groups for p in g["params"]]
    index = next(i for i, p in enumerate(params) if p is solver.model.contrastive.log_scale)
    folder = tmp_path / "checkpoints" / "step_00000002"
    engine = torch.load(folder / "engine.pt", weights_only=False)
    engine["module"]["model.contrastive.log_scale"] = engine["module"]["model.contrastive.log_scale"].reshape(())
    moments = engine["optimizer"]["state"][index]
    for k in ("exp_avg", "exp_avg_sq"):
        moments[k] = moments[k].reshape(())
    torch.save(engine, folder / "engine.pt")
    ema = torch.load(folder / "ema.pt", weights_only=False)
    ema["shadow"]["contrastive.log_scale"] = ema["shadow"]["contrastive.log_scale"].reshape(())
    torch.save(ema, folder / "ema.pt")
    summary = Solver(cfg, resume=True).fit()
    assert summary["loss_curve"] == pytest.approx(ref["loss_curve"], abs=1e-6)


def test_validation_branches_depend_on_batch_size_and_beat_grid():
    from vmas.solvers.validation import active_branches

    names = lambda inputs, b: [br.name for br in active_branches(inputs, b)]  # noqa: E731
    assert names({}, 3) == ["ce", "ce_video", "ce_tags", "ce_null", "ce_wrong_video"]
    assert names({"beat": None}, 1) == ["ce", "ce_video", "ce_tags", "ce_null"]  # no other clip to borrow
    assert names({"beat": torch.zeros(2, 2)}, 2)[-1] == "ce_no_beat"


# --------------------------------------------------------------------------------------------------- DeepSpeed
def _launch(out: Path, nproc: int, *overrides: str, wait: bool = True):
    env = {**os.environ, "NPROC": str(nproc), "MASTER_PORT": str(29600 + nproc + (hash(str(out)) % 200))}
    cmd = ["bash", str(ROOT / "train.sh"), str(DEBUG), f"train.out_dir={out}", "train.progress=false",
           "model.lm.cond_dropout=0", "optim.max_steps=6", "train.save_every=2", *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if not wait:
        return proc
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def ds_reference(tmp_path_factory):
    """``bash train.sh configs/debug.yaml`` (1 rank, ZeRO-2, micro-batch 2), dropout off so ranks can agree."""
    out = tmp_path_factory.mktemp("ds1")
    t0 = time.time()
    summary = _launch(out, 1)
    return out, summary, time.time() - t0


# 2 ranks vs 1 for every ZeRO stage and bf16, and the export of a DeepSpeed run in ``vmas generate``:
# tests/test_distributed.py (it replaced the ZeRO-2-only comparison that was here).


@pytest.mark.deepspeed
@pytest.mark.slow
def test_deepspeed_kill_and_resume(tmp_path, ds_reference):
    _, ref, _ = ds_reference
    # On an idle machine the last two debug steps, their save and the export can all finish between two polls,
    # so a run that completed before the kill landed is not a kill test: launch again (fresh folder).
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        proc = _launch(out, 1, wait=False)
        root = out / "checkpoints"
        deadline = time.time() + 500
        while time.time() < deadline and not (root / "step_00000004").is_dir():  # kill right after the 2nd save
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # already exited: the check below says whether it finished
            pass
        proc.wait()
        assert (root / "step_00000004").is_dir(), proc.stdout.read()[-3000:]
        if not (out / "summary.json").exists():
            break
    else:
        pytest.fail("the run finished before SIGKILL three times: no killed run to resume")
    resumed = _launch(out, 1, "--resume")
    assert resumed["resumed_from_step"] in (4, 6)  # 6 only if the kill came after the next save
    assert resumed["loss_curve"] == pytest.approx(ref["loss_curve"], abs=1e-5)


def test_shard_stream_resume_skips_consumed_batches(tmp_path, monkeypatch):
    """Shard mode without saved reader positions (a checkpoint from before O(1) resume, or a loader that does not
    track them): the loader stream is replayed and the saved number of batches skipped."""
    import vmas.data.loader as loader_mod
    from vmas.solvers.solver import DataStream

    calls = []

    def fake_loader(data_cfg, rank=0, world_size=1, train=True, repeat=False, **kw):
        calls.append((rank, world_size, train, repeat))
        return ({"i": i} for i in range(100))

    monkeypatch.setattr(loader_mod, "build_loader", fake_loader)
    cfg = debug_cfg(tmp_path, "train.synthetic=false")
    stream = DataStream(cfg, rank=1, world_size=2)
    assert [stream.next()["i"] for _ in range(3)] == [0, 1, 2]
    state = stream.state_dict()
    again = DataStream(cfg, rank=1, world_size=2)
    again.load_state_dict(state)
    assert again.next()["i"] == 3 and again.position == 4
    assert calls == [(1, 2, True, True)] * 2
    with pytest.raises(CheckpointError, match="world size 2"):
        DataStream(cfg, rank=0, world_size=1).load_state_dict(state)


def test_beat_weights_follow_the_run_config_not_the_shard():
    """Shards store weights made with the preprocessing-time lambda; training must use its own loss config."""
    from types import SimpleNamespace

    from vmas.config import load_config
    from vmas.solvers.solver import Solver

    cfg = load_config(None, ["loss.beat_lambda=0.3", "loss.beat_window=2", "loss.beat_delta=1"])
    bm = torch.zeros(1, 50, dtype=torch.bool)
    bm[0, [10, 30]] = True
    motion = torch.zeros(1, 9)
    motion[0, 1] = 5.0  # a motion peak at video frame 2 = t 2/9.6 s = code frame ~10
    batch = {"music_beats": bm, "motion": motion, "beat_weights": torch.full((1, 50), 0.5)}
    w = Solver._beat_weights(SimpleNamespace(cfg=cfg), batch)[0]
    assert w[10] == 1.0 and w[30] == pytest.approx(0.3)  # aligned beat kept, unaligned beat down-weighted
    assert torch.allclose(w[w != 1.0], torch.tensor(0.3))
    assert int((w == 1.0).sum()) == 1
    cfg.loss.beat_lambda = 1.0
    assert torch.all(Solver._beat_weights(SimpleNamespace(cfg=cfg), batch) == 1.0)


def test_evaluate_scores_each_condition_branch(tmp_path, monkeypatch):
    """Solver.evaluate: ce with the condition and with the null (CFG) branch equal a direct cross-entropy."""
    import torch.nn.functional as F

    import vmas.data.loader as loader_mod
    from vmas.data.loader import collate

    cfg = debug_cfg(tmp_path, "data.val_shards=val-*.tar", "train.synthetic_clips=6")
    solver = Solver(cfg)
    clips = SyntheticClips(cfg, 1, 6)
    batches = [collate([clips.clip(i) for i in range(j, j + 3)]) for j in (0, 3)]
    monkeypatch.setattr(loader_mod, "build_loader", lambda *a, **k: iter(batches))
    res = solver.evaluate()
    model = solver.model.eval()

    @torch.no_grad()
    def manual(drop: bool, roll: bool = False) -> float:
        total = 0.0
        for b in batches:
            vt = model.encode_video(b["frames"])
            d = torch.full((3,), drop)
            out = model(None, b["codes"], drop_video=d, drop_tags=torch.ones(3, dtype=torch.bool) if roll else d,
                        video_tokens=vt.roll(1, 0) if roll else vt)
            logits = out.logits.permute(0, 3, 1, 2)  # [B, card, K, S]
            ce = F.cross_entropy(logits, out.seq.clamp(max=model.card - 1), reduction="none")  # [B, K, S]
            total += float(ce[:, out.valid].mean()) * 3
        return total / 6

    assert res["clips"] == 6
    assert res["ce"] == pytest.approx(manual(False), abs=1e-5)
    assert res["ce_null"] == pytest.approx(manual(True), abs=1e-5)
    assert res["ce_wrong_video"] == pytest.approx(manual(False, roll=True), abs=1e-5)
    assert res["cond_gain"] == pytest.approx(res["ce_null"] - res["ce"])
    assert res["ce"] != pytest.approx(res["ce_null"], abs=1e-6)  # the random fuser does change the logits


def test_solver_feeds_beat_grids_and_scores_their_gain(tmp_path, monkeypatch):
    """With model.lm.beat_condition the solver fits each clip's grid (clip_grids) and passes it to the model;
    evaluate() reports ce_no_beat (the same batch without grids) and beat_gain = ce_no_beat - ce."""
    import vmas.data.loader as loader_mod
    from vmas.beat_grids import clip_grids
    from vmas.data.loader import collate
    from vmas.losses import beat_weighted_ce

    cfg = debug_cfg(tmp_path, "data.val_shards=val-*.tar", "model.lm.beat_condition=true")
    solver = Solver(cfg)
    torch.nn.init.normal_(solver.model.fuser.beat_proj.weight)
    clips = SyntheticClips(cfg, 1, 4)
    raw = collate([clips.clip(i) for i in range(4)])
    batch = solver._to_device(raw)
    torch.testing.assert_close(batch["beat"], clip_grids(raw["music_beats"], [[]] * 4, cfg.data.frame_rate))
    assert torch.isfinite(batch["beat"]).all()
    monkeypatch.setattr(loader_mod, "build_loader", lambda *a, **k: iter([raw]))
    res = solver.evaluate()
    model = solver.model.eval()
    with torch.no_grad():
        out = model(raw["frames"], raw["codes"])  # no grid at all
        ce, _ = beat_weighted_ce(out.logits, out.seq, out.valid, torch.ones_like(batch["beat_weights"]))
    assert res["ce_no_beat"] == pytest.approx(float(ce), abs=1e-5)
    assert res["beat_gain"] == pytest.approx(res["ce_no_beat"] - res["ce"])
    assert abs(res["beat_gain"]) > 1e-4  # the grid does reach the logits


def test_training_state_files_load_through_the_safe_unpickler(tmp_path):
    """Resume reads engine/EMA/rank states with weights_only=True: a state whose pickle would run code is refused in
    one line; the rng state round-trips (numpy's too, now saved as a tensor); a state written before that (numpy's
    state as an ndarray) still loads."""
    import random

    import numpy as np

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    torch.save({"rng": ckpt.rng_state(), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        ckpt.load_state_file(tmp_path / "evil.pt", "training state")
    assert "system" in str(err.value) and "could run code" in str(err.value) and "\n" not in str(err.value)

    np.random.seed(3)
    torch.save({"rng": ckpt.rng_state()}, tmp_path / "new.pt")
    want = np.random.rand(4)
    np.random.seed(99)
    ckpt.set_rng_state(ckpt.load_state_file(tmp_path / "new.pt", "training state")["rng"])
    np.testing.assert_array_equal(np.random.rand(4), want)

    legacy = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({"rng": legacy}, tmp_path / "old.pt")
    state = ckpt.load_state_file(tmp_path / "old.pt", "training state")
    np.testing.assert_array_equal(state["rng"]["numpy"][1], legacy["numpy"][1])
