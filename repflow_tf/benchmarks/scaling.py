"""Multi-worker scaling: 1, 2, 4 local worker processes on loopback (bin/benchmark_scaling.py).

Each configuration starts N local processes with a `TF_CONFIG` of N workers on 127.0.0.1 (as
`repflow-train --strategy=multi_worker` runs on a cluster) and trains the model of an experiment
config (default: the demo's) at a fixed global batch with the training loop's own step
(`repflow_tf.training._distributed_steps`), every worker reading its own shards of a synthetic
dataset. Per configuration, on worker 0 (the median over `steps` timed steps after `warmup_steps`):

- `step_ms`, `steps_per_s`, `clips_per_s`: the real step, input pipeline included;
- `fixed_step_ms`: the same step on one batch held in memory (compute + all-reduce, no input);
- `allreduce_ms`: an all-reduce of tensors shaped like the gradients, alone (what
  `MultiWorkerMirroredStrategy` does with the gradients in every step);
- `compute_ms` = fixed_step_ms - allreduce_ms; `input_wait_ms` = step_ms - fixed_step_ms (0
  when the pipeline keeps up); `input_ms`: one batch of this worker's pipeline read alone.

Then the paper projection: the gradient bytes all-reduced per step (4 bytes per trainable
parameter, float32 gradients) for the benchmarked model and the `projection_config` model, and
the time a ring all-reduce over `gpus` GPUs takes for them at `bandwidth_gb_s` (each GPU sends
and receives 2 (N - 1) / N of the bytes); its share of a step of `gpu_step_ms` when not
overlapped with the backward pass. Results go to `<output_dir>/scaling.md` and `scaling.json`.

Local processes share the machine's cores: on a CPU the numbers show the overheads (input,
all-reduce over loopback) more than a speed-up. With `quick`, tiny settings that only check the
benchmark end to end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from repflow_tf.benchmarks.parameters import trainable_parameters

_RESULT_PREFIX = "SCALING_WORKER_RESULT "


@dataclasses.dataclass(frozen=True)
class ScalingSettings:
    """What `run` measures; see bin/benchmark_scaling.py's flags."""

    workers: tuple[int, ...] = (1, 2, 4)
    config: str = "configs/demo.toml"
    global_batch: int = 16
    steps: int = 20
    warmup_steps: int = 3
    num_videos: int = 256
    shards_per_worker: int = 2
    data_dir: str = "/tmp/repflow_scaling/data"
    output_dir: str = "/tmp/repflow_scaling"
    projection_config: str = "configs/kinetics_resnet50_2d_fcf.toml"
    gpus: int = 8
    bandwidth_gb_s: float = 25.0
    gpu_step_ms: float = 250.0
    timeout_s: float = 1800.0

    def __post_init__(self):
        checks = {
            "workers": bool(self.workers) and all(n >= 1 for n in self.workers),
            "global_batch": all(self.global_batch % n == 0 for n in self.workers),
            "steps": self.steps >= 1,
            "warmup_steps": self.warmup_steps >= 1,
            "shards_per_worker": self.shards_per_worker >= 1,
            "num_videos": self.num_videos >= self.shards_per_worker * max(self.workers or (1,)),
            "gpus": self.gpus >= 1,
            "bandwidth_gb_s": self.bandwidth_gb_s > 0,
            "gpu_step_ms": self.gpu_step_ms > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"Invalid `{name}` for the scaling benchmark (global_batch must divide by "
                    f"every worker count). Received: {name}={getattr(self, name)}"
                )


QUICK = dict(
    workers=(1, 2),
    global_batch=4,
    steps=2,
    warmup_steps=1,
    num_videos=16,
    data_dir="/tmp/repflow_scaling_quick/data",
    output_dir="/tmp/repflow_scaling_quick",
)


# === Paper projection ===


def ring_allreduce_ms(num_bytes: float, gpus: int, bandwidth_gb_s: float) -> float:
    """Milliseconds a bandwidth-bound ring all-reduce of `num_bytes` over `gpus` takes: each GPU
    sends (and receives) 2 (gpus - 1) / gpus of the bytes at `bandwidth_gb_s` (GB/s, 1e9).

    >>> round(ring_allreduce_ms(100e6, 8, 25.0), 2)
    7.0
    """
    return 2 * (gpus - 1) / gpus * num_bytes / (bandwidth_gb_s * 1e9) * 1e3


