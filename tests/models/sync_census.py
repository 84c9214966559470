"""A census of the operations that would block the host on a CUDA device, counted on the CPU.

`SyncCensus` is a TorchDispatchMode: it sees every aten op a block of code runs and counts, by kind,
- "item": `_local_scalar_dense` / `is_nonzero` (`.item()`, `bool()` / `int()` of a tensor, a 0-dim tensor used as an
  index: ATen reads it on the host);
- "nonzero": ops whose output size depends on the data (`nonzero`, boolean-mask indexing and assignment,
  `masked_select`, `unique`, `repeat_interleave` with tensor repeats) and torchvision's `nms`, whose CUDA kernel
  copies its mask to the host;
- "h2d": tensors made from Python data on the code's device (`Tensor.new_tensor`, `torch.tensor` / `torch.as_tensor`
  with `device=`), on CUDA a pageable, blocking host-to-device copy. (`torch.tensor(x).to(device)` is invisible on
  the CPU.) Seen by a TorchFunctionMode: at the aten level such a
  tensor looks like the scalar of `x[i] = -1`, which CUDA fills on the device.
`ops` counts every aten op (roughly the kernel launches) and `where` keeps the Python line of each sync.

    with SyncCensus() as census:
        model(images)
    census.counts  # Counter({"nonzero": 8, "h2d": 9, ...})
"""
from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_ITEM = {"_local_scalar_dense", "is_nonzero", "item"}
_DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
                   "nms"}
_H2D_FUNCTIONS = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}
_INDEX = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncCensus(TorchDispatchMode):
    def __init__(self, keep_where: bool = False):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.ops = 0
        self.keep_where = keep_where
        self.where: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops += 1
        kind = None
        if name in _ITEM:
            kind = "item"
        elif name in _DATA_DEPENDENT or (name == "repeat_interleave" and isinstance(args[-1] if len(args) > 1
                                                                                     else None, torch.Tensor)):
            kind = "nonzero"
        elif name in _INDEX and _has_bool_index(args):
            kind = "nonzero"
        if kind is not None:
            self._record(kind)
        return func(*args, **(kwargs or {}))

    def _record(self, kind: str) -> None:
        self.counts[kind] += 1
        if self.keep_where:
            frames = [f for f in traceback.extract_stack() if "/models/" in f.filename and "/tests/" not in f.filename]
            if frames:
                self.where[f"{kind} {frames[-1].filename.split('/models/')[-1]}:{frames[-1].lineno}"] += 1

    def __enter__(self):
        self._functions = _FactoryCensus(self)
        self._functions.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._functions.__exit__(*exc)
        return result

    @property
    def syncs(self) -> int:
        return sum(self.counts.values())


class _FactoryCensus(TorchFunctionMode):
    """Counts tensors built from Python data for a SyncCensus."""

    def __init__(self, census: SyncCensus):
        super().__init__()
        self.census = census

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _H2D_FUNCTIONS:
            data = args[1] if func is torch.Tensor.new_tensor else (args[0] if args else None)
            # On the device the code runs on: new_tensor (its source's device) or an explicit `device=`. A CPU tensor
            # (matcher indices from scipy, a constant) costs nothing until it is moved.
            on_device = func is torch.Tensor.new_tensor or (kwargs or {}).get("device") is not None
            if on_device and not isinstance(data, torch.Tensor):
                self.census._record("h2d")
        return func(*args, **(kwargs or {}))
