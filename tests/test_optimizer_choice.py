"""The AdamW kernel of a run (issue 31 §2): DeepSpeed's FusedAdam / CPU Adam when its ops can build, torch's
AdamW(fused=True) on CUDA otherwise, chosen in one place (:func:`vmas.solvers.engines.select_optimizer`) and
reported in one start-up log line. DeepSpeed's op availability and the device are mocked: no GPU here."""
import logging
from pathlib import Path

import pytest
import torch

from vmas.config import load_config
from vmas.solvers import engines
from vmas.solvers.engines import choose_adam, select_optimizer
from vmas.solvers.optim import build_optimizer, build_scheduler, param_groups

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _ops(**available):
    """A mocked ``deepspeed_op_compatible`` that records what it was asked."""
    asked = []

    def probe(name):
        asked.append(name)
        return available.get(name, False)

    probe.asked = asked
    return probe


@pytest.mark.parametrize("engine,device,offload,ops,want", [
    ("deepspeed", "cuda", "none", {"FusedAdamBuilder": True}, "deepspeed.FusedAdam"),
    ("deepspeed", "cuda", "none", {}, "torch.AdamW(fused)"),
    ("deepspeed", "cuda", "cpu", {"CPUAdamBuilder": True}, "deepspeed.DeepSpeedCPUAdam"),
    ("deepspeed", "cuda", "nvme", {"CPUAdamBuilder": True, "FusedAdamBuilder": True}, "deepspeed.DeepSpeedCPUAdam"),
    ("deepspeed", "cuda", "cpu", {"FusedAdamBuilder": True}, "torch.AdamW"),
    ("torch", "cuda", "none", {"FusedAdamBuilder": True}, "torch.AdamW(fused)"),
    ("deepspeed", "cpu", "none", {"FusedAdamBuilder": True, "CPUAdamBuilder": True}, "torch.AdamW"),
    ("torch", "cpu", "none", {"FusedAdamBuilder": True}, "torch.AdamW"),
])
def test_choice_rule(engine, device, offload, ops, want):
    probe = _ops(**ops)
    assert choose_adam(engine, device, offload, probe).impl == want
    if device == "cpu" or engine == "torch":
        assert probe.asked == []  # no toolchain probe where no DeepSpeed kernel could be used


def _objects(*overrides):
    cfg = load_config(CONFIGS / "debug.yaml", ["train.engine=torch", *overrides])
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = build_optimizer(param_groups(model, cfg.optim), cfg.optim)
    return cfg, model, opt, build_scheduler(opt, cfg.optim)


def test_cpu_keeps_the_optimiser_as_built_and_logs_one_line(caplog):
    cfg, _, opt, sched = _objects()
    with caplog.at_level(logging.INFO, logger="vmas.solvers.engines"):
        got, got_sched, choice = select_optimizer(cfg, opt, sched, op_compatible=_ops(FusedAdamBuilder=True))
    assert got is opt and got_sched is sched and choice.impl == "torch.AdamW"
    assert [r.getMessage() for r in caplog.records] == ["optimiser: torch.AdamW (cpu: torch's AdamW (foreach))"]


def test_cuda_torch_engine_rebuilds_fused_adamw_with_the_same_groups_and_schedule(monkeypatch, caplog):
    """On CUDA (mocked; torch's fused AdamW also runs on the CPU) the rebuilt optimiser keeps every group's lr,
    weight decay and name, the schedule goes on from the same factors, and one update equals the foreach AdamW's."""
    monkeypatch.setattr(engines, "_engine_device_type", lambda cfg: "cuda")
    cfg, model, opt, sched = _objects()
    with caplog.at_level(logging.INFO, logger="vmas.solvers.engines"):
        new, new_sched, choice = select_optimizer(cfg, opt, sched)
    assert choice.impl == "torch.AdamW(fused)" and isinstance(new, torch.optim.AdamW) and new is not opt
    assert new.param_groups[0]["fused"] is True
    assert [r.getMessage() for r in caplog.records] == ["optimiser: torch.AdamW(fused) (CUDA, the torch engine)"]
    for a, b in zip(opt.param_groups, new.param_groups):
        assert a["params"] == b["params"] and a["name"] == b["name"]
        assert a["lr"] == b["lr"] and a["weight_decay"] == b["weight_decay"] and a["betas"] == b["betas"]
    # one update against the foreach AdamW on a copy, then the schedule's next factor
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    twin.load_state_dict(model.state_dict())
    ref_opt = build_optimizer(param_groups(twin, cfg.optim), cfg.optim)
    ref_sched = build_scheduler(ref_opt, cfg.optim)
    x = torch.randn(5, 4)
    for m, o, s in ((model, new, new_sched), (twin, ref_opt, ref_sched)):
        m(x).square().sum().backward()
        o.step()
        s.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)  # fused vs foreach: fp32 rounding order only
    assert [g["lr"] for g in new.param_groups] == [g["lr"] for g in ref_opt.param_groups]


def test_deepspeed_kernel_that_fails_to_build_falls_back_to_torch_fused(monkeypatch, caplog):
    monkeypatch.setattr(engines, "_engine_device_type", lambda cfg: "cuda")
    real = engines._adam

    def adam(impl, groups, optimizer):
        if impl.startswith("deepspeed."):
            raise RuntimeError("Error building extension 'fused_adam'\nnvcc not found")
        return real(impl, groups, optimizer)

    monkeypatch.setattr(engines, "_adam", adam)
    cfg, _, opt, sched = _objects("train.engine=deepspeed")
    with caplog.at_level(logging.INFO, logger="vmas.solvers.engines"):
        new, _, choice = select_optimizer(cfg, opt, sched, ds={}, op_compatible=_ops(FusedAdamBuilder=True))
    assert choice.impl == "torch.AdamW(fused)" and new.param_groups[0]["fused"] is True
    assert "deepspeed.FusedAdam failed to build (RuntimeError: Error building extension 'fused_adam')" in choice.reason
    assert len(caplog.records) == 1


def test_offload_without_cpu_adam_lets_deepspeed_take_torch_adamw(monkeypatch):
    monkeypatch.setattr(engines, "_engine_device_type", lambda cfg: "cuda")
    cfg, _, opt, sched = _objects("train.engine=deepspeed")
    ds = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    got, _, choice = select_optimizer(cfg, opt, sched, ds=ds, op_compatible=_ops(FusedAdamBuilder=True))
    assert got is opt and choice.impl == "torch.AdamW" and "CPUAdam op cannot build" in choice.reason
    assert ds["zero_force_ds_cpu_optimizer"] is False


def test_dadaptation_is_kept():
    cfg, _, opt, sched = _objects("optim.optimizer=dadam", "optim.lr=1.0")
    got, got_sched, choice = select_optimizer(cfg, opt, sched, op_compatible=_ops(FusedAdamBuilder=True))
    assert got is opt and got_sched is sched and choice.impl == "as built"


def test_build_engine_reports_its_choice():
    from vmas.solvers.engines import build_engine

    cfg, model, opt, sched = _objects()
    engine = build_engine(cfg, model, opt, sched, world_size=1, local_rank=0)
    assert engine.optimizer is opt and engine.optimizer_choice.impl == "torch.AdamW"
