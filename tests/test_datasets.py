import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slidr.config import AugmentConfig, DataConfig, SuperpixelConfig
from slidr.data.datasets import DownstreamDataset, PretrainDataset, collate_downstream, collate_pretrain
from slidr.data.superpixels import superpixel_dir, superpixel_path, write_labels
from slidr.errors import DataError

HEIGHT, WIDTH = 180, 320
OUT_HW = [64, 112]
INTRINSIC = np.array([[100.0, 0, WIDTH / 2], [0, 100.0, HEIGHT / 2], [0, 0, 1]])
# lidar x forward, y left, z up -> camera z forward, x right, y down; camera 1 looks backwards
ROTATIONS = {"CAM_FRONT": [[0, -1, 0], [0, 0, -1], [1, 0, 0]], "CAM_BACK": [[0, 1, 0], [0, 0, -1], [-1, 0, 0]]}
SPX_CELL = 6  # superpixel label of pixel (r, c): (r // 6) * 54 + c // 6, 1,620 labels (> 255)
SPX_COLUMNS = -(-WIDTH // SPX_CELL)


def _lidar_to_camera(channel):
    matrix = np.eye(4)
    matrix[:3, :3] = ROTATIONS[channel]
    return matrix


def _build_index(tmp_path, num_samples=2, num_points=3000, labelled=True, superpixels=True,
                 fmt="nuscenes", cameras=("CAM_FRONT", "CAM_BACK")):
    """A hand-written index with scans whose intensity is the point's id, JPEG camera images and label PNGs."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    samples = []
    for s in range(num_samples):
        token = f"tok{s}"
        angle = rng.uniform(0, 2 * np.pi, num_points)
        distance = rng.uniform(4, 25, num_points)
        points = np.stack([distance * np.cos(angle), distance * np.sin(angle), rng.uniform(-1.5, 1.5, num_points),
                           np.arange(num_points), np.zeros(num_points)], axis=1).astype(np.float32)
        if fmt == "semantickitti":
            points = points[:, :4]
        lidar = root / "lidar" / f"{token}.bin"
        lidar.parent.mkdir(parents=True, exist_ok=True)
        points.tofile(lidar)
        sample = {"token": token, "scene": f"scene-{s}", "timestamp": s, "lidar": str(lidar.relative_to(root)),
                  "lidar_to_global": np.eye(4).tolist(), "ego_pose": np.eye(4).tolist(), "cameras": {}}
        label_key = "lidarseg" if fmt == "nuscenes" else "labels"
        sample[label_key] = None
        if labelled:
            label_file = root / "labels" / f"{token}.bin"
            label_file.parent.mkdir(parents=True, exist_ok=True)
            raw = (rng.integers(0, 32, num_points) if fmt == "nuscenes"
                   else rng.choice([0, 10, 40, 48, 50, 70, 80], num_points))
            raw.astype(np.uint8 if fmt == "nuscenes" else np.uint32).tofile(label_file)
            sample[label_key] = str(label_file.relative_to(root))
        for channel in cameras:
            image = root / "samples" / channel / f"{token}_{channel}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (HEIGHT // 10, WIDTH // 10, 3)).astype(np.uint8)
            Image.fromarray(pixels).resize((WIDTH, HEIGHT)).save(image, quality=95)
            sample["cameras"][channel] = {"image": str(image.relative_to(root)), "width": WIDTH, "height": HEIGHT,
                                          "intrinsic": INTRINSIC.tolist(),
                                          "lidar_to_camera": _lidar_to_camera(channel).tolist()}
        samples.append(sample)
    index = {"format": fmt, "version": "test", "root": str(root),
             "scenes": {f"scene-{s}": {"description": "", "location": "", "log": ""} for s in range(num_samples)},
             "splits": {"train": [f"scene-{s}" for s in range(num_samples)]}, "samples": samples}
    index_path = tmp_path / "index.json"
    index_path.write_text(json.dumps(index))
    if superpixels:
        folder = superpixel_dir(index_path, "slic", 150)
        rows, cols = np.mgrid[:HEIGHT, :WIDTH]
        labels = (rows // SPX_CELL) * SPX_COLUMNS + cols // SPX_CELL
        for sample in samples:
            for camera in sample["cameras"].values():
                write_labels(superpixel_path(folder, camera["image"]), labels)
    return index_path


def _config(index_path, dataset="nuscenes", **augment):
    augment = {"min_pairs": 100, **augment}
    return DataConfig(dataset=dataset, index=str(index_path), cameras=["CAM_FRONT", "CAM_BACK"],
                      image_size=list(OUT_HW), augment=AugmentConfig(**augment))


def _original_pixel(xyz, channel):
    camera = xyz @ np.asarray(ROTATIONS[channel], float).T
    uvw = camera @ INTRINSIC.T
    return uvw[1] / uvw[2], uvw[0] / uvw[2]


@pytest.mark.parametrize("train", [False, True])
def test_pretrain_sample_pairs_points_with_their_pixels(tmp_path, train):
    index_path = _build_index(tmp_path, num_samples=1)
    original = np.fromfile(tmp_path / "data" / "lidar" / "tok0.bin", np.float32).reshape(-1, 5)
    dataset = PretrainDataset(index_path, "train", _config(index_path), train=train)
    sample = dataset[0]
    n, v = len(sample["points"]), len(sample["voxel_coords"])
    assert sample["points"].shape == (n, 4) and sample["points"].dtype == np.float32
    assert sample["voxel_coords"].dtype == np.int32 and sample["voxel_feats"].shape == (v, 1)
    assert sample["inverse_map"].shape == (n,) and sample["inverse_map"].max() == v - 1
    assert sample["images"].shape == (2, 3, *OUT_HW) and sample["images"].dtype == np.float32
    assert sample["superpixels"].shape == (2, *OUT_HW) and sample["superpixels"].dtype == np.int64
    assert sample["labels"].shape == (n,) and sample["token"] == "tok0"
    pairs = len(sample["pairing_points"])
    assert pairs > 500 and sample["pairing_images"].shape == (pairs, 3)
    if not train:
        assert n == len(original) and np.array_equal(sample["points"][:, :3], original[:, :3])

    channels = ["CAM_FRONT", "CAM_BACK"]
    for point, (k, row, col) in zip(sample["pairing_points"], sample["pairing_images"]):
        point_id = int(sample["points"][point, 3])  # intensity holds the original point index
        r0, c0 = _original_pixel(original[point_id, :3].astype(float), channels[k])
        assert 1 < r0 < HEIGHT - 1 and 1 < c0 < WIDTH - 1  # really visible in that camera
        label_r, label_c = divmod(int(sample["superpixels"][k, row, col]), SPX_COLUMNS)
        # the superpixel shown at the pair's pixel is the one of the original pixel, up to the resize
        assert label_r * SPX_CELL - 4 <= r0 < (label_r + 1) * SPX_CELL + 4
        assert label_c * SPX_CELL - 4 <= c0 < (label_c + 1) * SPX_CELL + 4
    if train:
        assert not np.allclose(sample["points"][:50, :3], original[sample["points"][:50, 3].astype(int), :3])


def test_collate_offsets_point_into_the_right_scan(tmp_path):
    index_path = _build_index(tmp_path, num_samples=2)
    dataset = PretrainDataset(index_path, "train", _config(index_path), train=True)
    samples = [dataset[0], dataset[1]]
    batch = collate_pretrain(samples)
    assert batch["batch_size"] == 2 and batch["tokens"] == ["tok0", "tok1"]
    sizes = [len(s["points"]) for s in samples]
    assert batch["voxel_coords"].shape[1] == 4 and batch["voxel_coords"].dtype == torch.int32
    assert batch["images"].shape == (4, 3, *OUT_HW) and batch["superpixels"].shape == (4, *OUT_HW)
    for b, sample in enumerate(samples):
        in_scan = batch["pairing_images"][:, 0] // 2 == b
        pairing_points = batch["pairing_points"][in_scan]
        assert torch.all(batch["point_batch"][pairing_points] == b)
        assert torch.equal(pairing_points - sum(sizes[:b]), torch.from_numpy(sample["pairing_points"]))
        assert torch.equal(batch["pairing_images"][in_scan, 0] - 2 * b,
                           torch.from_numpy(sample["pairing_images"][:, 0]))
        assert torch.equal(batch["images"][2 * b:2 * b + 2], torch.from_numpy(sample["images"]))
        points = slice(sum(sizes[:b]), sum(sizes[:b + 1]))
        voxels = batch["voxel_coords"][batch["inverse_map"][points]]
        assert torch.all(voxels[:, 0] == b)
        assert torch.equal(voxels[:, 1:], torch.from_numpy(sample["voxel_coords"][sample["inverse_map"]]))
        assert torch.equal(batch["points"][points], torch.from_numpy(sample["points"]))
    assert set(batch["stats"]) == {"cuboid_fallbacks", "crop_fallbacks", "nonfinite_points"}


def test_degraded_augmentations_are_counted(tmp_path):
    index_path = _build_index(tmp_path, num_samples=1)
    cfg = _config(index_path, min_pairs=10**6, min_pair_fraction=1.0, max_tries=2, crop_min_area=0.3)
    sample = PretrainDataset(index_path, "train", cfg, train=True)[0]
    assert sample["stats"]["cuboid_fallbacks"] == 1  # no cuboid can keep a million pairs
    assert sample["stats"]["crop_fallbacks"] >= 1  # crops that keep 100% of the pairs are rare
    batch = collate_pretrain([sample, sample])
    assert batch["stats"]["cuboid_fallbacks"] == 2


def test_missing_superpixels_say_which_command_makes_them(tmp_path):
    index_path = _build_index(tmp_path, num_samples=1, superpixels=False)
    cfg = _config(index_path)
    with pytest.raises(DataError, match=r"slidr superpixels --index .*index.json --method slic"):
        PretrainDataset(index_path, "train", cfg)
    folder = superpixel_dir(index_path, "slic", 150)
    (folder / "CAM_FRONT").mkdir(parents=True)
    with pytest.raises(DataError, match=r"superpixel file .*tok0_CAM_FRONT.runs does not exist; create it with "
                                        r"`slidr superpixels --index .* --method slic`"):
        PretrainDataset(index_path, "train", cfg)[0]
    cfg = dataclasses.replace(cfg, superpixels=SuperpixelConfig(method="slic", n_segments=200))
    with pytest.raises(DataError, match="--n-segments 200"):
        PretrainDataset(index_path, "train", cfg)
    cfg = dataclasses.replace(cfg, superpixels=SuperpixelConfig(method="none"))
    assert "superpixels" not in PretrainDataset(index_path, "train", cfg)[0]


def test_pretraining_needs_the_configured_cameras(tmp_path):
    index_path = _build_index(tmp_path, num_samples=1, fmt="semantickitti", cameras=(), superpixels=False)
    with pytest.raises(DataError, match="SemanticKITTI pretraining needs camera images"):
        PretrainDataset(index_path, "train", _config(index_path, "semantickitti"))
    index_path = _build_index(tmp_path, num_samples=1, cameras=("CAM_FRONT",))
    with pytest.raises(DataError, match=r"data.cameras.*CAM_BACK.*data.cameras=\[CAM_FRONT\]"):
        PretrainDataset(index_path, "train", _config(index_path))
    cfg = dataclasses.replace(_config(index_path), cameras=["CAM_FRONT"])
    assert PretrainDataset(index_path, "train", cfg)[0]["images"].shape[0] == 1


@pytest.mark.parametrize("fmt", ["nuscenes", "semantickitti"])
def test_downstream_samples_and_collate(tmp_path, fmt):
    index_path = _build_index(tmp_path, num_samples=2, fmt=fmt, superpixels=False)
    cfg = _config(index_path, fmt, enabled=True)
    dataset = DownstreamDataset(index_path, "train", cfg, train=False)
    samples = [dataset[0], dataset[1]]
    for sample in samples:
        n = len(sample["points"])
        assert sample["labels"].shape == (n,) and sample["labels"].max() <= (16 if fmt == "nuscenes" else 19)
        first_of_voxel = np.unique(sample["inverse_map"], return_index=True)[1]
        assert np.array_equal(sample["voxel_labels"], sample["labels"][first_of_voxel])
    batch = collate_downstream(samples)
    assert len(batch["labels"]) == len(batch["points"]) == sum(len(s["points"]) for s in samples)
    assert torch.equal(batch["voxel_labels"], torch.cat([torch.from_numpy(s["voxel_labels"]) for s in samples]))
    assert torch.equal(batch["voxel_coords"][batch["inverse_map"]][:, 0], batch["point_batch"].int())
    train_sample = DownstreamDataset(index_path, "train", cfg, train=True)[0]
    assert np.array_equal(train_sample["labels"], samples[0]["labels"])  # augmentation keeps every point
    augmented, plain = train_sample["points"], samples[0]["points"]
    assert not np.allclose(augmented[:, :3], plain[:, :3])
    assert np.allclose(np.hypot(augmented[:, 0], augmented[:, 1]), np.hypot(plain[:, 0], plain[:, 1]), atol=1e-4)
    assert np.array_equal(augmented[:, 2:], plain[:, 2:])  # rotation about z and flips: z, intensity unchanged


@pytest.mark.parametrize("dataset_class", [PretrainDataset, DownstreamDataset])
def test_an_index_of_another_dataset_is_refused(tmp_path, dataset_class):
    # a nuScenes index read as SemanticKITTI would be scored against 19 unrelated classes
    index_path = _build_index(tmp_path, num_samples=1, superpixels=False)
    cfg = dataclasses.replace(_config(index_path, "semantickitti"), superpixels=SuperpixelConfig(method="none"))
    with pytest.raises(DataError, match=r"index .*index.json holds nuscenes samples but data.dataset is "
                                        r"'semantickitti'; set data.dataset=nuscenes"):
        dataset_class(index_path, "train", cfg)
    cfg = dataclasses.replace(cfg, dataset="nuscenes")
    assert len(dataset_class(index_path, "train", cfg)) == 1


def test_downstream_without_labels_is_an_error(tmp_path):
    index_path = _build_index(tmp_path, num_samples=1, labelled=False, superpixels=False)
    with pytest.raises(DataError, match="tok0.*no label file"):
        DownstreamDataset(index_path, "train", _config(index_path))[0]


@pytest.fixture(scope="module")
def keyframe_index(nuscenes_keyframe, tmp_path_factory):
    """The real keyframe's index, with stand-in superpixel files (a 10x10-pixel grid, cheaper than SLIC)."""
    from slidr.data.prepare_nuscenes import prepare_nuscenes

    folder = tmp_path_factory.mktemp("keyframe")
    index = prepare_nuscenes(nuscenes_keyframe, "v1.0-mini", folder / "index.npz")
    rows, cols = np.mgrid[:900, :1600]
    labels = (rows // 10) * 160 + cols // 10
    for camera in index.samples[0]["cameras"].values():
        write_labels(superpixel_path(superpixel_dir(index.path), camera["image"]), labels)
    return index


def test_real_keyframe_validation_sample_keeps_the_devkit_pairs(keyframe_index):
    cfg = DataConfig(index=str(keyframe_index.path), augment=AugmentConfig(enabled=False))
    sample = PretrainDataset(keyframe_index, None, cfg, train=False)[0]
    per_camera = np.bincount(sample["pairing_images"][:, 0], minlength=6).tolist()
    assert per_camera == [3053, 3076, 3369, 4820, 4089, 3696]  # devkit map_pointcloud_to_image, per camera
    assert sample["images"].shape == (6, 3, 224, 416) and len(sample["points"]) == 34688
    assert abs(float(sample["images"].mean())) < 2  # normalised, not raw 0..255


def test_real_keyframe_fast_path_pairs_like_the_authors_path(keyframe_index, tmp_path):
    from slidr.bench.data import _write_authors_superpixels, authors_load_sample
    from slidr.data.datasets import load_pretrain_sample

    cfg = DataConfig(index=str(keyframe_index.path))
    sample = keyframe_index.samples[0]
    folder = superpixel_dir(keyframe_index.path)
    authors_files = _write_authors_superpixels(keyframe_index, sample, cfg.cameras, folder, tmp_path)
    for seed in (5,):  # the data benchmark's test checks seeds 0 and 1
        timings = {}
        fast = load_pretrain_sample(keyframe_index, sample, cfg, np.random.default_rng(seed), folder,
                                    timings=timings)
        slow = authors_load_sample(keyframe_index, sample, cfg, np.random.default_rng(seed), authors_files, {})
        assert np.array_equal(fast["pairing_points"], slow["pairing_points"])
        assert np.array_equal(fast["pairing_images"], slow["pairing_images"])
        assert len(fast["pairing_points"]) > 6 * 1024 * 0.5
        assert np.abs(fast["images"] - slow["images"]).mean() < 0.1  # same crops, slightly different resampling
        fast_cell = np.stack(np.divmod(fast["superpixels"], 160))
        slow_cell = np.stack(np.divmod(slow["superpixels"], 160))  # nearest rounding differs by <= 1 cell
        assert np.abs(fast_cell - slow_cell).max() <= 1
        stages = {"read", "project", "augment", "decode", "normalize", "voxelize", "superpixels"}
        assert set(timings) == stages | {f"cpu:{stage}" for stage in stages}


def test_end_to_end_prepare_superpixels_dataset_collate(tiny_nuscenes_world, tmp_path, capsys):
    from slidr.cli.main import main
    from slidr.data.index import load_index

    index_path = tmp_path / "index.npz"
    assert main(["prepare", "nuscenes", "--dataroot", str(tiny_nuscenes_world), "--version", "v1.0-trainval",
                 "--out", str(index_path)]) == 0
    assert main(["superpixels", "--index", str(index_path), "--method", "slic", "--n-segments", "30",
                 "--workers", "2", "--no-progress", "--json", str(tmp_path / "sp.json")]) == 0
    report = json.loads((tmp_path / "sp.json").read_text())
    index = load_index(index_path)
    images = sum(len(sample["cameras"]) for sample in index.samples)
    assert report["images"] == report["computed"] == images and 5 <= report["segments_median"] <= 60
    assert main(["superpixels", "--index", str(index_path), "--method", "slic", "--n-segments", "30",
                 "--no-progress"]) == 0
    assert f"{images} images: 0 computed, {images} already done" in capsys.readouterr().out

    cfg = DataConfig(index=str(index_path), image_size=[64, 112],
                     superpixels=SuperpixelConfig(method="slic", n_segments=30),
                     augment=AugmentConfig(min_pairs=200))
    dataset = PretrainDataset(index_path, None, cfg, train=True)
    batch = collate_pretrain([dataset[i] for i in range(min(2, len(dataset)))])
    size = batch["batch_size"]
    assert batch["images"].shape == (6 * size, 3, 64, 112) and batch["superpixels"].shape == (6 * size, 64, 112)
    assert len(batch["pairing_points"]) > 500 and int(batch["pairing_points"].max()) < len(batch["points"])
    assert torch.equal(batch["point_batch"][batch["pairing_points"]], batch["pairing_images"][:, 0] // 6)
    assert int(batch["superpixels"].max()) < 60 and "labels" in batch
    downstream = collate_downstream([DownstreamDataset(index_path, None, cfg, train=False)[0]])
    assert downstream["labels"].shape == (len(downstream["points"]),) and int(downstream["labels"].max()) > 0


def test_files_that_disagree_with_the_index_are_named(tmp_path):
    index_path = _build_index(tmp_path, num_samples=1)
    cfg = _config(index_path)
    folder = superpixel_dir(index_path, "slic", 150)
    label_file = superpixel_path(folder, "samples/CAM_BACK/tok0_CAM_BACK.jpg")
    write_labels(label_file, np.zeros((HEIGHT // 2, WIDTH), np.uint16))
    with pytest.raises(DataError, match=r"tok0_CAM_BACK.runs is 320x90 but its image .* is 320x180; recompute"):
        PretrainDataset(index_path, "train", cfg)[0]
    image = tmp_path / "data" / "samples" / "CAM_FRONT" / "tok0_CAM_FRONT.jpg"
    Image.new("RGB", (WIDTH + 2, HEIGHT)).save(image)
    with pytest.raises(DataError, match=r"tok0_CAM_FRONT.jpg is 322x180 but the index says 320x180"):
        PretrainDataset(index_path, "train", cfg)[0]
    image.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"tok0_CAM_FRONT.jpg cannot be"):
        PretrainDataset(index_path, "train", cfg)[0]


def test_jpegs_are_decoded_at_the_largest_reduction_that_keeps_the_output_resolution(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    from slidr.data.augment import ImageTransform, transform_image
    from slidr.data.datasets import read_transformed_image
    from slidr.data.io import read_image

    rng = np.random.default_rng(0)
    path = tmp_path / "image.jpg"
    Image.fromarray(rng.integers(0, 256, (90, 160, 3)).astype(np.uint8)).resize((1600, 900)).save(path, quality=90)
    full = read_image(path)
    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(image, mode, size):
        result = draft(image, mode, size)
        drafts.append(image.size)  # the size the JPEG is decoded at
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out_hw = (224, 416)
    for box, reduction in (((0, 0, 900, 1600), 2), ((100, 300, 600, 1000), 2), ((50, 60, 447, 900), 1),
                           ((0, 0, 900, 1600), 2)):
        for flip in (False, True):
            transform = ImageTransform(*box, flip=flip)
            drafts.clear()
            got = read_transformed_image(path, transform, (900, 1600), out_hw)
            assert got.shape == (224, 416, 3) and got.dtype == np.uint8
            assert drafts == ([(1600 // reduction, 900 // reduction)] if reduction > 1 else [])  # 800 x 450
            expected = transform_image(full, transform, out_hw).astype(int)
            if reduction == 1:  # no reduction: exactly the full decode's pixels (the synthetic world's case)
                assert np.array_equal(got, expected)
            else:  # the reduced decode is the full one low-passed: close to its resize
                assert np.abs(got.astype(int) - expected).mean() < 2.5
    drafts.clear()
    small = read_transformed_image(path, ImageTransform(0, 0, 900, 1600), (900, 1600), (56, 100))
    assert drafts == [(200, 113)] and small.shape == (56, 100, 3)  # 1/8 (libjpeg rounds 112.5 up)


def test_data_benchmark_reports_every_stage(keyframe_index, tmp_path):
    from slidr.bench.data import STAGES, _measure

    cfg = DataConfig(index=str(keyframe_index.path))
    result = _measure(keyframe_index.path, cfg, repeats=1, reference=True, tmp=tmp_path)
    assert result.data["pairings_identical"] is True
    assert result.data["ms_per_sample"] > 0 and result.data["speedup"] > 0
    assert all(result.data[f"{stage}_ms"] > 0 for stage in STAGES)
    assert set(result.data["authors_path"]) >= {f"{stage}_ms" for stage in STAGES}


def test_end_to_end_semantickitti(tiny_kitti_world, tmp_path):
    from slidr.cli.main import main

    index_path = tmp_path / "index.npz"
    assert main(["prepare", "semantickitti", "--root", str(tiny_kitti_world), "--out", str(index_path)]) == 0
    cfg = DataConfig(dataset="semantickitti", index=str(index_path), image_size=[64, 112],
                     superpixels=SuperpixelConfig(method="fh"), augment=AugmentConfig(min_pairs=200))
    with pytest.raises(DataError, match=r"SemanticKITTI pretraining needs the cameras .*image_2"):
        PretrainDataset(index_path, None, cfg)
    cfg = dataclasses.replace(cfg, cameras=["image_2"])
    assert main(["superpixels", "--index", str(index_path), "--method", "fh", "--no-progress"]) == 0
    # both sequences have an image_2/000000.png: each keeps its own superpixels
    from slidr.data.index import load_index
    from slidr.data.io import read_image
    from slidr.data.superpixels import compute_superpixels, read_labels

    index = load_index(index_path)
    images = [sample["cameras"]["image_2"]["image"] for sample in index.samples]
    assert len({Path(image).name for image in images}) < len(images) == len(set(images))
    folder = superpixel_dir(index_path, "fh")
    for image in images:
        assert np.array_equal(read_labels(superpixel_path(folder, image)),
                              compute_superpixels(read_image(index.resolve(image)), "fh"))
    batch = collate_pretrain([PretrainDataset(index_path, None, cfg)[i] for i in range(2)])
    assert batch["images"].shape == (2, 3, 64, 112) and len(batch["pairing_points"]) > 200
    downstream = DownstreamDataset(index_path, None, cfg, train=False)
    sample = downstream[0]
    assert len(sample["labels"]) == len(sample["points"]) and sample["labels"].max() <= 19
