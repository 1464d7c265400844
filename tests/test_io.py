"""File readers: real files, and every bad-input case (truncated, missing, NaN, label length mismatch)."""

from __future__ import annotations

import numpy as np
import pytest

from slidr.data.io import open_image, read_image, read_nuscenes_lidarseg, read_points, read_semantickitti_labels
from slidr.errors import DataError

LIDAR = "samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
FRONT = "samples/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg"


def test_read_points_real_keyframe(nuscenes_keyframe):
    read = read_points(nuscenes_keyframe / LIDAR, 5)
    raw = np.fromfile(nuscenes_keyframe / LIDAR, dtype=np.float32).reshape(-1, 5)
    assert read.points.shape == (34688, 5) and read.points.dtype == np.float32
    assert read.num_dropped == 0 and read.kept.all()
    np.testing.assert_array_equal(read.points, raw)


def test_truncated_point_file_names_file(tmp_path):
    path = tmp_path / "scan.bin"
    path.write_bytes(np.zeros((10, 5), np.float32).tobytes() + b"\x00\x01\x02")
    with pytest.raises(DataError, match="scan.bin.*not a multiple of the record size 20"):
        read_points(path, 5)


def test_point_file_of_wrong_record_size(tmp_path):
    path = tmp_path / "kitti.bin"
    np.zeros((3, 4), np.float32).tofile(path)  # 48 bytes: a 4-value file read as 5 values
    with pytest.raises(DataError, match="kitti.bin"):
        read_points(path, 5)


def test_missing_and_empty_point_files(tmp_path):
    with pytest.raises(DataError, match="absent.bin does not exist"):
        read_points(tmp_path / "absent.bin", 4)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty.bin is empty"):
        read_points(tmp_path / "empty.bin", 4)


def test_non_finite_points_are_dropped_and_counted(tmp_path):
    points = np.arange(24, dtype=np.float32).reshape(6, 4)
    points[1, 0] = np.nan
    points[4, 3] = np.inf
    points[5, 2] = -np.inf
    path = tmp_path / "nan.bin"
    points.tofile(path)
    read = read_points(path, 4)
    assert read.num_dropped == 3
    np.testing.assert_array_equal(read.kept, [True, False, True, True, False, False])
    np.testing.assert_array_equal(read.points, points[[0, 2, 3]])


def test_nuscenes_lidarseg_mapping_and_length(tmp_path):
    # raw category index -> expected evaluation index, written out by hand from the lidarseg challenge table
    expected = {0: 0, 1: 0, 2: 7, 5: 0, 9: 1, 12: 8, 13: 0, 14: 2, 15: 3, 17: 4, 18: 5, 21: 6, 22: 9, 23: 10,
                24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 0, 30: 16, 31: 0}
    raw = np.array(list(expected), dtype=np.uint8)
    path = tmp_path / "token_lidarseg.bin"
    raw.tofile(path)
    np.testing.assert_array_equal(read_nuscenes_lidarseg(path, raw.size), list(expected.values()))
    with pytest.raises(DataError, match=r"token_lidarseg.bin has 22 labels .* but its scan has 23 points"):
        read_nuscenes_lidarseg(path, raw.size + 1)
    with pytest.raises(DataError, match="does not exist"):
        read_nuscenes_lidarseg(tmp_path / "none.bin", 3)


def test_semantickitti_label_length_mismatch(tmp_path):
    path = tmp_path / "000000.label"
    np.array([40, 10 | (7 << 16), 0], dtype=np.uint32).tofile(path)
    np.testing.assert_array_equal(read_semantickitti_labels(path, 3), [9, 1, 0])
    with pytest.raises(DataError, match="000000.label has 3 labels"):
        read_semantickitti_labels(path, 4)


def test_read_image_real_and_bad(nuscenes_keyframe, tmp_path):
    image = read_image(nuscenes_keyframe / FRONT)
    assert image.shape == (900, 1600, 3) and image.dtype == np.uint8
    with pytest.raises(DataError, match="missing.jpg does not exist"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="garbage.jpg cannot be read"):
        open_image(tmp_path / "garbage.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((nuscenes_keyframe / FRONT).read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated.jpg"):
        read_image(truncated)
