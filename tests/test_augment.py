import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slidr.config import AugmentConfig
from slidr.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    augment_pairs,
    choose_image_transform,
    dct_reduction,
    draw_cuboid_drop,
    full_image_transform,
    normalize_images,
    random_crop_box,
    rotate_flip_points,
    select_points,
    transform_image,
    transform_labels,
    transform_pixels,
)


def _coordinate_image(height, width):
    """An image whose pixel (r, c) holds (r, c, 0): its content says where it came from."""
    rows, cols = np.mgrid[:height, :width]
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def _random_scene(rng, num_points, image_hws):
    """Points with pairings: each point is seen by a random subset of cameras at a random pixel."""
    xyz = rng.uniform(-40, 40, (num_points, 3)).astype(np.float32)
    pairing_points, pairing_images = [], []
    for point in range(num_points):
        for camera, (height, width) in enumerate(image_hws):
            if rng.random() < 0.6:
                pairing_points.append(point)
                pairing_images.append((camera, rng.integers(height), rng.integers(width)))
    return (xyz, np.array(pairing_points, np.int64).reshape(-1),
            np.array(pairing_images, np.int64).reshape(-1, 3))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_points=st.integers(0, 150),
    image_hws=st.lists(st.tuples(st.integers(40, 120), st.integers(60, 250)), min_size=1, max_size=3),
    out_hw=st.tuples(st.integers(32, 90), st.integers(32, 140)),
    rounds=st.integers(1, 2),
    enabled=st.booleans(),
    drop_cuboid=st.booleans(),
    cuboid_max_fraction=st.floats(0.0, 0.6),
    flip_prob=st.floats(0, 1),
    hflip_prob=st.floats(0, 1),
    crop_min_area=st.floats(0.1, 1.0),
    min_pairs=st.integers(0, 100),
    min_pair_fraction=st.floats(0, 1),
    max_tries=st.integers(1, 4),
)
def test_every_pairing_stays_valid_and_shows_its_original_pixel(
        seed, num_points, image_hws, out_hw, rounds, enabled, drop_cuboid, cuboid_max_fraction, flip_prob,
        hflip_prob, crop_min_area, min_pairs, min_pair_fraction, max_tries):
    cfg = AugmentConfig(enabled=enabled, flip_prob=flip_prob, drop_cuboid=drop_cuboid,
                        cuboid_max_fraction=cuboid_max_fraction, image_hflip_prob=hflip_prob,
                        crop_min_area=crop_min_area, min_pairs=min_pairs, min_pair_fraction=min_pair_fraction,
                        max_tries=max_tries)
    rng = np.random.default_rng(seed)
    xyz0, pairing_points, pairing_images = _random_scene(rng, num_points, image_hws)
    original = {(int(p), int(k)): (int(r), int(c)) for p, (k, r, c) in zip(pairing_points, pairing_images)}
    images = [_coordinate_image(h, w) for h, w in image_hws]
    labels = [np.arange(h * w, dtype=np.int64).reshape(h, w) for h, w in image_hws]  # label = r * w + c
    widths = [w for _, w in image_hws]
    xyz, ids, hws = xyz0, np.arange(num_points), list(image_hws)
    # tolerance (original pixels) of the content check, and original pixels per current pixel, per camera
    tolerance = np.zeros((len(hws), 2))
    label_tolerance = np.zeros((len(hws), 2))
    pixel_size = np.ones((len(hws), 2))
    for _ in range(rounds):
        result = augment_pairs(xyz, pairing_points, pairing_images, hws, out_hw, cfg, rng)
        assert len(result.image_transforms) == len(hws)
        ids = ids[result.keep_points]
        xyz, pairing_points, pairing_images = result.xyz, result.pairing_points, result.pairing_images
        for k, transform in enumerate(result.image_transforms):
            images[k] = transform_image(images[k], transform, out_hw)
            labels[k] = transform_labels(labels[k], transform, out_hw)
            source_px = np.array([transform.height / out_hw[0], transform.width / out_hw[1]])
            tolerance[k] += (0.5 * source_px + np.maximum(source_px, 1)) * pixel_size[k] + 1.0
            label_tolerance[k] += (0.5 * source_px + 0.5) * pixel_size[k] + 1e-9
            pixel_size[k] *= source_px
        hws = [tuple(out_hw)] * len(hws)
        if not enabled:
            assert len(pairing_points) == len(original)  # validation mode keeps every pair

    assert len(xyz) == len(ids)
    if len(pairing_points):
        assert pairing_points.min() >= 0 and pairing_points.max() < len(xyz)
        assert pairing_images[:, 1].min() >= 0 and pairing_images[:, 1].max() < out_hw[0]
        assert pairing_images[:, 2].min() >= 0 and pairing_images[:, 2].max() < out_hw[1]
    for point, (k, row, col) in zip(pairing_points, pairing_images):
        point_id = int(ids[point])
        # the same physical point: rotation about z and flips keep |xy| and z
        assert xyz[point, 2] == pytest.approx(xyz0[point_id, 2], abs=1e-4)
        assert np.hypot(*xyz[point, :2]) == pytest.approx(np.hypot(*xyz0[point_id, :2]), abs=1e-3)
        r0, c0 = original[(point_id, int(k))]
        shown = images[k][row, col]
        assert abs(int(shown[0]) - r0) <= tolerance[k, 0] and abs(int(shown[1]) - c0) <= tolerance[k, 1]
        label_r, label_c = divmod(int(labels[k][row, col]), widths[k])
        assert abs(label_r - r0) <= label_tolerance[k, 0] and abs(label_c - c0) <= label_tolerance[k, 1]


