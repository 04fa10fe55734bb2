"""SynthMV scoring used by tools/synthmv_benchmark.py: onset F1 by hand, and the scorer on real SynthMV music
(matched music must score high, mismatched music low: the benchmark's random baseline)."""
import json

import numpy as np
import pytest

from vmas.metrics.onsets import onset_f1, onset_times_10ms


@pytest.mark.parametrize("onsets,events,expected", [
    ([0.5, 1.0, 2.0], [0.52, 1.049, 3.0], 2 * 2 / 6),      # two within 50 ms, one miss each side
    ([0.5], [0.5, 0.51], 2 * 1 / 3),                        # one-to-one: a single onset matches once
    ([0.5, 1.0], [0.55, 1.06], 2 * 1 / 4),                 # exactly 50 ms counts, 60 ms does not
    ([], [], 1.0),
    ([], [1.0], 0.0),
])
def test_onset_f1_by_hand(onsets, events, expected):
    assert onset_f1(onsets, events, tol=0.05) == pytest.approx(expected)


def test_onset_times_10ms_of_clicks():
    sr = 32000
    wav = np.zeros(sr * 2, np.float32)
    rng = np.random.default_rng(0)
    for t in (0.3, 0.9, 1.5):
        i = int(t * sr)
        wav[i: i + 320] = rng.standard_normal(320) * np.exp(-np.arange(320) / 60)
    assert onset_f1(onset_times_10ms(wav, sr), [0.3, 0.9, 1.5], tol=0.03) == 1.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from datasets.synthmv import generate_clip

    root = tmp_path_factory.mktemp("smv")
    rows = []
    for i, cls in enumerate([0, 3, 5]):
        path = root / f"c{i}.mp4"
        generate_clip(seed=100 + i, cls=cls, seconds=4.0, size=32, out_path=path)
        rows.append({"key": f"c{i}", "video": str(path), "labels": str(path.with_suffix(".json"))})
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return manifest


def test_scorer_separates_matched_from_mismatched_music(clips):
    from datasets.synthmv import SynthMVClassifier
    from vmas.data import media
    from vmas.experiments.scoring import score, synthmv_clips

    cl = synthmv_clips(clips, 3)
    assert [c["class_id"] for c in cl] == [0, 3, 5]
    real = [media.read_audio(c["video"], sr=32000).numpy() for c in cl]
    clf = SynthMVClassifier.train_default(per_class=3, seconds=4.0)
    matched = score(real, 32000, cl, clf)
    shifted = score(real[1:] + real[:1], 32000, cl, clf)
    assert matched["class_acc"] == 1.0 and shifted["class_acc"] == 0.0
    assert matched["onset_f1"] > 0.9 > 0.6 > shifted["onset_f1"]
    assert matched["mv_align"] > shifted["mv_align"]


def test_mean_std_over_sampling_seeds():
    from vmas.experiments.aggregate import over_sampling_seeds as mean_std

    assert mean_std([{"a": 0.5}]) == {"a": 0.5}
    got = mean_std([{"a": 1.0, "b": 0.2}, {"a": 3.0, "b": 0.2}])
    assert got["a"] == {"mean": 2.0, "std": 1.0, "runs": [1.0, 3.0]} and got["b"]["std"] == 0.0
