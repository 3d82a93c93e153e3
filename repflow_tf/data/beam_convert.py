"""The conversion as an Apache Beam pipeline, for datasets too big for one machine (Kinetics).

`convert_dataset_beam` writes exactly what `repflow_tf.data.convert.convert_dataset` writes: the
same shards (the same seeded assignment of videos to shards, the same names and bytes), the same
per-shard state records, the same manifests, and it resumes the same way (shards already written
from the same videos and options are kept). Planning and the manifests happen in this process;
the pipeline does the rest:

    shards still to write -> one element per video -> Reshuffle (spreads the videos over the
    workers) -> decode + encode each video -> grouped by shard (with the shard's plan) ->
    each shard written in its listed order to a unique temporary name, its state record, rename

A shard writer holds its shard's records in memory (`videos_per_shard` x ~1.5 MB at short side
128). Every step is deterministic, so a retried or rerun step writes the same bytes. The workers
must see the videos and the output directory (a shared filesystem, or `gs://` paths: a video
there is copied to the worker's local disk to be decoded) and have repflow_tf installed.

`apache-beam` is an optional dependency: `pip install -e ".[beam]"`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from repflow_tf.data.schema import DataError

if TYPE_CHECKING:  # the converter imports TensorFlow; this module does so only when it runs
    from repflow_tf.data.convert import ConvertOptions, _ShardJob
    from repflow_tf.data.manifest import Manifest
    from repflow_tf.data.splits import SplitList, VideoEntry

RUNNERS = ("DirectRunner", "FlinkRunner", "SparkRunner", "DataflowRunner")
INSTALL_HINT = 'pip install -e ".[beam]"'


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Beam logs at import about optional GCP libraries ("apitools not found", BigQuery), on
    the root logger: with no handler there, that would also install a stderr handler for
    everything after. Inside, the root logger takes errors only, into a NullHandler if it has
    no handler."""
    root = logging.getLogger()
    level, handler = root.level, logging.NullHandler()
    added = not root.handlers
    if added:
        root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        if added:
            root.removeHandler(handler)


def require_beam() -> Any:
    """Imports and returns `apache_beam`; a one-line `DataError` saying how to install it if it
    is missing."""
    try:
        with _quiet_import():
            import apache_beam
    except ImportError as error:
        raise DataError(
            f"--runner needs Apache Beam, which is not installed ({error}): {INSTALL_HINT}"
        ) from None
    return apache_beam


def parse_beam_options(items: Sequence[str]) -> list[str]:
    """`KEY=VALUE` items (`--beam_option`) as Beam command-line arguments `--KEY=VALUE`.

    >>> parse_beam_options(["direct_num_workers=2", "project=my-project"])
    ['--direct_num_workers=2', '--project=my-project']
    >>> parse_beam_options(["oops"])
    Traceback (most recent call last):
    ...
    ValueError: --beam_option expects KEY=VALUE (a Beam pipeline option without its --), got 'oops'
    """
    arguments = []
    for item in items:
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key or key.startswith("-"):
            raise ValueError(
                "--beam_option expects KEY=VALUE (a Beam pipeline option without its --), "
                f"got {item!r}"
            )
        arguments.append(f"--{key}={value}")
    return arguments


# === Pipeline steps (module level: Beam pickles them by reference) ===


def _videos_of(
    keyed: tuple[str, _ShardJob],
) -> Iterator[tuple[str, tuple[int, VideoEntry, int | None, int]]]:
    """(shard path, (position in the shard, entry, label index or None, number of classes))."""
    job = keyed[1]
    label_index = job.label_index
    for position, entry in enumerate(job.entries):
        yield job.path, (position, entry, label_index.get(entry.label), len(job.class_names))


class _EncodeVideo:
    """(shard path, video) -> (shard path, (position, record or None, manifest entry))."""

    def __init__(self, options: ConvertOptions):
        self.options = options

    def __call__(self, element: tuple[str, tuple]) -> tuple[str, tuple]:
        from repflow_tf.data.convert import _convert_entry

        path, (position, entry, label_index, num_classes) = element
        record, video = _convert_entry(entry, label_index, num_classes, self.options)
        return path, (position, record, video)