def test_unit_scale_crop_and_flip_are_exact():
    image = _coordinate_image(50, 90)
    labels = np.arange(50 * 90).reshape(50, 90)
    pixels = np.array([[10, 20], [10, 59], [39, 20], [9, 20], [10, 60], [25, 33]])
    for flip in (False, True):
        transform = ImageTransform(top=10, left=20, height=30, width=40, flip=flip)
        inside, new_rc = transform_pixels(pixels, transform, (30, 40))
        assert inside.tolist() == [True, True, True, False, False, True]
        expected_cols = pixels[inside, 1] - 20
        assert np.array_equal(new_rc[:, 0], pixels[inside, 0] - 10)
        assert np.array_equal(new_rc[:, 1], 39 - expected_cols if flip else expected_cols)
        out = transform_image(image, transform, (30, 40))
        out_labels = transform_labels(labels, transform, (30, 40))
        for (r, c), (nr, nc) in zip(pixels[inside], new_rc):
            assert tuple(out[nr, nc, :2]) == (r, c)
            assert out_labels[nr, nc] == labels[r, c]


def test_downscale_by_two_maps_pixel_pairs_together():
    transform = full_image_transform((40, 80))
    pixels = np.array([[0, 0], [1, 1], [2, 3], [39, 79], [38, 78]])
    _, new_rc = transform_pixels(pixels, transform, (20, 40))
    assert new_rc.tolist() == [[0, 0], [0, 0], [1, 1], [19, 39], [19, 39]]
    rows, cols = np.mgrid[:40, :80]
    labels = (rows // 2) * 40 + cols // 2  # constant on each 2x2 block
    assert np.array_equal(transform_labels(labels, transform, (20, 40)), np.arange(800).reshape(20, 40))


def test_crop_boxes_cover_enough_area_with_the_right_aspect():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, height, width = random_crop_box((900, 1600), rng, 0.3, (14 / 9, 17 / 9))
        assert 0 <= top and top + height <= 900 and 0 <= left and left + width <= 1600
        assert height * width >= 0.3 * 900 * 1600 * 0.995
        assert 14 / 9 - 0.01 <= width / height <= 17 / 9 + 0.01


def test_crop_on_image_without_pairs_falls_back_and_terminates():
    cfg = AugmentConfig(max_tries=5)
    rng = np.random.default_rng(0)
    transform = choose_image_transform((900, 1600), np.zeros((0, 2), np.int64), rng, cfg)
    assert transform.fell_back and (transform.height, transform.width) == (900, 1600)
    # a few pairs all in one corner: crops rarely keep 75% of them; whatever happens, it ends
    corner = np.tile([[2, 3]], (10, 1))
    results = [choose_image_transform((900, 1600), corner, rng, cfg) for _ in range(50)]
    assert any(t.fell_back for t in results)
    for t in results:
        assert t.fell_back or (t.top <= 2 < t.top + t.height and t.left <= 3 < t.left + t.width)


def test_sample_level_counters_report_fallbacks():
    rng = np.random.default_rng(1)
    hws = [(90, 160), (90, 160)]
    xyz, pairing_points, pairing_images = _random_scene(rng, 100, hws[:1])  # camera 1 has no pairs
    cfg = AugmentConfig(min_pairs=1024, max_tries=3)
    result = augment_pairs(xyz, pairing_points, pairing_images, hws, (32, 64), cfg, rng)
    assert result.cuboid_fell_back  # < 1024 pairs in all: every cuboid is refused
    assert result.keep_points.all() and len(result.xyz) == 100
    assert result.image_transforms[1].fell_back and result.crops_fell_back >= 1


def test_cuboid_drop_removes_one_small_box():
    rng = np.random.default_rng(3)
    xyz = rng.uniform(-50, 50, (20000, 3)).astype(np.float32)
    xyz[:, 2] *= 0.1
    pairing_points = np.arange(0, 20000, 2)
    removed_any = False
    for _ in range(20):
        keep, fell_back = draw_cuboid_drop(xyz, pairing_points, rng, 0.1, min_pairs=1024, max_tries=10)
        assert not fell_back
        dropped = xyz[~keep]
        if len(dropped):
            removed_any = True
            extent = xyz.max(0) - xyz.min(0)
            assert np.all(dropped.max(0) - dropped.min(0) <= 0.1 * extent + 1e-4)
            low, high = dropped.min(0), dropped.max(0)
            in_hull = np.all((xyz >= low) & (xyz <= high), axis=1)
            assert not np.any(in_hull & keep & np.all((xyz > low) & (xyz < high), axis=1))
    assert removed_any


def test_cuboid_drop_without_pairs_terminates_unchanged():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(500, 3))
    keep, fell_back = draw_cuboid_drop(xyz, np.zeros(0, np.int64), rng, 0.1, 1024, 7)
    assert fell_back and keep.all()
    keep, fell_back = draw_cuboid_drop(np.zeros((0, 3)), np.zeros(0, np.int64), rng)
    assert fell_back and keep.shape == (0,)


