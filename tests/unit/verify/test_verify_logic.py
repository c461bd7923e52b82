"""Pure parts of `pulse verify`: the canonical text, the fold, the row comparison, the Redis band, ranges."""

from __future__ import annotations

import hashlib

from pulse.verify import checksum as C
from pulse.verify.bigquery import compare_rows, id_ranges
from pulse.verify.redis import compare
from pulse.verify.report import Result, Finding


def test_render_marks_null_apart_from_empty_and_lengths_prevent_separator_collisions():
    base = {n: None for n in C.COMPARED}
    assert C.render(base) == "|".join(["~"] * len(C.COMPARED))
    assert C.render({**base, "device": ""}) != C.render(base)
    a = C.render({**base, "device": "a|1:b", "content_slug": None})
    b = C.render({**base, "device": "a", "content_slug": "b"})
    assert a != b and "5:a|1:b" in a


def test_halves_are_the_first_16_hex_digits_of_md5_of_utf8():
    text = "1:1|~|é"
    d = hashlib.md5(text.encode("utf-8")).hexdigest()
    assert C.halves(text) == (int(d[:8], 16), int(d[8:16], 16))


def test_fold_is_order_independent_and_wraps_at_2_64():
    rows = [C.halves(str(i)) for i in range(1000)]
    s1, s2 = sum(h for h, _ in rows), sum(h for _, h in rows)
    assert C.fold(s1, s2) == sum((h << 32) + l for h, l in rows) % 2**64
    assert C.fold(2**32, 0) == 0 and C.fold(0, 2**64 + 5) == 5


def test_compare_rows_names_each_kind_and_the_differing_columns():
    row = tuple(str(i) for i in range(len(C.COMPARED)))
    other = row[:6] + ("tampered",) + row[7:]
    src = {1: [row], 2: [row], 3: [row], 5: [row]}
    dst = {2: [row], 3: [other], 4: [row], 5: [row, row]}
    got = [(f.kind, f.key, f.columns) for f in compare_rows(src, dst)]
    assert got == [("missing", "1", ()), ("different", "3", ("device",)), ("extra", "4", ()),
                   ("duplicate", "5", ())]


def test_id_ranges_merge_only_adjacent_ids():
    assert id_ranges([5, 1, 2, 3, 9, 10, 7]) == [(1, 3), (5, 5), (7, 7), (9, 10)]
    assert id_ranges([]) == []


def test_redis_value_between_inner_and_outer_window_is_right():
    inner = {"top": {"a": 10.0, "b": 5.0}}
    outer = {"top": {"a": 12.0, "b": 5.0, "c": 1.0}}
    assert compare({"top": {"a": 11.0, "b": 5.0}}, inner, outer) == []     # edge bucket: either is right
    assert compare({"top": {"a": 10.0, "b": 5.0, "c": 1.0}}, inner, outer) == []
    got = compare({"top": {"a": 13.0, "x": 2.0}}, inner, outer)
    assert [(f.kind, f.key) for f in got] == [("different", "top/a"), ("missing", "top/b"), ("extra", "top/x")]


def test_result_summary():
    r = Result("bigquery", findings=[Finding("missing", str(i)) for i in range(7)] + [Finding("different", "9", ("device",))])
    assert not r.ok and r.by_kind() == {"missing": 7, "different": 1}
    assert r.first(3) == {"missing": ["0", "1", "2"], "different": ["9(device)"]}
    assert r.as_dict()["findings_by_kind"] == {"missing": 7, "different": 1}
