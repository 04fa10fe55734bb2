"""Issue 36: no hub retries when the hub cannot be reached, and whole one-line errors.

Without ``HF_HUB_OFFLINE`` the Hugging Face client retries an unreachable hub (1+2+4+8+8 s per file), so
``vmas generate --auto-tags --set model.tags.captioner=DIR`` and curation with ``configs/paper.yaml`` spent 25-53 s
before failing, and the captioner's reason was cut mid-word. Here the hub is made unreachable without offline
mode (the endpoint is a closed local port, the cache an empty folder): a missing folder fails at once, a hub name
costs one connection attempt and switches the process to offline mode, and each error is one whole line.
The time bound (10 s) is generous for a loaded 2-core machine and well under the 23 s of retries alone.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from test_data_pipeline import write_video

from vmas import loading
from vmas.errors import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 10.0
CAPTIONER = "Salesforce/blip-image-captioning-base"  # a real hub name, never in the (empty) cache of these tests


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """Online mode (HF_HUB_OFFLINE unset) with a hub that refuses connections and an empty cache."""
    import huggingface_hub.constants as constants

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port: refused at once
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(loading, "_hub_state", {}, raising=False)
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    yield
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"  # the suite's setting (conftest)


def _generate(tmp_path, captioner, capsys):
    from test_generate import _video

    from vmas.cli import main

    video = _video(tmp_path / "v.mp4", 1.0)
    t0 = time.perf_counter()
    rc = main(["generate", str(video), "-o", str(tmp_path / "out"), "--model", "vmas-debug-random", "-q",
               "--auto-tags", "--set", f"model.tags.captioner={captioner}"])
    seconds = time.perf_counter() - t0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, seconds, err


def test_missing_captioner_folder_fails_at_once(no_hub, tmp_path, capsys):
    missing = tmp_path / "models" / "blip"  # the DIR, never created
    rc, seconds, err = _generate(tmp_path, missing, capsys)
    assert rc == 2 and seconds < BOUND_S, (rc, seconds, err)
    line = err[-1]
    assert line.startswith("error: ") and f"captioner '{missing}' is not available offline: no such folder" in line
    assert line.endswith("(here: --set model.tags.captioner=NAME_OR_DIR --set model.tags.llm=NAME_OR_DIR)"), line
    assert "set model.tags.captioner to DIR" in line
    assert loading._hub_state == {}  # a missing folder is not a hub question: no connection was attempted


def test_uncached_hub_name_is_tried_once_then_offline(no_hub, tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="vmas.loading"):
        rc, seconds, err = _generate(tmp_path, CAPTIONER, capsys)
    assert rc == 2 and seconds < BOUND_S, (rc, seconds, err)
    line = err[-1]
    assert f"captioner '{CAPTIONER}' is not available offline: not a local folder and not in the local Hugging " \
           "Face cache (the hub is unreachable from here)" in line, line
    assert f"`huggingface-cli download {CAPTIONER} --local-dir DIR`" in line
    assert loading._hub_state == {"reachable": False}  # one probe, remembered for the process
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the rest of the run works offline (no further retries)
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "127.0.0.1:9" in warnings[0] and "HF_HUB_OFFLINE=1" in warnings[0]
    # a second name: no second probe, the same immediate answer
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        loading.resolve_pretrained("org/other-model", "llm", "fix")
    assert time.perf_counter() - t0 < 1.0


def test_offline_mode_says_so_without_a_probe(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(loading, "_hub_state", {})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError) as err:
        loading.resolve_pretrained(CAPTIONER, "captioner", "the fix")
    assert str(err.value) == (f"captioner '{CAPTIONER}' is not available offline: not a local folder and not in the "
                              "local Hugging Face cache (HF_HUB_OFFLINE=1): the fix")
    assert loading._hub_state == {}  # HF_HUB_OFFLINE=1 (the suite's setting): no connection attempt


def test_cached_name_and_reachable_hub_are_passed_through(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    snap = tmp_path / "models--org--cached" / "snapshots" / "0123"
    snap.mkdir(parents=True)
    assert loading.resolve_pretrained("org/cached", "llm", "fix") == "org/cached"
    monkeypatch.setattr(loading, "_hub_state", {"reachable": True})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert loading.resolve_pretrained("org/not-cached", "llm", "fix") == "org/not-cached"  # one download attempt
    assert loading.resolve_pretrained(str(snap), "llm", "fix") == str(snap)  # an existing folder is itself


def test_load_failure_reason_is_whole(tmp_path):
    """A folder that exists but holds no model: the library's whole first line, not its first 100 characters."""
    from transformers import pipeline

    from vmas.tags.autotag import build_auto_tagger

    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises((OSError, ValueError)) as raw:
        pipeline("image-to-text", model=str(empty))
    reason = str(raw.value).strip().splitlines()[0].strip()
    assert len(reason) > 100  # the case the old [:100] cut
    with pytest.raises(CheckpointError) as err:
        build_auto_tagger(str(empty), "x")
    assert f"({reason}): download it with" in str(err.value) and "\n" not in str(err.value)


def test_paper_curation_fails_in_seconds(no_hub, tmp_path, capsys):
    """``configs/paper.yaml`` curation (timm CLIP embedder from the hub) with the hub unreachable."""
    from vmas.disco_mv import main

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", 3.0, [0.5])
    t0 = time.perf_counter()
    rc = main([str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--config", str(ROOT / "configs" / "paper.yaml"),
               "--no-vocal-removal"])
    seconds = time.perf_counter() - t0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and seconds < BOUND_S, (rc, seconds, err)
    assert len(err) == 1 and "data.curation.embedder 'timm:vit_base_patch16_clip_224.openai' could not be loaded" \
        in err[0] and "data.curation.embedder_weights" in err[0], err
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_hub_codec_name_fails_in_seconds(no_hub):
    """``model.codec.pretrained: facebook/encodec_32khz`` (paper) tries two files of the hub: no retries either."""
    from vmas.builders import build_codec
    from vmas.config import CodecConfig

    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="codec 'facebook/encodec_32khz' is not in the local Hugging Face cache"):
        build_codec(CodecConfig(pretrained="facebook/encodec_32khz"))
    assert time.perf_counter() - t0 < BOUND_S
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_hub_musicgen_name_fails_in_seconds(no_hub):
    """``model.lm.pretrained: facebook/musicgen-medium`` (paper) asks the hub once, not once per file layout with
    retries: one line naming the setting and the fix."""
    from vmas.models.lm import MusicLM, load_musicgen_lm_weights

    lm = MusicLM(dim=8, num_layers=1, num_heads=1, ffn_dim=16, n_q=2, card=4)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="model.lm.pretrained 'facebook/musicgen-medium' is not available "
                                              "offline.*give a local path"):
        load_musicgen_lm_weights(lm, "facebook/musicgen-medium")
    assert time.perf_counter() - t0 < BOUND_S
