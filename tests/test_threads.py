"""Generation's CPU thread count is chosen in the program (issue 35 part 4): by model size, the cores this process
may use (affinity mask, cgroup quota) and how busy they are; --threads / OMP_NUM_THREADS win."""
from __future__ import annotations

import io

import pytest
import torch

from vmas import threads as T


@pytest.mark.parametrize("params, cores, load, want", [
    (2_600_000, 16, 0.0, 1),         # the SynthMV demo model: one thread, however many cores
    (300_000_000, 8, 0.0, 3),        # MusicGen-small-sized LM: 3 useful threads
    (1_500_000_000, 8, 0.0, 8),      # paper size: every core ...
    (1_500_000_000, 8, 5.5, 3),      # ... but not the 5 others keep busy
    (1_500_000_000, 2, 16.0, 1),     # an overloaded 2-core machine: one
])
def test_choice_by_size_cores_and_load(params, cores, load, want):
    assert T.choose_threads(params, cores, load) == want


def test_usable_cores_follow_the_affinity_mask_and_cgroup_quota(monkeypatch):
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: {0, 2, 5})
    monkeypatch.setattr(T, "open", lambda path: (_ for _ in ()).throw(OSError("no cgroup")), raising=False)
    assert T.available_cores() == 3
    monkeypatch.setattr(T, "open", lambda path: io.StringIO("150000 100000\n"), raising=False)  # --cpus 1.5
    assert T.available_cores() == 2
    monkeypatch.setattr(T, "open", lambda path: io.StringIO("max 100000\n"), raising=False)
    assert T.available_cores() == 3


def test_requested_then_environment_then_choice(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert T.configure_threads(1_500_000_000, 3) == (3, "--threads") and torch.get_num_threads() == 3
        assert T.configure_threads(1_500_000_000) == (2, "OMP_NUM_THREADS") and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        n, why = T.configure_threads(2_600_000)
        assert n == 1 and torch.get_num_threads() == 1 and "3 M parameters" in why
    finally:
        torch.set_num_threads(before)


def test_cli_flag():
    from vmas.cli import build_parser

    assert build_parser().parse_args(["generate", "v.mp4", "--threads", "3"]).threads == 3
    assert build_parser().parse_args(["generate", "v.mp4"]).threads is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "v.mp4", "--threads", "0"])


def test_app_start_up_names_our_share_flag_not_gradios(capsys, tmp_path):
    """`vmas app`'s start-up lines: the local URL and `vmas app --share`, never Gradio's "set `share=True` in
    `launch()`" (a vmas user has no launch() to edit); the app chose its threads too."""
    pytest.importorskip("gradio")
    import socket

    from vmas.app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = torch.get_num_threads()
    page = launch("vmas-debug-random", port=port, block=False, out_root=tmp_path, device="cpu")
    try:
        out = capsys.readouterr().out
        assert f"http://127.0.0.1:{port}" in out and "vmas app --share" in out
        assert "share=True" not in out and "launch()" not in out
        assert torch.get_num_threads() == T.choose_threads(299_281)  # the debug model's size
    finally:
        page.close()
        torch.set_num_threads(before)
