"""CrashOnce: a Lightning callback that raises once at a given training step, to stand in for a crashed run."""
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class CrashOnce(Callback):
    """Raises RuntimeError when training reaches `step`, unless `marker` exists; creates `marker` when it raises,
    so the same command crashes the first time and runs through the second."""

    def __init__(self, step: int, marker: str):
        self.step = step
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError(f"simulated crash at step {self.step}")
