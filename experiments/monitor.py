"""RunMonitor: the training throughput and the step of the last validation, as the experiments runner needs them."""
from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn


class RunMonitor(Callback):
    """Training time = train start to train end minus the validations in between (data loading included: it is
    part of real throughput); images = the images of every training batch, summed over the processes;
    last_validation_step = the optimizer step of the last (non-sanity) validation, so the runner knows whether
    the final weights have been evaluated."""

    def __init__(self):
        self.start_step = 0
        self.images = 0
        self.last_validation_step: int | None = None
        self._train_start: float | None = None
        self._train_end: float | None = None
        self._validation_start: float | None = None
        self._validation_seconds = 0.0

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        self._train_start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self._train_end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += len(batch[0]) * trainer.world_size

    def on_validation_start(self, trainer, pl_module):
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        # trainer.state.fn stays "fit" during the validations inside fit (trainer.training does not).
        if self._validation_start is not None and trainer.state.fn == TrainerFn.FITTING:
            self._validation_seconds += time.perf_counter() - self._validation_start
        if not trainer.sanity_checking:
            self.last_validation_step = trainer.global_step

    @property
    def trained(self) -> bool:
        """Whether the training loop ran at all (Lightning skips it when a resumed run is already at max_steps)."""
        return self._train_start is not None

    def train_seconds(self) -> float:
        """Seconds spent training (0.0 if training did not run, e.g. resumed at its last step)."""
        if self._train_start is None or self._train_end is None:
            return 0.0
        return self._train_end - self._train_start - self._validation_seconds
