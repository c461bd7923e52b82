"""The content catalogue: types, NULL lengths, slugs, publish times, reproducibility."""

from __future__ import annotations

import uuid
from collections import Counter

from pulse.generator.content import CONTENT_TYPES, slugify, zero_length_count

from ._build import ANCHOR, catalogue


def test_all_three_types_with_a_realistic_mix():
    items = catalogue(count=200)
    types = Counter(c.content_type for c in items)
    assert set(types) == set(CONTENT_TYPES)
    assert all(types[t] >= 30 for t in CONTENT_TYPES), types


def test_small_catalogue_still_has_every_type():
    assert {c.content_type for c in catalogue(count=3)} == set(CONTENT_TYPES)


def test_newsletters_have_null_length_media_a_positive_one():
    items = catalogue()
    for c in items:
        if c.content_type == "newsletter":
            assert c.length_seconds is None
        else:
            assert isinstance(c.length_seconds, int) and c.length_seconds > 0


def test_no_zero_length_content_without_anomalies():
    assert not [c for c in catalogue() if c.length_seconds == 0]


def test_zero_length_items_are_media_and_few():
    items = catalogue(zero_length=zero_length_count(200))
    zero = [c for c in items if c.length_seconds == 0]
    assert 1 <= len(zero) <= 10
    assert {c.content_type for c in zero} <= {"podcast", "video"}


def test_slugs_unique_and_url_safe_ids_are_uuids():
    items = catalogue(count=500, zero_length=5)
    slugs = [c.slug for c in items]
    assert len(set(slugs)) == len(slugs)
    assert all(s == s.lower() and " " not in s for s in slugs)
    assert len({c.id for c in items}) == len(items)
    for c in items:
        assert uuid.UUID(c.id).version == 4
        assert c.title


def test_publish_times_are_in_the_past_of_the_anchor():
    assert all(c.publish_ts < ANCHOR for c in catalogue())


def test_same_seed_same_catalogue_other_seed_other_catalogue():
    assert catalogue(seed=5) == catalogue(seed=5)
    assert catalogue(seed=5) != catalogue(seed=6)


def test_anomalies_do_not_change_the_normal_items():
    plain = catalogue(seed=9)
    with_zero = catalogue(seed=9, zero_length=4)
    assert with_zero[: len(plain)] == plain


def test_slugify():
    assert slugify("Hello, World: Ep. 4!") == "hello-world-ep-4"
    assert slugify("!!!") == "item"
