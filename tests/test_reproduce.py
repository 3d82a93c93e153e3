"""The ablation runner (bin/reproduce.py): the rows cover the paper's Tables 1, 2, 3, 5 as issue
#11 lists them, a tiny reproduction end to end (table, JSON, PNG), resuming trains nothing, an
interrupted one continues from its finished runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest
from test_training import make_tiny_data, tiny_overrides

from repflow_tf import training
from repflow_tf.benchmarks import reproduce
from repflow_tf.config import load_config
from repflow_tf.workdir import SUMMARY_FILE

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = os.path.join(REPO, reproduce.BASE_CONFIG)
TINY_BUDGET = reproduce.Budget("tiny", 16, 8, 1, seeds=1, estimate_minutes=0)

# Issue #11, point 3: every row it lists, as (table, our model settings).
EXPECTED = {
    1: [
        {"flow_position": "none", "inputs": "rgb"},
        {"flow_position": "none", "inputs": "optical_flow"},
        {"flow_position": "none", "inputs": "rgb+optical_flow"},
        *({"flow_position": p} for p in ("input", "stem", "block1", "block2", "block3", "block4")),
    ],
    2: [
        {"flow_position": "block2", "flow_learn": learn}
        for learn in (
            (),
            ("sobel",),
            ("divergence",),
            ("hyper",),
            ("divergence", "hyper"),
            ("sobel", "divergence", "hyper"),
        )
    ],
    3: [
        {"flow_position": "block2", "flow_learn": learn, "flow_iterations": iterations}
        for learn in ((), ("divergence", "hyper"))
        for iterations in (1, 5, 10, 20, 50)
    ],
    5: [{"flow_position": "block2", "flow_stack": s} for s in ("single", "fof", "fcf")],
}
PAPER = {
    1: [55.2, 35.4, 57.6, 37.4, 52.4, 57.4, 59.4, 52.1, 50.3],
    2: [59.4, 58.5, 60.2, 59.9, 60.7, 59.2],
    3: [46.7, 51.3, 52.4, 53.6, 59.2, 49.5, 55.4, 59.4, 60.7, 60.9],
    5: [59.4, 47.2, 62.3],
}


def _matches(config, expected: dict) -> bool:
    return all(getattr(config.model, key) == value for key, value in expected.items())


def test_rows_cover_every_row_of_the_issue_and_load():
    the_plan = reproduce.plan("/tmp/unused", with_two_stream=True, base_config=BASE)
    for table in reproduce.TABLES:
        planned = [p for p in the_plan.rows if p.row.table == table]
        # Each expected row is exactly one planned row, and nothing else is planned.
        for expected in EXPECTED[table]:
            found = [p.row.id for p in planned if _matches(p.config, expected)]
            assert len(found) == 1, (table, expected, found)
        assert len(planned) == len(EXPECTED[table])
        assert sorted(p.row.paper for p in planned) == sorted(PAPER[table])
    by_id = {p.row.id: p for p in the_plan.rows}
    # The paper's "After Block k" is our block k-1 (conv1 + max pool = block 1 = our stem).
    assert by_id["t1_stem"].row.paper == 52.4 and by_id["t1_block2"].row.paper == 59.4
    assert "our block2" in by_id["t1_block2"].row.label
    assert by_id["t3_learned_50"].row.paper == 60.9 and by_id["t3_fixed_1"].row.paper == 46.7
    # Equal configs share one run; the optical flow rows read the TV-L1 copy of the data.
    for shared in ("t2_divergence_hyper", "t3_learned_10", "t5_single"):
        assert by_id[shared].run_id == "t1_block2"
    assert by_id["t3_fixed_10"].run_id == "t2_none"
    assert by_id["t1_two_stream"].config.data.root.endswith("synthetic_flow")
    assert len(the_plan.runs) == 24
    # Every row's overrides load on their own, and the budget is the same for every row.
    for planned in the_plan.rows:
        budget = the_plan.budget.overrides("/tmp/unused")
        config = load_config(BASE, [*budget, *planned.row.overrides])
        assert config.model == planned.config.model
        assert config.trainer.epochs == the_plan.budget.epochs
        assert config.data.synthetic_train == the_plan.budget.train_videos


def test_optical_flow_rows_skipped_without_the_flag_and_tables_subset():
    the_plan = reproduce.plan("/tmp/unused", tables=[1, 3], base_config=BASE)
    assert {p.row.table for p in the_plan.rows} == {1, 3}
    skipped = {p.row.id for p in the_plan.rows if p.skipped}
    assert skipped == {"t1_flow_cnn", "t1_two_stream"}
    assert not skipped & set(the_plan.runs)
    results = reproduce.aggregate(the_plan, {}, 0.0)
    table = reproduce.format_markdown(results)
    assert "| Flow CNN (precomputed TV-L1) | skipped (--with_two_stream) | 35.4 |" in table
    with pytest.raises(ValueError, match="tables"):
        reproduce.plan("/tmp/unused", tables=[4], base_config=BASE)


def _fake_train(calls: list):
    """Writes a summary.json as training would; accuracy from the seed and iterations."""

    def train(config, workdir):
        calls.append(workdir)
        os.makedirs(workdir, exist_ok=True)
        accuracy = 0.5 + 0.1 * config.runtime.seed + 0.001 * config.model.flow_iterations
        summary = {"val_accuracy": accuracy, "epochs": config.trainer.epochs, "wall_time_s": 1.0}
        with open(os.path.join(workdir, SUMMARY_FILE), "w") as file:
            json.dump(summary, file)

    return train


def test_mean_std_over_seeds_and_unfinished_runs_retrain(tmp_path):
    rows = [r for r in reproduce.ROWS if r.id in ("t3_fixed_1", "t3_fixed_50")]
    the_plan = reproduce.plan(str(tmp_path), seeds=2, rows=rows, base_config=BASE)
    # A summary of fewer epochs (a run of another budget) is not a finished run.
    stale = the_plan.workdir("t3_fixed_1", 1)
    os.makedirs(stale)
    with open(os.path.join(stale, SUMMARY_FILE), "w") as file:
        json.dump({"val_accuracy": 0.0, "epochs": 1}, file)
    calls = []
    lines = []

    class Log:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    results = reproduce.run(the_plan, train=_fake_train(calls), log=Log())
    assert len(calls) == 4  # every (row, seed), seed 0 of both rows first
    assert calls[0].endswith(os.path.join("t3_fixed_1", "seed0"))
    assert calls[1].endswith(os.path.join("t3_fixed_50", "seed0"))
    row = {r["id"]: r for r in results["rows"]}["t3_fixed_50"]
    assert row["accuracies"] == pytest.approx([55.0, 65.0])
    assert row["mean"] == pytest.approx(60.0) and row["std"] == pytest.approx(7.0711, abs=1e-3)
    assert reproduce.format_accuracy(row) == "60.0 ± 7.1 (n=2)"
    progress = "".join(lines)
    assert "[4/4] t3_fixed_50 seed 1: val acc 65.0%" in progress and "0 runs left" in progress
    assert "done: 4 runs (4 trained, 0 reused)" in progress


def test_several_jobs_train_the_seeds_of_one_run_side_by_side(tmp_path, monkeypatch):
    rows = [r for r in reproduce.ROWS if r.id in ("t3_fixed_1", "t3_fixed_50")]
    the_plan = reproduce.plan(str(tmp_path), seeds=2, rows=rows, base_config=BASE)
    submitted = []

    def in_order(the_plan, to_train, train, jobs):  # the worker pool, without workers
        submitted.extend(to_train)
        for key in to_train:
            config, workdir = reproduce._seeded(the_plan, *key)
            train(config, workdir)
            yield *key, reproduce.read_finished(workdir, config.trainer.epochs), 1.0

    monkeypatch.setattr(reproduce, "_train_in_parallel", in_order)
    reproduce.run(the_plan, train=_fake_train([]), log=open(os.devnull, "w"), jobs=2)
    assert submitted == [
        ("t3_fixed_1", 0),
        ("t3_fixed_1", 1),
        ("t3_fixed_50", 0),
        ("t3_fixed_50", 1),
    ]


def test_an_interrupted_reproduction_continues_from_the_finished_runs(tmp_path):
    rows = [r for r in reproduce.ROWS if r.id in ("t5_fof", "t5_fcf")]
    the_plan = reproduce.plan(str(tmp_path), seeds=1, rows=rows, base_config=BASE)
    calls = []
    fake = _fake_train(calls)

    def killed_on_the_second_run(config, workdir):
        if calls:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) during the second run
        fake(config, workdir)

    with pytest.raises(KeyboardInterrupt):
        reproduce.run(the_plan, train=killed_on_the_second_run, log=open(os.devnull, "w"))
    # The table so far was written after the first run.
    assert "| Flow-of-flow | 51.0 (n=1) | 47.2 |" in "".join(_table_lines(tmp_path))
    assert "| Flow-conv-flow (FcF) | — | 62.3 |" in "".join(_table_lines(tmp_path))
    log = io.StringIO()
    results = reproduce.run(the_plan, train=fake, log=log)
    assert [os.path.basename(os.path.dirname(c)) for c in calls] == ["t5_fof", "t5_fcf"]
    assert [row["n"] for row in results["rows"]] == [1, 1]
    # The ETA counts only the runs still to train (a reused run takes no time).
    progress = log.getvalue().splitlines()
    assert progress[0].endswith("(reused); 1 runs left (1 to train), ETA ?"), progress[0]
    assert progress[1].endswith("; 0 runs left (0 to train), ETA 0.0 min"), progress[1]
    # A finished run after the one training is not counted either.
    os.remove(os.path.join(the_plan.workdir("t5_fof", 0), SUMMARY_FILE))
    log = io.StringIO()
    reproduce.run(the_plan, train=fake, log=log)
    first = log.getvalue().splitlines()[0]
    assert first.startswith("[1/2] t5_fof seed 0") and first.endswith(
        "; 1 runs left (0 to train), ETA 0.0 min"
    ), first


def _die(config, workdir):
    os._exit(3)  # as on a segfault or the out-of-memory killer, in a --jobs worker


def test_a_worker_that_dies_ends_the_reproduction_with_one_clear_error(tmp_path):
    # One run: a pool of one worker (a process fewer to start than two runs would need).
    rows = [r for r in reproduce.ROWS if r.id == "t5_fof"]
    data_root = make_tiny_data(str(tmp_path / "data"))
    the_plan = reproduce.plan(
        str(tmp_path), seeds=1, rows=rows, base_config=BASE, overrides=tiny_overrides(data_root)
    )
    with pytest.raises(training.TrainingError, match=r"worker process died .* to resume$"):
        reproduce.run(the_plan, train=_die, log=open(os.devnull, "w"), jobs=2)


def _table_lines(root) -> list[str]:
    with open(os.path.join(root, reproduce.RESULTS_MD)) as file:
        return [line for line in file if line.startswith("|")]


def _tiny_row_overrides(data_root: str) -> list[str]:
    """The tiny model and data of test_training, less what the rows (the flow layer) and the
    budget (the epochs) set."""
    rows_own = (
        "model.flow_position",
        "model.flow_learn",
        "model.flow_iterations",
        "trainer.epochs",
        "schedule.decay_epochs",
    )
    return [o for o in tiny_overrides(data_root) if not o.startswith(rows_own)]


def test_tiny_reproduction_in_two_processes_then_resume_trains_nothing(tmp_path, monkeypatch):
    data_root = make_tiny_data(str(tmp_path / "data"))
    overrides = _tiny_row_overrides(data_root)
    rows = [r for r in reproduce.ROWS if r.id in ("t3_fixed_1", "t3_learned_1")]
    root = str(tmp_path / "reproduce")
    the_plan = reproduce.plan(
        root, budget=TINY_BUDGET, seeds=1, rows=rows, overrides=overrides, base_config=BASE
    )

    def no_training(*args, **kwargs):
        raise AssertionError("trained in this process, or a finished run trained again")

    # Both runs at once, in two worker processes (not here: this process cannot train).
    monkeypatch.setattr(training, "train", no_training)
    log = io.StringIO()
    results = reproduce.run(the_plan, log=log, jobs=2)

    for run_id in ("t3_fixed_1", "t3_learned_1"):
        with open(os.path.join(root, run_id, "seed0", SUMMARY_FILE)) as file:
            assert json.load(file)["epochs"] == 1
        with open(os.path.join(root, run_id, "seed0", "train.log")) as file:
            assert "done: 1 epochs" in file.read()
    progress = log.getvalue()
    assert "[2/2] " in progress and "done: 2 runs (2 trained, 0 reused)" in progress
    lines = _table_lines(root)
    assert lines[0] == "| row | ours | paper | settings |\n"
    fixed, learned = (line.split(" | ") for line in lines[2:4])
    assert fixed[0] == "| Not learned, 1 it." and fixed[2] == "46.7"
    assert learned[0] == "| Learned, 1 it." and learned[2] == "49.5"
    for cells, row in zip((fixed, learned), results["rows"], strict=True):
        assert cells[1] == f"{row['mean']:.1f} (n=1)"
        assert 0 <= row["mean"] <= 100
    with open(os.path.join(root, reproduce.RESULTS_MD)) as file:
        text = file.read()
    assert "Budget `tiny`: 16 training / 8 validation videos, 1 epoch," in text
    assert "seeds [0]" in text and "## Table 3" in text and "## Table 1" not in text
    with open(os.path.join(root, reproduce.RESULTS_JSON)) as file:
        assert json.load(file)["rows"] == results["rows"]
    image = matplotlib.image.imread(os.path.join(root, reproduce.RESULTS_PNG))
    assert image.shape == (450, 1200, 4) and image[..., :3].std() > 0.05

    # Rerunning the same plan reads every run back: training must not be called.
    monkeypatch.setattr(reproduce, "_worker_pool", no_training)
    for jobs in (1, 2):
        again = reproduce.run(the_plan, log=open(os.devnull, "w"), jobs=jobs)
        assert _table_lines(root) == lines
        assert [r["accuracies"] for r in again["rows"]] == [
            r["accuracies"] for r in results["rows"]
        ]


def test_step_costs_time_every_rgb_run_with_both_flow_implementations(tmp_path, monkeypatch):
    """Two rows (RGB, learned flow after block 1) and the two-stream row, which reads other
    inputs and is left out; the kernels' choice is what each timed model traced with."""
    from repflow_tf import ops

    rows = [r for r in reproduce.ROWS if r.id in ("t1_rgb", "t1_block1", "t1_two_stream")]
    the_plan = reproduce.plan(
        str(tmp_path),
        budget=TINY_BUDGET,
        rows=rows,
        with_two_stream=True,
        overrides=_tiny_row_overrides(str(tmp_path / "unused")),
        base_config=BASE,
    )
    traced_with = []
    resolved = ops.resolved_native
    monkeypatch.setattr(
        ops, "resolved_native", lambda *a: traced_with.append(resolved(*a)) or traced_with[-1]
    )
    costs = reproduce.step_costs(the_plan, repeats=2)
    assert list(costs) == ["t1_rgb", "t1_block1"]
    for by_name in costs.values():
        assert list(by_name) == list(reproduce.STEP_COST_IMPLEMENTATIONS)
        assert all(ms > 0 for ms in by_name.values())
    # Only the flow row traces a flow layer: with the kernels, then with XLA.
    assert True in traced_with and traced_with == sorted(traced_with, reverse=True)
    assert traced_with[-1] is False
    lines = reproduce.format_step_costs(costs).splitlines()
    assert lines[0] == "| run | fused kernels ms | XLA ms | XLA / fused kernels |"
    assert lines[2].startswith("| t1_rgb | ") and lines[3].startswith("| t1_block1 | ")
    total = costs["t1_rgb"]["XLA"] + costs["t1_block1"]["XLA"]
    assert lines[4].startswith("| all runs, one step each | ")
    assert f"| {total:.0f} |" in lines[4]


