"""Crash-safe writes (isara_lite.files)."""

from __future__ import annotations

import json

import pytest

from isara_lite.files import (append_jsonl, atomic_write_json, atomic_write_text, read_jsonl_tolerant,
                              write_jsonl, writing_dir, writing_file)


def test_atomic_write_text_creates_parents_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_atomic_write_text_replaces(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old content that is longer")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_text_failure_keeps_old_and_cleans_temp(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # not a str: the write fails midway
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_json(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": [1, 2], "ü": "ß"})
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"a": [1, 2], "ü": "ß"}
    assert text.endswith("}\n") and "ß" in text


def test_write_jsonl_then_read(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}, {"b": "two"}])
    assert path.read_text() == '{"a": 1}\n{"b": "two"}\n'
    assert read_jsonl_tolerant(path) == [{"a": 1}, {"b": "two"}]
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_append_jsonl_appends(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    append_jsonl(path, [{"i": 0}, {"i": 1}])
    append_jsonl(path, [{"i": 2}])
    append_jsonl(path, [])
    assert path.read_text().splitlines() == ['{"i": 0}', '{"i": 1}', '{"i": 2}']
    assert read_jsonl_tolerant(path) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_read_jsonl_tolerant_missing_file(tmp_path):
    assert read_jsonl_tolerant(tmp_path / "none.jsonl") == []
    assert not (tmp_path / "none.jsonl").exists()


def test_read_jsonl_tolerant_drops_and_truncates_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    good = '{"i": 0}\n{"i": 1}\n'
    path.write_text(good + '{"i": 2, "text": "half wri')
    assert read_jsonl_tolerant(path) == [{"i": 0}, {"i": 1}]
    assert path.read_text() == good
    # appending after recovery gives a clean file
    append_jsonl(path, [{"i": 2}])
    assert read_jsonl_tolerant(path) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_read_jsonl_tolerant_complete_json_without_newline_is_torn(tmp_path):
    """A record is only complete once its newline is on disk."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}')
    assert read_jsonl_tolerant(path) == [{"i": 0}]
    assert path.read_text() == '{"i": 0}\n'


def test_read_jsonl_tolerant_untouched_when_clean(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"i": 0}\n')
    before = path.stat().st_mtime_ns
    assert read_jsonl_tolerant(path) == [{"i": 0}]
    assert path.read_text() == '{"i": 0}\n'
    assert path.stat().st_mtime_ns == before


def test_read_jsonl_tolerant_unicode(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"t": "naïve — “quoted”\u2028line"}])
    assert read_jsonl_tolerant(path) == [{"t": "naïve — “quoted”\u2028line"}]


def test_writing_dir_replaces_the_whole_directory_and_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "adapter"
    with writing_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".adapter.")
        (tmp / "w.bin").write_bytes(b"1")
    assert (final / "w.bin").read_bytes() == b"1"
    with writing_dir(final) as tmp:
        (tmp / "v.bin").write_bytes(b"2")
    assert sorted(p.name for p in final.iterdir()) == ["v.bin"]
    with pytest.raises(RuntimeError), writing_dir(final) as tmp:
        (tmp / "x.bin").write_bytes(b"3")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in final.iterdir()) == ["v.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_writing_file_is_whole_or_untouched(tmp_path):
    final = tmp_path / "model.gguf"
    with writing_file(final) as tmp:
        tmp.write_bytes(b"first")
    with pytest.raises(RuntimeError), writing_file(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert final.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
