"""Giving a command the wrong kind of run folder or file (issue "Trust", item 12).

The message says what the command got and what it needs (never "unknown key 'method'"), on one line, exit 2.
"""

from __future__ import annotations

import pytest

from slidr.cli.main import EXIT_FAILURE, EXIT_USAGE, main
from slidr.config import DownstreamConfig, PretrainConfig, load_config, save_config, with_changes
from slidr.engine.checkpoint import export_pretrained, save_atomic


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A pretraining run, a probe run, a probe run without its model, a PointContrast export, a world-like folder,
    a plain state dict."""
    from slidr.methods.downstream import resolve_backbone
    from slidr.models.image import build_image_model
    from slidr.models.unet import build_backbone

    root = tmp_path_factory.mktemp("kinds")
    pretrain_cfg = load_config(PretrainConfig, "pretrain/demo_cpu.yaml")
    network = build_backbone(pretrain_cfg.backbone)
    pretraining = root / "pretrain-run"
    pretraining.mkdir()
    save_config(pretrain_cfg, pretraining / "config.yaml")
    export_pretrained(pretraining / "pretrained.pt", network, build_image_model(pretrain_cfg.image).head,
                      pretrain_cfg, "slidr")
    probe_cfg = load_config(DownstreamConfig, "downstream/probe_demo_cpu.yaml", ["backbone.name=minkunet14_half"])
    probe = root / "probe-run"
    probe.mkdir()
    save_config(probe_cfg, probe / "config.yaml")
    classifier = build_backbone(with_changes(resolve_backbone(probe_cfg), {"out_channels": 16}))
    export_pretrained(probe / "model.pt", classifier, None, probe_cfg, "probe")
    unfinished = root / "unfinished-finetune"
    unfinished.mkdir()
    save_config(with_changes(probe_cfg, {"mode": "finetune"}), unfinished / "config.yaml")
    pointcontrast_cfg = with_changes(pretrain_cfg, {"method": "pointcontrast"})
    export_pretrained(root / "pointcontrast.pt", network, None, pointcontrast_cfg, "pointcontrast")
    save_atomic(network.state_dict(), root / "plain.pt")
    world = root / "world"
    world.mkdir()
    (world / "synth_summary.json").write_text("{}")
    return {"pretraining": pretraining, "probe": probe, "unfinished": unfinished, "world": world, "root": root}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "unknown key" not in err[0] and "Traceback" not in err[0]
    return err[0]


def test_evaluate_says_what_it_got(folders, tmp_path, capsys):
    cases = [
        (folders["pretraining"], EXIT_USAGE, ["is a pretraining run of slidr pretrain",
                                              "slidr evaluate needs the run folder of slidr probe / finetune",
                                              f"slidr probe --pretrained {folders['pretraining'] / 'pretrained.pt'}"]),
        (folders["world"], EXIT_USAGE, ["not a probe/finetune run folder (a synthetic world of slidr synth)"]),
        (folders["probe"] / "model.pt", EXIT_USAGE, ["not a probe/finetune run folder (it is a file)"]),
        (tmp_path / "absent", EXIT_USAGE, ["not a probe/finetune run folder (it does not exist)"]),
        (folders["unfinished"], EXIT_FAILURE, ["has no model.pt: its training has not finished",
                                               f"slidr finetune --out {folders['unfinished']} --resume"]),
    ]
    for path, code, words in cases:
        assert main(["evaluate", str(path)]) == code, path
        line = _one_line(capsys)
        for word in words:
            assert word in line, (path, line)


def test_analysis_commands_say_what_they_got(folders, tmp_path, capsys):
    pretraining, probe, root = folders["pretraining"], folders["probe"], folders["root"]
    cases = [
        (["knn", "--pretrained", str(probe / "model.pt")],
         ["is the model of a probe run (a segmentation classifier)", "slidr knn needs the pretrained.pt of a slidr "
                                                                     "pretrain run"]),
        (["similarity", "--pretrained", str(probe / "model.pt"), "--out", str(tmp_path / "s.png")],
         ["is the model of a probe run", "slidr similarity needs the pretrained.pt"]),
        (["knn", "--pretrained", str(pretraining)],
         ["is a folder (a pretraining run of slidr pretrain), not a file; did you mean "
          f"{pretraining / 'pretrained.pt'}?"]),
        (["knn", "--pretrained", str(root / "plain.pt")], ["holds weights without a pretraining config"]),
        (["similarity", "--pretrained", str(root / "pointcontrast.pt"), "--out", str(tmp_path / "s.png")],
         ["is the pretraining of pointcontrast, which has no image head"]),
        (["report", str(pretraining), "--out", str(tmp_path / "report")],
         ["is a pretraining run of slidr pretrain, which has no evaluation", "probe it first"]),
        (["probe", "--pretrained", str(probe), "--out", str(tmp_path / "p")],
         [f"is a folder (a linear-probing run of slidr probe), not a file; did you mean {probe / 'model.pt'}?"]),
    ]
    for argv, words in cases:
        if argv[0] == "knn":
            argv = [*argv, "--out", str(tmp_path / "knn")]
        assert main(argv) == EXIT_USAGE, argv
        line = _one_line(capsys)
        for word in words:
            assert word in line, (argv, line)
    assert not (tmp_path / "knn").exists() and not (tmp_path / "p").exists() and not (tmp_path / "s.png").exists()
