"""Typed configuration for vmas.

Every knob lives in a dataclass below; YAML presets under ``configs/`` mirror them 1:1. The loader is strict:
an unknown key is an error that names the key and the file, so a typo never silently falls back to a default.

Sections (one per role, owned by the code that reads them through :mod:`vmas.builders`):

- ``model.encoder``  video encoder (Hiera), SPEC §3
- ``model.codec``    EnCodec tokenizer, SPEC §2
- ``model.lm``       MusicGen-style decoder, SPEC §4
- ``model.tags``     tag branch / text encoder, SPEC §7
- ``loss``           beat-weighted CE + contrastive, SPEC §5
- ``data``           clips, shards and loader, SPEC §2 and §6
- ``optim``          optimiser, schedule, EMA, SPEC §5
- ``train``          solver, checkpoints, logging, DeepSpeed
- ``generation``     sampling defaults, SPEC §4

Values marked "default (ours)" in SPEC are our choices and stay configurable here.
"""
from __future__ import annotations

import copy
import dataclasses
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vmas.errors import ConfigError
from vmas.sampling import SamplingParams


# --------------------------------------------------------------------------------------------------- sections
@dataclass
class EncoderConfig:
    """Hiera video encoder. Defaults are the paper preset (`vmas_hiera_base`, SPEC §3)."""

    arch: str = "vmas_hiera_base"
    """Preset name in ``vmas.models.hiera`` (``vmas_hiera_base``, ``hiera_base_16x224``, ``hiera_debug``). The fields
    below are the full geometry (defaults = ``vmas_hiera_base``); a geometry that differs from a named Base preset is
    logged when the encoder is built."""
    num_frames: int = 96
    image_size: int = 224
    embed_dim: int = 96
    num_heads: int = 1
    stages: tp.List[int] = field(default_factory=lambda: [2, 3, 16, 3])
    q_strides: tp.List[tp.List[int]] = field(default_factory=lambda: [[1, 4, 4], [1, 7, 7], [1, 2, 2]])
    """Q-pool stride (t, h, w) of each pooling stage (first block of stages 2, 3, 4)."""
    mask_unit_size: tp.List[int] = field(default_factory=lambda: [1, 28, 28])
    """Stage-1 attention window (t, h, w) in tokens. Must be a product of leading ``q_strides`` so windows are real
    boxes: (1,4,4), (1,28,28) or (1,56,56) for the VMAs strides; (1,28,28) costs 120.5 GMACs (docs/encoder.md)."""
    mask_unit_attn: tp.List[bool] = field(default_factory=lambda: [True, True, False, False])
    """Which stages attend within windows (Hiera's lag-by-one rule: a stage's first block uses the previous flag)."""
    patch_kernel: tp.List[int] = field(default_factory=lambda: [3, 7, 7])
    patch_stride: tp.List[int] = field(default_factory=lambda: [2, 4, 4])
    patch_padding: tp.List[int] = field(default_factory=lambda: [1, 3, 3])
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    pretrained: str = ""
    """Hub name (``hiera_base_16x224.mae_k400_ft_k400``, ``hiera_base_16x224.mae_k400``) or local path of a Hiera
    video checkpoint (facebookresearch/hiera or timm format); empty = random."""
    freeze: bool = False


@dataclass
class CodecConfig:
    """EnCodec tokenizer. Defaults are MusicGen's 32 kHz codec (SPEC §2)."""

    pretrained: str = ""
    """``facebook/encodec_32khz`` (HF), a local HF folder, an audiocraft ``compression_state_dict.bin``, or empty."""
    sample_rate: int = 32000
    channels: int = 1
    n_filters: int = 64
    ratios: tp.List[int] = field(default_factory=lambda: [8, 5, 4, 4])
    dimension: int = 128
    n_residual_layers: int = 1
    lstm: int = 2
    n_q: int = 4
    bins: int = 2048
    causal: bool = False
    pad_mode: str = "constant"
    """SEANet padding (audiocraft's default); a pretrained checkpoint brings its own."""
    true_skip: bool = True
    """Identity skip in SEANet residual blocks (False = 1x1 conv shortcut)."""
    ema_decay: float = 0.99
    """RVQ codebook EMA decay (codec training only, ``tools/train_codec.py``)."""
    dead_code_threshold: float = 2.0
    """Codes whose EMA cluster size drops below this are replaced by random batch vectors (training only)."""
    commitment_weight: float = 1.0
    """Weight of the RVQ commitment loss in codec training."""


