"""``slidr detect``: fine-tune a (pretrained) 3D backbone with a CenterPoint BEV head on KITTI object detection.

The detector (:class:`slidr.models.detection.Detector`) is the backbone of the pretraining, loaded with the same
:func:`slidr.engine.checkpoint.load_backbone` as the segmentation probes (the pretrained file's voxel settings
must be ``data.voxel``), and the BEV head of ``head``. Training: CenterPoint's targets and loss
(:mod:`slidr.methods.detection`) on the frames of ``data.train_split`` (``data.label_fraction`` of them: every
k-th frame, :mod:`slidr.data.detection`), with the detection augmentations of ``augment``; the optimizer and
schedule of ``optim`` (the backbone at ``optim.lr``, the head at ``optim.lr_head`` when set, else ``optim.lr``).

Evaluation runs inside Lightning (``validation_step`` / ``test_step``), so it works on several devices: each
process decodes the frames of its :class:`~slidr.engine.data.ShardSampler` shard into KITTI objects
(:func:`slidr.methods.detection.to_kitti_objects`), the per-frame predictions and ground truths are gathered on
every process (``all_gather_object``), ordered by frame, and rank 0 evaluates them with
:func:`slidr.methods.detection_eval.kitti_ap` (AP|R40 by default; 2D, BEV, 3D and AOS): N processes give exactly
the one-process evaluation. The test evaluation comes back through files (``ddp_spawn`` workers' attributes do
not return to the launching process).

Run folder (:func:`run_detection`): ``config.yaml``, ``checkpoints/``, ``logs/``, ``model.pt`` (the exported-file
layout, ``model_points`` = the fine-tuned backbone, loadable by :func:`load_backbone`, plus ``detection_head``),
``evaluation.json`` (the ``kitti_ap`` result with ``dataset``, ``split``, ``model``), ``predictions/NNNNNN.txt``
(KITTI result files of the evaluated frames, the official format) and ``summary.json``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, cast

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from slidr.config import DetectionConfig, from_dict, to_dict
from slidr.engine.checkpoint import export_pretrained, load_backbone, load_export
from slidr.engine.data import replayable_loader
from slidr.engine.distributed import is_distributed
from slidr.engine.module import EvaluatedTrainingModule
from slidr.engine.optim import configure_optimization
from slidr.engine.trainer import evaluation_trainer, lightning_trainer, start_run
from slidr.errors import SlidrError
from slidr.methods.detection import (
    Detections,
    decode_detections,
    detection_loss,
    encode_targets,
    to_kitti_objects,
)
from slidr.methods.detection_eval import KittiObjects, format_kitti_objects, kitti_ap
from slidr.methods.downstream import (
    check_point_features,
    format_score,
    resolve_backbone,
    with_resolved_backbone,
)
from slidr.models import sparse_input
from slidr.models.detection import Detector, build_detector
from slidr.models.unet import SRUNet
from slidr.utils.io import atomic_write_text, write_json
from slidr.utils.log import logger

MODEL_NAME = "model.pt"
HEAD_KEY = "detection_head"  # the head's state dict in model.pt
EVALUATION_METRICS = ("bbox", "bev", "3d", "aos")


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------
def build_detection_model(cfg: DetectionConfig, weights: Optional[str] = None) -> tuple[Detector, dict]:
    """The detector of ``cfg`` (backbone ``cfg.backbone``, head ``cfg.head``), its backbone loaded from ``weights``.

    Parameters
    ----------
    cfg : DetectionConfig
    weights : exported pretraining file, a downstream or detection ``model.pt``, or a state dict (``module.`` /
        ``model_points.`` prefixes stripped); its voxel settings must be ``cfg.data.voxel``. None: random init.

    Returns
    -------
    detector, info
        ``info`` is :func:`load_backbone`'s answer (``{"method": None, ...}`` for random init).
    """
    from slidr.models.unet import build_backbone

    backbone = build_backbone(resolve_backbone(cfg, weights))  # name / in_channels unset: the file's
    info: dict[str, Any] = {"method": None, "loaded": [], "skipped": []}
    if weights is not None:
        info = load_backbone(weights, backbone, cfg.data.voxel)
        check_point_features(weights, info.get("config"), cfg.data.point_features)
    return build_detector(cast(SRUNet, backbone), cfg.head), info


def load_detector(path: str | Path, cfg: Optional[DetectionConfig] = None) -> tuple[Detector, DetectionConfig]:
    """A trained detector from a ``slidr detect`` ``model.pt`` (backbone and head), in eval mode.

    ``cfg`` defaults to the configuration saved in the file.

    Raises
    ------
    SlidrError
        The file holds no detection head, or its networks do not fit the configuration.
    """
    payload = load_export(path, "detection model")
    if HEAD_KEY not in payload:
        raise SlidrError(f"{path} holds no detection head ({HEAD_KEY}); is it the model.pt of `slidr detect`?")
    if cfg is None:
        cfg = from_dict(DetectionConfig, payload.get("config") or {}, where="")
    detector, _ = build_detection_model(cfg, str(path))
    try:
        detector.head.load_state_dict(payload[HEAD_KEY])
    except RuntimeError as error:
        raise SlidrError(f"the detection head of {path} does not fit head settings: {error}") from None
    return detector.eval(), cfg


# --------------------------------------------------------------------------------------------------------------
# Lightning module
# --------------------------------------------------------------------------------------------------------------
class DetectionModule(EvaluatedTrainingModule):
    """Trains a :class:`Detector` on detection batches and evaluates it with the KITTI protocol.

    Parameters
    ----------
    detector : the detector (its ``model_points`` backbone, pretrained or not, and head).
    cfg : DetectionConfig
    train_set, collate : training frames (:class:`slidr.data.detection.DetectionDataset`) and their collate.
    eval_set, eval_collate : the frames ``validation_step`` and ``test_step`` evaluate.

    Attributes
    ----------
    results_dir : Path or None
        Where ``on_test_epoch_end`` (rank 0) writes ``evaluation.json`` and ``predictions/`` (see
        :func:`evaluate_detector`).
    """

    kind = "detection"

    def __init__(self, detector: Detector, cfg: DetectionConfig, train_set: Optional[Dataset] = None,
                 collate: Optional[Callable[[list], dict]] = None, eval_set: Optional[Dataset] = None,
                 eval_collate: Optional[Callable[[list], dict]] = None) -> None:
        super().__init__()
        self.detector = detector
        self.cfg = cfg
        self.train_set = train_set
        self.collate = collate
        self.eval_set = eval_set
        self.eval_collate = eval_collate
        self.epoch_losses: list[float] = []
        self._running: list[float] = []
        self._frames: list[tuple[int, str, KittiObjects, Any]] = []  # (item, token, detections, ground truth)
        self.results_dir: Optional[Path] = None

    # ---- training ------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.train_set is None or self.collate is None:
            raise SlidrError("this detection module has no training set")
        return replayable_loader(self.train_set, self.collate, self.cfg.trainer, self.trainer,
                                 self.cfg.data.num_workers)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """The detector's maps (``heatmap``, ``regression``) of a batch of :func:`collate_detection`."""
        return self.detector(sparse_input(batch), batch["points"], batch["inverse_map"], batch["point_batch"],
                             int(batch["batch_size"]))

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """CenterPoint's loss of a batch (targets from its ``boxes`` and ``box_labels``) and its stats."""
        head = self.cfg.head
        outputs = self(batch)
        targets = encode_targets(batch["boxes"], batch["box_labels"], self.detector.grid, len(head.classes),
                                 head.gaussian_overlap, head.min_radius, device=outputs["heatmap"].device)
        return detection_loss(outputs, targets, head.heatmap_weight, head.regression_weight, head.code_weights)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, stats = self.compute_loss(batch)
        if not torch.isfinite(loss):
            raise SlidrError(f"non-finite detection loss at epoch {self.current_epoch}, step {self.global_step} "
                             f"(heatmap {stats['heatmap_loss']}, regression {stats['regression_loss']}); lower "
                             "optim.lr or check the boxes of the batch's frames " + ", ".join(batch["tokens"]))
        size = int(batch["batch_size"])
        self._running.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        self.log("heatmap_loss", float(stats["heatmap_loss"]), on_step=True, on_epoch=False, batch_size=size)
        self.log("regression_loss", float(stats["regression_loss"]), on_step=True, on_epoch=False, batch_size=size)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._running:
            self.epoch_losses.append(float(np.mean(self._running)))
        self._running = []

    def configure_optimizers(self) -> Any:
        optim = self.cfg.optim
        head = [p for p in self.detector.head.parameters() if p.requires_grad]
        body = [p for p in self.detector.model_points.parameters() if p.requires_grad]
        groups = [{"params": body, "lr": optim.lr},
                  {"params": head, "lr": optim.lr_head if optim.lr_head is not None else optim.lr}]
        return configure_optimization(groups, optim, self.trainer)

    # ---- evaluation (loaders: EvaluatedTrainingModule) -------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._frames = []

    def on_test_epoch_start(self) -> None:
        self._frames = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch)

    def _evaluate_batch(self, batch: dict) -> None:
        outputs = self(batch)
        for detections, frame in zip(decode_batch(outputs, self.detector, self.cfg), batch["frames"]):
            objects = frame_objects(detections, frame, self.cfg)
            self._frames.append((int(frame["item"]), str(frame["token"]), objects, frame["ground_truth"]))

    def _gathered_frames(self) -> list[tuple[int, str, KittiObjects, Any]]:
        """Every process's frames, on every process, ordered by dataset position."""
        frames = self._frames
        self._frames = []
        if is_distributed():
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, frames)
            frames = [frame for part in parts for frame in part]
        return sorted(frames, key=lambda frame: frame[0])

    def on_validation_epoch_end(self) -> None:
        frames = self._gathered_frames()
        if not self.trainer.is_global_zero:
            return
        result = evaluate_frames(frames, self.cfg)
        for metric in ("3d", "bev"):
            value = result["map_moderate"][metric]
            if value is not None:
                self.log(f"val_map_{metric}", value, prog_bar=metric == "3d", rank_zero_only=True)

    def on_test_epoch_end(self) -> None:
        frames = self._gathered_frames()
        if not self.trainer.is_global_zero or self.results_dir is None:
            return
        write_json(self.results_dir / "evaluation.json", evaluate_frames(frames, self.cfg))
        folder = self.results_dir / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        for _, token, objects, _ in frames:
            atomic_write_text(folder / f"{Path(token).name}.txt", format_kitti_objects(objects))


