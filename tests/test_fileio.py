"""repflow_tf.fileio: atomic, durable writes, and the project's writers going through them."""

from __future__ import annotations

import json
import os

import pytest

from repflow_tf import fileio
from repflow_tf.config import load_config, save_config
from repflow_tf.workdir import write_class_names


@pytest.fixture
def fsyncs(monkeypatch) -> list[str]:
    """Records what each os.fsync flushed: 'file' or 'dir'."""
    calls = []
    real = os.fsync

    def recording(descriptor):
        calls.append("dir" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "file")
        return real(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


def test_write_replaces_the_file_and_flushes_file_and_directory(tmp_path, fsyncs):
    path = str(tmp_path / "a.json")
    fileio.write_json_atomic(path, {"x": 1})
    fileio.write_json_atomic(path, {"x": 2})
    assert json.loads(open(path).read()) == {"x": 2}
    assert fsyncs == ["file", "dir", "file", "dir"]
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "model.keras")
    fileio.write_atomic(path, "old")
    with pytest.raises(RuntimeError), fileio.atomic_output(path) as temporary:
        assert temporary.endswith(".keras") and temporary != path  # Keras needs the suffix
        with open(temporary, "w") as file:
            file.write("half")
        raise RuntimeError("killed while writing")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_replace_directory_swaps_in_the_new_one(tmp_path):
    target, new = tmp_path / "export", tmp_path / "export.tmp"
    for directory, content in ((target, "old"), (new, "new")):
        directory.mkdir()
        (directory / "saved_model.pb").write_text(content)
    fileio.replace_directory(str(new), str(target))
    assert (target / "saved_model.pb").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_the_config_and_class_name_writers_are_durable(tmp_path, fsyncs):
    config = load_config(None, [])
    save_config(config, str(tmp_path / "config.toml"))
    write_class_names(str(tmp_path / "class_names.json"), ["a", "b"])
    assert fsyncs == ["file", "dir"] * 2
    assert load_config(str(tmp_path / "config.toml")) == config
    assert json.loads((tmp_path / "class_names.json").read_text()) == ["a", "b"]


def test_a_failed_directory_build_leaves_the_old_one_and_no_temporary(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "saved_model.pb").write_text("old")
    with pytest.raises(RuntimeError), fileio.atomic_directory(str(target)) as temporary:
        os.makedirs(temporary)
        (tmp_path / os.path.basename(temporary) / "saved_model.pb").write_text("half")
        raise RuntimeError("killed while exporting")
    assert (target / "saved_model.pb").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["export"]
