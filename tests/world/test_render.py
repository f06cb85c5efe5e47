from __future__ import annotations

import numpy as np
import pytest

from fairdiff.world.render import SIZE, all_portraits, palette_distance, render_batch, render_portrait
from fairdiff.world.schema import Portrait

DOCTOR = Portrait(gender="woman", skin="dark", age="old", attire="covered", occupation="doctor")


def test_render_is_deterministic_and_batch_independent():
    portraits = all_portraits()[:50]
    seeds = list(range(100, 150))
    batch = render_batch(portraits, seeds)
    assert batch.shape == (50, SIZE, SIZE, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch, render_batch(portraits, seeds))
    for i in (0, 17, 49):
        assert np.array_equal(batch[i], render_portrait(portraits[i], seeds[i]))


def test_seed_changes_only_nuisance():
    a, b = render_portrait(DOCTOR, 1), render_portrait(DOCTOR, 2)
    assert not np.array_equal(a, b)
    # same attributes: mostly the same colours, so the mean image differs by little
    assert np.abs(a.astype(float).mean((0, 1)) - b.astype(float).mean((0, 1))).max() < 15


@pytest.mark.parametrize(
    ("field", "other"),
    [
        ("gender", "man"),
        ("skin", "light"),
        ("age", "young"),
        ("attire", "revealing"),
        ("occupation", "nurse"),
    ],
)
def test_every_attribute_changes_the_image(field, other):
    changed = Portrait(**{**DOCTOR.as_dict(), field: other})
    diff = np.abs(render_portrait(DOCTOR, 5).astype(int) - render_portrait(changed, 5).astype(int)).sum(-1)
    assert (diff > 40).sum() >= 6, f"{field} changes too few pixels"


def test_skin_colour_follows_monk_bins():
    # face centre pixel gets darker along light -> medium -> brown -> dark
    lum = []
    for skin in ("light", "medium", "brown", "dark"):
        img = render_portrait(Portrait(**{**DOCTOR.as_dict(), "skin": skin}), 3)
        lum.append(img[14, 16].astype(float).mean())
    assert lum == sorted(lum, reverse=True)


def test_bad_input():
    with pytest.raises(ValueError, match="one seed per portrait"):
        render_batch([DOCTOR], [1, 2])
    with pytest.raises(ValueError, match="`skin` must be one of"):
        Portrait(gender="woman", skin="green", age="old", attire="covered", occupation="doctor")
    assert render_batch([], []).shape == (0, SIZE, SIZE, 3)


def test_palette_distance_is_zero_on_renders_and_large_between_skin_bins():
    portraits = all_portraits()  # every attribute combination, attire and occupation included
    seeds = list(range(len(portraits)))
    assert palette_distance(render_batch(portraits, seeds)).max() < 1.5
    # a face halfway between two neighbouring bins is a colour the world never draws (medium and light are
    # too close for the 12-level threshold: their midpoint is ~6 from a lit medium swatch)
    for lo, hi in (("dark", "brown"), ("brown", "medium")):
        a = render_batch([Portrait("woman", lo, "old", "covered", "nurse")] * 8, range(8)).astype(float)
        b = render_batch([Portrait("woman", hi, "old", "covered", "nurse")] * 8, range(8)).astype(float)
        assert palette_distance(np.rint((a + b) / 2).astype(np.uint8)).min() > 12, (lo, hi)
