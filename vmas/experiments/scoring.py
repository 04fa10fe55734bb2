"""The benchmarks' scores on SynthMV, where the truth is known: test clips with their labels, the class judge, and
what each benchmark measures on generated music (moved out of the product modules, issue 33).

- :func:`synthmv_clips` / :func:`synthmv_judge`: held-out clips and the codec-aware class classifier;
- :func:`score`: MV-Align, onset-to-event F1 and class accuracy of one set of generations (``synthmv_benchmark``);
- :func:`retrieval_r1`, :func:`oracle_onsets`: the retrieval score and the onset oracle's diagnostic input;
- :func:`judge_windows`, :func:`segment_classes`, :func:`switch_latency`, :func:`hits_within`: scene-cut and
  hit-point scores (``structure_benchmark``).
"""
from __future__ import annotations

import json
import typing as tp
from pathlib import Path

import numpy as np
import torch

from vmas.errors import VmasError
from vmas.metrics.onsets import onset_f1, onset_times_10ms


# ------------------------------------------------------------------------------------------------- SynthMV clips
def synthmv_clips(manifest: tp.Union[str, Path], limit: int, max_tags: int = 0) -> tp.List[tp.Dict[str, tp.Any]]:
    """The first ``limit`` rows of a SynthMV ``vmas_manifest.jsonl`` with their labels: ``id``, ``video`` (its own
    audio is the reference music), ``class_id``, ``tempo_bpm`` and ``events`` (visual event times, s); with
    ``max_tags`` also ``tags``, the row's labelled tags (the words a user would give for that music)."""
    from vmas.solvers.inputs import split_tags

    clips = []
    for line in Path(manifest).read_text().splitlines()[:limit]:
        row = json.loads(line)
        labels = json.loads(Path(row["labels"]).read_text())
        clips.append({"id": row["key"], "video": row["video"], "audio": row["video"], "start": 0.0,
                      "class_id": labels["class_id"], "tempo_bpm": labels["tempo_bpm"],
                      "events": [e["time"] for e in labels["events"]]})
        if max_tags:
            clips[-1]["tags"] = split_tags(row["tags"], max_tags)
    return clips


