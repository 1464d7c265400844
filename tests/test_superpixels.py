import os

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import felzenszwalb, slic

from slidr.data.superpixels import (
    SuperpixelJob,
    compute_index_superpixels,
    compute_superpixels,
    encode_label_png,
    image_jobs,
    is_complete_png,
    method_key,
    parse_shard,
    read_label_png,
    read_segment_count,
    shard_jobs,
    superpixel_dir,
    superpixel_path,
    write_label_png,
)
from slidr.errors import DataError, SlidrError


def _blocky_image(seed, height=48, width=80):
    """An RGB image of a few flat colour blocks plus mild noise: superpixels have structure to find."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (3, 4, 3))
    image = np.repeat(np.repeat(colours, height // 3, axis=0), width // 4, axis=1).astype(np.int64)
    image += rng.integers(-8, 9, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_images(folder, count):
    jobs = []
    for i in range(count):
        channel = f"CAM_{i % 2}"
        relative = f"samples/{channel}/frame_{i:03d}.png"
        (folder / "samples" / channel).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_blocky_image(i)).save(folder / relative)
        jobs.append(SuperpixelJob(channel, relative, folder / relative))
    return jobs


def test_label_png_round_trip_beyond_8_bits(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(700)).repeat(3).reshape(30, 70).astype(np.uint16)
    labels[0, 0] = 65535
    path = tmp_path / "labels.png"
    write_label_png(path, labels)
    assert np.array_equal(read_label_png(path), labels)
    with Image.open(path) as image:  # an independent decoder reads the same file
        assert np.array_equal(np.asarray(image).astype(np.uint16), labels)
    assert read_segment_count(path) == 701  # 700 labels and 65535
    assert is_complete_png(path)


def test_reader_falls_back_to_pillow_for_other_pngs(tmp_path):
    labels = (np.arange(40 * 30).reshape(30, 40) * 37 % 5000).astype(np.uint16)
    path = tmp_path / "other.png"
    Image.fromarray(labels).save(path)  # Pillow's filtered encoding, not ours
    assert np.array_equal(read_label_png(path), labels)


def test_truncated_or_missing_label_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(encode_label_png(np.zeros((20, 20), np.uint16) + 3)[:-20])
    assert not is_complete_png(path)
    with pytest.raises(DataError, match="cut.png.*truncated"):
        read_label_png(path)
    with pytest.raises(DataError, match="nothere.png does not exist"):
        read_label_png(tmp_path / "nothere.png")


def test_labels_out_of_range_are_refused():
    with pytest.raises(SlidrError, match="65535"):
        encode_label_png(np.array([[70000]]))


def test_paper_parameters():
    image = _blocky_image(1)
    expected = slic(image, n_segments=30, compactness=6, sigma=3.0, start_label=0)
    got = compute_superpixels(image, "slic", 30)
    assert got.dtype == np.uint16 and np.array_equal(got, expected) and got.min() == 0
    expected_fh = felzenszwalb(image, scale=300, sigma=0.35, min_size=4000)
    assert np.array_equal(compute_superpixels(image, "fh"), expected_fh)


def test_cache_keys_keep_variants_apart(tmp_path):
    keys = {method_key("slic", n) for n in (100, 150, 200)} | {method_key("fh"), method_key("fh", 100)}
    assert len(keys) == 4  # n_segments is no parameter of FH
    assert method_key("slic", 150) == "slic_n150_c6_s3"
    assert method_key("fh") == "fh_k300_s0.35_m4000"
    index = tmp_path / "index.json"
    assert superpixel_dir(index, "slic", 100) == tmp_path / "superpixels" / "slic_n100_c6_s3"
    assert superpixel_dir(index, "fh", root=tmp_path / "elsewhere").parent == tmp_path / "elsewhere"
    assert superpixel_path(tmp_path, "CAM_BACK", "samples/CAM_BACK/a__b.jpg") == tmp_path / "CAM_BACK" / "a__b.png"
    with pytest.raises(SlidrError, match="unknown method 'quickshift'"):
        method_key("quickshift")


def test_compute_then_resume_skips_finished_and_redoes_partial(tmp_path):
    jobs = _write_images(tmp_path / "data", 4)
    folder = tmp_path / "sp" / method_key("slic", 20)
    report = compute_index_superpixels(jobs, folder, "slic", 20, show_progress=False)
    assert (report["images"], report["computed"], report["skipped"]) == (4, 4, 0)
    paths = [superpixel_path(folder, job.channel, job.image) for job in jobs]
    counts = [len(np.unique(read_label_png(path))) for path in paths]
    assert report["segments_min"] == min(counts) and report["segments_max"] == max(counts)
    assert (folder / "report.json").is_file()

    finished = paths[0].read_bytes()
    os.utime(paths[0], (1, 1))
    paths[1].write_bytes(paths[1].read_bytes()[:50])  # partial file
    paths[2].unlink()
    stale = paths[3].parent / f".{paths[3].name}.abc123.tmp"  # what a killed atomic write leaves
    stale.write_bytes(b"junk")
    report = compute_index_superpixels(jobs, folder, "slic", 20, show_progress=False)
    assert (report["computed"], report["skipped"]) == (2, 2)
    assert paths[0].stat().st_mtime == 1 and paths[0].read_bytes() == finished
    assert all(is_complete_png(path) for path in paths) and not stale.exists()
    assert np.array_equal(read_label_png(paths[1]), compute_superpixels(_blocky_image(1), "slic", 20))


def test_two_workers_write_the_same_files(tmp_path):
    jobs = _write_images(tmp_path / "data", 4)
    one = compute_index_superpixels(jobs, tmp_path / "one", "fh", workers=1, show_progress=False)
    two = compute_index_superpixels(jobs, tmp_path / "two", "fh", workers=2, show_progress=False)
    assert one["segments_max"] == two["segments_max"]
    for job in jobs:
        assert superpixel_path(tmp_path / "one", job.channel, job.image).read_bytes() == \
            superpixel_path(tmp_path / "two", job.channel, job.image).read_bytes()


def test_missing_camera_image_is_named(tmp_path):
    job = SuperpixelJob("CAM_FRONT", "samples/CAM_FRONT/gone.jpg", tmp_path / "gone.jpg")
    with pytest.raises(DataError, match="gone.jpg"):
        compute_index_superpixels([job], tmp_path / "out", "slic", show_progress=False)


def test_shards_partition_the_images():
    samples = [{"cameras": {f"CAM_{c}": {"image": f"samples/CAM_{c}/{s}.jpg"} for c in range(3)}}
               for s in range(7)]
    samples.append(samples[0])  # the same image twice is one job
    jobs = image_jobs(samples, "/data")
    assert len(jobs) == 21 and jobs == sorted(jobs, key=lambda job: (job.channel, job.image))
    for count in (1, 2, 4, 21, 30):
        shares = [shard_jobs(jobs, (i, count)) for i in range(count)]
        flat = [job for share in shares for job in share]
        assert sorted(flat, key=lambda job: job.image + job.channel) == \
            sorted(jobs, key=lambda job: job.image + job.channel)
        assert len(flat) == len(set(flat)) == len(jobs)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert image_jobs(samples, "/data", channels=["CAM_1"])[0].channel == "CAM_1"
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "1", "a/b", "-1/3"):
        with pytest.raises(SlidrError, match="shard"):
            parse_shard(bad)


def test_superpixel_benchmark_on_given_images(tmp_path):
    import argparse

    from slidr.bench.superpixels import SuperpixelBenchConfig, run
    from slidr.config import SuperpixelConfig

    _write_images(tmp_path, 2)
    settings = SuperpixelBenchConfig(images=str(tmp_path / "samples"), superpixels=SuperpixelConfig(method="fh"),
                                     copies=2)
    result = run(argparse.Namespace(settings=settings))
    assert result.data["images"] == 4 and result.data["image_size"] == "80x48"
    assert result.data["images_per_s_1"] > 0 and result.data["images_per_s_2"] > 0
    assert result.data["projected_nuscenes_hours_1"] > 0
    with pytest.raises(SlidrError, match=r"no camera images found in .*nothing/CAM_\*/.*--images"):
        run(argparse.Namespace(settings=SuperpixelBenchConfig(images=str(tmp_path / "nothing"))))
