"""Training memory of one step: measured on the CPU (allocator trace) and estimated by calculation (meta device).

``tools/estimate_memory.py --train`` prints :func:`estimate_training` for any preset (paper size included: nothing
is allocated); :func:`measure_training` runs one real step at a small size and reads the same components off the
allocator, so the estimate can be checked against a measurement (``tests/test_estimate_memory.py``).

**How the measurement counts bytes.** PyTorch's CPU allocator keeps no peak counter (``torch.cuda.max_memory_allocated``
has no CPU twin), so we record its allocations: under ``torch.profiler.profile(profile_memory=True)`` the CPU
allocator reports every allocation and free (``[memory]`` events with signed byte counts, in time order), and the
running sum of those events is the live tensor bytes at every moment. This is the quantity ``max_memory_allocated``
gives on a GPU: every tensor storage (weights, gradients, optimiser state, saved activations, temporaries inside
kernels' Python-visible outputs), nothing of the process's other memory (Python objects, numpy arrays, the
allocator's own caching, which the CPU allocator does not do). Alternatives we did not take: RSS (includes the
interpreter, libraries and freed-but-kept pages: too coarse for megabyte-sized models); saved-tensor hooks (see
only what autograd saves, not temporaries or the gradients, and miss what ``torch.utils.checkpoint`` keeps);
a ``TorchDispatchMode`` summing op outputs (must track storage lifetimes by hand: views, in-place ops, frees).
The profiler costs time per op, which does not matter at the small sizes measured.

**The components** (same names in the estimate and the measurement; bytes):

- ``params``: weights and buffers of the model as trained (the ``TrainStep`` module: VMAS model, codec inside it).
- ``grads``: gradients of the trainable parameters (left after backward, before the optimiser step).
- ``optimizer``: what the first AdamW step allocates and keeps (``exp_avg``, ``exp_avg_sq``, ``step`` per tensor).
- ``activations``: what the forward leaves alive for the backward (live bytes at the end of the forward minus those
  at its start): every saved tensor, or with gradient checkpointing only the blocks' inputs plus what runs outside
  the checkpointed blocks.
- ``peak``: the highest live bytes above the start of the step during forward + backward (activations, gradients
  as they are produced, backward temporaries, and with checkpointing one block recomputed).
"""
from __future__ import annotations

import dataclasses
import gc
import typing as tp
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vmas.config import Config
from vmas.errors import ConfigError

MARKS = ("vmas_mem/build", "vmas_mem/forward", "vmas_mem/backward", "vmas_mem/optimizer")


@dataclasses.dataclass
class AllocationTrace:
    """Live CPU tensor bytes over time, relative to the start of the trace.

    ``times`` int64 ns [E] (sorted), ``live`` int64 [E] (bytes after each allocator event), ``marks`` name ->
    (start ns, end ns) of each ``torch.profiler.record_function`` range named in :data:`MARKS`."""

    times: torch.Tensor
    live: torch.Tensor
    marks: tp.Dict[str, tp.Tuple[int, int]]

    def at(self, t_ns: int) -> int:
        """Live bytes just after time ``t_ns`` (0 before the first event)."""
        i = int(torch.searchsorted(self.times, torch.tensor(t_ns), right=True)) - 1
        return int(self.live[i]) if i >= 0 else 0

    def peak(self, t0: int, t1: int) -> int:
        """Highest live bytes in [t0, t1] (at least the level at t0)."""
        inside = (self.times >= t0) & (self.times <= t1)
        level = self.at(t0)
        return max(level, int(self.live[inside].max())) if bool(inside.any()) else level

    def span(self, name: str) -> tp.Tuple[int, int]:
        return self.marks[name]


