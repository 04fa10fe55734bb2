"""A CPU-only check that code is device-clean: it runs on real CPU numbers while tracking a second, fake device.

Why not just ``meta``: putting model and inputs on the ``meta`` device (default device stays ``cpu``) makes any
``torch.arange`` / ``zeros`` / ``tensor`` created without ``device=`` land on the CPU, and mixing it with a meta
tensor raises, exactly as a stray CPU tensor meets a CUDA one. That is used wherever it works
(tests/test_device_clean.py), but meta tensors hold no numbers: sampling, ``bool(mask.any())`` and every other
data-dependent branch cannot run on them, so generation, the training step with its dropout draws and anything
that ends in NumPy cannot be checked that way.

:class:`DeviceGuard` keeps the data on the CPU and tracks *provenance* instead: each tensor is either on the
fake **device** (``dev``) or on the **host**, and every operation is checked as CUDA would check it.

- ``dev``: what :meth:`DeviceGuard.place` marks (model parameters and buffers, the inputs) and every output of an
  operation with a ``dev`` input. Inside the guard ``x.device`` of a ``dev`` tensor answers :data:`DEV`
  (``cpu:0``: a real CPU device that compares unequal to ``cpu``), so ``torch.arange(n, device=x.device)``,
  ``.to(param.device)`` and ``str(param.device)`` name the device, exactly as they evaluate to ``cuda:0`` on a GPU.
- ``host``: tensors made by factories without ``device=`` (``torch.arange(n)``, ``torch.tensor([...])``: on a GPU
  run they land on the default device, the CPU), with ``device="cpu"`` or a CPU generator's ``.device``,
  ``torch.from_numpy``, and the results of ``.cpu()`` (``x.device`` answers ``cpu``).

Tags live on storages (``untyped_storage().data_ptr()``), so views, in-place results and the tensors autograd
saves for backward share their base's tag; tagged storages are held until the guard is dropped, so an address is
never reused by another tensor meanwhile. Factory operations that run *inside* a torch call (the causal mask of
``scaled_dot_product_attention``'s math kernel, the seed gradient of ``backward``) take the device of that call's
tensor arguments, as their C++ code does (``query.options()``).

What is reported, each with the first stack frame inside the watched code (``vmas/`` and the ``roots`` given):

- ``violations``: an operation that mixes ``dev`` tensors with a ``host`` tensor of one or more dimensions
  (CUDA raises "Expected all tensors to be on the same device"; 0-dim host tensors are allowed, as CUDA allows
  CPU scalars), and ``.numpy()`` of a ``dev`` tensor (CUDA raises). Raised at once as :class:`StrayDevice` by
  default.
- ``syncs``: device -> host reads that stall a GPU stream: ``.item()`` / ``bool()`` / ``int()`` / ``float()``
  (``aten._local_scalar_dense``), ``.tolist()``, ``.cpu()`` / ``.to("cpu")``, boolean-mask indexing and
  ``nonzero`` (their output size depends on the data) of ``dev`` tensors.
- ``transfers``: host -> device copies (``.to(device)`` of host data, ``dev[...] = host``, indexing a ``dev``
  tensor with a host index): legal on CUDA, but each is a copy per call, which matters in a per-step loop.

Limits: code below the torch-function level (C++ kernels) is trusted; a host tensor without elements carries no
tag (its ``.device`` answers ``cpu``); torch's own Python code moving tensors to a device it got from C++ (plain
``cpu``, e.g. ``clip_grad_norm_``'s per-device groups) is not read as a move to the host.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import sys
import typing as tp

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import vmas

VMAS_ROOT = os.path.dirname(os.path.abspath(vmas.__file__))


class StrayDevice(RuntimeError):
    """Raised by :class:`DeviceGuard` (``raise_on_violation=True``) at the first device violation."""


@dataclasses.dataclass
class Event:
    kind: str  # e.g. "mixed devices in aten.add.Tensor", "sync: .item()", "h2d: copy_"
    site: str  # "vmas/models/lm.py:312 in generate"

    def __str__(self) -> str:
        return f"{self.kind} at {self.site}"


_TO_SYNC = {"tolist": "sync: .tolist()", "cpu": "sync: .cpu()"}
_SYNC_OPS = {"aten::_local_scalar_dense": "sync: .item()/bool()/int()/float()", "aten::nonzero": "sync: nonzero",
             "aten::masked_select": "sync: masked_select", "aten::unique_dim": "sync: unique",
             "aten::_unique2": "sync: unique"}
_INDEX_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


def _tensors(tree: tp.Any) -> tp.List[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _device_arg(args: tp.Sequence[tp.Any], kwargs: tp.Mapping[str, tp.Any]) -> bool:
    """Whether a ``Tensor.to`` call names a device (a device, a device string or a tensor), not only a dtype."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])


