"""tools/slurm/train.sbatch under a fake 2-node SLURM allocation (issue 31 §5): the launcher commands each node
would run (node rank, master address and port, world size, the user's arguments), checked without running them.

``srun`` and ``scontrol`` are stand-ins on PATH that behave as SLURM does for this script (srun starts the command
once per node with that node's ``SLURM_NODEID``); ``PYTHON`` is a stand-in interpreter that reports 8 GPUs and
records the DeepSpeed launcher command instead of starting it.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SRUN = r'''#!/usr/bin/env bash
# fake srun: --nodes/--ntasks limit the tasks; one task per node otherwise; options end at the first non-option
nodes="$SLURM_JOB_NUM_NODES"
while [[ "$1" == --* ]]; do
  case "$1" in --nodes) nodes="$2"; shift 2;; --ntasks) shift 2;; --ntasks-per-node) shift 2;; *) shift;; esac
done
for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" || exit $?; done
'''
SCONTROL = '#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] && printf "gpu-a17\\ngpu-a18\\n"\n'
PYTHON = r'''#!/usr/bin/env python3
import json, os, sys
if sys.argv[1:2] == ["-c"]:
    print(8)  # torch.cuda.device_count()
else:
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in (
            "MASTER_PORT", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "HF_HUB_OFFLINE", "NCCL_DEBUG")}}) + "\n")
'''


def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("python", PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _submit(tmp_path: Path, *args: str, **env: str):
    bin_dir = _fake_bin(tmp_path)
    log = tmp_path / "launch.jsonl"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "NODE_RANK", "NUM_NODES",
                                                                          "GPUS_PER_NODE", "NCCL_"))}
    run_env.update(PATH=f"{bin_dir}:{run_env['PATH']}", PYTHON=str(bin_dir / "python"), FAKE_LOG=str(log))
    run_env.update({"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-a[17-18]", "SLURM_JOB_ID": "4242",
                    "SLURM_GPUS_PER_NODE": "h100:8", "SLURM_SUBMIT_DIR": str(ROOT), **env})
    proc = subprocess.run(["bash", str(ROOT / "tools" / "slurm" / "train.sbatch"), *args], env=run_env,
                          capture_output=True, text=True, timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_two_nodes_launch_sixteen_ranks_on_one_master(tmp_path):
    proc, calls = _submit(tmp_path, "configs/paper.yaml", "optim.lr=2e-4", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "world 16" in proc.stderr and len(calls) == 2
    ranks = set()
    for node, call in enumerate(calls):
        argv = call["argv"]
        assert argv[:2] == ["-m", "deepspeed.launcher.runner"] and "--no_ssh" in argv
        assert _flag(argv, "--node_rank") == str(node) and _flag(argv, "--num_nodes") == "2"
        assert _flag(argv, "--num_gpus") == "8" and _flag(argv, "--master_addr") == "gpu-a17"
        assert _flag(argv, "--master_port") == call["env"]["MASTER_PORT"] == str(20000 + 4242)
        assert argv[-4:] == ["tools/train.py", "configs/paper.yaml", "optim.lr=2e-4", "--resume"][-4:]
        assert call["env"]["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and call["env"]["HF_HUB_OFFLINE"] == "1"
        ranks |= {node * 8 + local for local in range(8)}  # DeepSpeed: RANK = node_rank * num_gpus + local rank
    assert ranks == set(range(16))


def test_gpu_check_runs_once_before_training_and_site_settings_win(tmp_path):
    proc, calls = _submit(tmp_path, "configs/paper.yaml", GPU_CHECK="1", MASTER_PORT="31000", NCCL_DEBUG="INFO")
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"][0] for c in calls] == ["tools/gpu_check.py", "-m", "-m"]
    assert _flag(calls[0]["argv"], "--out") == "logs/gpu_check-4242.json"
    assert all(c["env"]["MASTER_PORT"] == "31000" and c["env"]["NCCL_DEBUG"] == "INFO" for c in calls)


def test_outside_an_allocation_it_says_so(tmp_path):
    proc, calls = _submit(tmp_path, "configs/paper.yaml", SLURM_JOB_NUM_NODES="")
    assert proc.returncode != 0 and "not inside a SLURM allocation" in proc.stderr and not calls
