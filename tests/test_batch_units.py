"""Batch plumbing that needs no model: discovery, ids, metadata, shards, safe file names."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from precise_baa.batch import discover, in_shard, parse_shard, read_meta
from precise_baa.errors import InputError
from precise_baa.report import read_assessments, safe_name, safe_path
from precise_baa.schemas import Assessment


def img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((80, 80), 100, np.uint8))
    return path


def test_discover_recursive_ids_and_duplicates(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "ward 3" / "b.jpg")
    img(tmp_path / "dup.png")
    img(tmp_path / "dup.tif")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    img(tmp_path / "out" / "overlays" / "a.png")  # an output folder inside the input is skipped
    items = discover(tmp_path, exclude=tmp_path / "out")
    ids = [it.id for it in items]
    assert ids == ["a", "dup", "dup", "ward 3/b"]
    dups = [it for it in items if it.id == "dup"]
    assert all(it.error and "duplicate id 'dup'" in it.error for it in dups)
    assert items[0].error is None


def test_discover_file_list_and_single_file(tmp_path):
    a = img(tmp_path / "x" / "a.png")
    lst = tmp_path / "inputs.txt"
    lst.write_text("# radiographs\nx/a.png\n\n" + str(a) + "\n")
    items = discover(lst)
    assert [it.path for it in items] == [tmp_path / "x" / "a.png", a]
    assert discover(a)[0].id == "a"
    with pytest.raises(InputError, match="no such file"):
        discover(tmp_path / "missing")


def test_read_meta_validates_every_row(tmp_path):
    p = tmp_path / "meta.csv"
    p.write_text("id,sex,chronological_age\np1,F,9.5\np2,male,\np3,,4\n")
    meta = read_meta(p)
    assert meta["p1"].sex == "F" and meta["p1"].chronological_age == 9.5
    assert meta["p2"].sex == "M" and meta["p2"].chronological_age is None
    assert meta["p3"].sex is None
    for body, msg in [
        ("id,sex\np1,F\np1,M\n", r"meta.csv:3: duplicate id 'p1'"),
        ("id,sex\np1,X\n", r"meta.csv:2: bad sex 'X'"),
        ("id,sex,chronological_age\np1,F,nine\n", r"meta.csv:2: chronological_age 'nine'"),
        ("id,sex,chronological_age\np1,F,45\n", r"outside 0..30"),
        ("name,gender\np1,F\n", r"needs columns id,sex"),
    ]:
        p.write_text(body)
        with pytest.raises(InputError, match=msg):
            read_meta(p)


def test_shards_partition_the_inputs():
    ids = [f"ward{w}/p{i:04d}" for w in range(3) for i in range(200)]
    for n in (1, 3, 8):
        parts = [{i for i in ids if in_shard(i, k, n)} for k in range(1, n + 1)]
        assert sum(len(p) for p in parts) == len(ids)  # nothing scored twice ...
        assert set().union(*parts) == set(ids)  # ... nothing lost
        assert all(len(p) > 0 for p in parts)
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(InputError, match="bad --shard"):
            parse_shard(bad)


def test_safe_names_never_escape(tmp_path):
    for id in ("../../etc/passwd", "/abs/path", "ward 3/p<1>", "..", "a" * 500, "CON"):
        name = safe_name(id)
        assert "/" not in name and not name.startswith(".") and len(name) <= 120
        p = safe_path(tmp_path, "overlays", f"{name}.png")
        assert tmp_path.resolve() in p.parents
    assert safe_name("p001") == "p001"
    assert safe_name("a b") != safe_name("a_b")  # sanitising never merges two ids
    with pytest.raises(ValueError, match="outside"):
        safe_path(tmp_path, "..", "x.png")


def test_truncated_jsonl_line_is_ignored(tmp_path):
    p = tmp_path / "assessments.jsonl"
    good = Assessment(id="p1", status="ok", sex="F", bone_age_years=9.0)
    p.write_text(good.model_dump_json() + "\n" + good.model_copy(update={"id": "p2"}).model_dump_json()[:40])
    done = read_assessments(p)
    assert list(done) == ["p1"] and done["p1"].bone_age_years == 9.0