def codec_roundtrip(codec: torch.nn.Module, device: tp.Any = "cpu") -> tp.Callable[[np.ndarray], np.ndarray]:
    """float [N] -> the same music encoded and decoded by ``codec`` (float [N]): what any LM on its codes can at
    best produce."""
    @torch.no_grad()
    def roundtrip(wav: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(wav, dtype=torch.float32, device=device)[None, None]  # [1, 1, N]
        return codec.decode(codec.encode(x))[0, 0, : x.shape[-1]].cpu().numpy()

    return roundtrip


def synthmv_judge(pipe, **train_kwargs) -> tp.Tuple[tp.Any, tp.Callable[[np.ndarray], np.ndarray]]:
    """(class classifier, codec round trip) for ``pipe``'s music.

    The classifier (``vmas.synthmv.SynthMVClassifier.train_default``) is trained on real renders of the scored
    window length plus their reconstructions through the model's codec, so codec artefacts alone do not move the
    class; ``train_kwargs`` override its defaults (``per_class``, ``seconds``, ``window``).
    """
    from vmas.synthmv import SynthMVClassifier

    sr = pipe.codec.sample_rate
    if sr != 32000:
        raise VmasError(f"SynthMV renders at 32 kHz but the model's codec runs at {sr} Hz")
    roundtrip = codec_roundtrip(pipe.codec, pipe.device)
    kwargs = dict({"seconds": pipe.spec.window_seconds}, **train_kwargs)
    return SynthMVClassifier.train_default(transform=roundtrip, **kwargs), roundtrip


# --------------------------------------------------------------------------------------- generations vs labels
def score(wavs: tp.Sequence[np.ndarray], sr: int, clips: tp.Sequence[dict], classifier,
          seconds: tp.Optional[float] = None) -> tp.Dict[str, float]:
    """MV-Align, onset F1 (±50 ms) and class accuracy of ``wavs`` against the first ``seconds`` of each clip.

    ``clips``: rows of :func:`synthmv_clips` (``video``, ``id``, ``events``, ``class_id``); ``classifier``: anything
    with ``predict(wavs, sr) -> class ids`` (the SynthMV classifier)."""
    from vmas.metrics.mv_align import MVAlign, read_video_frames

    mv = MVAlign(flow="farneback")
    f1s = []
    for wav, clip in zip(wavs, clips):
        seconds_i = seconds or len(wav) / sr
        frames, fps = read_video_frames(clip["video"], duration=seconds_i)  # uint8 [T, H, W, 3], native fps
        mv.update_media(wav, sr, frames, fps, clip["id"])
        events = [t for t in clip["events"] if t < seconds_i]
        f1s.append(onset_f1(onset_times_10ms(wav, sr), events, tol=0.05))
    pred = classifier.predict(list(wavs), sr)
    acc = float(np.mean(pred == np.array([c["class_id"] for c in clips])))
    return {"mv_align": mv.compute(), "onset_f1": float(np.mean(f1s)), "class_acc": acc}


def retrieval_r1(pipe, clips: tp.Sequence[dict]) -> tp.Tuple[float, float, str]:
    """(R@1 with the training-time music feature, R@1 with one-hot real codes, note); see
    ``model_retrieval_embeddings(music_from=...)``. The first is the reported number (decided before measuring).

    A model trained without the contrastive loss has no heads; it is scored with freshly initialised heads
    (``vmas.builders.build_contrastive``, seed 0): chance, and the note says so."""
    from vmas.metrics.retrieval import model_retrieval_embeddings, recall_at_k

    note = "trained contrastive heads; music side = null-condition LM predictions of the real codes"
    if pipe.model.contrastive is None:
        from vmas.builders import build_contrastive_heads

        torch.manual_seed(0)
        pipe.model.contrastive = build_contrastive_heads(pipe.config, pipe.model.encoder.out_dim,
                                                         pipe.codec.codebooks().shape[-1]).eval()
        note = "no contrastive heads (ar_only): freshly initialised heads, expect chance"
    r1 = {}
    for source in ("logits", "codes"):
        v, m, _ = model_retrieval_embeddings(pipe, clips, music_from=source)
        r1[source] = recall_at_k(v, m, ks=(1,))["R@1"]
    return r1["logits"], r1["codes"], note


def oracle_onsets(clips: tp.Sequence[dict], seconds: float, sr: int, frame_rate: int) -> torch.Tensor:
    """[N, frames] float: each clip's own music onsets on the code grid, detected exactly as training detects them
    (``vmas.alignment.music_beats``); what a model with ``model.lm.onset_oracle`` is given (a diagnostic)."""
    from vmas.alignment import music_beats
    from vmas.data import media

    n = round(seconds * frame_rate)
    return torch.stack([music_beats(media.read_audio(c["video"], sr=sr, duration=seconds), sr, frame_rate, n).float()
                        for c in clips])


# ------------------------------------------------------------------------------------------ scene cuts and hits
def judge_windows(wav: np.ndarray, sr: int, start: float, end: float, window: float, hop: float
                  ) -> tp.List[tp.Tuple[float, np.ndarray]]:
    """[(window start s, samples)] of ``window``-second excerpts of ``wav`` inside ``[start, end]`` every ``hop``
    s (at least one, clipped to the span when it is shorter than a window)."""
    n = round(window * sr)
    out = []
    t = start
    while True:
        a = round(t * sr)
        b = min(a + n, round(end * sr), wav.size)
        if b - a >= sr // 4:
            out.append((t, wav[a:b]))
        t += hop
        if t + window > end + 1e-6:
            break
    return out


def segment_classes(wav: np.ndarray, sr: int, segments: tp.Sequence[dict], classifier: tp.Any,
                    window: float = 2.0) -> tp.List[int]:
    """The class each segment's music is judged as: the classifier's class shares (``classifier.scores``)
    averaged over ``window``-second excerpts at half-window hops across the segment, then the largest."""
    out = []
    for seg in segments:
        pieces = [w for _, w in judge_windows(wav, sr, seg["start"], seg["end"], window, window / 2)]
        out.append(int(np.asarray(classifier.scores(pieces, sr)).mean(axis=0).argmax()))
    return out


def switch_latency(wav: np.ndarray, sr: int, cut: float, end: float, new_class: int, classifier: tp.Any,
                   window: float = 2.0, step: float = 0.1) -> tp.Tuple[float, bool]:
    """(seconds after ``cut`` until the music is judged as ``new_class``, switched): the start offset of the first
    ``window``-second excerpt after the cut that the classifier assigns to the new class, tried every ``step`` s
    while the excerpt stays inside the segment (``end``). Never switching gives the last offset tried and False
    (a censored value: the true latency is longer)."""
    tried = judge_windows(wav, sr, cut, end, window, step)
    preds = classifier.predict([w for _, w in tried], sr)
    for (t, _), p in zip(tried, preds):
        if int(p) == new_class:
            return round(t - cut, 3), True
    return round(tried[-1][0] - cut, 3) if tried else 0.0, False


def hits_within(onsets: tp.Sequence[float], hits: tp.Sequence[float], tol: float = 0.05) -> float:
    """Share of ``hits`` with an onset within ``tol`` s (NaN without hits)."""
    if not len(hits):
        return float("nan")
    on = np.asarray(onsets, np.float64)
    return float(np.mean([bool(on.size) and float(np.abs(on - h).min()) <= tol for h in hits]))
