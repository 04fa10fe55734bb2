"""The benchmarks' scores on SynthMV, where the truth is known: test clips with their labels, the class judge, and
what each benchmark measures on generated music (moved out of the product modules, issue 33).

- :func:`synthmv_clips` / :func:`synthmv_judge`: held-out clips and the codec-aware class classifier;
- :func:`score`: MV-Align, onset-to-event F1 and class accuracy of one set of generations (``synthmv_benchmark``),
  and of its :func:`baselines` (another clip's music, the codec's round trip);
- :func:`retrieval_r1`, :func:`oracle_onsets`: the retrieval score and the onset oracle's diagnostic input;
- scene cuts and hit points (``structure_benchmark``): :mod:`vmas.experiments.scene_scores`.
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


def baselines(clips: tp.Sequence[dict], classifier, roundtrip: tp.Callable[[np.ndarray], np.ndarray], sr: int,
              seconds: float, seed: int) -> tp.Dict[str, tp.Dict[str, tp.Any]]:
    """:func:`score` of two references on ``clips``: ``random``, each clip with the real music of another clip (a
    derangement drawn with ``seed``: the right kind of audio, the wrong video; R@1 = chance), and
    ``codec_ceiling``, each clip's own music through the codec (``roundtrip``): what a perfect LM could produce."""
    from vmas.data import media

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(clips))
    while len(clips) > 1 and np.any(perm == np.arange(len(clips))):
        perm = rng.permutation(len(clips))
    real = [media.read_audio(c["video"], sr=sr, duration=seconds).numpy() for c in clips]
    return {"random": dict(score([real[j] for j in perm], sr, clips, classifier), r_at_1=1.0 / len(clips),
                           r_at_1_note="chance (1/N)"),
            "codec_ceiling": score([roundtrip(w) for w in real], sr, clips, classifier)}


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
