"""Parsers for the official split lists of HMDB51, UCF101, Kinetics, and a generic `path,label` CSV.

Each parser returns a `SplitList`: the ordered class names (index = label) and the listed videos
with their label text. They do not open videos: a listed video that is missing or broken, or whose
label is not a class, is rejected (with its reason) by the converter, so nothing is lost silently.
A malformed list line, by contrast, raises `ListFormatError` naming the file and line.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from repflow_tf.data.schema import MANIFEST_NAME, DataError

FORMATS = ("hmdb51", "ucf101", "kinetics", "csv")


class ListFormatError(DataError):
    """A split/list file that does not follow its format; the message names file and line."""


class VideoEntry(NamedTuple):
    """One listed video: its path and its label text."""

    path: str
    label: str


class SplitList(NamedTuple):
    """The videos of one split and the class names (index in `class_names` = label index)."""

    entries: tuple[VideoEntry, ...]
    class_names: tuple[str, ...]


def _read_text(path: str, what: str = "list file") -> str:
    """A UTF-8 text file's contents; a clear error naming the file (and line) otherwise."""
    if not os.path.isfile(path):
        raise ListFormatError(f"{path}: {what} not found")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ListFormatError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); save the {what} "
            "as UTF-8"
        ) from None


def _lines(path: str) -> Iterable[tuple[int, str]]:
    """(line number, stripped line) for every non-blank line of a text file."""
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"`split` must be one of {tuple(allowed)}. Received: split={split!r}")


def parse_hmdb51(split_dir: str, video_dir: str, split: str, fold: int = 1) -> SplitList:
    """HMDB51: `<action>_test_split<fold>.txt` files with lines `name.avi 1|2|0`.

    1 marks a training video, 2 a test video, 0 one unused in this fold. Videos are expected at
    `<video_dir>/<action>/<name>`; class names are the sorted actions.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "wave_test_split1.txt"), "w") as f:
    ...     _ = f.write("a.avi 1\\nb.avi 2\\nc.avi 0\\n")
    >>> parse_hmdb51(d, "/videos", "test").entries
    (VideoEntry(path='/videos/wave/b.avi', label='wave'),)
    """
    _check_split(split, ("train", "test"))
    wanted = "1" if split == "train" else "2"
    suffix = f"_test_split{fold}.txt"
    files = sorted(glob.glob(os.path.join(glob.escape(split_dir), f"*{suffix}")))
    if not files:
        raise ListFormatError(f"{split_dir}: no HMDB51 split files '*{suffix}' (fold={fold})")
    entries, class_names = [], []
    for path in files:
        action = os.path.basename(path)[: -len(suffix)]
        class_names.append(action)
        for number, line in _lines(path):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ListFormatError(f"{path}:{number}: expected 'name.avi 1|2|0', got {line!r}")
            if fields[1] == wanted:
                entries.append(VideoEntry(os.path.join(video_dir, action, fields[0]), action))
    return SplitList(tuple(entries), tuple(class_names))


def parse_ucf101(split_dir: str, video_dir: str, split: str, fold: int = 1) -> SplitList:
    """UCF101: `classInd.txt` (`1 ApplyEyeMakeup`), `trainlist0N.txt` (`Class/v_x.avi 1`) and
    `testlist0N.txt` (`Class/v_x.avi`; the label comes from the folder).

    Class names are ordered by their classInd index; a trainlist index that contradicts the
    folder's class is a `ListFormatError`.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "classInd.txt"), "w").write("1 Run\\n2 Swim\\n")
    >>> _ = open(os.path.join(d, "testlist01.txt"), "w").write("Swim/v_Swim_g01_c01.avi\\n")
    >>> parse_ucf101(d, "/ucf", "test")
    SplitList(entries=(VideoEntry(path='/ucf/Swim/v_Swim_g01_c01.avi', label='Swim'),), \
class_names=('Run', 'Swim'))
    """
    _check_split(split, ("train", "test"))
    index_path = os.path.join(split_dir, "classInd.txt")
    by_index = {}
    for number, line in _lines(index_path):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise ListFormatError(
                f"{index_path}:{number}: expected 'index ClassName', got {line!r}"
            )
        by_index[int(fields[0])] = fields[1]
    class_names = tuple(by_index[i] for i in sorted(by_index))
    list_path = os.path.join(split_dir, f"{split}list{fold:02d}.txt")
    entries = []
    for number, line in _lines(list_path):
        fields = line.split()
        label = fields[0].replace("\\", "/").split("/")[0]
        if len(fields) > 2 or "/" not in fields[0].replace("\\", "/"):
            raise ListFormatError(
                f"{list_path}:{number}: expected 'Class/v_x.avi [index]', got {line!r}"
            )
        if len(fields) == 2:
            if not fields[1].isdigit():
                raise ListFormatError(
                    f"{list_path}:{number}: class index {fields[1]!r} is not a number"
                )
            listed = by_index.get(int(fields[1]))
            if listed is not None and listed != label:
                raise ListFormatError(
                    f"{list_path}:{number}: index {fields[1]} is '{listed}' in classInd.txt "
                    f"but the video is in folder '{label}'"
                )
        entries.append(VideoEntry(os.path.join(video_dir, fields[0]), label))
    return SplitList(tuple(entries), class_names)


def kinetics_filename(youtube_id: str, time_start: int, time_end: int) -> str:
    """The file name Kinetics downloaders give a clip.

    >>> kinetics_filename("abc", 5, 15)
    'abc_000005_000015.mp4'
    """
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"


def parse_kinetics(
    csv_path: str, video_dir: str, class_names: Sequence[str] | None = None
) -> SplitList:
    """Kinetics CSV `label,youtube_id,time_start,time_end,split[,is_cc]` (labels may be quoted).

    A clip is looked up as `<video_dir>/<label>/<file>`, `<video_dir>/<label with _>/<file>` and
    `<video_dir>/<file>` (downloaders differ); the first existing path wins. Class names default to
    the sorted labels of the file.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "val.csv"), "w").write(
    ...     'label,youtube_id,time_start,time_end,split\\n"tying bow tie",x1,5,15,val\\n')
    >>> parse_kinetics(os.path.join(d, "val.csv"), "/k400").entries[0]
    VideoEntry(path='/k400/tying bow tie/x1_000005_000015.mp4', label='tying bow tie')
    """
    rows = _csv_rows(csv_path, ("label", "youtube_id", "time_start", "time_end"))
    entries = []
    for number, row in rows:
        try:
            name = kinetics_filename(
                row["youtube_id"], int(row["time_start"]), int(row["time_end"])
            )
        except ValueError:
            raise ListFormatError(
                f"{csv_path}:{number}: time_start/time_end must be integers, got "
                f"{row['time_start']!r}, {row['time_end']!r}"
            ) from None
        label = row["label"]
        candidates = [
            os.path.join(video_dir, label, name),
            os.path.join(video_dir, label.replace(" ", "_"), name),
            os.path.join(video_dir, name),
        ]
        path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
        entries.append(VideoEntry(path, label))
    return SplitList(tuple(entries), _class_names(entries, class_names))


def parse_csv(
    csv_path: str, video_dir: str | None = None, class_names: Sequence[str] | None = None
) -> SplitList:
    """Generic CSV `path,label` (a `path,label` header row is optional).

    Relative paths are resolved against `video_dir` (default: the CSV's folder). Class names
    default to the sorted labels of the file.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "train.csv"), "w").write("path,label\\nclips/1.mp4,left\\n")
    >>> parse_csv(os.path.join(d, "train.csv"), "/data")
    SplitList(entries=(VideoEntry(path='/data/clips/1.mp4', label='left'),), class_names=('left',))
    """
    if video_dir is None:
        video_dir = os.path.dirname(os.path.abspath(csv_path))
    entries = [
        VideoEntry(os.path.join(video_dir, row["path"]), row["label"])
        for _, row in _csv_rows(csv_path, ("path", "label"), header_optional=True)
    ]
    return SplitList(tuple(entries), _class_names(entries, class_names))


def _csv_rows(
    path: str, columns: Sequence[str], header_optional: bool = False
) -> Iterable[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) per data row; checks the header names `columns`."""
    text = io.StringIO(_read_text(path), newline="")
    rows = [(reader_line, row) for reader_line, row in _numbered(csv.reader(text)) if row]
    if not rows:
        return []
    header = [name.strip() for name in rows[0][1]]
    if all(name in header for name in columns):
        rows = rows[1:]
    elif header_optional:
        header = list(columns)
    else:
        raise ListFormatError(
            f"{path}:1: header must name the columns {list(columns)}, got {header}"
        )
    result = []
    for number, row in rows:
        if len(row) != len(header):
            raise ListFormatError(
                f"{path}:{number}: expected {len(header)} fields ({','.join(header)}), "
                f"got {len(row)}: {row}"
            )
        values = dict(zip(header, (value.strip() for value in row), strict=False))
        if any(not values[name] for name in columns):
            raise ListFormatError(f"{path}:{number}: empty value in {row}")
        result.append((number, values))
    return result


def _numbered(reader: Iterable[list[str]]) -> Iterable[tuple[int, list[str]]]:
    # csv.reader's line_num counts physical lines, right even with quoted newlines.
    for row in reader:
        yield reader.line_num, row


def _class_names(
    entries: Sequence[VideoEntry], class_names: Sequence[str] | None
) -> tuple[str, ...]:
    if class_names is not None:
        return tuple(class_names)
    return tuple(sorted({entry.label for entry in entries}))


def read_class_list(path: str) -> tuple[str, ...]:
    """Class names from a text file (one per line) or from a converted split's manifest.json.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "classes.txt")
    >>> _ = open(path, "w").write("left\\nright\\n")
    >>> read_class_list(path)
    ('left', 'right')
    """
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    if path.endswith(".json"):
        if not os.path.isfile(path):
            raise ListFormatError(f"{path}: class list not found")
        with open(path, encoding="utf-8") as f:
            try:
                names = json.load(f).get("class_names")
            except (json.JSONDecodeError, AttributeError):
                names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ListFormatError(
                f"{path}: expected a manifest with a 'class_names' list of strings"
            )
        return tuple(names)
    names = tuple(line for _, line in _lines(path))
    if len(set(names)) != len(names):
        raise ListFormatError(f"{path}: class names must be unique")
    return names


def read_split_lists(
    fmt: str,
    *,
    video_dir: str | None = None,
    split_dir: str | None = None,
    fold: int = 1,
    splits: Sequence[str] = ("train", "test"),
    lists: Mapping[str, str] | None = None,
    class_list: str | None = None,
) -> dict[str, SplitList]:
    """The `SplitList` of every requested split, for one of `FORMATS` (what bin/convert.py runs).

    hmdb51/ucf101 read `split_dir` for `fold` and `splits`; kinetics/csv read `lists`
    ({split: csv path}). Every split shares one class list: `class_list` if given (see
    `read_class_list`), else the format's own (HMDB51/UCF101) or the sorted union of the labels of
    all lists (Kinetics/CSV), so label indices agree between train and test.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "a.csv"), "w").write("x.mp4,up\\n")
    >>> _ = open(os.path.join(d, "b.csv"), "w").write("y.mp4,down\\n")
    >>> lists = read_split_lists("csv", lists={"train": f"{d}/a.csv", "val": f"{d}/b.csv"})
    >>> lists["train"].class_names == lists["val"].class_names == ("down", "up")
    True
    """
    if fmt not in FORMATS:
        raise ValueError(f"`fmt` must be one of {FORMATS}. Received: fmt={fmt!r}")
    if fmt in ("hmdb51", "ucf101"):
        if not split_dir or not video_dir:
            raise ValueError(f"{fmt} needs `split_dir` and `video_dir`.")
        if fold not in (1, 2, 3):
            raise ValueError(f"`fold` must be 1, 2 or 3. Received: fold={fold}")
        parser = parse_hmdb51 if fmt == "hmdb51" else parse_ucf101
        result = {split: parser(split_dir, video_dir, split, fold) for split in splits}
    else:
        if not lists:
            raise ValueError(f"{fmt} needs `lists`, e.g. {{'train': 'train.csv'}}.")
        if fmt == "kinetics" and not video_dir:
            raise ValueError("kinetics needs `video_dir`.")
        parser = parse_kinetics if fmt == "kinetics" else parse_csv
        result = {split: parser(path, video_dir) for split, path in lists.items()}
        union = sorted({name for split_list in result.values() for name in split_list.class_names})
        result = {split: s._replace(class_names=tuple(union)) for split, s in result.items()}
    if class_list is not None:
        names = read_class_list(class_list)
        result = {split: s._replace(class_names=names) for split, s in result.items()}
    return result