def trace_allocations(fn: tp.Callable[[], tp.Any]) -> AllocationTrace:
    """Run ``fn()`` under the profiler's memory recording and return the allocator's live-bytes curve."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    marks = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name().startswith("vmas_mem/")}
    times = torch.tensor([t for t, _ in mem], dtype=torch.int64)
    live = torch.tensor([b for _, b in mem], dtype=torch.int64).cumsum(0)
    return AllocationTrace(times, live, marks)


def training_objects(cfg: Config, codec: torch.nn.Module):
    """(TrainStep in training mode, optimiser) with random weights: the solver's own training objects
    (:func:`vmas.solvers.objects.build_training_objects`), measured (:func:`measure_training`), estimated
    (:func:`estimate_training`) and timed (``tools/gpu_check.py``)."""
    from vmas.solvers.objects import build_training_objects

    built = build_training_objects(cfg, codec, load_weights=False)
    return built.step.train(), built.optimizer


def synthetic_inputs(cfg: Config, batch_size: int) -> tp.Dict[str, tp.Any]:
    """One micro-batch of random clips with the config's shapes, as ``TrainStep`` takes it."""
    from vmas.data.loader import collate
    from vmas.solvers.inputs import BatchInputs
    from vmas.solvers.synthetic import SyntheticClips

    clips = SyntheticClips(cfg, cfg.train.seed, batch_size)
    batch = collate([clips.clip(i) for i in range(batch_size)])
    inputs = BatchInputs(cfg.loss, cfg.data, cfg.model.tags.max_tags, cfg.model.lm.beat_condition,
                         motion=cfg.model.lm.motion_condition)(batch, torch.device("cpu"))
    tags = cfg.model.tags
    if tags.enabled:  # the text encoder runs outside the step: its output is an input here, [B, N, Ct]
        g = torch.Generator().manual_seed(cfg.train.seed)
        inputs["tag_emb"] = torch.randn(batch_size, tags.max_tags, tags.text_dim, generator=g)
        inputs["tag_mask"] = torch.ones(batch_size, tags.max_tags, dtype=torch.bool)
    return inputs


def measure_training(cfg: Config, batch_size: tp.Optional[int] = None) -> tp.Dict[str, int]:
    """Bytes of each component (module docstring) measured over two fp32 training steps on the CPU.

    Step 1 creates the optimiser state (``optimizer``); step 2, with the state in place and the gradients freed
    as the solver frees them (``zero_grad(set_to_none=True)``), gives ``activations``, ``peak`` and ``grads``, so
    one-time allocations of a first call do not count as activations."""
    from torch.profiler import record_function

    from vmas.builders import build_codec
    from vmas.utils import seed_everything

    if cfg.train.precision != "fp32":
        raise ConfigError(f"memory measurement runs fp32 on the CPU, got train.precision={cfg.train.precision}: "
                          "pass train.precision=fp32 (bf16 is estimated only)")
    seed_everything(cfg.train.seed)
    inputs = synthetic_inputs(cfg, batch_size or cfg.data.batch_size)
    held: tp.Dict[str, tp.Any] = {"codec": build_codec(cfg.model.codec, load_weights=False)}  # the solver's own

    def run() -> None:
        with record_function(MARKS[0]):
            held["step"], held["opt"] = training_objects(cfg, held["codec"])
        step, opt = held["step"], held["opt"]
        for i in range(2):
            with record_function(MARKS[1] + str(i)):
                total, _ = step(**inputs)
            with record_function(MARKS[2] + str(i)):
                total.backward()
                del total
            if i == 0:
                with record_function(MARKS[3]):
                    opt.step()
            opt.zero_grad(set_to_none=i == 0)

    trace = trace_allocations(run)
    b0, b1 = trace.span(MARKS[0])
    f0, f1 = trace.span(MARKS[1] + "1")
    _, k1 = trace.span(MARKS[2] + "1")
    o0, o1 = trace.span(MARKS[3])
    start = trace.at(f0)
    return {"params": trace.at(b1) - trace.at(b0),
            "grads": trace.at(k1) - start,
            "optimizer": trace.at(o1) - trace.at(o0),
            "activations": trace.at(f1) - start,
            "peak": trace.peak(f0, k1) - start}



# ------------------------------------------------------------------------------------------------ estimate
class _MetaScalars(TorchDispatchMode):
    """Answers the forward's data-dependent reads on meta tensors and notes when each weight is first used.

    ``bool(drop.any())`` of condition dropout is False (the path where nothing is dropped: dropping replaces slots
    by null tokens of the same size). ``on_args(args)`` sees every op's arguments (to note each weight's first use)."""

    def __init__(self, on_args: tp.Callable[[tp.Sequence[tp.Any]], None]):
        super().__init__()
        self.on_args = on_args

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return False if args[0].dtype == torch.bool else 0
        self.on_args(args)
        return func(*args, **(kwargs or {}))


