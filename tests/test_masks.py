"""Superpixels imported from masks computed elsewhere (slidr.data.masks): formats, overlap and fill rules, errors,
and the round trip through ``slidr superpixels --method masks`` and the pretraining dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image
from skimage.draw import ellipse, polygon

from slidr.config import AugmentConfig, DataConfig, SuperpixelConfig
from slidr.data.augment import full_image_transform, transform_labels
from slidr.data.masks import (
    decode_rle,
    find_mask_file,
    import_index_masks,
    mask_labels,
    paint_masks,
    read_mask_file,
    rle_counts_from_string,
)
from slidr.data.pairing import pairs_in_labelled_superpixels
from slidr.data.superpixels import (
    SuperpixelJob,
    method_key,
    read_labels,
    read_segment_count,
    superpixel_dir,
    superpixel_path,
)
from slidr.errors import DataError, SlidrError


def _coco_rle(mask):
    """pycocotools' compressed RLE of a boolean mask, as SAM writes it in JSON."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _random_masks(rng, height, width, count):
    """Random ellipses and polygons (boolean masks), of various sizes, overlapping."""
    masks = []
    for i in range(count):
        mask = np.zeros((height, width), bool)
        if i % 2:
            rows, cols = ellipse(rng.integers(0, height), rng.integers(0, width), rng.integers(1, height // 2 + 2),
                                 rng.integers(1, width // 2 + 2), shape=(height, width))
        else:
            rows, cols = polygon(rng.integers(0, height, 5), rng.integers(0, width, 5), shape=(height, width))
        mask[rows, cols] = True
        if mask.any():
            masks.append(mask)
    return masks


def _paint_reference(masks):
    """Smaller on top, ids 1.. by decreasing area (stable), then the hidden ones removed and ids renumbered."""
    labels = _paint_reference_unrenumbered(masks)
    visible = sorted(set(labels.flatten().tolist()) - {0})
    renumber = {old: new for new, old in enumerate(visible, start=1)}
    renumber[0] = 0
    return np.vectorize(renumber.get)(labels)


# ----------------------------------------------------------------------------------------------------------------
# RLE, painting, formats
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 5), (180, 320), (900, 1600)])
def test_rle_decoding_matches_pycocotools(shape):
    rng = np.random.default_rng(shape[0])
    masks = _random_masks(rng, *shape, 6)
    noise = rng.random(shape) < 0.3  # many short runs (pure-Python decoding: kept to the smaller images)
    full = np.ones(shape, bool)  # one run of 0 zeros, then everything
    for mask in [*masks, full, ~full, *([noise] if noise.size < 10**5 else [])]:
        rle = _coco_rle(mask)
        expected = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        assert np.array_equal(decode_rle(rle), expected)
        assert np.array_equal(decode_rle(rle), mask)
        counts = rle_counts_from_string(rle["counts"])
        assert sum(counts) == mask.size
        assert np.array_equal(decode_rle({"size": rle["size"], "counts": counts}), mask)  # uncompressed RLE


def test_rle_string_errors():
    with pytest.raises(ValueError, match="truncated"):
        rle_counts_from_string("9" + chr(48 + 0x20))  # a continuation group with nothing after it
    with pytest.raises(ValueError, match="not part of an RLE"):
        rle_counts_from_string("9 2")


def test_smaller_masks_lie_on_top_and_ids_follow_decreasing_area():
    big = np.zeros((6, 8), bool)
    big[:, :6] = True
    small = np.zeros((6, 8), bool)
    small[2:4, 4:8] = True
    medium = np.zeros((6, 8), bool)
    medium[:3, :3] = True
    labels = paint_masks([small, big, medium])
    assert labels[0, 0] == 2 and labels[5, 0] == 1 and labels[2, 5] == 3 and labels[2, 7] == 3
    assert labels[5, 7] == 0
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 30, 40, 12)
    hidden = masks[0] & masks[1]
    if hidden.any():
        masks.append(hidden)  # lies on top of its parents only where they overlap: stays visible
    assert np.array_equal(paint_masks(masks), _paint_reference_unrenumbered(masks))


