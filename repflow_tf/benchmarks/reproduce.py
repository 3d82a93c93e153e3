"""The paper's ablations (Tables 1, 2, 3 and 5) at small scale, in one command (bin/reproduce.py).

Every row is a set of `--set` overrides of one base config (`configs/demo.toml`, the synthetic
motion demo: 2D ResNet-18 of width 16, 8-frame 56 x 56 clips, 8 classes) under one budget (data
size and epochs, the same for every row), trained with `repflow_tf.training.train` for each seed
into `<root>/<run id>/seed<k>`. Rows whose resolved configs are equal share one run (Table 1's
flow after our `block2` is Table 2's "Divergence + θλτ", Table 3's learned 10 iterations and
Table 5's single flow layer). With one job `run` trains seed 0 of every row first, then seed 1,
..., so an interrupted reproduction already has a whole table; with several (`--jobs`) it trains
the seeds of one row side by side, the pairs that share the CPU best. Rerunning continues: a run
whose `summary.json` has every epoch is read, not trained, and a killed one resumes from its
checkpoint.

Position mapping (stated once, used everywhere): the paper counts conv1 as block 1, so the
paper's "After Block 1" is our `flow_position="stem"` (after conv1 + max pool) and the paper's
"After Block k" (k = 2..5) is our `block{k-1}`. Tables 2, 3 and 5 compute the flow "after
Block 3" in the paper: our `block2`. Table 1's and Table 5's flow layers learn the divergence and
θ, λ, τ (the paper's default) with 10 iterations (the demo's).

The paper's numbers are Mini-Kinetics top-1 accuracy (%); ours are validation clip accuracy (%)
on the synthetic data, a different task and scale: compare the order of the rows, not values.

Cost model. One training step of each run's model (`bin/reproduce.py --step_costs`:
`train_on_batch` on 16 random clips of 8 x 56 x 56, median of 5 after a warm-up), with the flow
layer's fused CPU kernels (its default here) and with its XLA path (TensorFlow ops in chunks, the
default before the kernels), measured side by side on 2026-12-04, a slow day for this CPU (the
RGB CNN's step took 220 ms; 92 ms on a quiet day):

| run (ours) | fused kernels ms | XLA ms |
| --- | ---: | ---: |
| RGB CNN | 220 | 243 |
| flow on the input, learned, 10 it. | 389 | 907 |
| after the stem / block1, learned, 10 it. | 262 / 287 | 462 / 600 |
| after block2 / block3 / block4, learned, 10 it. | 229 / 234 / 222 | 255 / 220 / 232 |
| after block2, fixed / learned, 50 it. | 262 / 329 | 382 / 444 |
| after block2, flow-of-flow / FcF, learned, 10 it. | 243 / 288 | 383 / 377 |
| one step of each of the 22 distinct runs | 5622 | 7573 |

With the kernels the CNN is most of every step (the flow layers add 0-170 ms to the RGB CNN's
220), so the budget scales with the CNN. Each run also has fixed costs: tracing the train and
test steps (about 6 s on a quiet day; the flow layer's XLA compiles, 5 s per run at 10
iterations, are gone with the kernels), about 1.6 s outside the loop (model, checkpoint files)
and 1.5 s per epoch (checkpoint, validation pipeline); rounded to 12 s per run. With `B`
batches per epoch, `V` validation batches (about a third of a step each) and `E` epochs, one
seed costs about `22 x 12 s + E x (22 x 1.5 s + B x S + V x S / 3)`, `S` the sum of one step of
each run, plus the data (about 0.015 s per video):

- default, 512 training / 64 validation videos (B = 32, V = 4), E = 6 epochs (192 steps; the
  demo's learned block leaves chance after 64 and reaches 88% after 192), 2 seeds: on the slow
  day above (S = 5.6 s) 2 x (264 + 6 x (33 + 179 + 7.5)) s = 2 x 1582 s, about 53 minutes;
  measured that day: **49.8 min** (44 runs, 48.4 min of training), inside the 60. Runs of the
  XLA path took 53.9 (quiet day), 73.0 and 85.0 min;
- quick, 128 / 32 videos (B = 8, V = 2), E = 2 epochs (16 steps: a smoke run of every row's
  pipeline, every row is still at chance), 1 seed, 2 runs at once (below): 3.1 min measured
  (2026-12-04; 7.9 min on the XLA path);
- `--jobs=2` trains two runs at once, each in its own process with one TensorFlow thread on 2 cores
  (bin/reproduce.py's default with `--quick`): these small models use a second thread badly, and
  tracing and XLA compiling, a third of a quick run, run on one thread anyway. Measured in one
  sitting on the XLA path (2026-12-04, snapshot of 854d75e, fresh roots; not re-measured with
  the fused kernels): the quick reproduction took 7.9 min with
  `--jobs=2` and 10.8 min with `--jobs=1` (each run 1.46x as long, two at a time: 1.37x the
  throughput). In steady state (epoch 2 of `training.train` on the default budget's data, 24 steps;
  same sitting) one process with 2 threads made 2.46 steps/s for the RGB CNN and 0.59 for flow on
  the input; two 1-thread processes of the same row made 1.87 + 1.90 and 0.43 + 0.34 (1.53x and
  1.31x). Mixed pairs gain less: in a default run with `--jobs=2` (aborted after 3 runs; a test ran
  beside it for its first half minute) the RGB CNN beside flow on the input made 1.1-1.4 steps/s and
  flow on the input 0.30-0.35, about 1.05x one process's throughput, so the default budget stays at
  one run at a time, which is also what its committed results were made with. The accuracies depend
  on the threads per process (rounding, then the trajectory: 15 of the 28 quick rows differed by one
  or two validation clips between the two runs), so compare runs of the same `--jobs` on the same
  core count;
- `--with_two_stream` adds the flow CNN and two-stream rows (per step about the RGB CNN's and
  twice it) and, once, their TV-L1 data: about 0.85 s per video on 2 cores (the demo's 640
  videos took 9 minutes), 576 videos (default) about 8 minutes, 160 (quick) about 2.3.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from repflow_tf.config import ExperimentConfig, load_config
from repflow_tf.fileio import atomic_output, write_atomic, write_json_atomic

BASE_CONFIG = "configs/demo.toml"
TABLES = (1, 2, 3, 5)
TABLE_TITLES = {
    1: "Table 1: where to compute the flow",
    2: "Table 2: what to learn (flow after the paper's Block 3 = our block2)",
    3: "Table 3: TV-L1 iterations, fixed and learned (flow after our block2)",
    5: "Table 5: flow of flow (flow after our block2)",
}
SKIPPED_OPTICAL_FLOW = "skipped (--with_two_stream)"
RESULTS_MD, RESULTS_JSON, RESULTS_PNG = "results.md", "results.json", "results.png"

_LEARNED = '["divergence", "hyper"]'
_IN_NETWORK = ('model.flow_position="block2"', f"model.flow_learn={_LEARNED}")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of a paper table: its overrides of the base config and the paper's number.

    Attributes:
        id: unique name, also the workdir name (`<root>/<id>/seed<k>`) unless an earlier row has
            the same resolved config.
        table: the paper's table number.
        label: the row as the table prints it.
        overrides: `section.key=value` overrides of the base config, after the budget's.
        paper: the paper's Mini-Kinetics accuracy (%) for this row.
        optical_flow: the model reads precomputed TV-L1 optical flow (the baselines): it trains
            only with `--with_two_stream`, on the data root `<data.root>_flow`.
    """

    id: str
    table: int
    label: str
    overrides: tuple[str, ...]
    paper: float
    optical_flow: bool = False


