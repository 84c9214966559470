"""ModelSplit: how an architecture's forward divides into stages, declared by the architecture itself.

Each model class states its split as the class attribute SPEED_SPLIT (None: no split); the speed protocol
(benchmarks.speed) reads it for the model-only timing and the per-stage breakdown. A model without one gets no
model-only FPS and no breakdown (null in the record), never an error. The split only names submodules: nothing in
the architecture changes for the benchmark. "Model only" ends where the last network module has run; for a model
whose mask head runs on its detections (Mask R-CNN, CenterMask) that is after the detection NMS, for the dense ones
(YOLACT, ISTR) before any NMS.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_MISSING = object()


@dataclass(frozen=True)
class ModelSplit:
    """How one architecture's forward divides, for the model-only timing and the per-stage breakdown.

    stages: stage name -> dotted names of the submodules whose forward calls make up that stage (all calls during
        one forward are summed). The names of all stages are disjoint and none lies inside another, so no time is
        counted twice. Whatever runs outside them (anchors, box decoding, NMS, mask assembly and pasting, and any
        input transform that is not a module) is the remainder, reported as "postprocess". A name whose attribute
        is None on a model instance (an optional part switched off, e.g. CenterMask's MaskIoU head) is skipped.
    raw_outputs: candidates, in order, for the submodule whose forward produces the network's last raw head
        output (the first present on the instance is used); the model-only timing stops right after it returns. A
        call in which it never runs (e.g. a mask head that only runs on detections, and there were none) is timed
        whole and counted in the speed record's `model_only_stop_missed`.
    """

    stages: dict[str, tuple[str, ...]]
    raw_outputs: tuple[str, ...]

    @property
    def stage_modules(self) -> list[str]:
        return [name for names in self.stages.values() for name in names]

    @property
    def network_modules(self) -> list[str]:
        """The dense network (what `compile=True` compiles): every stage but the input transform."""
        return [name for stage, names in self.stages.items() if stage != "preprocess" for name in names]

    def check(self, model: nn.Module) -> tuple[list[str], str]:
        """(the stage modules present on `model`, the raw-outputs module used). Every name must exist (None
        allowed), at least one raw-outputs candidate must be present, and no stage module may lie inside another
        (its time would count twice); ValueError naming the model class otherwise."""
        where = f"SPEED_SPLIT of {type(model).__name__}"
        stage_modules = self.stage_modules
        if len(set(stage_modules)) != len(stage_modules):
            raise ValueError(f"{where}: a submodule is listed twice: {stage_modules}")
        for outer in stage_modules:
            for inner in stage_modules:
                if inner != outer and inner.startswith(outer + "."):
                    raise ValueError(f"{where}: {inner!r} lies inside {outer!r}")
        present = [name for name in stage_modules if _find(model, name, where) is not None]
        raw = [name for name in self.raw_outputs if _find(model, name, where) is not None]
        if not raw:
            raise ValueError(f"{where}: none of the raw-output modules {self.raw_outputs} is present")
        return present, raw[0]


def _find(model: nn.Module, dotted: str, where: str) -> nn.Module | None:
    """The submodule `dotted`, None if that attribute is None (an optional part switched off); a name the model
    lacks altogether is an error in the split."""
    parent_name, _, attribute = dotted.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
    except AttributeError:
        parent = None
    value = getattr(parent, attribute, _MISSING) if parent is not None else _MISSING
    if value is None:
        return None
    if not isinstance(value, nn.Module):
        raise ValueError(f"{where} names submodule {dotted!r}, which the model lacks")
    return value
