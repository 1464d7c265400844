import os
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import felzenszwalb, slic

from slidr.data.augment import (
    ImageTransform,
    random_crop_box,
    source_indices,
    transform_labels,
)
from slidr.data.io import read_image
from slidr.data.superpixels import (
    RUNS_HEADER,
    SuperpixelJob,
    compute_index_superpixels,
    compute_superpixels,
    encode_label_png,
    encode_labels,
    find_superpixel_file,
    image_jobs,
    is_complete_label_file,
    is_complete_png,
    legacy_superpixel_path,
    method_key,
    open_labels,
    parse_shard,
    read_label_png,
    read_labels,
    read_segment_count,
    shard_jobs,
    superpixel_dir,
    superpixel_path,
    write_label_png,
    write_labels,
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
    assert superpixel_path(tmp_path, "samples/CAM_BACK/a__b.jpg") == tmp_path / "samples" / "CAM_BACK" / "a__b.runs"
    legacy = legacy_superpixel_path(tmp_path, "CAM_BACK", "samples/CAM_BACK/a__b.jpg")
    assert legacy == tmp_path / "CAM_BACK" / "a__b.png"
    for bad in ("/abs/a.jpg", "../a.jpg", "samples/../../a.jpg"):
        with pytest.raises(DataError, match="relative to the data root"):
            superpixel_path(tmp_path, bad)
    with pytest.raises(SlidrError, match="unknown method 'quickshift'"):
        method_key("quickshift")


def test_compute_then_resume_skips_finished_and_redoes_partial(tmp_path):
    jobs = _write_images(tmp_path / "data", 4)
    folder = tmp_path / "sp" / method_key("slic", 20)
    report = compute_index_superpixels(jobs, folder, "slic", 20, show_progress=False)
    assert (report["images"], report["computed"], report["skipped"]) == (4, 4, 0)
    paths = [superpixel_path(folder, job.image) for job in jobs]
    counts = [len(np.unique(read_labels(path))) for path in paths]
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
    assert all(is_complete_label_file(path) for path in paths) and not stale.exists()
    assert np.array_equal(read_labels(paths[1]), compute_superpixels(_blocky_image(1), "slic", 20))


def test_two_workers_write_the_same_files(tmp_path):
    jobs = _write_images(tmp_path / "data", 4)
    one = compute_index_superpixels(jobs, tmp_path / "one", "fh", workers=1, show_progress=False)
    two = compute_index_superpixels(jobs, tmp_path / "two", "fh", workers=2, show_progress=False)
    assert one["segments_max"] == two["segments_max"]
    for job in jobs:
        assert superpixel_path(tmp_path / "one", job.image).read_bytes() == \
            superpixel_path(tmp_path / "two", job.image).read_bytes()


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


# --------------------------------------------------------------------------------------------------------------
# Label files (row runs): round trips, sampling, legacy PNGs, paths that cannot collide.
# --------------------------------------------------------------------------------------------------------------


def _slic_like(seed, height=60, width=90, segments=40, labelled=None):
    """Labels of blobby regions (runs along rows, like SLIC's), ids 0..segments-1 (or drawn from `labelled`)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform([0, 0], [height, width], (segments, 2))
    rows, cols = np.mgrid[:height, :width]
    nearest = np.argmin((rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2, axis=-1)
    return nearest if labelled is None else np.asarray(labelled)[nearest]


@pytest.mark.parametrize("compress", [True, False])
def test_label_file_round_trip_switches_between_8_and_16_bits(tmp_path, compress):
    small = _slic_like(0)  # ids < 256: one byte per run
    large = _slic_like(1, labelled=np.arange(40) * 1600 + 7)  # ids up to 62,407: two bytes
    large[0, :3] = 65535
    for name, labels, label_bytes in (("small", small, 1), ("large", large, 2)):
        path = tmp_path / f"{name}.runs"
        write_labels(path, labels, compress=compress)
        header = RUNS_HEADER.unpack(path.read_bytes()[:RUNS_HEADER.size])
        assert header[2] == label_bytes and header[3] == int(compress)
        read = read_labels(path)
        assert read.dtype == (np.uint8 if label_bytes == 1 else np.uint16) and np.array_equal(read, labels)
        assert read_segment_count(path) == len(np.unique(labels)) and is_complete_label_file(path)
    assert read_segment_count(tmp_path / "small.runs") == 40
    one_column = np.arange(7).reshape(7, 1)  # every row a single run
    write_labels(tmp_path / "column.runs", one_column, segments=99)
    assert np.array_equal(read_labels(tmp_path / "column.runs"), one_column)
    assert read_segment_count(tmp_path / "column.runs") == 99  # as given, not counted


def test_sampling_a_crop_equals_reading_everything_then_cropping(tmp_path):
    rng = np.random.default_rng(3)
    for compress, labels in ((True, _slic_like(4)), (False, _slic_like(5, labelled=rng.permutation(300)[:40]))):
        write_labels(tmp_path / "map.runs", labels, compress=compress)
        stored = open_labels(tmp_path / "map.runs")
        assert stored.shape == labels.shape and stored.segments == len(np.unique(labels))
        for _ in range(30):  # the datasets' crops: rows and columns increasing, columns reversed when flipped
            transform = ImageTransform(*random_crop_box(labels.shape, rng, 0.1, (0.5, 2.0)),
                                       flip=bool(rng.random() < 0.5))
            out_hw = (int(rng.integers(1, 90)), int(rng.integers(1, 130)))  # shrinking and enlarging
            assert np.array_equal(stored.sample(*source_indices(transform, out_hw)),
                                  transform_labels(labels, transform, out_hw))
        for _ in range(10):  # any order, repeats
            rows, cols = rng.integers(0, 60, 25), rng.integers(0, 90, 33)
            assert np.array_equal(stored.sample(rows, cols), labels[rows[:, None], cols[None, :]])
        assert stored.sample(np.zeros(0, int), np.arange(5)).shape == (0, 5)
        with pytest.raises(SlidrError, match="outside the image"):
            stored.sample(np.array([60]), np.array([0]))


def test_legacy_label_pngs_are_still_read(tmp_path):
    labels = _slic_like(6, labelled=np.arange(40) * 700)  # 16-bit ids
    write_label_png(tmp_path / "old.png", labels)
    stored = open_labels(tmp_path / "old.png")
    assert stored.segments == 40 and np.array_equal(stored.read(), labels)
    rows, cols = source_indices(ImageTransform(5, 7, 40, 60, flip=True), (20, 30))
    sampled = stored.sample(rows, cols)
    assert sampled.dtype == np.uint16 and sampled.dtype.isnative
    assert np.array_equal(sampled, labels[rows[:, None], cols[None, :]])
    assert read_segment_count(tmp_path / "old.png") == 40 and is_complete_label_file(tmp_path / "old.png")


def test_corrupt_or_truncated_label_files_are_clear_errors(tmp_path):
    labels = _slic_like(7)
    data = encode_labels(labels, compress=False)
    path = tmp_path / "map.runs"
    path.write_bytes(data[:-5])
    assert not is_complete_label_file(path)
    with pytest.raises(DataError, match="map.runs is truncated"):
        open_labels(path)
    header, payload = list(RUNS_HEADER.unpack(data[:RUNS_HEADER.size])), bytearray(data[RUNS_HEADER.size:])
    first_end = 4 * 61  # the first run's end column, after the (H + 1) row starts
    payload[first_end:first_end + 2] = (90).to_bytes(2, "little")  # the first run now spans the whole row ...
    path.write_bytes(RUNS_HEADER.pack(*header) + payload)
    with pytest.raises(DataError, match="map.runs is corrupt .checksum"):
        open_labels(path)
    header[-1] = zlib.crc32(payload)  # ... with a matching checksum: the next run ends before it
    path.write_bytes(RUNS_HEADER.pack(*header) + payload)
    stored = open_labels(path)
    with pytest.raises(DataError, match="map.runs is corrupt .its runs do not tile"):
        stored.read()
    with pytest.raises(DataError, match="map.runs is corrupt .its runs do not tile"):
        stored.sample(np.arange(60), np.arange(90))
    last_end = 4 * 61 + 2 * (RUNS_HEADER.unpack(data[:RUNS_HEADER.size])[6] - 1)
    payload = bytearray(data[RUNS_HEADER.size:])
    payload[last_end:last_end + 2] = (89).to_bytes(2, "little")  # the last row ends short of the width
    header[-1] = zlib.crc32(payload)
    path.write_bytes(RUNS_HEADER.pack(*header) + payload)
    with pytest.raises(DataError, match="map.runs is corrupt .its runs do not tile"):
        open_labels(path)
    path.write_bytes(encode_labels(labels)[:-3] + b"xyz")  # damaged zlib stream
    with pytest.raises(DataError, match="map.runs is corrupt"):
        open_labels(path)
    path.write_bytes(b"GIF89a" + bytes(40))
    with pytest.raises(DataError, match="neither a slidr label file nor a PNG"):
        open_labels(path)
    with pytest.raises(DataError, match="gone.runs does not exist"):
        open_labels(tmp_path / "gone.runs")
    with pytest.raises(SlidrError, match="at most 65535 pixels wide"):
        encode_labels(np.zeros((1, 65536), np.uint8))


def _sequence_jobs(root):
    """Two SemanticKITTI-like sequences whose first images share their file name but not their content."""
    jobs = []
    for sequence in ("00", "01"):
        relative = f"sequences/{sequence}/image_2/000000.png"
        (root / relative).parent.mkdir(parents=True)
        Image.fromarray(_blocky_image(int(sequence) + 10)).save(root / relative)
        jobs.append(SuperpixelJob("image_2", relative, root / relative))
    return jobs


def test_images_of_two_sequences_get_their_own_superpixel_files(tmp_path):
    jobs = _sequence_jobs(tmp_path / "data")
    folder = tmp_path / "sp" / method_key("slic", 20)
    report = compute_index_superpixels(jobs, folder, "slic", 20, show_progress=False)
    assert report["computed"] == 2
    stored = [read_labels(superpixel_path(folder, job.image)) for job in jobs]
    assert superpixel_path(folder, jobs[0].image) != superpixel_path(folder, jobs[1].image)
    for job, labels in zip(jobs, stored):
        assert np.array_equal(labels, compute_superpixels(read_image(job.source), "slic", 20))
    assert not np.array_equal(stored[0], stored[1])
    # label PNGs of the legacy layout, where both sequences shared image_2/000000.png, are not trusted there ...
    write_label_png(legacy_superpixel_path(folder, "image_2", jobs[0].image), stored[1])
    superpixel_path(folder, jobs[0].image).unlink()
    with pytest.raises(DataError, match=r"different semantickitti sequences share one file.*recompute"):
        find_superpixel_file(folder, "image_2", jobs[0].image, "semantickitti")
    again = compute_index_superpixels(jobs, folder, "slic", 20, show_progress=False)  # ... nor converted
    assert (again["computed"], again["converted"]) == (1, 0)
    assert np.array_equal(read_labels(superpixel_path(folder, jobs[0].image)), stored[0])


def test_legacy_folders_are_read_then_converted_where_their_layout_is_unique(tmp_path):
    jobs = _write_images(tmp_path / "data", 3)
    folder = tmp_path / "sp" / method_key("slic", 20)
    legacy = [_slic_like(seed, 48, 80, 12) for seed in range(3)]  # not what SLIC would compute: no recomputation
    for job, labels in zip(jobs, legacy):
        write_label_png(legacy_superpixel_path(folder, job.channel, job.image), labels)
    found = find_superpixel_file(folder, jobs[0].channel, jobs[0].image, "nuscenes")
    assert found == legacy_superpixel_path(folder, jobs[0].channel, jobs[0].image)
    assert np.array_equal(read_labels(found), legacy[0])
    assert find_superpixel_file(folder, "CAM_9", "samples/CAM_9/none.jpg", "nuscenes") is None
    report = compute_index_superpixels(jobs, folder, "slic", 20, show_progress=False, convert_legacy=True)
    assert (report["computed"], report["converted"], report["skipped"]) == (0, 3, 0)
    assert report["segments_max"] == 12
    for job, labels in zip(jobs, legacy):
        assert find_superpixel_file(folder, job.channel, job.image, "nuscenes") == superpixel_path(folder, job.image)
        assert np.array_equal(read_labels(superpixel_path(folder, job.image)), labels)
    report = compute_index_superpixels(jobs, folder, "slic", 20, show_progress=False, convert_legacy=True)
    assert (report["computed"], report["converted"], report["skipped"]) == (0, 0, 3)
