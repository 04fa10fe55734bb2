"""Measure how far our metrics are from the reference implementations (docs/metrics.md, issue 21) -> JSON.

(Over 150 lines: four parity measurements, each against its own reference package.)

    make real-music && python tools/metric_parity.py --tracks 8 --seconds 30 \\
        --synthmv data/synthmv_irregular/test/vmas_manifest.jsonl --out docs/results/metric_parity.json

* VGGish front end: ``vmas.metrics.embeddings.vggish_input`` vs torchvggish ``waveform_to_examples`` on real
  music (and, for scale, the same with scipy's resampler instead of resampy);
* VGGish network: ``vmas.metrics.VGGish`` vs torchvggish ``VGG`` with the same random weights (seed 0);
* Fréchet distance: ``vmas.metrics.frechet_distance`` vs ``frechet_audio_distance``'s statistics + distance on
  128-d log-mel statistics of two disjoint halves of the tracks;
* AV-Align: MV-Align (one-to-one) beside the reference script's score on the same motion curves, with each clip's
  own music (SynthMV manifest rows: the video's audio stream is the music) and with real music over those videos.

KL has no installable reference (audiocraft pins torch 2.1); tests/test_metric_parity.py checks it against
AudioCraft's definition written out. Needs the ``parity`` extra (make install) and ``make real-music``.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import typing as tp
from pathlib import Path

import numpy as np
import torch

from vmas.errors import VmasError

ROOT = Path(__file__).resolve().parents[1]


def _music(path: Path, seconds: float) -> tp.Tuple[np.ndarray, int]:
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        data = f.read(int(seconds * sr), dtype="float32", always_2d=True)  # [N, C]
    return data, sr


def vggish_parity(tracks: tp.Sequence[Path], seconds: float) -> tp.Dict[str, tp.Any]:
    from torchvggish import VGG, make_layers
    from torchvggish import vggish_input as ref_input

    from vmas.metrics.embeddings import VGGish, resample, vggish_examples, vggish_input

    front, poly, examples = [], [], []
    for path in tracks:
        data, sr = _music(path, seconds)
        ref = ref_input.waveform_to_examples(data, sr, return_tensor=False)  # [n, 96, 64]
        ours = vggish_input(data.mean(axis=1), sr)
        front.append(float(np.abs(ours - ref).max()))
        poly.append(np.abs(vggish_examples(resample(data.mean(axis=1), sr, 16000)) - ref))
        examples.append(ref)
    torch.manual_seed(0)
    vgg = VGG(make_layers(), postprocess=False).eval()
    net = VGGish(final_relu=True)
    net.load_state_dict(vgg.state_dict())
    x = torch.from_numpy(np.concatenate(examples)[:64]).float()[:, None]
    with torch.no_grad():
        diff = float((net.eval()(x) - vgg(x)).abs().max())
    poly_all = np.concatenate([p.ravel() for p in poly])
    return {"front_end_max_abs_diff": max(front), "examples": int(sum(len(e) for e in examples)),
            "front_end_with_scipy_resampler": {"max_abs_diff": float(poly_all.max()),
                                               "mean_abs_diff": float(poly_all.mean())},
            "network_random_weights_max_abs_diff": diff, "network_examples": int(len(x))}


def frechet_parity(tracks: tp.Sequence[Path], seconds: float) -> tp.Dict[str, tp.Any]:
    # frechet_audio_distance imports laion_clap (numpy<2) at top level for its CLAP backbone only
    sys.modules.setdefault("laion_clap", types.ModuleType("laion_clap"))
    from frechet_audio_distance.fad import FrechetAudioDistance as Reference

    from vmas.metrics import FrechetAudioDistance
    from vmas.metrics.embeddings import resample, vggish_examples

    def stats(paths):
        out = []
        for p in paths:
            data, sr = _music(p, seconds)
            ex = vggish_examples(resample(data.mean(axis=1), sr, 16000))
            out.append(np.concatenate([ex.mean(axis=1), ex.std(axis=1)], axis=1))
        return np.concatenate(out)

    half = len(tracks) // 2
    a, b = stats(tracks[:half]), stats(tracks[half:])
    ref = object.__new__(Reference)  # its constructor downloads a model; the statistics need none
    (mu_a, s_a), (mu_b, s_b) = ref.calculate_embd_statistics(a), ref.calculate_embd_statistics(b)
    expected = float(ref.calculate_frechet_distance(mu_a, s_a, mu_b, s_b))
    ours = FrechetAudioDistance()
    ours.update(a, real=True)
    ours.update(b, real=False)
    got = ours.compute()
    return {"reference": expected, "ours": got, "abs_diff": abs(got - expected),
            "rel_diff": abs(got - expected) / abs(expected), "embeddings": [len(a), len(b)]}


def av_align_side_by_side(manifest: Path, limit: int,
                          tracks: tp.Sequence[Path] = ()) -> tp.Dict[str, tp.Any]:
    """Both scores per clip on the same motion curve: with each clip's own music, and (``tracks`` given) with the
    first ``duration`` s of real track ``i mod len(tracks)`` over video i, whose dense onsets are where the
    reference's many-to-one count and a matching part."""
    from vmas.metrics.embeddings import load_audio, resample
    from vmas.metrics.mv_align import MVAlign, motion_curve, read_video_frames

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][: limit or None]
    scores = {name: (MVAlign(), MVAlign(reference=True)) for name in ("own_music", "real_music_over_video")}
    for i, row in enumerate(rows):
        frames, fps = read_video_frames(row["video"], 0.0, row.get("duration"))
        motion = motion_curve(frames)
        wavs = {"own_music": load_audio(row.get("audio") or row["video"], 22050)[0]}
        if tracks:
            data, sr = _music(tracks[i % len(tracks)], len(frames) / fps)
            wavs["real_music_over_video"] = resample(data.mean(axis=1), sr, 22050)
        for name, wav in wavs.items():
            for metric in scores[name]:
                metric.update_media(wav, 22050, frames, fps, row["key"], motion=motion)
    out: tp.Dict[str, tp.Any] = {"manifest": str(manifest)}
    for name, (one, ref) in scores.items():
        if one.scores:
            higher = sum(ref.scores[k] > one.scores[k] + 1e-12 for k in one.scores)
            out[name] = {"clips": len(one.scores), "mv_align_one_to_one": one.compute(),
                         "av_align_reference": ref.compute(), "clips_where_reference_is_higher": int(higher)}
    return out


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--music", default=str(ROOT / ".cache" / "real_music"), help="folder of real music (*.ogg)")
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0, help="first N s of each track")
    p.add_argument("--synthmv", help="SynthMV vmas_manifest.jsonl for the AV-Align side-by-side")
    p.add_argument("--limit", type=int, default=0, help="first N SynthMV clips (0 = all)")
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args(argv)
    tracks = sorted(Path(args.music).glob("*.ogg"))[: args.tracks]
    if len(tracks) < 2:
        print(f"error: need at least 2 Ogg tracks in {args.music}; run `make real-music`", file=sys.stderr)
        return 2
    try:
        result = {"vggish": vggish_parity(tracks, args.seconds), "frechet": frechet_parity(tracks, args.seconds)}
        if args.synthmv:
            result["av_align"] = av_align_side_by_side(Path(args.synthmv), args.limit, tracks)
    except ImportError as err:
        print(f"error: {err}; install the parity extra (make install)", file=sys.stderr)
        return 2
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from vmas.experiments.provenance import provenance

    result["meta"] = {"command": " ".join(["python", "tools/metric_parity.py", *(argv or sys.argv[1:])]),
                      **provenance(), "torch_threads": torch.get_num_threads(),
                      "tracks": [t.name for t in tracks], "seconds": args.seconds, "seed": 0}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
