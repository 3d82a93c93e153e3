"""Training progress lines: the rate and the ETA come from steady-state steps, not from the first
steps (tracing, compiling) or the validation passes."""

from __future__ import annotations

import io

from repflow_tf.callbacks import ProgressLogger, TrainingState


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_is_measured_on_steady_state_steps_and_counts_validation():
    state = TrainingState(steps_per_epoch=10, epochs=3)
    clock, log = _Clock(), io.StringIO()
    logger = ProgressLogger(state, every_steps=5, log=log, clock=clock)
    for epoch in range(3):
        for batch in range(1, 11):
            # The run's first step traces and compiles for 100 s; every other step takes 1 s.
            clock.now += 100.0 if (epoch, batch) == (0, 1) else 1.0
            state.batch.assign(batch)
            logger.on_train_batch_end(batch - 1, {"loss": 1.0})
        logger.on_test_begin()
        clock.now += 3.0  # validation
        logger.on_test_end()
        state.epoch.assign(epoch + 1)
        state.batch.assign(0)
        logger.on_epoch_end(epoch, {"loss": 1.0})
    lines = [line for line in log.getvalue().splitlines() if " step " in line]
    etas = [line.rsplit("ETA ", 1)[1] for line in lines]
    # Not yet measured; then 20 steps at 1 step/s (no validation timed yet); then 15 steps plus
    # two validations of 3 s; ...; after the last step only its epoch's validation is left.
    assert etas == ["--", "0:00:20", "0:00:21", "0:00:16", "0:00:08", "0:00:03"]
    assert all(line.split()[-3] == "steps/s" and line.split()[-4] == "1.00" for line in lines[1:])