def _write_grouped_shard(element: tuple[str, Mapping[str, Iterable]]) -> dict[str, Any]:
    """Writes one shard from its plan and its videos' outcomes (in the plan's order)."""
    from repflow_tf.data.convert import _write_shard_records

    path, grouped = element
    (job,) = list(grouped["job"])
    outcomes = sorted(grouped["videos"], key=lambda outcome: outcome[0])
    if [position for position, _, _ in outcomes] != list(range(len(job.entries))):
        raise RuntimeError(f"{path}: got {len(outcomes)} of its {len(job.entries)} videos")
    # A unique temporary name: a retried or duplicated step may write the same shard at once.
    temporary = f"{job.path}.tmp-{uuid.uuid4().hex}"
    state = _write_shard_records(job, ((record, video) for _, record, video in outcomes), temporary)
    return {"file": state["file"], "num_records": state["num_records"]}


def _run_pipeline(todo: list[_ShardJob], runner: str, beam_arguments: Sequence[str]) -> None:
    beam = require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    if runner not in RUNNERS:
        raise ValueError(f"`runner` must be one of {RUNNERS}. Received: runner={runner!r}")
    # The SDK workers' INFO lines (one per bundle) drown the summary; a user's option overrides.
    quiet = "--default_sdk_harness_log_level=WARNING"
    options = PipelineOptions([f"--runner={runner}", quiet, *beam_arguments])
    # Elements carry `_ShardJob`s and `VideoEntry`s: workers import repflow_tf, so the pickles
    # refer to its classes instead of copying this session's main module.
    with beam.Pipeline(options=options) as pipeline:
        jobs = pipeline | "Shards" >> beam.Create([(job.path, job) for job in todo])
        videos = (
            jobs
            | "Videos" >> beam.FlatMap(_videos_of)
            | "Spread" >> beam.Reshuffle()
            | "Encode" >> beam.Map(_EncodeVideo(todo[0].options))
        )
        _ = (
            {"job": jobs, "videos": videos}
            | "ByShard" >> beam.CoGroupByKey()
            | "Write" >> beam.Map(_write_grouped_shard)
        )


def convert_dataset_beam(
    split_lists: Mapping[str, SplitList],
    output_dir: str,
    options: ConvertOptions | None = None,
    *,
    runner: str = "DirectRunner",
    beam_options: Sequence[str] = (),
    seed: int = 0,
    log: TextIO | None = sys.stderr,
) -> dict[str, Manifest]:
    """`repflow_tf.data.convert_dataset` on Apache Beam: every split's remaining shards in one
    pipeline on `runner`, then the manifests; returns them by split.

    Args:
      split_lists, output_dir, options, seed, log: as `convert_dataset` (`log` gets the summary
        line of each split; Beam logs its own progress).
      runner: one of `RUNNERS`.
      beam_options: further pipeline options as `KEY=VALUE` (`parse_beam_options`), e.g.
        `direct_num_workers=2`, `project=...`, `temp_location=gs://...`.

    Raises `DataError` when Apache Beam is not installed, `ValueError` for a bad option.
    """
    from repflow_tf.data.convert import ConvertOptions, _finish_split, _finished_state, _plan_split

    beam_arguments = parse_beam_options(beam_options)
    require_beam()
    options = options or ConvertOptions()
    start = time.monotonic()
    plans = {
        split: _plan_split(split_list, output_dir, split, options, seed)
        for split, split_list in split_lists.items()
    }
    todo = [job for _, jobs, states in plans.values() for job in jobs if states[job.file] is None]
    if todo:
        _run_pipeline(todo, runner, beam_arguments)
    manifests = {}
    for split, (directory, jobs, states) in plans.items():
        reused = sum(state is not None for state in states.values())
        written = {job.file: _finished_state(job) for job in jobs if states[job.file] is None}
        missing = [file for file, state in written.items() if state is None]
        if missing:
            raise RuntimeError(
                f"{directory}: the {runner} pipeline finished without writing {missing[0]} "
                f"({len(missing)} shards missing); re-run the same command to resume"
            )
        manifests[split] = _finish_split(
            split_lists[split],
            directory,
            jobs,
            {**states, **written},
            options,
            seed,
            (start, reused),
            log,
        )
    return manifests
