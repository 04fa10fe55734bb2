"""Evaluation inputs that were silently dropped, doubled or replaced (issue 36's "look for others of the same kind"):
each is now an error naming the problem, or a gap the coverage shows."""
import json
from pathlib import Path

import numpy as np
import pytest

from vmas.errors import DataError

SR = 16000


def _wav(path: Path, seed: int, scale: float = 0.1) -> Path:
    import soundfile as sf

    sf.write(str(path), (np.random.default_rng(seed).normal(size=2 * SR) * scale).astype(np.float32), SR)
    return path


def _manifest(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_duplicate_clip_ids_and_an_empty_split_are_errors(tmp_path):
    from vmas.evaluation import load_clips

    m = _manifest(tmp_path / "m.jsonl", [{"id": "a", "audio": "a.wav", "split": "test"},
                                         {"id": "b", "audio": "b.wav", "split": "test"},
                                         {"id": "a", "audio": "c.wav", "split": "train"}])
    with pytest.raises(DataError, match="clip id\\(s\\) on more than one row: a;"):
        load_clips(m)  # both rows would read GENERATED/a.wav: one clip counted twice
    m = _manifest(tmp_path / "m.jsonl", [{"id": "a", "split": "test"}, {"id": "b", "split": "val"}])
    with pytest.raises(DataError, match="no row has split 'tset' \\(splits present: test, val\\)"):
        load_clips(m, split="tset")  # a typo once gave an empty run: every metric skipped
    assert [c["id"] for c in load_clips(m, split="val")] == ["b"]


def test_a_missing_reference_file_is_missing_not_the_videos_soundtrack(tmp_path):
    from vmas.evaluation import evaluate, reference_source

    gen = tmp_path / "gen"
    gen.mkdir()
    for i in range(2):
        _wav(tmp_path / f"ref{i}.wav", i)
        _wav(gen / f"c{i}.wav", 10 + i, 0.3)
    soundtrack = _wav(tmp_path / "song_with_vocals.wav", 99, 0.5)  # the 'video' stands in with its own sound
    rows = [{"id": "c0", "video": soundtrack.name, "audio": "ref0.wav"},
            {"id": "c1", "video": soundtrack.name, "audio": "vocals_removed/c1.wav"}]  # not there
    m = _manifest(tmp_path / "m.jsonl", rows)
    clip = {"id": "c1", "video": str(soundtrack), "audio": str(tmp_path / "vocals_removed/c1.wav")}
    assert reference_source(clip, None) == (None, None)  # was (song_with_vocals.wav, None)
    assert reference_source(dict(clip, audio=None), None) == (soundtrack, None)  # no 'audio': the video's sound
    v2m = {"id": "x", "video": str(soundtrack), "audio": None, "layout": "v2m-bench"}
    assert reference_source(v2m, None) == (None, None)  # a V2M-bench video without music has no reference

    report = evaluate(gen, m, metrics=["fad", "kl"], fad_backbone="mel", kl_classifier="mel", progress=False)
    meta = report["meta"]
    assert meta["clips"]["missing_reference"] == 1 and meta["missing_reference_ids"] == ["c1"]
    assert report["coverage"]["fad"]["reference"] == {"clips": 1, "of": 2, "fraction": 0.5}
    assert report["fad"] is None and report["kl"] is None  # withheld: half the references
    assert "missing_reference_ids" in meta["withheld"]["kl"]


def test_retrieval_embeddings_from_another_manifest_are_refused(tmp_path):
    from vmas.evaluation import evaluate

    gen = tmp_path / "gen"
    gen.mkdir()
    rows = [{"id": f"c{i}", "audio": f"r{i}.wav"} for i in range(3)]
    m = _manifest(tmp_path / "m.jsonl", rows)
    emb = tmp_path / "emb.npz"
    np.savez(emb, video=np.eye(3), music=np.eye(3), ids=np.array(["c0", "c2", "c1"]))
    report = evaluate(gen, m, metrics=["retrieval"], retrieval_embeddings=str(emb), progress=False)
    assert report.get("retrieval") is None and "not the manifest's clips" in report["meta"]["skipped"]["retrieval"]
    np.savez(emb, video=np.eye(3), music=np.eye(3), ids=np.array(["c0", "c1", "c2"]))
    report = evaluate(gen, m, metrics=["retrieval"], retrieval_embeddings=str(emb), progress=False)
    assert report["retrieval"] == {"R@1": 1.0, "R@10": 1.0} and report["coverage"]["retrieval"]["fraction"] == 1.0


def test_two_videos_with_one_name_never_share_a_generated_file(tmp_path):
    """`<video stem>.wav` identifies a clip only when its stem is unique: clips from a/clip.mp4 and b/clip.mp4
    once both read GENERATED/clip.wav (one file, counted twice)."""
    from vmas.evaluation import evaluate

    gen = tmp_path / "gen"
    gen.mkdir()
    _wav(gen / "clip.wav", 1, 0.3)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        _wav(tmp_path / d / "clip.wav", 2)  # stands in for the video (and its soundtrack: the reference)
    rows = [{"id": "a-clip", "video": "a/clip.wav"}, {"id": "b-clip", "video": "b/clip.wav"}]
    report = evaluate(gen, _manifest(tmp_path / "m.jsonl", rows), metrics=["fad"], fad_backbone="mel",
                      progress=False, min_coverage=0.0)
    assert report["meta"]["clips"]["missing_generated"] == 2 and "fad" in report["meta"]["skipped"]
    # a unique stem still identifies its clip (what `vmas generate` writes: NAME.wav for NAME.mp4)
    rows = [{"id": "a-clip", "video": "a/clip.wav"}, {"id": "c-other", "video": "b/other.wav"}]
    _wav(tmp_path / "b" / "other.wav", 3)
    report = evaluate(gen, _manifest(tmp_path / "m.jsonl", rows), metrics=["fad"], fad_backbone="mel",
                      progress=False, min_coverage=0.0)
    assert report["meta"]["clips"]["missing_generated"] == 1 and report["meta"]["missing_generated_ids"] == ["c-other"]


def test_split_and_limit_without_a_manifest_are_refused(tmp_path):
    from vmas.errors import VmasError
    from vmas.evaluation import evaluate

    (tmp_path / "g").mkdir()
    with pytest.raises(VmasError, match="--split and --limit select manifest rows"):
        evaluate(tmp_path / "g", reference=tmp_path / "g", metrics=["fad"], split="test", progress=False)