def projection(parameters: dict[str, int], settings: ScalingSettings) -> list[dict[str, Any]]:
    """Per model: parameters, bytes all-reduced per step, ring all-reduce time over
    `settings.gpus` GPUs, and its share of a `gpu_step_ms` step when not overlapped."""
    rows = []
    for name, count in parameters.items():
        num_bytes = 4 * count
        allreduce = ring_allreduce_ms(num_bytes, settings.gpus, settings.bandwidth_gb_s)
        rows.append(
            {
                "model": name,
                "parameters": count,
                "bytes_per_step": num_bytes,
                "allreduce_ms": allreduce,
                "efficiency_not_overlapped": settings.gpu_step_ms
                / (settings.gpu_step_ms + allreduce),
            }
        )
    return rows


# === One worker ===


def _median_ms(fn: Callable[[], Any], steps: int, warmup_steps: int) -> float:
    for _ in range(warmup_steps):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure_worker(settings: ScalingSettings, source: str) -> dict[str, Any]:
    """The measurements of this process, one worker of the cluster in `TF_CONFIG` (see the
    module doc); call before anything else runs TensorFlow ops."""
    import tensorflow as tf

    from repflow_tf import training
    from repflow_tf.config import load_config

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    overrides = [
        f"data.batch_size={settings.global_batch}",
        'runtime.strategy="multi_worker"',
        f"data.shuffle_buffer={settings.global_batch}",
    ]
    config = load_config(settings.config, overrides)
    workers = training.num_workers(strategy)
    with strategy.scope():
        model, optimizer, _ = training._build_model_and_optimizer(config, strategy, 1000)
    train_step, _ = training._distributed_steps(model, optimizer, strategy, config)
    batch = settings.global_batch

    def batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
        size = context.get_per_replica_batch_size(batch)
        clips = training.clip_dataset(
            source, config, training=True, seed=0, batch_size=size, input_context=context
        )
        return clips.repeat()

    def block(values: Any) -> None:
        for value in tf.nest.flatten(values):
            value.numpy()

    real = iter(strategy.distribute_datasets_from_function(batches))
    step_ms = _median_ms(lambda: block(train_step(real)), settings.steps, settings.warmup_steps)

    def fixed(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return batches(context).take(1).cache().repeat()

    held = iter(strategy.distribute_datasets_from_function(fixed))
    fixed_ms = _median_ms(lambda: block(train_step(held)), settings.steps, settings.warmup_steps)

    @tf.function
    def allreduce():
        def replica():
            zeros = [tf.zeros(v.shape, tf.float32) for v in model.trainable_variables]
            summed = tf.distribute.get_replica_context().all_reduce("SUM", zeros)
            return tf.add_n([tf.reduce_sum(s) for s in summed])

        return strategy.reduce("SUM", strategy.run(replica), axis=None)

    allreduce_ms = _median_ms(lambda: block(allreduce()), settings.steps, settings.warmup_steps)

    own = batches(
        tf.distribute.InputContext(
            num_input_pipelines=workers,
            input_pipeline_id=strategy.cluster_resolver.task_id,
            num_replicas_in_sync=strategy.num_replicas_in_sync,
        )
    )
    pipeline = iter(own)
    input_ms = _median_ms(lambda: next(pipeline), settings.steps, settings.warmup_steps)
    return {
        "workers": workers,
        "per_worker_batch": batch // workers,
        "step_ms": step_ms,
        "steps_per_s": 1e3 / step_ms,
        "clips_per_s": batch * 1e3 / step_ms,
        "fixed_step_ms": fixed_ms,
        "allreduce_ms": allreduce_ms,
        "compute_ms": max(fixed_ms - allreduce_ms, 0.0),
        "input_wait_ms": max(step_ms - fixed_ms, 0.0),
        "input_ms": input_ms,
        "parameters": trainable_parameters(model),
        "model": f"{config.model.kind} ResNet-{config.model.depth} ({settings.config})",
    }


def _main_worker(payload: str) -> None:
    from repflow_tf import startup

    startup.import_tensorflow()
    request = json.loads(payload)
    settings = ScalingSettings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in request["settings"].items()}
    )
    result = measure_worker(settings, request["source"])
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


# === The run ===