DEV = torch.device("cpu", 0)
"""What ``tensor.device`` answers for a tensor on the fake device (the host answers ``cpu``): a real, usable CPU
device that compares unequal to ``cpu``, so ``device=x.device`` / ``.to(param.device)`` carry which side a
tensor is on exactly as they do on a GPU, while ``device="cpu"`` and ``generator.device`` name the host."""
_DEVICE_ATTR = torch.Tensor.device


def _names_dev(device: tp.Any) -> bool:
    """Whether a ``device=`` / ``.to()`` argument names the fake device (``cpu:0``), not the host (``cpu``)."""
    if isinstance(device, (str, int)):
        device = torch.device(device)
    return isinstance(device, torch.device) and device == DEV


class _Function(TorchFunctionMode):
    def __init__(self, guard: "DeviceGuard"):
        super().__init__()
        self.guard = guard

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        g = self.guard
        name = getattr(func, "__name__", "")
        if name == "__get__" and getattr(func, "__self__", None) is _DEVICE_ATTR:
            t = args[0]
            return (DEV if g.is_dev(t) else func(*args)) if g.tracked(t) else func(*args)
        inputs = _tensors((args, kwargs))
        explicit = kwargs.get("device")
        on_dev = _names_dev(explicit) or any(g.is_dev(t) for t in inputs)
        if name == "numpy" and inputs and g.is_dev(inputs[0]):
            g.violation("numpy() of a device tensor (CUDA raises: needs .cpu() first)")
        if name in _TO_SYNC and inputs and g.is_dev(inputs[0]):
            g.syncs.append(Event(_TO_SYNC[name], g.site()))
        g.context.append(on_dev)
        try:
            out = func(*args, **kwargs)
        finally:
            g.context.pop()
        if name == "to" and _device_arg(args, kwargs) and isinstance(out, torch.Tensor):
            target = next((a for a in args[1:] if isinstance(a, (torch.Tensor, torch.device, str))), None)
            if isinstance(target, torch.Tensor):
                to_dev = g.is_dev(target)
            else:
                to_dev = _names_dev(kwargs.get("device", target))
            if not to_dev and not g.watched_caller():
                # torch's own code moves its scalars with devices from C++ (grouping by device, which answers
                # plain ``cpu``): not a request to leave the device
                return out
            if to_dev and not g.is_dev(args[0]):
                g.transfers.append(Event("h2d: .to(device)", g.site()))
            elif not to_dev and g.is_dev(args[0]):
                g.syncs.append(Event("sync: .to(host)", g.site()))
            if out is args[0] and to_dev != g.is_dev(args[0]):  # a no-op on the CPU: give the copy its own tag
                out = out.clone()
            g.tag(out, to_dev)
        elif name == "cpu" and isinstance(out, torch.Tensor):
            if out is args[0] and g.is_dev(out):
                out = out.clone()
            g.tag(out, False)
        elif explicit is not None:
            for t in _tensors(out):
                g.tag(t, _names_dev(explicit))
        return out


class _Dispatch(TorchDispatchMode):
    def __init__(self, guard: "DeviceGuard"):
        super().__init__()
        self.guard = guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        g = self.guard
        op = func._schema.name
        inputs = _tensors((args, kwargs))
        dev = [t for t in inputs if g.is_dev(t)]
        if dev:
            if op in _SYNC_OPS:
                g.syncs.append(Event(_SYNC_OPS[op], g.site()))
            host = [t for t in inputs if not g.is_dev(t) and t.dim() > 0 and g.tracked(t)]
            if op == "aten::copy_":
                if g.is_dev(args[0]) and host:
                    g.transfers.append(Event("h2d: copy into a device tensor", g.site()))
                elif not g.is_dev(args[0]) and args[0].dim() > 0:
                    g.syncs.append(Event("sync: copy into a host tensor", g.site()))
            elif op in _INDEX_OPS:
                idx = args[1] if len(args) > 1 else ()
                idx = [t for t in _tensors(idx)]
                if any(t.dtype == torch.bool for t in idx) and op == "aten::index":
                    g.syncs.append(Event("sync: boolean-mask indexing", g.site()))
                if any(not g.is_dev(t) and t.dim() > 0 for t in idx):
                    g.transfers.append(Event(f"h2d: host index in {op}", g.site()))
                rest = [t for t in host if not any(t is i for i in idx)]
                if rest:
                    g.violation(f"mixed devices in {op}: a host tensor of shape {tuple(rest[0].shape)} meets "
                                "device tensors")
            elif host:
                g.violation(f"mixed devices in {op}: a host tensor of shape {tuple(host[0].shape)} meets "
                            "device tensors")
        out = func(*args, **kwargs)
        to_dev = bool(dev) if inputs else (g.context[-1] if g.context else False)
        if to_dev:
            for t in _tensors(out):
                g.tag(t, True)
        return out


