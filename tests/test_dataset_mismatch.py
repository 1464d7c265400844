"""An index evaluated or trained as another dataset is refused (issue "Trust", item 3).

The index knows its format. Commands whose config names the dataset (``data.dataset``: pretrain, probe, finetune,
evaluate) refuse a contradiction with one line naming the index, its format and the setting; commands that read
an index given on their command line with a pretraining's settings (knn, similarity) take the dataset from the
index. An index without point labels (KITTI object boxes) is refused by both, naming what it holds.
"""

from __future__ import annotations

import pytest

from slidr.cli.main import EXIT_FAILURE, main
from slidr.config import DataConfig, PretrainConfig, load_config, with_changes
from slidr.data.index import load_index, write_index
from slidr.errors import DataError, SlidrError


@pytest.fixture(scope="module")
def indexes(tiny_nuscenes_world, tiny_kitti_world, tmp_path_factory):
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.data.prepare_semantickitti import prepare_semantickitti

    folder = tmp_path_factory.mktemp("mismatch")
    prepare_nuscenes(tiny_nuscenes_world, "v1.0-trainval", folder / "nuscenes.npz")
    prepare_semantickitti(tiny_kitti_world, folder / "kitti.npz")
    write_index(folder / "objects.npz", {"format": "kitti_object", "root": str(folder), "scenes": {"0": {}},
                                         "splits": {"train": ["0"]}},
                [{"token": "000000", "scene": "0", "lidar": "velodyne/000000.bin", "cameras": {}}])
    return {"nuscenes": folder / "nuscenes.npz", "semantickitti": folder / "kitti.npz",
            "kitti_object": folder / "objects.npz"}


def _data(index, dataset):
    return DataConfig(index=str(index), dataset=dataset, superpixels={"method": "none"}, cameras=["CAM_FRONT"],
                      augment={"enabled": False})


MISMATCHES = [("nuscenes", "semantickitti"), ("semantickitti", "nuscenes")]


@pytest.mark.parametrize("held, named", MISMATCHES)
def test_datasets_refuse_an_index_of_another_dataset(indexes, held, named):
    from slidr.data.datasets import DownstreamDataset, PretrainDataset

    expected = (rf"index .*{indexes[held].name} holds {held} samples but data.dataset is '{named}'; set "
                rf"data.dataset={held} or use a {named} index")
    for dataset_class in (DownstreamDataset, PretrainDataset):
        with pytest.raises(DataError, match=expected):
            dataset_class(indexes[held], None, _data(indexes[held], named))


def test_an_index_without_point_labels_is_named(indexes):
    from slidr.data.datasets import DownstreamDataset

    for named in ("nuscenes", "semantickitti"):
        with pytest.raises(DataError, match=r"holds kitti_object samples \(3D boxes, no point labels\); "
                                            rf"data.dataset is '{named}'"):
            DownstreamDataset(indexes["kitti_object"], None, _data(indexes["kitti_object"], named))


@pytest.mark.parametrize("method", ["pointcontrast", "depthcontrast"])
def test_scan_pair_pretraining_refuses_it_too(indexes, method, tmp_path):
    from slidr.data.scan_pairs import PointContrastPairs, TwoViews

    cfg = load_config(PretrainConfig, None, [f"method={method}", f"data.index={indexes['semantickitti']}",
                                             "data.dataset=nuscenes", f"pairs.cache={tmp_path / 'pairs.json'}"])
    with pytest.raises(DataError, match="holds semantickitti samples but data.dataset is 'nuscenes'"):
        (PointContrastPairs if method == "pointcontrast" else TwoViews)(cfg)
    assert not (tmp_path / "pairs.json").exists()  # refused before any pair was selected


def test_evaluate_with_an_index_of_another_dataset_is_one_line(indexes, tmp_path, capsys):
    from slidr.config import DownstreamConfig, save_config
    from slidr.engine.checkpoint import export_pretrained
    from slidr.methods.downstream import resolve_backbone
    from slidr.models.unet import build_backbone

    run = tmp_path / "probe"
    run.mkdir()
    cfg = load_config(DownstreamConfig, None, [f"data.index={indexes['nuscenes']}", "backbone.name=minkunet14_half",
                                               "backbone.in_channels=1", "trainer.accelerator=cpu"])
    save_config(cfg, run / "config.yaml")
    backbone = with_changes(resolve_backbone(cfg), {"out_channels": 16})
    export_pretrained(run / "model.pt", build_backbone(backbone), None, cfg, "probe")
    for index, held in ((indexes["semantickitti"], "semantickitti"), (indexes["kitti_object"], "kitti_object")):
        assert main(["evaluate", str(run), f"data.index={index}"]) == EXIT_FAILURE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"holds {held} samples" in err[0] and "data.dataset is 'nuscenes'" in err[0]
        assert not (run / "eval-val").exists()


def test_knn_and_similarity_take_the_dataset_from_the_index(indexes, tmp_path):
    from slidr.analysis.knn import knn_sequence
    from slidr.analysis.similarity import similarity_figure
    from slidr.engine.checkpoint import export_pretrained
    from slidr.models.image import build_image_model
    from slidr.models.unet import build_backbone

    cfg = load_config(PretrainConfig, "pretrain/demo_cpu.yaml", [f"data.index={indexes['nuscenes']}"])
    teacher = build_image_model(cfg.image)
    pretrained = export_pretrained(tmp_path / "pretrained.pt", build_backbone(cfg.backbone), teacher.head, cfg,
                                   "slidr", model_images_encoder=teacher.encoder)
    # a SemanticKITTI index with the nuScenes pretraining: the classes are SemanticKITTI's (no 'pedestrian' there)
    with pytest.raises(SlidrError, match=r"classes of semantickitti: .*person"):
        knn_sequence(pretrained, tmp_path / "knn", index=str(indexes["semantickitti"]),
                     classes=["car", "pedestrian"])
    for run in (lambda: knn_sequence(pretrained, tmp_path / "knn", index=str(indexes["kitti_object"])),
                lambda: similarity_figure(pretrained, tmp_path / "sim.png", index=str(indexes["kitti_object"]))):
        with pytest.raises(DataError, match=r"kitti_object samples \(3D boxes, no point labels\); slidr "
                                            r"(knn|similarity) needs a nuScenes or SemanticKITTI index"):
            run()
    assert not (tmp_path / "knn").exists() and not (tmp_path / "sim.png").exists()


def test_loaded_indexes_know_their_format(indexes):
    assert {name: load_index(path).format for name, path in indexes.items()} == {
        "nuscenes": "nuscenes", "semantickitti": "semantickitti", "kitti_object": "kitti_object"}