@dataclass
class LMConfig:
    """MusicGen-style decoder. Defaults are MusicGen-medium (SPEC §4)."""

    dim: int = 1536
    num_layers: int = 48
    num_heads: int = 24
    ffn_dim: int = 6144
    n_q: int = 4
    card: int = 2048
    dropout: float = 0.0
    max_period: float = 10000.0
    pretrained: str = ""
    """MusicGen LM weights: audiocraft ``state_dict.bin`` or HF ``MusicgenForCausalLM`` folder/name; empty = random."""
    cond_dropout: float = 0.3
    """Probability of replacing the video condition by the learned null condition in training (CFG)."""
    tag_dropout: float = 0.3
    """Probability of dropping the tag condition, independently of the video (SPEC §7)."""
    video_swap_prob: float = 0.0
    """Probability that a training clip keeping both its tags and video sees another clip's video instead, so tags
    override a contradicting picture at inference (``VMAS._swaps``). 0 = off (real data whose tags come from
    the video itself)."""
    input_noise: float = 0.0
    """Training: probability of replacing each *input* code (not the target) by a random code, so the LM cannot
    predict everything from its own history and leans on its conditions (``VMAS._corrupt``). 0 = plain teacher
    forcing (MusicGen)."""
    video_fuse: str = "cross"
    """How video tokens reach the LM: ``cross`` (the paper: cross-attention only), ``cross+sum`` (also add the
    video token of each step's time to the LM input; ``ConditionFuser.step_video``) or ``cross+interp`` (the same,
    linearly interpolated between token centres; ``ConditionFuser.step_interp``)."""
    motion_condition: bool = False
    """Add the video's motion curve (``vmas.alignment.video_motion`` with ``loss.motion_flow``, the signal the
    beat-weighted loss already uses) around each step's time to the LM input (``ConditionFuser.motion_fps``). The
    paper has no such path; on SynthMV with an unpredictable rhythm it is what carries note timing from the
    picture (issue 17, docs/synthmv_results.md)."""
    onset_oracle: bool = False
    """Diagnostic (issue 17): add the music's own onsets to each step's input (``ConditionFuser.onset_oracle``),
    an upper bound for what a video path can give. Training takes them from the clips' music; generation needs
    them passed in (``VMAS.generate(onsets=...)``), so such a model is for measurement, not for users."""
    beat_condition: bool = False
    """Tempo control: add a beat grid (phase of the requested tempo at each step's frame) to the LM input
    (``vmas.modules.rhythm``; MusiConGen-style). Training fits the grid to each clip's music onsets and its
    ``"N BPM"`` tag; inference builds it from a requested tempo. False = tempo only as a text tag."""
    beat_dropout: float = 0.5
    """Probability of dropping the beat grid per training clip (independent of video and tags), so the model also
    generates without a requested tempo."""
    time_aligned_video: bool = True
    """Give video tokens the LM-step positions of their time span (see ``ConditionFuser.steps_per_clip``); False
    = token indices (checkpoints exported before this option)."""
    grad_checkpointing: bool = False


@dataclass
class TagConfig:
    """Tag branch (SONIQUE, SPEC §7)."""

    enabled: bool = False
    text_encoder: str = "clap:laion/clap-htsat-unfused"
    """``clap:<name or path>`` (transformers ClapModel) or ``minilm:<path>`` / ``minilm`` (offline default)."""
    text_dim: int = 512
    max_tags: int = 16
    captioner: str = ""
    """Video/image-language model for ``--auto-tags`` (transformers name or path)."""
    llm: str = "mistralai/Mistral-7B-Instruct-v0.2"


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    tags: TagConfig = field(default_factory=TagConfig)