def _paint_reference_unrenumbered(masks):
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    labels = np.zeros(masks[0].shape, np.int64)
    for rank, i in enumerate(order):
        labels[masks[i]] = rank + 1
    return labels


def _write_every_format(folder, masks, height, width):
    """The same masks in every accepted format; returns {format: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    painted = paint_masks(masks)
    paths = {}
    paths["png8"] = folder / "png8.png"
    Image.fromarray(painted.astype(np.uint8), mode="L").save(paths["png8"])
    paths["png16"] = folder / "png16.png"
    Image.fromarray((painted * 700).astype(np.uint16)).save(paths["png16"])  # sparse 16-bit ids
    colours = np.random.default_rng(1).integers(1, 256, (len(masks) + 1, 3)).astype(np.uint8)
    colours[0] = 0
    paths["rgb"] = folder / "rgb.png"
    Image.fromarray(colours[painted]).save(paths["rgb"])
    paths["palette"] = folder / "palette.png"
    palette_image = Image.fromarray(painted.astype(np.uint8), mode="P")
    palette_image.putpalette(colours.flatten().tolist())
    palette_image.save(paths["palette"])
    paths["npz_labels"] = folder / "npz_labels.npz"
    np.savez_compressed(paths["npz_labels"], labels=painted.astype(np.int32), other=np.arange(3))
    paths["npz_masks"] = folder / "npz_masks.npz"
    np.savez(paths["npz_masks"], np.stack(masks))
    paths["npy_masks"] = folder / "npy_masks.npy"
    np.save(paths["npy_masks"], np.stack(masks).astype(np.uint8))
    paths["json_list"] = folder / "json_list.json"
    annotations = [{"segmentation": _coco_rle(mask), "area": int(mask.sum())} for mask in masks]
    paths["json_list"].write_text(json.dumps(annotations))
    paths["json_sa1b"] = folder / "json_sa1b.json"
    paths["json_sa1b"].write_text(json.dumps({"image": {"height": height, "width": width},
                                              "annotations": annotations[::-1]}))
    paths["folder"] = folder / "amg"
    paths["folder"].mkdir()
    for i, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(paths["folder"] / f"{i}.png")
    (paths["folder"] / "metadata.csv").write_text("id,area\n")
    return paths


def test_every_format_gives_the_same_segments(tmp_path):
    height, width = 45, 60
    rng = np.random.default_rng(3)
    masks = _random_masks(rng, height, width, 10)
    expected = _paint_reference(masks)
    paths = _write_every_format(tmp_path, masks, height, width)
    for name, path in paths.items():
        labels = mask_labels(path, (height, width))
        assert labels.dtype == np.uint16
        if name == "rgb":  # colours are numbered by 0xRRGGBB: the same partition, other ids
            pairs = set(zip(labels.flatten().tolist(), expected.flatten().tolist()))
            assert len(pairs) == len(np.unique(expected)) and (0, 0) in pairs, name
        else:
            assert np.array_equal(labels, expected), name
        assert (labels == 0).any() and int(labels.max()) == len(np.unique(expected)) - 1


def test_rgba_alpha_zero_is_unlabelled(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, :, 3] = 0
    rgba[2:, :, 1] = 9
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    labels = mask_labels(tmp_path / "a.png", (4, 5))
    assert labels[0].tolist() == [0] * 5 and labels[1, 0] == 1 and labels[3, 0] == 2


def test_nearest_fill_gives_every_uncovered_pixel_a_nearest_mask(tmp_path):
    height, width = 30, 40
    masks = _random_masks(np.random.default_rng(5), height, width, 4)
    np.savez(tmp_path / "m.npz", masks=np.stack(masks))
    kept = mask_labels(tmp_path / "m.npz", (height, width))
    filled = mask_labels(tmp_path / "m.npz", (height, width), fill="nearest")
    assert (kept == 0).any() and not (filled == 0).any()
    assert np.array_equal(filled[kept > 0], kept[kept > 0])
    covered = np.argwhere(kept > 0)
    for r, c in np.argwhere(kept == 0)[::7]:
        distances = np.hypot(*(covered - (r, c)).T)
        nearest_labels = {int(kept[tuple(p)]) for p in covered[distances == distances.min()]}
        assert int(filled[r, c]) in nearest_labels


def test_masks_of_another_size_are_refused_or_resampled(tmp_path):
    labels = np.arange(1, 13).reshape(3, 4)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"small\.png is 4x3 but its image is 8x6; pass --resize-masks"):
        mask_labels(tmp_path / "small.png", (6, 8))
    resized = mask_labels(tmp_path / "small.png", (6, 8), resize=True)
    assert np.array_equal(resized, np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1))
    odd = mask_labels(tmp_path / "small.png", (5, 7), resize=True)  # pixel centres: (i + .5) * 3 / 5
    assert odd[:, 0].tolist() == [1, 1, 5, 9, 9] and odd[0].tolist() == [1, 1, 2, 3, 3, 4, 4]


def _one_line_error(error_info, *fragments):
    message = str(error_info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_mask_files_are_named_in_one_line(tmp_path):
    good = np.zeros((4, 5), np.uint8)
    Image.fromarray(good).save(tmp_path / "good.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "good.png").read_bytes()[:40])
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "bad.json").write_text("[{\"segmentation\": {\"size\": [4, 5], \"counts\": \"9\"")
    (tmp_path / "polygon.json").write_text(json.dumps([{"segmentation": [[0, 0, 1, 1, 2, 0]]}]))
    (tmp_path / "short_rle.json").write_text(json.dumps([{"segmentation": {"size": [4, 5], "counts": [3, 4]}}]))
    np.save(tmp_path / "float.npy", np.zeros((4, 5), np.float32))
    np.savez(tmp_path / "unnamed.npz", a=np.zeros((4, 5), int), b=np.zeros((4, 5), int))
    np.save(tmp_path / "nonbinary.npy", np.full((2, 4, 5), 3))
    Image.fromarray(np.zeros((4, 5), np.float32), mode="F").save(tmp_path / "float.tiff")
    cases = {
        "truncated.png": "cannot be read as a PNG",
        "corrupt.npz": "cannot be read",
        "bad.json": "cannot be read as JSON",
        "polygon.json": "polygons are not supported",
        "short_rle.json": "do not cover the 4x5 mask",
        "float.npy": "dtype float32",
        "unnamed.npz": "name the masks one of",
        "nonbinary.npy": "binary masks",
        "float.tiff": "unknown format",
    }
    for name, fragment in cases.items():
        with pytest.raises(DataError) as error_info:
            mask_labels(tmp_path / name, (4, 5))
        _one_line_error(error_info, name, fragment)


def test_too_many_segments_for_16_bits(tmp_path):
    labels = np.arange(1, 256 * 256 + 1, dtype=np.int32).reshape(256, 256)
    np.save(tmp_path / "many.npy", labels)
    with pytest.raises(DataError) as error_info:
        mask_labels(tmp_path / "many.npy", (256, 256))
    _one_line_error(error_info, "many.npy", "65536 segments", "65535")
    labels[0, 0] = 0  # 65,535 segments fit
    np.save(tmp_path / "many.npy", labels)
    assert int(mask_labels(tmp_path / "many.npy", (256, 256)).max()) == 65535


def test_mask_file_lookup(tmp_path):
    (tmp_path / "CAM_A").mkdir()
    np.save(tmp_path / "CAM_A" / "x.npy", np.zeros((2, 2), int))
    assert find_mask_file(tmp_path, "CAM_A", "samples/CAM_A/x.jpg") == tmp_path / "CAM_A" / "x.npy"
    with pytest.raises(DataError) as error_info:
        find_mask_file(tmp_path, "CAM_A", "samples/CAM_A/y.jpg")
    _one_line_error(error_info, "samples/CAM_A/y.jpg", str(tmp_path / "CAM_A" / "y"))
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "CAM_A" / "x.png")
    with pytest.raises(DataError) as error_info:
        find_mask_file(tmp_path, "CAM_A", "samples/CAM_A/x.jpg")
    _one_line_error(error_info, "several mask files", "x.npy", "x.png")


def test_mask_set_names_are_folder_safe():
    assert method_key("masks", source="sam_vit-h.1") == "masks_sam_vit-h.1"
    for bad in (None, "", "../x", "a b", "_x"):
        with pytest.raises(SlidrError, match="mask set"):
            method_key("masks", source=bad)


# ----------------------------------------------------------------------------------------------------------------
# Importing for an index, reading back through the dataset
# ----------------------------------------------------------------------------------------------------------------


def _write_world_masks(index, from_dir, seed=0):
    """Masks for every camera image of the index, cycling through the formats; returns {(channel, image): path}."""
    rng = np.random.default_rng(seed)
    written = {}
    for number, sample in enumerate(index.samples):
        for channel, camera in sample["cameras"].items():
            height, width = int(camera["height"]), int(camera["width"])
            masks = _random_masks(rng, height, width, 8)
            stem = from_dir / channel / Path(camera["image"]).stem
            stem.parent.mkdir(parents=True, exist_ok=True)
            kind = (number + len(written)) % 3
            if kind == 0:
                path = stem.with_suffix(".json")
                path.write_text(json.dumps([{"segmentation": _coco_rle(mask)} for mask in masks]))
            elif kind == 1:
                path = stem.with_suffix(".npz")
                np.savez_compressed(path, masks=np.stack(masks))
            else:
                path = stem.with_suffix(".png")
                Image.fromarray(paint_masks(masks).astype(np.uint8), mode="L").save(path)
            written[(channel, camera["image"])] = (path, _paint_reference(masks))
    return written


@pytest.fixture(scope="module")
def world_index(tiny_nuscenes_world, tmp_path_factory):
    from slidr.cli.main import main

    index_path = tmp_path_factory.mktemp("masks") / "index.json"
    assert main(["prepare", "nuscenes", "--dataroot", str(tiny_nuscenes_world), "--version", "v1.0-trainval",
                 "--out", str(index_path)]) == 0
    return index_path


def test_import_masks_for_an_index_and_read_them_through_the_dataset(world_index, tmp_path, capsys):
    from slidr.cli.main import main
    from slidr.data.datasets import PretrainDataset, collate_pretrain
    from slidr.data.index import load_index

    index = load_index(world_index)
    from_dir = tmp_path / "sam"
    written = _write_world_masks(index, from_dir)
    root = tmp_path / "superpixels"
    args = ["superpixels", "--index", str(world_index), "--method", "masks", "--from", str(from_dir), "--root",
            str(root), "--no-progress"]
    assert main([*args, "--workers", "2", "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    images = len(written)
    assert report["images"] == report["computed"] == images and report["key"] == "masks_sam"
    assert 0 < report["unlabelled_fraction_mean"] < 1 and report["segments_min"] >= 1
    folder = superpixel_dir(world_index, "masks", root=root, source="sam")
    for (_, image), (_, expected) in written.items():
        stored = superpixel_path(folder, image)
        assert np.array_equal(read_labels(stored), expected)
        assert read_segment_count(stored) == int(expected.max())
    assert main(args) == 0
    assert f"{images} images: 0 computed, {images} already done" in capsys.readouterr().out
    assert main([*args, "--fill", "nearest"]) == 1  # other settings into the same folder
    assert "other settings" in capsys.readouterr().err

    cfg = DataConfig(index=str(world_index), image_size=[64, 112],
                     superpixels=SuperpixelConfig(method="masks", source="sam", root=str(root)),
                     augment=AugmentConfig(min_pairs=200))
    for train in (False, True):
        dataset = PretrainDataset(world_index, None, cfg, train=train)
        batch = collate_pretrain([dataset[i] for i in range(2)])
        assert batch["superpixels"].shape == (12, 64, 112)
        for image_index in range(12):
            sample = index.samples[int(dataset.positions[image_index // 6])]
            channel = cfg.cameras[image_index % 6]
            stored = read_labels(superpixel_path(folder, sample["cameras"][channel]["image"]))
            read = batch["superpixels"][image_index].numpy()
            if train:
                assert set(np.unique(read).tolist()) <= set(np.unique(stored).tolist())
            else:  # whole images resized by nearest neighbour
                assert np.array_equal(read, transform_labels(stored, full_image_transform(stored.shape), (64, 112)))
        keep = pairs_in_labelled_superpixels(batch["pairing_images"], batch["superpixels"])
        assert 0 < int(keep.sum()) < len(keep)
        image, row, col = batch["pairing_images"][keep].unbind(1)
        assert (batch["superpixels"][image, row, col] > 0).all()


def test_import_errors_name_the_files(world_index, tmp_path, capsys):
    from slidr.cli.main import main
    from slidr.data.index import load_index

    index = load_index(world_index)
    from_dir = tmp_path / "seem"
    written = _write_world_masks(index, from_dir, seed=1)
    root = tmp_path / "superpixels"
    args = ["superpixels", "--index", str(world_index), "--method", "masks", "--from", str(from_dir), "--root",
            str(root), "--no-progress"]
    missing_path = next(iter(written.values()))[0]
    saved = missing_path.read_bytes()
    missing_path.unlink()
    assert main(args) == 1  # missing data: the work failed
    err = capsys.readouterr().err
    assert f"1 of {len(written)} camera images have no usable mask file" in err and missing_path.stem in err
    missing_path.write_bytes(saved)

    path, expected = next((p, e) for p, e in written.values() if p.suffix == ".png")
    Image.fromarray(expected[:-2].astype(np.uint8), mode="L").save(path)
    assert main([*args, "--name", "wrong_size"]) == 1
    err = capsys.readouterr().err
    assert f"{path.name} is 320x178 but its image is 320x180; pass --resize-masks" in err
    assert main([*args, "--name", "resized", "--resize-masks"]) == 0

    assert main(["superpixels", "--index", str(world_index), "--method", "masks", "--no-progress"]) == 2
    assert "--from DIR goes with --method masks" in capsys.readouterr().err
    cfg = DataConfig(index=str(world_index), superpixels=SuperpixelConfig(method="masks", source="absent",
                                                                          root=str(root)))
    from slidr.data.datasets import PretrainDataset

    with pytest.raises(DataError, match="--method masks --from <folder of the mask files> --name absent"):
        PretrainDataset(world_index, None, cfg)


def test_import_resumes_and_redoes_partial_files(tmp_path):
    height, width = 20, 30
    from_dir, folder = tmp_path / "masks", tmp_path / "out" / "masks_x"
    jobs, sizes = [], {}
    rng = np.random.default_rng(0)
    for i in range(3):
        image = f"samples/CAM_A/img{i}.jpg"
        jobs.append(SuperpixelJob("CAM_A", image, tmp_path / image))
        sizes[("CAM_A", image)] = (height, width)
        (from_dir / "CAM_A").mkdir(parents=True, exist_ok=True)
        np.savez(from_dir / "CAM_A" / f"img{i}.npz", masks=np.stack(_random_masks(rng, height, width, 4)))
    first = import_index_masks(jobs, sizes, from_dir, folder, show_progress=False)
    assert first["computed"] == 3
    target = superpixel_path(folder, jobs[1].image)
    target.write_bytes(target.read_bytes()[:30])  # a partial write
    again = import_index_masks(jobs, sizes, from_dir, folder, show_progress=False)
    assert again["computed"] == 1 and again["skipped"] == 2
    assert np.array_equal(read_labels(target), mask_labels(from_dir / "CAM_A" / "img1.npz", (height, width)))
    assert read_mask_file(from_dir / "CAM_A" / "img1.npz").shape == (height, width)