def _rows() -> tuple[Row, ...]:
    learned_10 = ("model.flow_iterations=10", f"model.flow_learn={_LEARNED}")
    rows = [
        Row("t1_rgb", 1, "RGB CNN", ('model.flow_position="none"',), 55.2),
        Row(
            "t1_flow_cnn",
            1,
            "Flow CNN (precomputed TV-L1)",
            ('model.flow_position="none"', 'model.inputs="optical_flow"'),
            35.4,
            optical_flow=True,
        ),
        Row(
            "t1_two_stream",
            1,
            "Two-stream (RGB + TV-L1 CNNs, late fusion)",
            ('model.flow_position="none"', 'model.inputs="rgb+optical_flow"'),
            57.6,
            optical_flow=True,
        ),
        Row(
            "t1_input",
            1,
            "Flow layer on the RGB input",
            ('model.flow_position="input"', *learned_10),
            37.4,
        ),
    ]
    paper_positions = {"stem": 52.4, "block1": 57.4, "block2": 59.4, "block3": 52.1}
    paper_positions["block4"] = 50.3
    for number, (position, paper) in enumerate(paper_positions.items(), start=1):
        ours = "after conv1 + max pool, our stem" if position == "stem" else f"our {position}"
        rows.append(
            Row(
                f"t1_{position}",
                1,
                f"After Block {number} ({ours})",
                (f'model.flow_position="{position}"', *learned_10),
                paper,
            )
        )
    groups = {
        "none": ("None (all fixed)", "[]", 59.4),
        "sobel": ("Sobel kernels", '["sobel"]', 58.5),
        "divergence": ("Divergence (w_x, w_y)", '["divergence"]', 60.2),
        "hyper": ("θ, λ, τ", '["hyper"]', 59.9),
        "all": ("All", '["sobel", "divergence", "hyper"]', 59.2),
        "divergence_hyper": ("Divergence + θ, λ, τ", _LEARNED, 60.7),
    }
    for name, (label, learn, paper) in groups.items():
        overrides = ('model.flow_position="block2"', "model.flow_iterations=10")
        rows.append(Row(f"t2_{name}", 2, label, (*overrides, f"model.flow_learn={learn}"), paper))
    fixed = (46.7, 51.3, 52.4, 53.6, 59.2)
    learned = (49.5, 55.4, 59.4, 60.7, 60.9)
    for kind, learn, papers in (("fixed", "[]", fixed), ("learned", _LEARNED, learned)):
        for iterations, paper in zip((1, 5, 10, 20, 50), papers, strict=True):
            rows.append(
                Row(
                    f"t3_{kind}_{iterations}",
                    3,
                    f"{'Not learned' if kind == 'fixed' else 'Learned'}, {iterations} it.",
                    (
                        'model.flow_position="block2"',
                        f"model.flow_learn={learn}",
                        f"model.flow_iterations={iterations}",
                    ),
                    paper,
                )
            )
    for stack, label, paper in (
        ("single", "Single flow layer", 59.4),
        ("fof", "Flow-of-flow", 47.2),
        ("fcf", "Flow-conv-flow (FcF)", 62.3),
    ):
        overrides = (*_IN_NETWORK, "model.flow_iterations=10", f'model.flow_stack="{stack}"')
        rows.append(Row(f"t5_{stack}", 5, label, overrides, paper))
    return tuple(rows)


ROWS = _rows()
# The paper's rows we have no model for (noted under their tables).
PAPER_ONLY = {5: "Paper only: TVL-1 twice 12.2, Flow-Conv-Flow-Conv-Flow 56.5."}


@dataclasses.dataclass(frozen=True)
class Budget:
    """The training budget every row gets: data size and epochs (a step decay near the end)."""

    name: str
    train_videos: int
    val_videos: int
    epochs: int
    seeds: int  # seeds per row unless `plan(seeds=...)` says otherwise
    estimate_minutes: float  # every RGB row, `seeds` seeds, this CPU (module docstring)

    def overrides(self, root: str) -> list[str]:
        decay = {round(self.epochs * 2 / 3), round(self.epochs * 7 / 8)}
        decay = sorted(epoch for epoch in decay if 0 < epoch < self.epochs)
        return [
            f"data.root={json.dumps(os.path.join(root, 'data', 'synthetic'))}",
            f"data.synthetic_train={self.train_videos}",
            f"data.synthetic_val={self.val_videos}",
            f"data.shuffle_buffer={self.train_videos}",
            f"trainer.epochs={self.epochs}",
            f"schedule.decay_epochs={decay}",
            # TensorBoard images and histograms cost time and are not what this measures.
            "trainer.flow_images_every_epochs=0",
            "trainer.histograms_every_epochs=0",
        ]

    def describe(self) -> str:
        return (
            f"`{self.name}`: {self.train_videos} training / {self.val_videos} validation videos, "
            f"{self.epochs} epoch{'s' if self.epochs > 1 else ''}"
        )


BUDGETS = {
    "default": Budget("default", 512, 64, 6, seeds=2, estimate_minutes=50),
    "quick": Budget("quick", 128, 32, 2, seeds=1, estimate_minutes=4),
}


@dataclasses.dataclass(frozen=True)
class PlannedRow:
    """A row with its resolved config and the run (workdir name) that gives its numbers."""

    row: Row
    run_id: str
    config: ExperimentConfig
    skipped: str = ""  # why it does not run ("" when it does)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `run` trains: rows, the distinct runs (`run_id -> config`), seeds, budget, root."""

    root: str
    rows: tuple[PlannedRow, ...]
    runs: dict[str, ExperimentConfig]
    seeds: tuple[int, ...]
    budget: Budget
    overrides: tuple[str, ...]

    def workdir(self, run_id: str, seed: int) -> str:
        return os.path.join(self.root, run_id, f"seed{seed}")