@dataclass
class LossConfig:
    """Training objective (SPEC §5)."""

    beat_window: int = 5
    """w: video beat = local max of motion within ±w music frames. default (ours)"""
    beat_delta: int = 3
    """δ: a music beat counts as aligned if a video beat is within ±δ frames. default (ours)"""
    beat_lambda: float = 0.5
    """λ: weight of non-aligned frames; 1.0 = plain cross-entropy. default (ours)"""
    contrastive_weight: float = 0.1
    """α in L = L_ar + α L_c. default (ours)"""
    contrastive_dim: int = 512
    """Width of the shared video/music embedding space (linear heads). default (ours)"""
    contrastive_temperature: float = 0.07
    """Initial InfoNCE temperature τ (learnable, log-parametrised). default (ours)"""
    contrastive_min_temperature: float = 0.01
    """Lower clamp of the learned τ (CLIP's logit-scale cap of 100). default (ours)"""
    motion_flow: str = "raft_large"
    """Optical flow for the motion curve at preprocessing time: raft_large (the paper's RAFT), raft_small, farneback."""
    motion_weights: str = "DEFAULT"
    """RAFT weights: torchvision name (DEFAULT, C_T_V2, ...) or a local checkpoint path; "random" only in tests."""
    motion_batch: int = 8
    """Frame pairs per RAFT call (bounds memory)."""


@dataclass
class CurationConfig:
    """DISCO-MV-style curation (SPEC §6): which videos and clips make it into the manifest."""

    variety_threshold: float = 0.0
    """Keep a video when the mean pairwise cosine similarity of its frame embeddings is below this. 0 = the
    embedder's own scale: 0.7 (paper) for a pretrained image model, the measured weight-free values of
    ``vmas.data.curation.WEIGHT_FREE_THRESHOLDS`` for ``pixels`` / ``histogram`` (docs/data.md, issue 18)."""
    embedder: str = "auto"
    """Frame embedding for the variety filter: ``auto`` (CLIP ViT-B/16 through timm when its weights are in the
    local cache or ``embedder_weights``, else ``pixels``, said in the log), ``pixels`` (8x8 thumbnails, no weights),
    ``histogram`` (RGB colour histogram, no weights), ``timm:<model name>`` or ``torchvision:<model name>``."""
    embedder_weights: str = ""
    """Local weights file for a timm/torchvision embedder (empty = the library's own hub download/cache)."""
    variety_frames: int = 16
    """Frames sampled uniformly over the whole video for the variety filter."""
    embed_size: int = 224
    """Side of the frames fed to the embedder (pretrained models resize to their own input size)."""
    vocal_removal: bool = True
    """Demucs two-stem separation, keep the accompaniment (needs the ``demucs`` package and its weights)."""
    demucs_model: str = "htdemucs"
    """Demucs model name, or a ``name@/local/repo`` folder with the model's ``.th``/``.yaml`` files."""
    silence_db: float = -50.0
    """A clip whose audio RMS is below this (dBFS) is rejected as silent."""
    max_clips_per_video: int = 0
    """0 = every non-overlapping clip of the video."""
    val_fraction: float = 0.02
    test_fraction: float = 0.02
    """Split by video (hash of the source id + split_seed); never by clip. A split file overrides this."""
    split_seed: int = 0
    videos_per_part: int = 50
    """Videos per curation part (``parts/part-NNNNNN.jsonl`` + done-marker): the unit that ranks own, that a
    re-run after a crash skips when finished, and whose order fixes the manifest's (issue 20)."""
    max_reject_share: float = 0.5
    """A run fails loudly (non-zero exit) when it keeps no video, or when one reject reason takes more than this
    share of the input videos: a filter set on the wrong scale must not silently empty a dataset (issue 18)."""


@dataclass
class PreprocessConfig:
    """How ``tools/preprocess.py`` feeds the device (issue 20). Shards do not depend on these settings: the same
    manifest gives the same bytes for any batch size, worker count or world size (tested)."""

    clip_batch: int = 8
    """Clips per device step: EnCodec encodes them as one ``[B, 1, N]`` batch (codes equal one clip at a time) and
    RAFT runs their frame pairs in chunks of ``loss.motion_batch`` pairs across clip boundaries."""
    decode_workers: int = 2
    """DataLoader worker processes that decode the next clips (video frames, audio) and compress their frames
    while the device works on the current batch; 0 = decode in the main process."""
    prefetch: int = 2
    """Clips each decode worker keeps ready (DataLoader ``prefetch_factor``)."""
    flow_amp: bool = True
    """bf16 autocast for RAFT on CUDA (about 2x on recent GPUs; the motion curve is a mean over the frame, so bf16
    rounding moves it by far less than the beat picker's window). Ignored on CPU."""
    codec_amp: bool = False
    """bf16 autocast for the EnCodec encoder on CUDA. Off: codes are nearest-codebook argmins, bf16 rounding flips
    near-ties, so shards written on GPU would no longer equal a CPU run's."""


