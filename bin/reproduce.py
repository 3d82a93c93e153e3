"""The paper's ablations (Tables 1, 2, 3, 5) at small scale in one command: every row the same
budget on the synthetic motion demo, >= 2 seeds, mean ± std, next to the paper's numbers.

    python bin/reproduce.py                        # all RGB rows, 2 seeds, about 50 min on 2 cores
    python bin/reproduce.py --quick                # a smoke run, 1 seed, about 3 min (2 jobs)
    python bin/reproduce.py --step_costs           # one train step of every run, kernels vs XLA
    python bin/reproduce.py --jobs=2               # two runs at once (--quick's default)
    python bin/reproduce.py --dry_run              # the rows, runs and budget; trains nothing
    python bin/reproduce.py --tables=1,3 --seeds=3 --root=runs/reproduce_t13
    python bin/reproduce.py --with_two_stream      # also the flow CNN and two-stream rows (TV-L1)
    python bin/reproduce.py --set data.synthetic_size=96 --root=runs/reproduce_96

Trains each row's config for each seed into <root>/<run>/seed<k> (progress in its train.log),
prints one line per finished run and writes <root>/results.md (one table per paper table, the
paper's Mini-Kinetics number beside ours), results.json and results.png (accuracy vs iterations
and vs flow position). Rerunning the same command continues an interrupted reproduction: finished
runs are read back, a killed one resumes from its checkpoint. The data is generated into
<root>/data/synthetic (and, with --with_two_stream, the same videos with TV-L1 flow into
<root>/data/synthetic_flow: <data.root>_flow where --set changes data.root). --set applies to
every row, after the budget's and the row's own overrides. See repflow_tf.benchmarks.reproduce.
"""

from absl import app, flags

from repflow_tf.benchmarks import reproduce
from repflow_tf.cli import fail, parse_flags, start_tensorflow
from repflow_tf.config import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/reproduce", "Workdirs, data and results below this folder.")
flags.DEFINE_bool("quick", False, "The quick budget (a smoke run: 1 seed, about 10 minutes).")
flags.DEFINE_integer(
    "seeds", None, "Seeds per row, 0 .. seeds-1 (default: 2, --quick: 1).", lower_bound=1
)
flags.DEFINE_list("tables", ["1", "2", "3", "5"], "Paper tables to reproduce (subset of 1,2,3,5).")
flags.DEFINE_bool(
    "with_two_stream", False, "Also train the flow CNN and two-stream rows (TV-L1 data, slow)."
)
flags.DEFINE_multi_string("set", [], "Config override for every row, section.key=value.")
flags.DEFINE_bool("dry_run", False, "Print the plan (rows, runs, budget) and train nothing.")
flags.DEFINE_bool(
    "step_costs",
    False,
    "Time one training step of every run's model with the flow layer's fused CPU kernels and "
    "with its XLA path (random clips, median of 5), print the table, train nothing.",
)
flags.DEFINE_integer(
    "jobs",
    None,
    "Runs trained at once, each in its own process with cores / jobs TensorFlow threads "
    "(default: 2 with --quick, where 2 took 7.9 min against 10.8 with 1 on 2 cores before the "
    "fused flow kernels, 3.1 min with them; else 1, the committed results' setting). The "
    "accuracies depend on the threads per process: "
    "compare runs of the same --jobs on the same core count.",
    lower_bound=1,
)


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    try:
        tables = [int(table) for table in FLAGS.tables]
    except ValueError:
        fail(f"--tables must be numbers among {reproduce.TABLES}. Received: {FLAGS.tables}")
    try:
        plan = reproduce.plan(
            FLAGS.root,
            budget=reproduce.BUDGETS["quick" if FLAGS.quick else "default"],
            seeds=FLAGS.seeds,
            tables=tables,
            with_two_stream=FLAGS.with_two_stream,
            overrides=FLAGS.set,
        )
    except (ConfigError, ValueError) as error:
        fail(str(error))
    print(reproduce.format_plan(plan), flush=True)
    if FLAGS.dry_run:
        return
    start_tensorflow()  # after the flags and every row's config were checked
    from repflow_tf import training

    if FLAGS.step_costs:
        print(reproduce.format_step_costs(reproduce.step_costs(plan)))
        return

    try:
        jobs = FLAGS.jobs or (2 if FLAGS.quick else 1)
        results = reproduce.run(plan, jobs=jobs)
    except training.TrainingError as error:
        fail(str(error))
    print(reproduce.format_markdown(results))


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