def plan(
    root: str,
    *,
    budget: Budget = BUDGETS["default"],
    seeds: int | None = None,
    tables: Sequence[int] = TABLES,
    with_two_stream: bool = False,
    overrides: Sequence[str] = (),
    rows: Sequence[Row] = ROWS,
    base_config: str = BASE_CONFIG,
) -> Plan:
    """Resolves every row's config: base config, then `budget`'s overrides, the row's, then
    `overrides` (`--set`, every row). Raises `repflow_tf.config.ConfigError` for a bad one.

    The optical flow rows read `<data.root>_flow` (the same videos converted with TV-L1).
    `seeds`: seeds 0 .. seeds-1 per row (None: the budget's)."""
    seeds = budget.seeds if seeds is None else seeds
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1. Received: seeds={seeds}")
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"tables must be among {TABLES}. Received: {unknown}")
    planned, runs = [], {}
    for row in rows:
        if row.table not in tables:
            continue
        config = load_config(base_config, [*budget.overrides(root), *row.overrides, *overrides])
        if row.optical_flow:
            flow_data = dataclasses.replace(config.data, root=config.data.root + "_flow")
            config = dataclasses.replace(config, data=flow_data)
        if row.optical_flow and not with_two_stream:
            planned.append(PlannedRow(row, row.id, config, skipped=SKIPPED_OPTICAL_FLOW))
            continue
        run_id = next((key for key, seen in runs.items() if seen == config), row.id)
        runs.setdefault(run_id, config)
        planned.append(PlannedRow(row, run_id, config))
    return Plan(root, tuple(planned), runs, tuple(range(seeds)), budget, tuple(overrides))


def format_plan(the_plan: Plan) -> str:
    """The rows, the runs and the budget, one line each (`--dry_run`)."""
    runs = len(the_plan.runs) * len(the_plan.seeds)
    lines = [
        f"budget {the_plan.budget.describe()}; seeds {list(the_plan.seeds)}; "
        f"{len(the_plan.rows)} rows, {len(the_plan.runs)} distinct configs, {runs} runs "
        f"into {the_plan.root}/<run>/seed<k>",
        f"estimate for every RGB row x {the_plan.budget.seeds} seed(s) on the 2-core CPU: "
        f"~{the_plan.budget.estimate_minutes:g} min (module docstring)",
    ]
    if the_plan.overrides:
        lines.append(f"--set for every row: {' '.join(the_plan.overrides)}")
    for planned in the_plan.rows:
        row = planned.row
        if planned.skipped:
            where = planned.skipped
        elif planned.run_id != row.id:
            where = f"= run {planned.run_id}"
        else:
            where = f"run {row.id}"
        lines.append(
            f"  table {row.table}  {row.label:<48} paper {row.paper:>4.1f}  {where}: "
            f"{' '.join(row.overrides)}"
        )
    return "\n".join(lines)


# === Running ===


def read_finished(workdir: str, epochs: int) -> dict[str, Any] | None:
    """The workdir's summary.json when it holds all `epochs` epochs, else None."""
    from repflow_tf.workdir import SUMMARY_FILE

    try:
        with open(os.path.join(workdir, SUMMARY_FILE)) as file:
            summary = json.load(file)
    except (OSError, ValueError):
        return None
    if summary.get("epochs") != epochs or "val_accuracy" not in summary:
        return None
    return summary


def run(
    the_plan: Plan,
    *,
    log: TextIO = sys.stdout,
    train: Callable[[ExperimentConfig, str], Any] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Trains (or reads) every run of the plan, seed 0 of every run first (with several jobs:
    the seeds of one run side by side, the pairs that share 2 cores best), and writes
    `results.md`, `results.json` and `results.png` to the plan's root after each run (so an
    interrupted reproduction leaves the table so far). Returns the results (`results.json`).

    `train(config, workdir)` defaults to `repflow_tf.training.train` (its progress goes to
    `<workdir>/train.log`). `jobs` > 1 trains that many runs at once in worker processes, each
    with cores / jobs TensorFlow threads (`train` must then be picklable); the data is made
    first, here. Raises `repflow_tf.training.TrainingError` for a bad setup."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1. Received: jobs={jobs}")
    if train is None:
        train = _train_logged
    runs = [(run_id, seed) for seed in the_plan.seeds for run_id in the_plan.runs]
    finished = {
        (run_id, seed): read_finished(
            the_plan.workdir(run_id, seed), the_plan.runs[run_id].trainer.epochs
        )
        for run_id, seed in runs
    }
    to_train = sum(summary is None for summary in finished.values())
    progress = _Progress(the_plan, len(runs), to_train, log, jobs)
    if jobs == 1:
        for key in runs:
            summary, seconds = finished[key], None
            if summary is None:
                summary, seconds = _train_run(train, _seeded(the_plan, *key), *key)[2:]
            progress.record(*key, summary, seconds)
    else:
        for key in runs:  # read back at once; then the others as they finish
            if finished[key] is not None:
                progress.record(*key, finished[key], None)
        pending = _seeds_side_by_side(the_plan, [key for key in runs if finished[key] is None])
        for run_id, seed, summary, seconds in _train_in_parallel(the_plan, pending, train, jobs):
            progress.record(run_id, seed, summary, seconds)
    return progress.done()