def test_select_points_reindexes_pairings():
    keep = np.array([True, False, True, True, False])
    pairing_points = np.array([0, 1, 2, 4, 3, 3])
    pairing_images = np.arange(18).reshape(6, 3)
    new_points, new_images = select_points(keep, pairing_points, pairing_images)
    assert new_points.tolist() == [0, 1, 2, 2]
    assert np.array_equal(new_images, pairing_images[[0, 2, 4, 5]])


def test_rotation_and_flips():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(100, 3)).astype(np.float32)
    flipped = rotate_flip_points(xyz, rng, rotate=False, flip_prob=1.0)
    assert np.allclose(flipped, xyz * [-1, -1, 1])
    assert np.array_equal(rotate_flip_points(xyz, rng, rotate=False, flip_prob=0.0), xyz)
    rotated = rotate_flip_points(xyz, rng, rotate=True, flip_prob=0.0)
    assert np.allclose(np.linalg.norm(rotated[:, :2], axis=1), np.linalg.norm(xyz[:, :2], axis=1), atol=1e-5)
    assert np.allclose(rotated[:, :2] @ rotated[:, :2].T, xyz[:, :2] @ xyz[:, :2].T, atol=1e-4)  # no reflection
    assert not np.allclose(rotated, xyz)
    flips = [rotate_flip_points(np.ones((1, 3)), rng, rotate=False, flip_prob=0.5)[0, 0] < 0 for _ in range(400)]
    assert 150 < sum(flips) < 250


def test_reduced_decode_gives_the_same_crop():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (45, 80, 3)).astype(np.uint8)
    image = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)  # 180 x 320, constant 4x4 blocks
    transform = ImageTransform(top=20, left=40, height=120, width=220, flip=True)
    full = transform_image(image, transform, (30, 55)).astype(int)
    reduced = transform_image(image[::2, ::2], transform, (30, 55), reduction=2).astype(int)
    assert np.abs(full - reduced).mean() < 3
    assert dct_reduction(transform, (30, 55)) == 4  # 120 / 4 >= 30 and 220 / 4 >= 55; 1/8 would be too small


@pytest.mark.parametrize("box_hw, out_hw, expected", [
    ((900, 1600), (224, 416), 2),  # the whole nuScenes image: 1/4 would give 400 < 416 columns
    ((448, 832), (224, 416), 2),  # exactly twice the output
    ((447, 1600), (224, 416), 1),  # one row short of 1/2
    ((900, 831), (224, 416), 1),  # one column short of 1/2
    ((900, 1600), (112, 200), 8),
    ((900, 1600), (112, 201), 4),
    ((900, 1600), (224, 400), 4),
    ((100, 200), (224, 416), 1),  # enlarged: never reduced
])
def test_dct_reduction_is_the_largest_that_keeps_the_output_resolution(box_hw, out_hw, expected):
    assert dct_reduction(ImageTransform(0, 0, *box_hw), out_hw) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(1, 600), st.integers(1, 600))
def test_dct_reduction_never_goes_below_the_output_resolution(height, width, out_h, out_w):
    reduction = dct_reduction(ImageTransform(0, 0, height, width), (out_h, out_w))
    assert reduction in (1, 2, 4, 8)
    if reduction > 1:
        assert height / reduction >= out_h and width / reduction >= out_w
    if reduction < 8:  # and the next one would
        assert height / (2 * reduction) < out_h or width / (2 * reduction) < out_w


def test_imagenet_normalisation():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    out = normalize_images(images)
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32
    expected = (images[1, 2, 3] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(out[1, :, 2, 3], expected, atol=1e-5)
    assert math.isclose(float(normalize_images(np.full((1, 1, 1, 3), 255, np.uint8))[0, 0, 0, 0]),
                        (1 - 0.485) / 0.229, rel_tol=1e-5)