def decode_batch(outputs: dict[str, torch.Tensor], detector: Detector, cfg: DetectionConfig) -> list[Detections]:
    """The boxes of a batch's maps with the decoding settings of ``cfg.head``."""
    head = cfg.head
    return decode_detections(outputs["heatmap"], outputs["regression"], detector.grid, head.top_k,
                             head.score_threshold, head.nms_iou, head.nms_per_class, head.max_detections)


def frame_objects(detections: Detections, frame: dict, cfg: DetectionConfig) -> KittiObjects:
    """One frame's detections as KITTI objects (camera boxes, 2D boxes, scores) with its calibration."""
    return to_kitti_objects(detections, cfg.head.classes, frame["lidar_to_camera"], frame["projection"],
                            tuple(frame["image_size"]), cfg.head.drop_outside_image, source=str(frame["token"]))


def evaluate_frames(frames: Sequence[tuple[int, str, KittiObjects, Any]], cfg: DetectionConfig) -> dict:
    """``kitti_ap`` of gathered frames ``(item, token, detections, ground-truth KittiLabels)`` (all four metrics)."""
    ground_truth = [KittiObjects.from_labels(labels, token) for _, token, _, labels in frames]
    return kitti_ap(ground_truth, [objects for _, _, objects, _ in frames], classes=cfg.head.classes,
                    metrics=EVALUATION_METRICS, recall_positions=cfg.recall_positions)