@dataclass
class DataConfig:
    """Clips, shards and the streaming loader (SPEC §2, §6)."""

    train_shards: str = ""
    """Glob or brace pattern of training shards."""
    val_shards: str = ""
    clip_seconds: float = 10.0
    fps: float = 9.6
    num_frames: int = 96
    image_size: int = 224
    sample_rate: int = 32000
    frame_rate: int = 50
    batch_size: int = 1
    """Micro-batch per rank."""
    num_workers: int = 0
    shuffle_buffer: int = 256
    seed: int = 0
    clips_per_shard: int = 1000
    """Clips per tar shard (~1000 keeps shards near 0.3-1 GB at 224² mp4 frames)."""
    frame_format: str = "mp4"
    """How frames are stored in shards: ``mp4`` (H.264, smallest) or ``jpg`` (one JPEG per frame, fastest decode)."""
    frame_quality: int = 23
    """x264 CRF for ``mp4`` (lower = better) or JPEG quality 1-100 for ``jpg``."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    """Device batching and decode workers of ``tools/preprocess.py``."""
    cache_decoded: bool = False
    """Keep every decoded clip in memory after the first epoch and reshuffle from memory (small datasets only:
    a paper-size clip is 14 MB decoded; a 48 x 32² SynthMV window is 0.15 MB). Removes video decoding, which
    otherwise dominates a tiny model's step time on the CPU."""
    curation: CurationConfig = field(default_factory=CurationConfig)
    unpaired_shards: str = ""
    """Music-only shards (no frames: ``tools/preprocess_music.py``, issue 25) drawn beside ``train_shards``. Their
    clips train the LM with the learned null video condition and their tags, stay out of the contrastive loss and
    take beat weights from their own music onsets (SONIQUE's unpaired music)."""
    unpaired_fraction: float = 0.0
    """Share of training clips drawn from ``unpaired_shards``, interleaved at an exact ratio (clip ``i`` of a reader
    is music-only iff ``floor((i+1)·f) > floor(i·f)``). 0 = paired only: the loader is today's, bitwise."""


@dataclass
class OptimConfig:
    """Optimiser and schedule (SPEC §5: MusicGen recipe). Read by :mod:`vmas.solvers.optim`."""

    optimizer: str = "adamw"
    """``adamw`` or ``dadam`` (D-Adaptation Adam: set ``lr: 1.0``; lr then only scales the adapted step)."""
    lr: float = 1e-4
    """Learning rate of the new parts (condition fuser, contrastive heads, randomly initialised modules)."""
    lr_pretrained: float = 1e-5
    """Learning rate of parts loaded from a pretrained checkpoint (encoder / LM with a ``pretrained`` source)."""
    betas: tp.List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    """Decoupled weight decay of matrices; biases, norms and the contrastive temperature get none."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    warmup_steps: int = 4000
    """Linear warm-up length in optimiser steps. default (ours)"""
    max_steps: int = 100000
    """Training length in optimiser steps; the cosine reaches ``min_lr_ratio`` here."""
    min_lr_ratio: float = 0.0
    ema_decay: float = 0.99
    """EMA decay per update (0 = no averaging: the export holds the last weights). default (ours)"""
    ema_every: int = 10
    """EMA update interval in optimiser steps. default (ours)"""
    freeze: tp.List[str] = field(default_factory=list)
    """Extra parameter-name prefixes to freeze, e.g. ``[encoder]`` or ``[lm.transformer.layers.0]`` (the codec is
    never trained; ``model.encoder.freeze`` freezes the encoder too)."""
    lora_rank: int = 0
    """LoRA adapters (fine-tuning, ``vmas.solvers.lora``): rank of the low-rank update added to every ``nn.Linear``
    under ``lora_targets``, whose other weights are then frozen; 0 = off. Adapters train with ``optim.lr`` and are
    merged into the weights of the export."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the update is ``(lora_alpha / lora_rank) · B A``."""
    lora_targets: tp.List[str] = field(default_factory=lambda: ["lm.transformer."])
    """Module-name prefixes whose linear layers get adapters (default: every LM transformer block)."""