# The flow layer's implementations `step_costs` compares: `repflow_tf.ops.DEFAULT_NATIVE` for each.
STEP_COST_IMPLEMENTATIONS = {"fused kernels": None, "XLA": False}


def step_costs(
    the_plan: Plan, *, repeats: int = 5, log: TextIO = sys.stdout
) -> dict[str, dict[str, float]]:
    """Milliseconds of one training step (`train_on_batch`, the model and optimizer `train`
    builds, random clips of the run's batch shape; median of `repeats` after a warm-up call) of
    every distinct run's model, with each of the flow layer's implementations: the default (the
    fused CPU kernels where no GPU is visible) and the XLA path. Returns {run id: {name: ms}}.
    Optical flow rows (other inputs) are left out; a line per run goes to `log`. Trains
    nothing, reads no data."""
    import numpy as np
    import tensorflow as tf

    from repflow_tf import ops, training
    from repflow_tf.benchmarks.layer import time_calls

    costs = {}
    for run_id, config in the_plan.runs.items():
        if config.model.inputs != "rgb":
            continue
        data = config.data
        rng = np.random.default_rng(0)
        clips = rng.uniform(
            0, 255, (data.batch_size, data.num_frames, data.crop_size, data.crop_size, 3)
        ).astype("float32")
        labels = np.eye(config.model.num_classes, dtype="float32")[
            rng.integers(0, config.model.num_classes, data.batch_size)
        ]
        costs[run_id] = {}
        for name, native in STEP_COST_IMPLEMENTATIONS.items():
            with ops.default_native(native):
                model = training._build_model_and_optimizer(
                    config, tf.distribute.get_strategy(), 1
                )[0]
                step = time_calls(
                    functools.partial(model.train_on_batch, clips, labels),
                    repeats,
                    cell_seconds=float("inf"),
                )
            costs[run_id][name] = step["ms"]
        measured = ", ".join(f"{name} {ms:.0f} ms" for name, ms in costs[run_id].items())
        print(f"[{len(costs)}] {run_id}: {measured}", file=log, flush=True)
    return costs


def format_step_costs(costs: dict[str, dict[str, float]]) -> str:
    """`step_costs` as a Markdown table, with the sum over the runs (one step of each)."""
    names = list(STEP_COST_IMPLEMENTATIONS)
    lines = [
        f"| run | {' | '.join(f'{name} ms' for name in names)} | {names[1]} / {names[0]} |",
        "| --- |" + " ---: |" * (len(names) + 1),
    ]
    totals = dict.fromkeys(names, 0.0)
    for run_id, by_name in costs.items():
        for name in names:
            totals[name] += by_name[name]
        cells = " | ".join(f"{by_name[name]:.0f}" for name in names)
        lines.append(f"| {run_id} | {cells} | {by_name[names[1]] / by_name[names[0]]:.2f}x |")
    cells = " | ".join(f"{totals[name]:.0f}" for name in names)
    lines.append(
        f"| all runs, one step each | {cells} | {totals[names[1]] / totals[names[0]]:.2f}x |"
    )
    return "\n".join(lines)


def _seeds_side_by_side(the_plan: Plan, keys: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """`(run id, seed)` keys, every run's seeds next to each other, for workers that take them in
    order: two processes of the same row train 1.3-1.5x the steps per second of one process,
    and two different rows only about 1.05x (module docstring)."""
    position = {run_id: index for index, run_id in enumerate(the_plan.runs)}
    return sorted(keys, key=lambda key: (position[key[0]], key[1]))


def _seeded(the_plan: Plan, run_id: str, seed: int) -> tuple[ExperimentConfig, str]:
    config = the_plan.runs[run_id]
    config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, seed=seed))
    return config, the_plan.workdir(run_id, seed)