def evaluate_detector(trainer: L.Trainer, module: DetectionModule,
                      results_dir: Optional[Path] = None) -> dict:
    """Run ``trainer.test`` on ``module.eval_set``; returns the ``kitti_ap`` result of all processes' frames.

    ``results_dir`` also receives ``evaluation.json`` and ``predictions/`` (default: a temporary folder). The
    result travels through that file: attributes set in ``ddp_spawn`` workers do not come back.
    """
    with tempfile.TemporaryDirectory(prefix="slidr-detect-") as scratch:
        module.results_dir = Path(results_dir or scratch)
        try:
            trainer.test(module, verbose=False)
            return json.loads((module.results_dir / "evaluation.json").read_text())
        finally:
            module.results_dir = None


# --------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------
def make_dataset(cfg: DetectionConfig, split: str, train: bool) -> tuple[Dataset, Callable[[list], dict]]:
    """Detection frames of ``split`` (label fraction and augmentations when ``train``) and their collate."""
    from slidr.data.detection import DetectionDataset, collate_detection

    return DetectionDataset(cfg.data.index, split, cfg.data, cfg.head.classes, train=train, augment=cfg.augment,
                            crop_to_image=cfg.crop_to_image), collate_detection


def run_detection(cfg: DetectionConfig, out: str | Path, resume: bool = False,
                  dataset_factory: Callable[..., tuple[Dataset, Callable]] = make_dataset,
                  enable_progress_bar: bool = True) -> dict:
    """Fine-tune a detector on ``data.train_split``, evaluate it on ``data.val_split`` and write the run folder.

    Parameters
    ----------
    cfg : DetectionConfig
    out : run folder (module docstring).
    resume : continue from the newest checkpoint in ``out/checkpoints``.
    dataset_factory : ``(cfg, split, train) -> (dataset, collate)`` (tests inject their own).
    enable_progress_bar : show Lightning's progress bar.

    Returns
    -------
    dict
        The summary (also ``summary.json``; empty on processes other than rank 0), the evaluation under
        ``evaluation``.

    Raises
    ------
    SlidrError
        ``out`` already holds checkpoints and ``resume`` is False; a split is empty; the weights do not fit.
    """
    start = time.perf_counter()
    out = Path(out)
    cfg = with_resolved_backbone(cfg)  # the run's config.yaml records the network it trains
    resume_from = start_run(out, cfg, resume)
    detector, info = build_detection_model(cfg, cfg.pretrained)
    train_set, collate = dataset_factory(cfg, cfg.data.train_split, True)
    val_set, val_collate = dataset_factory(cfg, cfg.data.val_split, False)
    logger.info("detect on %s: %s, backbone %s, classes %s, %d training frames (label fraction %g), %d to evaluate",
                cfg.data.index, f"pretrained {cfg.pretrained} ({info.get('method')})" if cfg.pretrained
                else "random init", cfg.backbone.name, ", ".join(cfg.head.classes), len(train_set),  # type: ignore
                cfg.data.label_fraction, len(val_set))  # type: ignore[arg-type]
    trainer = lightning_trainer(cfg.trainer, out, CSVLogger(out, name="logs", version=""), [], enable_progress_bar,
                                val_every_n_epochs=cfg.val_every_n_epochs)
    module = DetectionModule(detector, cfg, train_set, collate, val_set, val_collate)
    train_start = time.perf_counter()
    trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None)
    train_s = time.perf_counter() - train_start

    if trainer.is_global_zero:
        export_pretrained(out / MODEL_NAME, detector.model_points, None, cfg, method="detect",
                          extra={HEAD_KEY: detector.head})
    evaluation = evaluate_detector(trainer, module, out)  # every process takes part
    if not trainer.is_global_zero:
        return {}
    evaluation.update(dataset=cfg.data.dataset, split=cfg.data.val_split, model=str(out / MODEL_NAME))
    write_json(out / "evaluation.json", evaluation)
    summary = {
        "method": "detect",
        "pretrained": cfg.pretrained,
        "pretraining_method": info.get("method"),
        "dataset": cfg.data.dataset,
        "label_fraction": cfg.data.label_fraction,
        "train_frames": len(train_set),  # type: ignore[arg-type]
        "val_frames": len(val_set),  # type: ignore[arg-type]
        "epochs": cfg.trainer.epochs,
        "steps": int(trainer.global_step),
        "epoch_losses": module.epoch_losses,
        "train_s": round(train_s, 2),
        "wall_s": round(time.perf_counter() - start, 2),
        "map_moderate": evaluation["map_moderate"],
        "model": str(out / MODEL_NAME),
        "evaluation": evaluation,
        "config": to_dict(cfg),
    }
    write_json(out / "summary.json", summary)
    logger.info("detect: moderate mAP 3D %s, BEV %s on %s (%d frames); results in %s",
                format_score(evaluation["map_moderate"]["3d"]), format_score(evaluation["map_moderate"]["bev"]),
                cfg.data.val_split,
                evaluation["num_frames"], out)
    return summary