class _CpuAttention(TorchFunctionMode):
    """On the meta device ``scaled_dot_product_attention`` always takes the math path (it saves the [B,H,S,S]
    attention matrix); on a real device PyTorch picks a fused kernel that saves only the output and the
    log-sum-exp. Ask PyTorch's CPU choice for the same shapes and run that kernel on meta (flash attention for CPU,
    whose saved tensors are those of the GPU's flash / memory-efficient kernels too)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and args[0].is_meta:
            q, k, v = args[:3]
            mask, causal = kwargs.get("attn_mask"), kwargs.get("is_causal", False)
            p, scale = kwargs.get("dropout_p", 0.0), kwargs.get("scale")
            # empty CPU tensors of the same shapes (never written, so no pages are touched) ask the CPU's choice
            like = [None if t is None else torch.empty(t.shape, dtype=t.dtype, device="cpu") for t in (q, k, v, mask)]
            choice = torch._fused_sdp_choice(*like[:3], attn_mask=like[3], dropout_p=p, is_causal=causal)
            if choice == torch.nn.attention.SDPBackend.FLASH_ATTENTION.value:
                if mask is not None and mask.dtype == torch.bool:  # as PyTorch converts it: 0 / -inf, query dtype
                    mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, p, causal, attn_mask=mask, scale=scale)[0]
        return func(*args, **kwargs)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@dataclasses.dataclass
class ForwardTrace:
    """What one training forward leaves for the backward, in forward order (from :func:`trace_forward`).

    ``events``: (kind, bytes) with kind ``"saved"`` (a new storage autograd saved for backward; weights, buffers
    and inputs excluded) or ``"grad"`` (the gradient a trainable weight will get, at the weight's first use);
    ``blocks``: name -> (first, last) event index of each checkpointable block's forward;
    ``block_saved``: name -> bytes the block saves when not checkpointed (filled by :func:`estimate_activations`)."""

    events: tp.List[tp.Tuple[str, int]]
    blocks: tp.Dict[str, tp.Tuple[int, int]]
    block_saved: tp.Dict[str, int] = dataclasses.field(default_factory=dict)

    def total(self, kind: str) -> int:
        return sum(b for k, b in self.events if k == kind)


def trace_forward(cfg: Config, batch_size: int, dtype: torch.dtype = torch.float32) -> ForwardTrace:
    """One training forward on the meta device (no memory, any size, paper included) under saved-tensor hooks."""
    import torch.fx.experimental._config as fx_config

    from vmas.builders import build_codec

    with torch.device("meta"):
        step, _ = training_objects(cfg, build_codec(cfg.model.codec, load_weights=False))
    step.to(dtype)
    inputs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in synthetic_inputs(cfg, batch_size).items()}
    if dtype != torch.float32 and "tag_emb" in inputs:
        inputs["tag_emb"] = inputs["tag_emb"].to(dtype)
    weights = {_storage_key(p): p for p in step.parameters()}
    fixed = set(weights) | {_storage_key(b) for b in step.buffers()} | \
        {_storage_key(v) for v in inputs.values() if torch.is_tensor(v)}
    used: tp.Set[int] = set()  # weights already seen (alive all along: their keys cannot be reused)
    live: tp.Dict[int, tp.List[int]] = {}  # saved storage key -> [event index, packed tensors alive]
    events: tp.List[tp.Tuple[str, int]] = []

    def release(key: int) -> None:
        # a saved tensor whose graph branch was dropped during the forward (e.g. a detached statistic): it is freed
        # like on a real device, and its storage address may be reused by a later tensor
        entry = live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                events[entry[0]] = ("saved", 0)
                del live[key]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key in fixed:
            return t
        if key not in live:
            live[key] = [len(events), 0]
            events.append(("saved", t.untyped_storage().nbytes()))
        live[key][1] += 1
        weakref.finalize(t, release, key)
        return t

    def on_args(args: tp.Sequence[tp.Any]) -> None:
        for a in args:
            for t in (a if isinstance(a, (list, tuple)) else [a]):
                if torch.is_tensor(t) and t.is_meta:
                    key = _storage_key(t)
                    if key in weights and key not in used:
                        used.add(key)
                        p = weights[key]
                        if p.requires_grad:
                            events.append(("grad", p.numel() * p.element_size()))

    blocks: tp.Dict[str, tp.Tuple[int, int]] = {}
    hooks = []
    for name, block in _checkpointed_blocks(step.model):
        def pre(_m, _a, name=name):
            blocks[name] = (len(events), len(events))

        def post(_m, _a, _o, name=name):
            blocks[name] = (blocks[name][0], len(events))
        hooks += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    old = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True  # boolean masks select every clip (nothing dropped)
    try:
        with _CpuAttention(), _MetaScalars(on_args), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = step(**inputs)  # held until the events are copied: its graph keeps the saved tensors alive
        trace = ForwardTrace(list(events), dict(blocks))
        del out
    finally:
        fx_config.meta_nonzero_assume_all_nonzero = old
        for h in hooks:
            h.remove()
    return trace


def _checkpointed_blocks(model: torch.nn.Module) -> tp.List[tp.Tuple[str, torch.nn.Module]]:
    """The units ``grad_checkpointing`` recomputes: LM transformer layers and Hiera blocks."""
    out = [(f"lm.transformer.layers.{i}", m) for i, m in enumerate(model.lm.transformer.layers)]
    out += [(f"encoder.blocks.{i}", m) for i, m in enumerate(model.encoder.blocks)]
    return out


def backward_peak(trace: ForwardTrace, recompute: bool) -> int:
    """Highest live bytes above the start of the step, from the forward trace, walking the backward.

    Backward visits the forward's events in reverse: at event ``i`` the tensors saved before ``i`` are still held,
    the gradients of the weights first used at or after ``i`` exist, and (``recompute``: checkpointed blocks) the
    block containing ``i`` is recomputed, so its non-checkpointed saved bytes are held too. On top of that the
    gradient in flight: one tensor the size of the largest saved activation (the first gradient of the backward is
    the logits' own size; measured, the held gradients are one or two such tensors)."""
    inside: tp.Dict[int, int] = {}
    for name, (a, b) in trace.blocks.items():
        for i in range(a, max(b, a + 1)):
            inside[i] = trace.block_saved.get(name, 0) if recompute else 0
    held = trace.total("saved")
    grads = peak = 0
    for i in range(len(trace.events) - 1, -1, -1):
        kind, nbytes = trace.events[i]
        if kind == "grad":
            grads += nbytes
        peak = max(peak, held + grads + inside.get(i, 0))
        if kind == "saved":
            held -= nbytes
    largest = max((b for k, b in trace.events if k == "saved"), default=0)
    return peak + largest


def estimate_training(cfg: Config, batch_size: tp.Optional[int] = None, world_size: int = 1,
                      zero_stage: tp.Optional[int] = None, precision: tp.Optional[str] = None) -> tp.Dict[str, tp.Any]:
    """Bytes per rank of one training step, by calculation (nothing allocated; any size).

    Weights, gradients and optimiser state are counted on the meta-device model as the solver sets it up (freezing,
    LoRA): fp32 = 4 bytes per value; bf16 (DeepSpeed) = 16-bit weights and gradients plus fp32 master weights and
    gradient partition in the optimiser; AdamW keeps m and v (8 bytes per trainable value, fp32), D-Adaptation Adam
    also s (12). ZeRO divides the optimiser state (stage >= 1), gradients (>= 2) and weights (3) by the world size.
    ``ema``: the solver's fp32 shadow of every floating-point weight (replicated). ``activations`` and ``peak``:
    :func:`trace_forward` and :func:`backward_peak` (activation checkpointing as ``model.*.grad_checkpointing``
    says). ``total`` = params + optimizer + ema + peak (the peak already holds the gradients).
    """
    precision = precision or cfg.train.precision
    stage = cfg.train.zero_stage if zero_stage is None else zero_stage
    if cfg.train.engine != "deepspeed" and zero_stage is None:
        stage = 0
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    batch_size = batch_size or cfg.data.batch_size
    trace = trace_forward(cfg, batch_size, dtype)
    ckpt = cfg.model.lm.grad_checkpointing or cfg.model.encoder.grad_checkpointing
    plain = trace
    if ckpt:
        plain = trace_forward(dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, lm=dataclasses.replace(cfg.model.lm, grad_checkpointing=False),
            encoder=dataclasses.replace(cfg.model.encoder, grad_checkpointing=False))), batch_size, dtype)
    for name, (a, b) in plain.blocks.items():
        trace.block_saved[name] = sum(n for k, n in plain.events[a:b] if k == "saved")
    from vmas.builders import build_codec

    with torch.device("meta"):
        step, _ = training_objects(cfg, build_codec(cfg.model.codec, load_weights=False))
    params = [p for p in step.parameters()]
    trainable = [p for p in params if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    n_float = sum(v.numel() for v in step.model.state_dict().values() if v.is_floating_point())
    weight_bytes = sum(p.numel() for p in params) * dtype.itemsize + \
        sum(b.numel() * (dtype.itemsize if b.is_floating_point() else b.element_size()) for b in step.buffers())
    moments = 3 if cfg.optim.optimizer == "dadam" else 2
    optimizer = moments * 4 * n_train + 4 * len(trainable)  # fp32 moments + a 0-dim fp32 step counter per tensor
    if precision == "bf16":
        optimizer += 4 * n_train + 4 * n_train  # fp32 master weights + fp32 gradient partition
    out = {
        "params": weight_bytes / (world_size if stage >= 3 else 1),
        "grads": n_train * dtype.itemsize / (world_size if stage >= 2 else 1),
        "optimizer": optimizer / (world_size if stage >= 1 else 1),
        "ema": 4 * n_float,
        "activations": trace.total("saved"),
        "peak": backward_peak(trace, ckpt),
    }
    out = {k: int(v) for k, v in out.items()}
    out["total"] = out["params"] + out["optimizer"] + out["ema"] + out["peak"]
    out["meta"] = {"batch_size": batch_size, "world_size": world_size, "zero_stage": stage, "precision": precision,
                   "grad_checkpointing": bool(ckpt), "params_count": sum(p.numel() for p in params),
                   "trainable_count": n_train}
    return out


# ----------------------------------------------------------------------------------------------- inference
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
CLAP_TEXT_PARAMS = 125_000_000


def estimate_inference(cfg: Config, dtype: str = "bf16", batch: int = 1) -> tp.Dict[str, tp.Any]:
    """Inference memory (GiB) of one window with CFG, by calculation on the meta device (``tools/estimate_memory.py``
    without ``--train``): weights of encoder, fuser, LM, codec (+ CLAP text tower as a constant), the LM's KV cache
    for the conditional and unconditional branch, and the largest encoder activation. An upper bound at batch 1."""
    from vmas.builders import build_codec, build_encoder, build_fuser, build_lm
    from vmas.utils import count_params

    b = BYTES[dtype]
    with torch.device("meta"):
        encoder = build_encoder(cfg.model.encoder, load_weights=False)
        lm = build_lm(cfg.model.lm, load_weights=False)
        codec = build_codec(cfg.model.codec, load_weights=False)
        fuser = build_fuser(cfg, encoder.out_dim)
    lm_cfg, data = cfg.model.lm, cfg.data
    fuser_params = count_params(fuser)
    params = {"encoder": count_params(encoder), "lm": count_params(lm), "codec": count_params(codec),
              "fuser": fuser_params, "text_encoder": CLAP_TEXT_PARAMS if cfg.model.tags.enabled else 0}
    steps = round(data.clip_seconds * data.frame_rate) + lm_cfg.n_q - 1
    cfg_batch = 2 * batch  # conditional + unconditional branch
    kv_self = lm_cfg.num_layers * 2 * cfg_batch * steps * lm_cfg.dim * b
    cond_len = 48 + cfg.model.tags.max_tags
    kv_cross = lm_cfg.num_layers * 2 * cfg_batch * cond_len * lm_cfg.dim * b
    # Largest encoder activation: stage-1 tokens x MLP hidden (4x), a few live at once.
    T = data.num_frames // cfg.model.encoder.patch_stride[0]
    H = data.image_size // cfg.model.encoder.patch_stride[1]
    enc_act = 4 * batch * T * H * H * cfg.model.encoder.embed_dim * 4 * b
    weights = sum(params.values()) * b
    total = weights + kv_self + kv_cross + enc_act
    gib = 1024 ** 3
    return {"dtype": dtype, "params": params, "params_total": sum(params.values()),
            "weights_gib": weights / gib, "kv_cache_gib": (kv_self + kv_cross) / gib,
            "encoder_activations_gib": enc_act / gib, "total_gib": total / gib,
            "fits_24gb_gpu": total / gib < 20.0}
