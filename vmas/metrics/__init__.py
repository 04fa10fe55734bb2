"""Benchmark metrics of the paper (SPEC §8), torchmetrics-style (``update`` / ``compute`` / ``reset``).

See docs/metrics.md for each definition, backbone and how to reproduce the paper's setting.
"""
from vmas.metrics.av_align import AVAlign, AVAlignRevision, av_align_files
from vmas.metrics.beat import BeatCoverageHit, BeatMetrics, beat_align_score, beat_iou, biou, tbiou
from vmas.metrics.clap_score import ClapScore
from vmas.metrics.embeddings import (
                                     AudioEmbedder,
                                     ClapAudioEmbedder,
                                     EncodecEmbedder,
                                     MelStatsEmbedder,
                                     PasstEmbedder,
                                     VGGish,
                                     VGGishEmbedder,
                                     build_embedder,
                                     load_audio,
                                     load_vggish,
                                     vggish_input,
)
from vmas.metrics.fad import FrechetAudioDistance, frechet_distance
from vmas.metrics.kl import (
                                     ASTClassifier,
                                     AudioClassifier,
                                     KLDivergence,
                                     MelBandClassifier,
                                     PasstClassifier,
                                     build_classifier,
                                     chunk_distributions,
                                     kl_divergence,
                                     label_distribution,
)
from vmas.metrics.mv_align import (
                                     MVAlign,
                                     audio_peaks,
                                     av_align_2023_iou,
                                     av_align_iou,
                                     av_align_reference_iou,
                                     match_peaks,
                                     motion_curve,
                                     video_peaks,
)
from vmas.metrics.retrieval import VideoMusicRetrieval, recall_at_k, retrieval_ranks

__all__ = [
    "BeatCoverageHit", "BeatMetrics", "beat_align_score", "beat_iou", "biou", "tbiou",
    "ClapScore", "AudioEmbedder", "ClapAudioEmbedder", "EncodecEmbedder", "MelStatsEmbedder", "PasstEmbedder",
    "VGGish", "VGGishEmbedder", "build_embedder", "load_audio", "load_vggish", "vggish_input",
    "FrechetAudioDistance", "frechet_distance", "AudioClassifier", "ASTClassifier", "KLDivergence",
    "MelBandClassifier", "PasstClassifier", "build_classifier", "chunk_distributions", "kl_divergence",
    "label_distribution", "AVAlign", "AVAlignRevision", "av_align_files", "MVAlign", "audio_peaks",
    "av_align_2023_iou", "av_align_iou", "av_align_reference_iou", "match_peaks",
    "motion_curve", "video_peaks", "VideoMusicRetrieval", "recall_at_k", "retrieval_ranks",
]