@dataclass
class TrainConfig:
    """Solver, checkpoints and logging. Read by :mod:`vmas.solvers.solver` and ``tools/train.py``."""

    out_dir: str = "runs/default"
    """Run folder: ``checkpoints/step_XXXXXXXX/``, ``tb/`` (TensorBoard), ``model.pt`` (export), ``summary.json``.
    Multi-node: must be on a filesystem every node sees."""
    seed: int = 0
    global_batch: int = 0
    """Clips per optimiser step over all ranks; 0 = micro-batch × accumulation × world size (else checked)."""
    grad_accum: int = 1
    precision: str = "bf16"
    """``fp32`` or ``bf16`` (DeepSpeed bf16: weights and activations in bf16, optimiser master weights in fp32)."""
    engine: str = "deepspeed"
    """``deepspeed`` (the cluster path) or ``torch`` (plain single-process loop: quick CPU experiments and tests)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3 (must agree with ``deepspeed_config`` when that JSON names a stage)."""
    deepspeed_config: str = ""
    """Optional DeepSpeed JSON (configs/deepspeed/zero*.json); batch, accumulation, clipping and precision fields
    are always filled from this config, the JSON adds the rest (bucket sizes, offload, ...)."""
    synthetic: bool = False
    """Random batches of the config's shapes instead of shards (smoke runs; ``tools/train.py --synthetic``)."""
    synthetic_clips: int = 64
    """Distinct synthetic clips, cycled through (a small pool the model can learn, so the loss curve moves)."""
    save_every: int = 1000
    """Checkpoint interval in optimiser steps (a last one is always written at the end)."""
    keep_last: int = 3
    """Checkpoints kept on disk (older ones are deleted after a new one is complete)."""
    log_every: int = 10
    eval_every: int = 0
    """Every N steps (and at the end) score ``data.val_shards`` under each condition branch (``Solver.evaluate``:
    ce, ce_video, ce_tags, ce_null, cond_gain, video_gain) into the log, TensorBoard and summary history. 0 = off."""
    eval_batches: int = 0
    """Validation batches per evaluation (0 = the whole of ``data.val_shards``)."""
    init_from: str = ""
    """Fine-tuning: start from these weights instead of ``model.*.pretrained`` / random ones, an inference export
    (``model.pt``, the EMA weights) or a training checkpoint folder (its ``ema.pt``). The architecture of ``model``
    must match; every loaded part trains with ``optim.lr_pretrained``. Unlike ``--resume`` the optimiser, schedule,
    data position and step start fresh."""
    early_stop: int = 0
    """Stop when the validation ``ce`` (``train.eval_every``) has not improved for this many evaluations in a row,
    then save and export as at the end (0 = off)."""
    eval_batch_size: int = 0
    """Clips per validation batch (0 = ``data.batch_size``). Validation is sharded over ranks in whole batches of
    the 1-rank order, so keep it fixed to compare runs with different world sizes (``ce_wrong_video`` pairs clips
    within a batch)."""
    device: str = "auto"
    """Single-process device for ``engine: torch``; DeepSpeed uses its accelerator (CUDA, else CPU)."""
    progress: bool = True
    """Progress bar on rank 0 (log lines are written either way)."""


@dataclass
class GenerationConfig(SamplingParams):
    """Generation defaults of a model (MusicGen, SPEC §4). The sampling fields (``cfg``, ``top_k``, ``top_p``,
    ``temperature``, ``guide``, ``tag_cfg``) are those of :class:`vmas.sampling.SamplingParams`, inherited so that
    the YAML keys, the request's overrides and ``VMAS.generate`` share one list."""

    duration: float = 10.0
    seed: int = 0
    beat_from_video: bool = False
    """Models with ``model.lm.beat_condition``: fit the beat grid to the picture's motion peaks
    (``beat_grids.video_grid``), so the music's beats land on visual events; a requested tempo keeps its tempo and takes
    its phase from the picture. False = a grid only when a tempo is requested."""

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams.of(self)


@dataclass
class Config:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


# --------------------------------------------------------------------------------------------------- loading
def _from_dict(cls: type, data: tp.Mapping[str, tp.Any], where: str, source: str) -> tp.Any:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(data, tp.Mapping):
        raise ConfigError(f"{source}: '{where or 'root'}' must be a mapping, got {type(data).__name__}")
    hints = tp.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"{source}: unknown config key '{path}' (valid: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _from_dict(hint, value or {}, path, source)
        else:
            kwargs[key] = _coerce(value, hint, path, source)
    return cls(**kwargs)