class DeviceGuard:
    """Context manager: track a fake device on CPU data and report stray host tensors, syncs and transfers.

    Args:
        roots: extra source files / folders whose frames name a site (``vmas/`` always is).
        raise_on_violation: raise :class:`StrayDevice` at the first violation (else only record it).

    Usage::

        guard = DeviceGuard()
        guard.place(model, frames, codes)       # these are "on the device"
        with guard:
            out = model(frames, codes)
        assert guard.is_dev(out)                 # results stay on the device
    """

    def __init__(self, roots: tp.Sequence[str] = (), raise_on_violation: bool = True):
        self.roots = tuple(os.path.abspath(r) for r in (VMAS_ROOT, *roots))
        self.raise_on_violation = raise_on_violation
        self._dev: tp.Dict[int, torch.UntypedStorage] = {}
        self.context: tp.List[bool] = []
        self.violations: tp.List[Event] = []
        self.syncs: tp.List[Event] = []
        self.transfers: tp.List[Event] = []
        self._modes: tp.List[tp.Any] = []

    # ---- tags
    @staticmethod
    def tracked(t: torch.Tensor) -> bool:
        """Tensors with a CPU storage and elements (empty and meta tensors are neutral)."""
        return t.device.type == "cpu" and t.numel() > 0 and t.layout == torch.strided

    def is_dev(self, t: tp.Any) -> bool:
        """Whether ``t`` (a tensor, or every tensor in a nest of containers) is on the fake device."""
        if isinstance(t, torch.nn.Module):
            t = [*t.parameters(), *t.buffers()]
        ts = _tensors(t) if not isinstance(t, torch.Tensor) else [t]
        return bool(ts) and all(not self.tracked(x) or x.untyped_storage().data_ptr() in self._dev for x in ts)

    def tag(self, t: torch.Tensor, dev: bool) -> None:
        if not self.tracked(t):
            return
        storage = t.untyped_storage()
        if dev:
            self._dev[storage.data_ptr()] = storage
        else:
            self._dev.pop(storage.data_ptr(), None)

    def place(self, *objs: tp.Any) -> None:
        """Mark modules (parameters, buffers, gradients) and tensors in nested containers as on the device."""
        for obj in objs:
            if isinstance(obj, torch.nn.Module):
                for t in [*obj.parameters(), *obj.buffers()]:
                    self.tag(t, True)
            elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                self.place(*[getattr(obj, f.name) for f in dataclasses.fields(obj)])
            else:
                for t in _tensors(obj):
                    self.tag(t, True)

    # ---- events
    def site(self) -> str:
        """The innermost stack frame inside the watched code, as ``path:line in function``."""
        frame = sys._getframe(1)
        while frame is not None:
            path = os.path.abspath(frame.f_code.co_filename)
            if path.startswith(self.roots) and os.path.abspath(__file__) != path:
                rel = os.path.relpath(path, os.path.dirname(VMAS_ROOT))
                return f"{rel}:{frame.f_lineno} in {frame.f_code.co_name}"
            frame = frame.f_back
        return "<outside the watched code>"

    def watched_caller(self) -> bool:
        """Whether the torch call being handled was made directly by watched code (not by torch's own)."""
        frame = sys._getframe(1)
        while frame is not None and os.path.abspath(frame.f_code.co_filename) == os.path.abspath(__file__):
            frame = frame.f_back
        return frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(self.roots)

    def violation(self, kind: str) -> None:
        event = Event(kind, self.site())
        self.violations.append(event)
        if self.raise_on_violation:
            raise StrayDevice(str(event))

    def count(self, events: tp.Sequence[Event], lines: bool = False) -> tp.Counter[str]:
        """Events grouped by ``kind at path in function`` (``lines``: with the line number, ``path:line``)."""
        return collections.Counter(str(e) if lines else re.sub(r":\d+ in ", " in ", str(e)) for e in events)

    def reset_events(self) -> None:
        self.violations.clear()
        self.syncs.clear()
        self.transfers.clear()

    # ---- context
    def __enter__(self) -> "DeviceGuard":
        self._modes = [_Dispatch(self), _Function(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: tp.Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []
