"""List-file parsers: HMDB51, UCF101, Kinetics, generic CSV, class lists (samples written here)."""

import json
import os

import pytest

from repflow_tf.data.splits import (
    ListFormatError,
    VideoEntry,
    parse_csv,
    parse_hmdb51,
    parse_kinetics,
    parse_ucf101,
    read_class_list,
    read_split_lists,
)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.fixture
def hmdb51(tmp_path):
    # The official files end lines with a space and use CRLF-free text; fold 2 must be ignored.
    _write(tmp_path / "brush_hair_test_split1.txt", "b1.avi 1 \nb2.avi 2 \nb3.avi 0 \n")
    _write(tmp_path / "cartwheel_test_split1.txt", "c1.avi 2 \n\nc2.avi 1 \nc3.avi 1 \n")
    _write(tmp_path / "cartwheel_test_split2.txt", "c1.avi 1 \n")
    return tmp_path


def test_hmdb51_train_test_and_unused(hmdb51):
    train = parse_hmdb51(str(hmdb51), "/v", "train", fold=1)
    test = parse_hmdb51(str(hmdb51), "/v", "test", fold=1)
    assert train.class_names == test.class_names == ("brush_hair", "cartwheel")
    assert train.entries == (
        VideoEntry("/v/brush_hair/b1.avi", "brush_hair"),
        VideoEntry("/v/cartwheel/c2.avi", "cartwheel"),
        VideoEntry("/v/cartwheel/c3.avi", "cartwheel"),
    )
    assert [e.path for e in test.entries] == ["/v/brush_hair/b2.avi", "/v/cartwheel/c1.avi"]
    # b3.avi is marked 0 (unused in fold 1): in neither split.
    assert all("b3" not in e.path for e in train.entries + test.entries)
    assert parse_hmdb51(str(hmdb51), "/v", "train", fold=2).class_names == ("cartwheel",)


def test_hmdb51_errors_name_file_and_line(hmdb51):
    bad = _write(hmdb51 / "dive_test_split1.txt", "d1.avi 1\nd2.avi 3\n")
    with pytest.raises(ListFormatError, match=f"{bad}:2: expected 'name.avi 1\\|2\\|0'"):
        parse_hmdb51(str(hmdb51), "/v", "train")
    with pytest.raises(ListFormatError, match="no HMDB51 split files"):
        parse_hmdb51(str(hmdb51), "/v", "train", fold=3)
    with pytest.raises(ValueError, match="Received: split='val'"):
        parse_hmdb51(str(hmdb51), "/v", "val")


@pytest.fixture
def ucf101(tmp_path):
    _write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n10 YoYo\n")
    _write(
        tmp_path / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nYoYo/v_YoYo_g09_c02.avi 10\r\n",
    )
    _write(tmp_path / "testlist01.txt", "Archery/v_Archery_g01_c01.avi\nYoYo/v_YoYo_g01_c03.avi\n")
    return tmp_path


def test_ucf101_train_and_test(ucf101):
    train = parse_ucf101(str(ucf101), "/ucf", "train")
    test = parse_ucf101(str(ucf101), "/ucf", "test")
    # Ordered by classInd index (10 after 2), not alphabetically or by line.
    assert train.class_names == test.class_names == ("ApplyEyeMakeup", "Archery", "YoYo")
    assert train.entries == (
        VideoEntry("/ucf/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup"),
        VideoEntry("/ucf/YoYo/v_YoYo_g09_c02.avi", "YoYo"),
    )
    assert [e.label for e in test.entries] == ["Archery", "YoYo"]


def test_ucf101_errors(ucf101):
    bad = _write(ucf101 / "trainlist02.txt", "Archery/v_Archery_g01_c01.avi 1\n")
    with pytest.raises(ListFormatError, match=f"{bad}:1: index 1 is 'ApplyEyeMakeup'.*'Archery'"):
        parse_ucf101(str(ucf101), "/ucf", "train", fold=2)
    with pytest.raises(ListFormatError, match="testlist03.txt: list file not found"):
        parse_ucf101(str(ucf101), "/ucf", "test", fold=3)


def test_kinetics_csv_quoted_labels_and_file_lookup(tmp_path):
    csv_path = _write(
        tmp_path / "train.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        '"passing American football (in game)",abc,5,15,train,0\n'
        '"tying bow tie",-x_y,120,130,train,1\n'
        '"cooking, chicken",zz,0,10,train,0\n',
    )
    videos = tmp_path / "videos"
    # Downloaders differ: label folder with spaces, with underscores, or a flat folder.
    _write(videos / "passing American football (in game)" / "abc_000005_000015.mp4", "")
    _write(videos / "tying_bow_tie" / "-x_y_000120_000130.mp4", "")
    split = parse_kinetics(csv_path, str(videos))
    assert split.class_names == (
        "cooking, chicken",
        "passing American football (in game)",
        "tying bow tie",
    )
    assert [e.label for e in split.entries] == [
        "passing American football (in game)",
        "tying bow tie",
        "cooking, chicken",
    ]
    assert split.entries[0].path == str(
        videos / "passing American football (in game)" / "abc_000005_000015.mp4"
    )
    assert split.entries[1].path == str(videos / "tying_bow_tie" / "-x_y_000120_000130.mp4")
    # Missing everywhere: the label folder is reported, and the converter will reject it.
    assert split.entries[2].path == str(videos / "cooking, chicken" / "zz_000000_000010.mp4")


def test_kinetics_errors(tmp_path):
    no_header = _write(tmp_path / "a.csv", "abc,5,15,train\n")
    with pytest.raises(ListFormatError, match=f"{no_header}:1: header must name the columns"):
        parse_kinetics(no_header, "/k")
    bad_time = _write(tmp_path / "b.csv", "label,youtube_id,time_start,time_end,split\nx,y,a,1,t\n")
    with pytest.raises(ListFormatError, match=f"{bad_time}:2: time_start/time_end must be"):
        parse_kinetics(bad_time, "/k")
    short = _write(tmp_path / "c.csv", "label,youtube_id,time_start,time_end,split\nx,y,1\n")
    with pytest.raises(ListFormatError, match=f"{short}:2: expected 5 fields"):
        parse_kinetics(short, "/k")


def test_generic_csv(tmp_path):
    with_header = _write(
        tmp_path / "lists" / "train.csv", "path,label\nclips/a.mp4,up\n/abs/b.mp4,down\n"
    )
    split = parse_csv(with_header)
    # Relative paths resolve against the CSV's folder by default; absolute paths stay.
    assert split.entries == (
        VideoEntry(str(tmp_path / "lists" / "clips" / "a.mp4"), "up"),
        VideoEntry("/abs/b.mp4", "down"),
    )
    assert split.class_names == ("down", "up")
    no_header = _write(tmp_path / "val.csv", "a.mp4,up\n")
    assert parse_csv(no_header, "/data", class_names=["up", "down"]) == (
        (VideoEntry("/data/a.mp4", "up"),),
        ("up", "down"),
    )
    bad = _write(tmp_path / "bad.csv", "a.mp4,up\nb.mp4\n")
    with pytest.raises(ListFormatError, match=f"{bad}:2: expected 2 fields"):
        parse_csv(bad)
    empty_label = _write(tmp_path / "empty.csv", "a.mp4, \n")
    with pytest.raises(ListFormatError, match=f"{empty_label}:1: empty value"):
        parse_csv(empty_label)
    too_many = _write(tmp_path / "three.csv", "a.mp4,up\nb.mp4,down,extra\n")
    with pytest.raises(ListFormatError, match=f"{too_many}:2: expected 2 fields.*got 3"):
        parse_csv(too_many)


@pytest.mark.parametrize("kind", ["csv", "hmdb51", "class_list"])
def test_non_utf8_list_files_name_the_file_and_line(tmp_path, kind):
    text = "a.mp4,up\nb.mp4,gr\u00fcn\n".encode("latin-1")
    name = "wave_test_split1.txt" if kind == "hmdb51" else "latin1.txt"
    path = tmp_path / name
    path.write_bytes(text)
    with pytest.raises(ListFormatError, match=f"{path}:2: not UTF-8 text \\(byte 0xfc\\)"):
        if kind == "csv":
            parse_csv(str(path))
        elif kind == "class_list":
            read_class_list(str(path))
        else:
            parse_hmdb51(str(tmp_path), "/videos", "train")


def test_read_split_lists_shares_one_class_list(tmp_path):
    train = _write(tmp_path / "train.csv", "a.mp4,up\nb.mp4,left\n")
    val = _write(tmp_path / "val.csv", "c.mp4,right\n")
    lists = read_split_lists("csv", lists={"train": train, "val": val})
    assert lists["train"].class_names == lists["val"].class_names == ("left", "right", "up")
    assert len(lists["train"].entries) == 2 and len(lists["val"].entries) == 1

    classes = _write(tmp_path / "classes.txt", "up\nright\nleft\ndown\n")
    lists = read_split_lists("csv", lists={"val": val}, class_list=classes)
    assert lists["val"].class_names == ("up", "right", "left", "down")

    manifest = tmp_path / "converted" / "train" / "manifest.json"
    _write(manifest, json.dumps({"class_names": ["b", "a"]}))
    assert read_class_list(str(manifest.parent)) == ("b", "a")

    with pytest.raises(ValueError, match="Received: fmt='avi'"):
        read_split_lists("avi", lists={"val": val})
    with pytest.raises(ValueError, match="needs `split_dir`"):
        read_split_lists("ucf101", video_dir="/v")
    with pytest.raises(ListFormatError, match="class names must be unique"):
        read_class_list(_write(tmp_path / "dup.txt", "a\nb\na\n"))
