"""The conversion on Apache Beam (DirectRunner, 2 worker processes) writes what the local
multi-process converter writes: the same shards, byte for byte, the same manifest; a rerun after
lost shards rewrites them identically. `repflow-convert --runner` errors are one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from repflow_tf.data import (
    ConvertOptions,
    SplitList,
    VideoEntry,
    convert_split,
    encode_video,
    parse_sequence_example,
    render_clip,
    write_video,
)

pytest.importorskip("apache_beam")

from repflow_tf.data.beam_convert import convert_dataset_beam  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("left", "right", "up")
OPTIONS = ConvertOptions(short_side=24, min_frames=8, videos_per_shard=3, jpeg_quality=90)
TWO_PROCESSES = ["direct_num_workers=2", "direct_running_mode=multi_processing"]


@pytest.fixture(scope="module")
def split_list(tmp_path_factory) -> SplitList:
    """6 good videos of 3 classes, and a missing, a garbage, a too short and a wrongly labelled
    one: 10 videos, 4 shards of up to 3."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    entries = []
    for index in range(6):
        path = str(root / f"good_{index}.mp4")
        write_video(path, render_clip(rng, CLASSES[index % 3], num_frames=9 + index, size=32))
        entries.append(VideoEntry(path, CLASSES[index % 3]))
    garbage = root / "garbage.mp4"
    garbage.write_bytes(rng.bytes(3000))
    short = str(root / "short.mp4")
    write_video(short, render_clip(rng, "up", num_frames=4, size=32))
    entries += [
        VideoEntry(str(root / "missing.mp4"), "left"),
        VideoEntry(str(garbage), "right"),
        VideoEntry(short, "up"),
        VideoEntry(entries[0].path, "down"),
    ]
    return SplitList(tuple(entries), CLASSES)


def _parsed(path: str) -> list[dict]:
    return [
        {key: np.asarray(value).tolist() for key, value in parse_sequence_example(record).items()}
        for record in tf.data.TFRecordDataset(path)
    ]


def _shard_bytes(directory: str) -> dict[str, bytes]:
    names = sorted(name for name in os.listdir(directory) if name.endswith(".tfrecord"))
    return {name: open(os.path.join(directory, name), "rb").read() for name in names}


def test_beam_writes_the_local_converters_shards_and_manifest(split_list, tmp_path):
    local = convert_split(split_list, str(tmp_path / "local"), "train", OPTIONS, num_workers=2)
    beam_root = str(tmp_path / "beam")
    manifests = convert_dataset_beam(
        {"train": split_list}, beam_root, OPTIONS, beam_options=TWO_PROCESSES, log=None
    )
    assert manifests["train"] == local
    assert (local.num_accepted, local.num_rejected, len(local.shards)) == (6, 4, 4)
    assert {r.path.rsplit("/", 1)[1]: r.reason.split(" (")[0] for r in local.rejected} == {
        "missing.mp4": "missing file",
        "garbage.mp4": "unreadable container",
        "short.mp4": "too short: 4 frames < min_frames=8",
        "good_0.mp4": "label 'down' not in the class list",
    }
    local_dir, beam_dir = str(tmp_path / "local" / "train"), os.path.join(beam_root, "train")
    for name in ("manifest.json", *(f".convert/{s.file}.json" for s in local.shards)):
        with open(os.path.join(local_dir, name)) as a, open(os.path.join(beam_dir, name)) as b:
            assert json.load(a) == json.load(b), name
    for shard in local.shards:
        records = _parsed(os.path.join(beam_dir, shard.file))
        assert records == _parsed(os.path.join(local_dir, shard.file))
        assert len(records) == shard.num_records
    first = _shard_bytes(beam_dir)
    assert first == _shard_bytes(local_dir)
    assert sorted(os.listdir(beam_dir)) == sorted([".convert", *first, "manifest.json"])

    # A failed run: two shards lost, one half-written temporary left behind. The rerun writes
    # the lost shards again, identically, keeps the third and removes the temporary.
    lost = [shard.file for shard in local.shards[:2]]
    kept = os.path.join(beam_dir, local.shards[2].file)
    kept_inode = os.stat(kept).st_ino
    for name in lost:
        os.remove(os.path.join(beam_dir, name))
    with open(os.path.join(beam_dir, lost[0] + ".tmp-0123abcd"), "wb") as file:
        file.write(b"half")
    again = convert_dataset_beam(
        {"train": split_list}, beam_root, OPTIONS, beam_options=TWO_PROCESSES, log=None
    )
    assert again == manifests
    assert _shard_bytes(beam_dir) == first
    assert os.stat(kept).st_ino == kept_inode
    assert sorted(os.listdir(beam_dir)) == sorted([".convert", *first, "manifest.json"])


def test_videos_on_another_filesystem_are_read_through_a_local_copy(split_list):
    """Beam workers on a cluster read gs:// videos; TensorFlow's ram:// filesystem stands in."""
    entry = split_list.entries[1]
    remote = "ram://videos/" + os.path.basename(entry.path)
    tf.io.gfile.makedirs("ram://videos")
    tf.io.gfile.copy(entry.path, remote, overwrite=True)
    assert encode_video(VideoEntry(remote, entry.label), 1, OPTIONS) == encode_video(
        entry, 1, OPTIONS
    )


def test_runner_errors_are_one_line(tmp_path):
    """Run before TensorFlow starts: no Beam (an apache_beam that fails to import stands in
    for a missing one), a malformed --beam_option, --beam_option without --runner."""
    fake = tmp_path / "site" / "apache_beam"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named apache_beam')\n")
    common = ["--format=csv", f"--lists=train={tmp_path / 'train.csv'}", f"--output_dir={tmp_path}"]
    cases = [
        [*common, "--runner=DataflowRunner"],
        [*common, "--runner=DirectRunner", "--beam_option=direct_num_workers"],
        [*common, "--beam_option=direct_num_workers=2"],
        ["--format=synthetic", f"--output_dir={tmp_path}", "--runner=DirectRunner"],
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{REPO}")
    subprocess.run(
        [
            sys.executable,
            "tests/cli_driver.py",
            "convert",
            *(str(tmp_path / n) for n in ("cases.json", "out.json")),
        ],
        cwd=REPO,
        env=env,
        check=True,
        timeout=120,
    )
    results = json.loads((tmp_path / "out.json").read_text())
    prefix = "repflow-convert: error: "
    expected = [
        "--runner needs Apache Beam, which is not installed (No module named apache_beam): "
        'pip install -e ".[beam]"',
        "--beam_option expects KEY=VALUE (a Beam pipeline option without its --), "
        "got 'direct_num_workers'",
        "--beam_option is for a Beam pipeline: pass --runner too",
        "--runner converts listed videos; --format=synthetic is converted locally",
    ]
    for result, message in zip(results, expected, strict=True):
        assert (result["code"], result["stdout"]) == (2, ""), result
        assert result["stderr"] == prefix + message + "\n", result
