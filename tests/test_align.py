"""The canonical template, similarity transforms, warping and paste-back."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core import align


def test_two_point_fit_is_exact_and_invertible() -> None:
    src = np.array([[100.0, 200.0], [160.0, 230.0]])
    t = align.eyes_to_crop(src, 64)
    assert np.allclose(align.apply(t, src), align.template_points(64))
    back = align.apply(align.invert(t), align.template_points(64))
    assert np.allclose(back, src)


def test_celeba_aligned_eyes_land_on_the_template() -> None:
    t = align.eyes_to_crop(align.CELEBA_ALIGNED_EYES, 128)
    assert np.allclose(align.apply(t, align.CELEBA_ALIGNED_EYES), align.TEMPLATE_EYES * 128 - 0.5)


def test_warp_puts_marked_eyes_at_the_template_even_when_shrinking() -> None:
    img = np.zeros((1200, 1000, 3), np.uint8)
    eyes = np.array([[400.0, 500.0], [620.0, 540.0]])
    for x, y in eyes:
        img[int(y) - 12:int(y) + 13, int(x) - 12:int(x) + 13] = 255
    crop = align.warp_to_crop(img, align.eyes_to_crop(eyes, 64), 64)
    for tx, ty in align.template_points(64):
        assert crop[round(ty), round(tx)].min() > 150
    assert crop[5, 5].max() == 0


def test_paste_back_changes_only_where_the_mask_is_nonzero() -> None:
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    t = align.eyes_to_crop(np.array([[170.0, 150.0], [230.0, 150.0]]), 32)
    gen = np.full((32, 32, 3), 255.0, np.float32)
    mask = np.zeros((32, 32), np.float32)
    mask[10:20, 10:20] = 1.0
    out = align.paste_back(photo, t, gen, mask)
    changed = np.any(out != photo, axis=2)
    assert changed.sum() > 0
    # the change stays inside the photo region the masked square maps to (plus interpolation)
    corners = align.apply(align.invert(t), np.array([[9, 9], [21, 9], [9, 21], [21, 21]], float))
    ys, xs = np.nonzero(changed)
    assert xs.min() >= corners[:, 0].min() - 1
    assert xs.max() <= corners[:, 0].max() + 1
    assert ys.min() >= corners[:, 1].min() - 1
    assert ys.max() <= corners[:, 1].max() + 1
    # a zero mask changes nothing at all
    assert np.array_equal(align.paste_back(photo, t, gen, np.zeros_like(mask)), photo)


def test_paste_back_adding_a_change_moves_the_photo_by_it() -> None:
    photo = np.full((200, 200, 3), 100, np.uint8)
    t = align.eyes_to_crop(np.array([[80.0, 90.0], [120.0, 90.0]]), 32)
    out = align.paste_back(photo, t, np.full((32, 32, 3), 50, np.float32), np.ones((32, 32), np.float32), add=True)
    centre = align.apply(align.invert(t), np.array([[16.0, 16.0]]))[0].round().astype(int)
    assert abs(int(out[centre[1], centre[0], 0]) - 150) <= 1


def test_edge_feather_is_zero_at_the_border() -> None:
    f = align.edge_feather(64)
    assert f[0, 0] < 0.01
    assert f[32, 32] == pytest.approx(1.0)