def _train_run(train, config_and_workdir, run_id, seed):
    """Trains one run; returns (run id, seed, its summary, seconds)."""
    config, workdir = config_and_workdir
    began = time.monotonic()
    train(config, workdir)
    summary = read_finished(workdir, config.trainer.epochs)
    if summary is None:
        raise RuntimeError(f"{workdir}: training ended without a complete summary.json")
    return run_id, seed, summary, time.monotonic() - began


def _train_in_parallel(the_plan, to_train, train, jobs):
    """Yields `_train_run`'s results as `jobs` worker processes finish them."""
    if not to_train:
        return
    from repflow_tf import training  # TensorFlow starts here, after the configs were checked.

    # The data first, here, from the run that would make it in a sequential run (its seed):
    # workers starting together would each generate it into the same folder.
    seeded = {key: _seeded(the_plan, *key) for key in to_train}
    made = set()
    for config, _ in seeded.values():
        if config.data.root not in made:
            made.add(config.data.root)
            training.prepare_data(config)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = _worker_pool(min(jobs, len(to_train)), threads)
    # Submitted in order, taken by whichever worker is free first.
    futures = [pool.submit(_train_run, train, seeded[key], *key) for key in to_train]
    try:
        for future in concurrent.futures.as_completed(futures):
            yield future.result()
    except concurrent.futures.process.BrokenProcessPool:
        raise training.TrainingError(
            "a training worker process died (a crash or out of memory); the finished runs are "
            "kept: run the same command again to resume"
        ) from None
    finally:
        # On an error or Ctrl-C too: stop the other runs now (each resumes from its checkpoint).
        # Python 3.11's executor has no public way to stop work already running.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_pool(processes: int, threads: int) -> concurrent.futures.ProcessPoolExecutor:
    from repflow_tf.startup import quiet_process_pool

    return quiet_process_pool(processes, __name__, "_init_worker", threads, os.getpid())


def _init_worker(threads: int, parent_pid: int) -> None:
    import tensorflow as tf

    from repflow_tf.startup import exit_with_parent

    # Two single-threaded processes train about 1.3-1.5x more steps per second on 2 cores than
    # one process with 2 threads (small models scale badly over threads; tracing has one).
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    exit_with_parent(parent_pid)


class _Progress:
    """One line per finished run (with an ETA), and the results rewritten after each."""

    def __init__(self, the_plan: Plan, total: int, to_train: int, log: TextIO, jobs: int = 1):
        self.the_plan, self.total, self.to_train, self.log = the_plan, total, to_train, log
        self.jobs = jobs
        self.outcomes: dict[str, dict[int, dict[str, Any]]] = {r: {} for r in the_plan.runs}
        self.start, self.run_seconds, self.reported = time.monotonic(), [], 0

    def record(self, run_id: str, seed: int, summary: dict[str, Any], seconds: float | None):
        """`seconds` None: a finished run read back."""
        reused = seconds is None
        if not reused:
            self.run_seconds.append(seconds)
        self.outcomes[run_id][seed] = {
            "val_accuracy": float(summary["val_accuracy"]),
            "wall_time_s": float(summary.get("wall_time_s", 0.0)),
            "reused": reused,
        }
        self.reported += 1
        left, left_to_train = self.total - self.reported, self.to_train - len(self.run_seconds)
        # The median: a run that first converts the data (the TV-L1 rows) is no typical run.
        if not left_to_train:
            eta = "ETA 0.0 min"
        elif self.run_seconds:
            minutes = left_to_train * statistics.median(self.run_seconds) / 60 / self.jobs
            eta = f"ETA {minutes:.1f} min"
        else:
            eta = "ETA ?"
        took = "reused" if reused else f"{seconds:.0f} s"
        print(
            f"[{self.reported}/{self.total}] {run_id} seed {seed}: val acc "
            f"{100 * self.outcomes[run_id][seed]['val_accuracy']:.1f}% ({took}); {left} runs "
            f"left ({left_to_train} to train), {eta}",
            file=self.log,
            flush=True,
        )
        write_results(self.the_plan.root, self._results())

    def _results(self) -> dict[str, Any]:
        return aggregate(self.the_plan, self.outcomes, time.monotonic() - self.start)

    def done(self) -> dict[str, Any]:
        results = self._results()
        write_results(self.the_plan.root, results)
        trained = len(self.run_seconds)
        print(
            f"done: {self.total} runs ({trained} trained, {self.total - trained} reused) in "
            f"{(time.monotonic() - self.start) / 60:.1f} min; "
            f"{os.path.join(self.the_plan.root, RESULTS_MD)}, {RESULTS_PNG}, {RESULTS_JSON}",
            file=self.log,
            flush=True,
        )
        return results


