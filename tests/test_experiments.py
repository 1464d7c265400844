"""The experiment runner (slidr.analysis.runner) and its commands: slidr ablate, slidr reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from slidr.analysis import runner
from slidr.cli.main import main
from slidr.config import AblationConfig, PaperCellsConfig, load_config, packaged_configs
from slidr.errors import ConfigError


# --- the runner ---------------------------------------------------------------------------------------------------
def test_statistics_match_numpy_and_handle_missing_values():
    values = [31.0, 35.5, 33.2]
    stats = runner.statistics(values)
    assert stats["mean"] == pytest.approx(np.mean(values)) and stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert runner.statistics([4.0])["std"] is None and runner.statistics([])["mean"] is None
    assert runner.statistics([2.0, None, 4.0])["mean"] == 3.0
    assert runner.measured_text(stats) == f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"
    assert runner.measured_text({"mean": None, "std": None}) == "n/a"


def test_cells_are_read_back_resumed_or_started(tmp_path, caplog):
    calls = []

    def work(value):
        def run(folder: Path, resume: bool) -> dict:
            calls.append((folder.name, resume))
            folder.mkdir(parents=True, exist_ok=True)
            return {"value": value}
        return run

    done, interrupted = tmp_path / "a", tmp_path / "b"
    done.mkdir()
    (done / "cell.json").write_text(json.dumps({"value": 1.0}))
    interrupted.mkdir()
    (interrupted / "pretrain").mkdir()  # a finished step, no summary
    cells = [runner.Cell(name, tmp_path / name, work(v), "cell.json") for name, v in (("a", 9.0), ("b", 2.0),
                                                                                        ("c", 3.0))]
    assert [runner.cell_state(c.folder, "cell.json") for c in cells] == ["done", "interrupted", "new"]
    with caplog.at_level("INFO", logger="slidr"):
        summaries = runner.run_cells(cells, "test")
    assert calls == [("b", True), ("c", False)]
    assert summaries["a"] == {"value": 1.0} and summaries["b"]["value"] == 2.0
    assert json.loads((tmp_path / "c" / "cell.json").read_text())["value"] == 3.0
    text = caplog.text
    assert "test 1/3 a: finished earlier, read back" in text and "test 2/3 b: resuming" in text
    assert "test 3/3 c: starting" in text
    calls.clear()
    runner.run_cells(cells, "test")
    assert calls == []
    with pytest.raises(ConfigError, match="share the name a"):
        runner.run_cells([cells[0], cells[0]], "test")


def test_table_files_are_written(tmp_path):
    paths = runner.write_table_files(
        tmp_path, "t", "# t\n", {"x": 1},
        lambda path: runner.grouped_bar_chart(path, ["g1", "g2"], {"s": [{"mean": 1.0, "std": 0.5},
                                                                         {"mean": None, "std": None}]},
                                              "title", references={"s": [2.0, None]}))
    assert paths["markdown"].read_text() == "# t\n" and json.loads(paths["json"].read_text()) == {"x": 1}
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"


# --- packaged cell definitions ------------------------------------------------------------------------------------
def test_paper_families_name_existing_configs_and_the_papers_numbers():
    from slidr.analysis.paper import paper_families
    from slidr.config import resolve_config_path

    table1 = paper_families("table1")
    assert [f.label for f in table1.values()] == ["Random init.", "PointContrast†", "DepthContrast†", "PPKT†", "SLidR"]
    # the authors' README, "Few-shot semantic segmentation"
    assert [c.paper for c in table1["table1_slidr"].columns.values()] == [38.8, 38.3, 44.6]
    assert [c.paper for c in table1["table1_random"].columns.values()] == [8.1, 30.3, 39.5]
    assert [f.pretrain for f in paper_families("table6").values()] == [
        "pretrain/slidr_no_superpixels.yaml", "pretrain/slidr_slic100.yaml", "pretrain/slidr_minkunet.yaml",
        "pretrain/slidr_slic200.yaml", "pretrain/slidr_fh.yaml"]
    efficiency = paper_families("efficiency")
    assert [c.paper for c in efficiency["efficiency_slidr"].columns.values()] == [39.0, 52.2, 58.8, 66.2, 74.6]
    for name in packaged_configs():
        if name.startswith("paper/"):
            family = load_config(PaperCellsConfig, name)
            for config in [family.pretrain] * (family.pretrain is not None) + [
                    c.downstream for c in family.columns.values()]:
                resolve_config_path(config)
    with pytest.raises(ConfigError, match="unknown table 'table9'"):
        paper_families("table9")


def test_ablation_cells_follow_the_base_teacher(tmp_path):
    from slidr.analysis.ablation import describe, plan

    cfg = load_config(AblationConfig, "ablation/demo_cpu.yaml", ["pretrain.image.weights=some/teacher.pth"])
    runs = {run.cell: run for run in plan(cfg, tmp_path / "index.npz", tmp_path, list(cfg.cells), [0])}
    assert runs["slidr"].pretrain.image.weights == "some/teacher.pth"
    assert runs["ppkt"].pretrain.image.weights == "some/teacher.pth" and runs["ppkt"].pretrain.method == "ppkt"
    assert runs["random_teacher"].pretrain.image.weights is None
    assert runs["random_teacher"].pretrain.image.encoder == runs["slidr"].pretrain.image.encoder
    assert runs["random_init"].pretrain is None and runs["random_init"].probe.pretrained is None
    assert {name: describe(run)["superpixels"] for name, run in runs.items()} == {
        "slidr": "slic150", "random_teacher": "slic150", "no_superpixels": "none", "slic100": "slic100",
        "slic200": "slic200", "fh": "fh", "ppkt": "none", "stslidr": "slic150", "scalr": "none", "random_init": "none"}
    assert all(run.probe.data.val_split == "val" and run.probe.data.train_split == "train" for run in runs.values())


# --- commands -----------------------------------------------------------------------------------------------------
def test_ablate_bad_input_is_one_line(tmp_path, capsys):
    code = main(["ablate", "--out", str(tmp_path / "o"), "--world", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--world" in err[0] and "no such folder" in err[0]
    code = main(["ablate", "--out", str(tmp_path / "o"), "--smoke", "--cells", "slidr", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown cell 'nope'" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["ablate", "--out", str(tmp_path / "o"), "--world", str(empty)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no synthetic world there" in err[0]
    assert not (tmp_path / "o" / "runs").exists()


def test_reproduce_dry_run_lists_runs_and_needs_its_data(tmp_path, capsys):
    assert main(["reproduce", "table1", "--out", str(tmp_path / "r"), "--dry-run", "--seeds", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("pretrain ") for line in lines) == 4  # PointContrast, DepthContrast, PPKT, SLidR
    assert sum(line.startswith("table1 ") for line in lines) == 5 * 3 * 3
    assert any("table1_slidr/finetune_semantickitti_1pct seed 2: downstream/finetune_semantickitti.yaml" in line
               and "100 epochs" in line for line in lines)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    assert main(["reproduce", "table1", "--out", str(tmp_path / "r"), "--dry-run", "--rows", "table1_slidr"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + 3 * 3 and all("table1_slidr" in line for line in lines[1:])
    assert main(["reproduce", "table1", "--out", str(tmp_path / "r"), "--print-config", "--rows", "table1_slidr"]) == 0
    documents = [yaml.safe_load(part) for part in capsys.readouterr().out.split("---\n")]
    assert len(documents) == 1 + 3  # the pretraining, then one per column
    assert documents[0]["trainer"]["batch_size"] == 4 and documents[0]["data"]["train_split"] == "parametrizing"
    assert documents[2]["trainer"]["epochs"] == 100 and documents[2]["pretrained"].endswith("pretrained.pt")
    code = main(["reproduce", "table1", "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--dataroot DIR is required" in err[0]
    code = main(["reproduce", "table1", "--out", str(tmp_path / "r2"), "--smoke", "--rows", "table1_slidr", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'nope' not a row of table1" in err[0]
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())


@pytest.mark.slow
def test_ablate_smoke_writes_the_table_and_resumes(tiny_nuscenes_world, tmp_path, capsys):
    import shutil

    world = tmp_path / "world"
    shutil.copytree(tiny_nuscenes_world, world)
    out = tmp_path / "ablation"
    args = ["ablate", "--world", str(world), "--out", str(out), "--smoke", "--seeds", "2", "--cells", "slidr",
            "random_init"]
    assert main(args) == 0
    table = json.loads((out / "ablation.json").read_text())
    assert [cell["name"] for cell in table["cells"]] == ["slidr", "random_init"]
    for cell in table["cells"]:
        assert {"name", "teacher", "superpixels", "method", "miou_mean", "miou_std", "seeds"} <= set(cell)
        assert cell["seeds"] == [0, 1] and len(cell["miou_values"]) == 2
        assert cell["miou_mean"] == pytest.approx(np.mean(cell["miou_values"]))
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG" and "## Distillation method" in (
        out / "ablation.md").read_text()
    # a second run reads everything back; an interrupted cell (its summary gone) is resumed from its finished runs
    (out / "runs" / "slidr" / "seed1" / "cell.json").unlink()
    capsys.readouterr()
    assert main(args) == 0
    again = json.loads((out / "ablation.json").read_text())
    assert again["cells"][0]["miou_values"] == table["cells"][0]["miou_values"]


@pytest.mark.slow
def test_ablate_smoke_runs_every_cell(tiny_nuscenes_world, tmp_path):
    """Each packaged cell (teachers, superpixel sets computed on demand, methods, random init) runs end to end and
    lands in its section of the table with the keys the JSON promises (about 100 s on 2 cores)."""
    import shutil

    from slidr.config import AblationConfig, load_config

    world = tmp_path / "world"
    shutil.copytree(tiny_nuscenes_world, world)
    out = tmp_path / "ablation"
    assert main(["ablate", "--world", str(world), "--out", str(out), "--smoke", "--seeds", "1"]) == 0
    table = json.loads((out / "ablation.json").read_text())
    packaged = list(load_config(AblationConfig, "ablation/demo_cpu.yaml").cells)
    assert [cell["name"] for cell in table["cells"]] == packaged
    by_name = {cell["name"]: cell for cell in table["cells"]}
    assert all(cell["miou_mean"] is not None and cell["seeds"] == [0] for cell in table["cells"])
    assert {by_name[name]["superpixels"] for name in ("slic100", "slidr", "slic200", "fh", "no_superpixels")} == \
        {"slic100", "slic150", "slic200", "fh", "none"}
    assert {by_name[name]["method"] for name in ("ppkt", "stslidr", "scalr")} == {"ppkt", "stslidr", "scalr"}
    assert "random" in by_name["random_teacher"]["teacher"] and by_name["random_init"]["teacher"] in (None, "none")


@pytest.mark.slow
def test_reproduce_table1_smoke(tmp_path):
    out = tmp_path / "table1"
    assert main(["reproduce", "table1", "--out", str(out), "--smoke", "--seeds", "1"]) == 0
    table = json.loads((out / "table1.json").read_text())
    assert [row["key"] for row in table["rows"]] == ["table1_random", "table1_pointcontrast", "table1_depthcontrast",
                                                     "table1_ppkt", "table1_slidr"]
    assert table["cells"]["table1_slidr"]["probe_nuscenes"]["paper"] == 38.8
    assert all(cell["mean"] is not None for row in table["cells"].values() for cell in row.values())
    assert "| SLidR |" in (out / "table1.md").read_text() and (out / "table1.png").is_file()


@pytest.mark.slow
def test_reproduce_detection_smoke(tmp_path):
    out = tmp_path / "detection"
    assert main(["reproduce", "detection", "--out", str(out), "--smoke", "--seeds", "1"]) == 0
    table = json.loads((out / "detection" / "detection_table.json").read_text())
    assert table["pretrainings"] == ["random", "ppkt", "slidr"] and table["paper"]["slidr"]["10%"] == 61.4
    assert (out / "detection" / "detection_table.png").is_file()
    assert len(list((out / "pretrain").iterdir())) == 2  # PPKT and SLidR, as in Table 1