def _coerce(value: tp.Any, hint: tp.Any, path: str, source: str) -> tp.Any:
    """Check a leaf value against its annotation; ints are accepted for floats (YAML writes ``1`` for ``1.0``)."""
    origin = tp.get_origin(hint)
    if origin in (list, tp.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{path}' must be a list, got {value!r}")
        (inner,) = tp.get_args(hint) or (tp.Any,)
        return [_coerce(v, inner, path, source) for v in value]
    if hint is str and value is None:  # `key=` / `key=null` / `key: null` clears a string setting
        return ""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: '{path}' must be {hint.__name__}, got {value!r}")
    return value


def _set_override(data: dict, dotted: str, raw: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) onto a nested dict."""
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{key}' is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(path: tp.Union[str, Path, None] = None, overrides: tp.Sequence[str] = (),
                base: tp.Optional[tp.Mapping[str, tp.Any]] = None) -> Config:
    """Load a YAML preset (or the defaults when ``path`` is None) and apply ``key.sub=value`` overrides.

    A preset may start with ``base: other.yaml`` (relative to itself) to inherit and override another preset;
    ``base`` (a config dict, e.g. a checkpoint's stored config) is the layer under the preset (fine-tuning).
    Each layer (a preset file, the overrides) that names shards decides ``train.synthetic`` (:func:`_shards_rule`).
    """
    data: dict = copy.deepcopy(dict(base)) if base else {}
    source = "<defaults>" if not base else "<base checkpoint config>"
    if path is not None:
        _apply_layer(data, _read_yaml(Path(path)))  # each file was checked for both when read
        source = str(path)
    layer: dict = {}  # what the command line itself sets (for the shards rule)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_override(data, key.strip(), raw)
        _set_override(layer, key.strip(), raw)
        source = f"{source} (+overrides)"
    _shards_rule(data, layer, "the command line", refuse=True)
    return _from_dict(Config, data, "", source)


SHARD_KEYS = ("train_shards", "unpaired_shards")
"""``data.*`` keys that only synthetic batches ignore (:func:`_shards_rule`)."""


def _shards_rule(merged: dict, layer: tp.Mapping[str, tp.Any], where: str = "", refuse: bool = False) -> None:
    """A layer that names shards (``data.train_shards`` / ``unpaired_shards``) trains on them: unless it sets
    ``train.synthetic`` itself, a ``synthetic: true`` from a layer below (``configs/debug.yaml``) in ``merged`` is
    turned off; with ``refuse``, a layer that sets both is an error naming both. Why: ``train.synthetic`` replaces
    the data stream, so before this rule ``debug.yaml data.train_shards=...`` trained on random batches and
    reported success (issue 36). A resolved preset chain is not refused: its top file may ask for synthetic
    batches over shards it inherits (a smoke run of ``paper.yaml``), as ``--synthetic`` does."""
    section = layer.get("data")
    named = {k: section[k] for k in SHARD_KEYS if isinstance(section, dict) and section.get(k)}
    if not named:
        return
    train = layer.get("train") if isinstance(layer.get("train"), dict) else {}
    if "synthetic" not in train:
        if isinstance(merged.get("train"), dict) and merged["train"].get("synthetic"):
            merged["train"]["synthetic"] = False
    elif refuse and train["synthetic"] is True:
        key, value = next(iter(named.items()))
        raise ConfigError(f"{where}: train.synthetic=true and data.{key}={value} are both set (synthetic batches "
                          f"would replace the shards): drop train.synthetic=true to train on the shards, or "
                          f"data.{key} for a synthetic smoke run")


def _apply_layer(dst: dict, layer: dict) -> None:
    """``layer`` over ``dst`` (deep update), then :func:`_shards_rule`'s turn-off."""
    _deep_update(dst, layer)
    _shards_rule(dst, layer)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (presets live in configs/, e.g. configs/debug.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)
    _shards_rule({}, data, str(path), refuse=True)  # a file that sets both, with or without a base
    if base:
        merged = _read_yaml(path.parent / base)
        _apply_layer(merged, data)
        data = merged
    return data


def _deep_update(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value


def config_to_dict(cfg: tp.Any) -> dict:
    """Plain-dict view (for YAML dumps, checkpoints and logs)."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: tp.Mapping[str, tp.Any], source: str = "<checkpoint>") -> Config:
    return _from_dict(Config, data, "", source)


def dump_config(cfg: Config, path: tp.Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