def free_ports(count: int) -> list[int]:
    """`count` TCP ports on 127.0.0.1 that were free a moment ago (for a local TF_CONFIG)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_configuration(settings: ScalingSettings, source: str, workers: int) -> dict[str, Any]:
    """Starts `workers` local processes on loopback and returns worker 0's measurements."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    payload = json.dumps({"settings": dataclasses.asdict(settings), "source": source})
    processes = []
    for index in range(workers):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "repflow_tf.benchmarks.scaling", payload],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=settings.timeout_s) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for line in outputs[0][0].splitlines():
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    tail = " ".join(" ".join(err for _, err in outputs).split())[-400:]
    raise RuntimeError(f"{workers} workers: no result from worker 0 ({tail})")


def _parameters(config_path: str) -> int:
    from repflow_tf import models
    from repflow_tf.config import load_config

    return trainable_parameters(models.build(load_config(config_path).model))


def run(settings: ScalingSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every configuration of `settings.workers`, then the projection; writes scaling.md and
    scaling.json to `settings.output_dir` and returns the results."""
    from repflow_tf.data import make_synthetic_dataset
    from repflow_tf.fileio import write_atomic, write_json_atomic

    most = max(settings.workers)
    per_shard = max(1, settings.num_videos // (settings.shards_per_worker * most))
    source = make_synthetic_dataset(
        settings.data_dir,
        num_train=settings.num_videos,
        num_val=0,
        num_classes=8,
        num_frames=24,
        size=64,
        videos_per_shard=per_shard,
        log=None,
    )["train"]
    rows = []
    for workers in settings.workers:
        log(f"{workers} worker(s) ...")
        rows.append(run_configuration(settings, source, workers))
        log(f"  {format_row(rows[-1])}")
    parameters = {rows[0]["model"]: rows[0]["parameters"]}
    if settings.projection_config:
        parameters[settings.projection_config] = _parameters(settings.projection_config)
    results = {
        "settings": dataclasses.asdict(settings),
        "machine": {"cpu_count": os.cpu_count()},
        "rows": rows,
        "projection": projection(parameters, settings),
    }
    os.makedirs(settings.output_dir, exist_ok=True)
    write_json_atomic(os.path.join(settings.output_dir, "scaling.json"), results)
    write_atomic(os.path.join(settings.output_dir, "scaling.md"), format_markdown(results))
    return results


def format_row(row: dict[str, Any]) -> str:
    """One configuration in a line."""
    return (
        f"{row['workers']} workers: {row['steps_per_s']:.2f} steps/s, "
        f"{row['clips_per_s']:.1f} clips/s (step {row['step_ms']:.0f} ms = compute "
        f"{row['compute_ms']:.0f} + all-reduce {row['allreduce_ms']:.0f} + input wait "
        f"{row['input_wait_ms']:.0f})"
    )


def format_markdown(results: dict[str, Any]) -> str:
    """The measured table and the 8-GPU projection as Markdown."""
    settings = results["settings"]
    rows = results["rows"]
    base = rows[0]["clips_per_s"] / rows[0]["workers"]
    lines = [
        f"Scaling on one machine ({results['machine']['cpu_count']} CPU cores), "
        f"{rows[0]['model']}, global batch {settings['global_batch']}, median of "
        f"{settings['steps']} steps",
        "",
        "| workers | batch/worker | steps/s | clips/s | scaling eff. | step ms | compute ms "
        "| all-reduce ms | input wait ms | input alone ms/batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        efficiency = row["clips_per_s"] / (base * row["workers"])
        lines.append(
            f"| {row['workers']} | {row['per_worker_batch']} | {row['steps_per_s']:.2f} "
            f"| {row['clips_per_s']:.1f} | {efficiency:.2f} | {row['step_ms']:.0f} "
            f"| {row['compute_ms']:.0f} | {row['allreduce_ms']:.1f} | {row['input_wait_ms']:.0f} "
            f"| {row['input_ms']:.0f} |"
        )
    lines += [
        "",
        f"Projection for {settings['gpus']} GPUs: ring all-reduce of the float32 gradients at "
        f"{settings['bandwidth_gb_s']:g} GB/s per GPU, share of a {settings['gpu_step_ms']:g} ms "
        "step if not overlapped with the backward pass",
        "",
        "| model | parameters | MB all-reduced per step | all-reduce ms | efficiency |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in results["projection"]:
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e6:.2f}M "
            f"| {row['bytes_per_step'] / 1e6:.1f} "
            f"| {row['allreduce_ms']:.1f} | {row['efficiency_not_overlapped']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    _main_worker(sys.argv[1])