def test_cli_dry_run_prints_the_plan_and_rejects_bad_flags(tmp_path):
    script = os.path.join(REPO, "bin", "reproduce.py")
    root = str(tmp_path / "plan")

    def cli(*argv):
        return subprocess.run(
            [sys.executable, script, *argv], capture_output=True, text=True, cwd=REPO
        )

    done = cli("--dry_run", "--quick", "--tables=5", f"--root={root}", "--seeds=3")
    assert done.returncode == 0, done.stderr
    assert "budget `quick`: 128 training / 32 validation videos, 2 epochs" in done.stdout
    assert "seeds [0, 1, 2]; 3 rows, 3 distinct configs, 9 runs" in done.stdout
    assert "Flow-conv-flow (FcF)" in done.stdout
    assert not os.path.exists(root)  # nothing trained, nothing written
    done = cli("--dry_run", f"--root={root}")
    assert done.returncode == 0, done.stderr
    assert "budget `default`: 512 training / 64 validation videos, 6 epochs" in done.stdout
    assert "seeds [0, 1]; 28 rows, 22 distinct configs, 44 runs" in done.stdout
    assert "skipped (--with_two_stream)" in done.stdout
    assert "seeds [0]; 28 rows" in cli("--dry_run", "--quick").stdout
    bad = cli("--dry_run", "--tables=4")
    assert bad.returncode == 2 and "tables must be among" in bad.stderr
    bad = cli("--dry_run", "--set", "model.flow_iterations=0")
    assert bad.returncode == 2 and "flow_iterations" in bad.stderr
