"""Training objectives (SPEC §5): beat-weighted cross-entropy over the delay pattern and video↔music InfoNCE.

``L = L_ar + α · L_c``: :func:`beat_weighted_ce` gives ``L_ar`` (and per-codebook values for logging),
:class:`ContrastiveLoss` gives ``L_c`` and owns the projection heads reused by the retrieval metric;
:class:`VMASObjective` combines them on one model output.
"""
from vmas.losses.beat import beat_weighted_ce, frame_weights_to_pattern
from vmas.losses.contrastive import ContrastiveLoss, gather_with_grad, info_nce, music_feature, music_feature_from_codes
from vmas.losses.objective import VMASObjective

__all__ = ["beat_weighted_ce", "frame_weights_to_pattern", "ContrastiveLoss", "gather_with_grad", "info_nce",
           "music_feature", "music_feature_from_codes", "VMASObjective"]