def evaluate_saved_detector(model_path: str | Path, cfg: DetectionConfig, split: str,
                            dataset_factory: Callable[..., tuple[Dataset, Callable]] = make_dataset,
                            enable_progress_bar: bool = True) -> dict:
    """Evaluate a trained detector (``model.pt``) on ``split`` on the devices of ``cfg.trainer``."""
    detector, _ = load_detector(model_path, cfg)
    dataset, collate = dataset_factory(cfg, split, False)
    module = DetectionModule(detector, cfg, eval_set=dataset, eval_collate=collate)
    evaluation = evaluate_detector(evaluation_trainer(cfg.trainer, enable_progress_bar), module)
    evaluation.update(dataset=cfg.data.dataset, split=split, model=str(model_path))
    return evaluation


def predict_frames(detector: Detector, dataset: Dataset, collate: Callable[[list], dict], items: Sequence[int],
                   cfg: DetectionConfig, device: torch.device | str = "cpu") -> list[tuple[dict, Detections]]:
    """Run the detector (eval mode) on some frames of ``dataset``: ``(sample, detections)`` per item, in order."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    detector = detector.to(device).eval()
    results = []
    with torch.no_grad():
        for item in items:
            sample = dataset[item]
            batch = move_data_to_device(collate([sample]), torch.device(device))
            outputs = detector(sparse_input(batch), batch["points"], batch["inverse_map"], batch["point_batch"], 1)
            results.append((sample, decode_batch(outputs, detector, cfg)[0]))
    return results