def _train_logged(config: ExperimentConfig, workdir: str) -> Any:
    from repflow_tf import training  # TensorFlow starts here, after the configs were checked.

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "train.log"), "a") as log:
        return training.train(config, workdir, log=log)


def aggregate(
    the_plan: Plan, outcomes: dict[str, dict[int, dict[str, Any]]], seconds: float
) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one seed) over the seeds finished so far."""
    rows = []
    for planned in the_plan.rows:
        row = planned.row
        seeds = {} if planned.skipped else outcomes.get(planned.run_id, {})
        accuracies = [100 * seeds[seed]["val_accuracy"] for seed in sorted(seeds)]
        rows.append(
            {
                "id": row.id,
                "table": row.table,
                "label": row.label,
                "run": planned.run_id,
                "overrides": list(row.overrides),
                "paper": row.paper,
                "skipped": planned.skipped,
                "accuracies": accuracies,
                "mean": statistics.fmean(accuracies) if accuracies else None,
                # A sample standard deviation needs two seeds: none rather than a false 0.
                "std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
                "n": len(accuracies),
                "wall_time_s": sum(seeds[seed]["wall_time_s"] for seed in seeds),
            }
        )
    return {
        "budget": dataclasses.asdict(the_plan.budget),
        "seeds": list(the_plan.seeds),
        "overrides": list(the_plan.overrides),
        "data": sorted({config.data.root for config in the_plan.runs.values()}),
        "base_config": BASE_CONFIG,
        "session_seconds": round(seconds, 1),
        "training_seconds": round(sum(row["wall_time_s"] for row in _distinct(rows)), 1),
        "written": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": rows,
    }


def _distinct(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({row["run"]: row for row in rows}.values())


def format_accuracy(row: dict[str, Any]) -> str:
    """`"83.1 ± 2.0 (n=2)"`, `"83.1 (n=1)"` (no std from one seed), the skip reason, or `"—"`
    before the first seed finished.

    >>> format_accuracy({"skipped": "", "mean": 83.125, "std": 2.0, "n": 2})
    '83.1 ± 2.0 (n=2)'
    >>> format_accuracy({"skipped": "", "mean": 83.125, "std": None, "n": 1})
    '83.1 (n=1)'
    """
    if row["skipped"]:
        return row["skipped"]
    if row["mean"] is None:
        return "—"
    if row["std"] is None:
        return f"{row['mean']:.1f} (n={row['n']})"
    return f"{row['mean']:.1f} ± {row['std']:.1f} (n={row['n']})"


def format_markdown(results: dict[str, Any]) -> str:
    """`results.md`: a header (budget, seeds, data, time, mapping) and one table per paper table."""
    budget = Budget(**results["budget"])
    seeds = results["seeds"]
    lines = [
        "# Representation flow ablations at small scale (paper Tables 1, 2, 3, 5)",
        "",
        f"Budget {budget.describe()}, the same for every row; seeds {seeds}; base config "
        f"`{results['base_config']}` (2D ResNet-18 of width 16, 8-frame 56 x 56 clips, 8 classes)"
        + (f" with `--set {' '.join(results['overrides'])}`" if results["overrides"] else "")
        + f"; data {', '.join(f'`{root}`' for root in results['data'])}; "
        f"{results['training_seconds'] / 60:.1f} min of training; written {results['written']}.",
        "",
        "Ours: validation clip accuracy (%), mean ± sample standard deviation over seeds (n). "
        "Paper: Mini-Kinetics accuracy (%), another dataset and scale: compare the order of the "
        "rows, not the values. Position mapping: the paper counts conv1 as block 1, so its "
        '"After Block 1" is our `stem` and its "After Block k" our `block{k-1}`; Tables 2, 3 '
        'and 5 use the paper\'s "After Block 3" = our `block2`. Rows marked "= run" share '
        "another row's runs (equal configs).",
    ]
    for table in TABLES:
        rows = [row for row in results["rows"] if row["table"] == table]
        if not rows:
            continue
        lines += ["", f"## {TABLE_TITLES[table]}", ""]
        lines += ["| row | ours | paper | settings |", "| --- | ---: | ---: | --- |"]
        for row in rows:
            shared = f" (= run {row['run']})" if row["run"] != row["id"] else ""
            settings = ", ".join(f"`{override}`" for override in row["overrides"])
            lines.append(
                f"| {row['label']} | {format_accuracy(row)} | {row['paper']:.1f} | "
                f"{settings}{shared} |"
            )
        if table in PAPER_ONLY:
            lines += ["", PAPER_ONLY[table]]
    return "\n".join(lines) + "\n"


def write_results(root: str, results: dict[str, Any]) -> None:
    """`results.md`, `results.json` and `results.png` under `root`, each written atomically."""
    os.makedirs(root, exist_ok=True)
    write_atomic(os.path.join(root, RESULTS_MD), format_markdown(results))
    write_json_atomic(os.path.join(root, RESULTS_JSON), results, indent=2)
    figure = plot(results)
    with atomic_output(os.path.join(root, RESULTS_PNG)) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


_POSITIONS = ("input", "stem", "block1", "block2", "block3", "block4")


def plot(results: dict[str, Any]):
    """Two panels: accuracy vs iterations (Table 3, fixed and learned) and accuracy vs flow
    position (Table 1), ours with error bars (std over seeds) on the left axis, the paper's
    Mini-Kinetics numbers dashed on a right axis of their own (the scales differ)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)
    by_id = {row["id"]: row for row in results["rows"]}
    iterations_axes, position_axes = figure.subplots(1, 2)
    series = {
        kind: [(it, by_id.get(f"t3_{kind}_{it}")) for it in (1, 5, 10, 20, 50)]
        for kind in ("fixed", "learned")
    }
    _panel(
        iterations_axes,
        {kind: [(float(it), row) for it, row in points] for kind, points in series.items()},
        "TV-L1 iterations (Table 3, flow after our block2)",
        log_x=True,
    )
    positions = [(float(i), by_id.get(f"t1_{p}")) for i, p in enumerate(_POSITIONS)]
    rgb = by_id.get("t1_rgb")  # the baseline the positions are to beat
    reference = rgb["mean"] if rgb and rgb["mean"] is not None else None
    _panel(position_axes, {"learned": positions}, "flow position (Table 1)", reference=reference)
    position_axes.set_xticks(range(len(_POSITIONS)))
    labels = ["input", "stem\n(paper B1)"] + [
        f"{p}\n(paper B{k + 2})" for k, p in enumerate(_POSITIONS[2:])
    ]
    position_axes.set_xticklabels(labels, fontsize=8)
    figure.suptitle(
        f"Ours: synthetic motion, val. accuracy (%), mean ± std over {len(results['seeds'])} "
        "seed(s), left axis; paper: Mini-Kinetics (%), dashed, right axis",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def _panel(
    axes,
    series: dict[str, list[tuple[float, dict | None]]],
    xlabel: str,
    log_x: bool = False,
    reference: float | None = None,
):
    paper_axes = axes.twinx()
    if reference is not None:
        axes.axhline(reference, color="grey", linestyle=":", label="ours, RGB CNN")
    colours = {"fixed": "tab:blue", "learned": "tab:orange"}
    drawn = False
    for kind, points in series.items():
        ours = [(x, row) for x, row in points if row and row["mean"] is not None]
        if ours:
            axes.errorbar(
                [x for x, _ in ours],
                [row["mean"] for _, row in ours],
                yerr=[row["std"] or 0.0 for _, row in ours],
                marker="o",
                capsize=3,
                color=colours[kind],
                label=f"ours, {kind}",
            )
            drawn = True
        paper = [(x, row) for x, row in points if row]
        if paper:
            paper_axes.plot(
                [x for x, _ in paper],
                [row["paper"] for _, row in paper],
                linestyle="--",
                marker="s",
                alpha=0.6,
                color=colours[kind],
                label=f"paper, {kind}",
            )
    if not drawn:
        axes.text(0.5, 0.5, "no finished rows", ha="center", va="center", transform=axes.transAxes)
    if log_x:
        axes.set_xscale("log")
        axes.set_xticks([1, 5, 10, 20, 50], labels=["1", "5", "10", "20", "50"])
    axes.set_xlabel(xlabel)
    axes.set_ylabel("ours: val accuracy (%)")
    paper_axes.set_ylabel("paper: Mini-Kinetics (%)", alpha=0.7)
    handles = [*axes.get_legend_handles_labels()[0], *paper_axes.get_legend_handles_labels()[0]]
    if handles:
        axes.legend(handles=handles, fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
