"""PointContrast (baseline of SLidR's Table 1): PointInfoNCE between matched points of two registered scans.

Pairs and matches come from :class:`slidr.data.scan_pairs.PointContrastPairs`. Per batch: both views through
the 3D network, per-point features via ``inverse_map``, a random subset of ``loss.num_matches`` matches (4,096)
over the whole batch, PointInfoNCE (temperature ``loss.temperature``). The paper's schedule: SGD with lr 1 and
cosine annealing over iterations, batch 8 pairs, and as many iterations as it takes to show as many point-cloud
*pairs* as SLidR sees point clouds in ``pairs.equivalent_epochs`` (50) epochs (supplementary: the number of pairs
equals the number of clouds; a pair holds two clouds, so PointContrast† sees twice as many clouds as SLidR).

With ``loss.gather_negatives`` under DDP the negatives of each process are the matches of every process;
otherwise (the release) each process contrasts its own matches only.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, cast

import torch
from torch.utils.data import Dataset

from slidr.config import PretrainConfig
from slidr.engine.distributed import gathered_info_nce
from slidr.engine.module import PretrainModule
from slidr.errors import SlidrError
from slidr.methods import METHODS, losses
from slidr.models import sparse_input


def pointcontrast_steps(num_scans: int, batch_pairs: int, equivalent_epochs: int, world_size: int = 1) -> int:
    """Iterations that show as many pairs as SLidR sees clouds in ``equivalent_epochs`` epochs of ``num_scans``.

    A step of ``batch_pairs`` pairs on each of ``world_size`` processes shows ``batch_pairs * world_size`` pairs
    (the supplement sets the number of pairs equal to the number of clouds SLidR sees).
    """
    return max(1, math.ceil(equivalent_epochs * num_scans / (batch_pairs * world_size)))


@METHODS.register("pointcontrast")
class PointContrastModule(PretrainModule):
    """PointContrast pretraining of ``model_points``.

    Parameters
    ----------
    cfg : PretrainConfig
        ``method: pointcontrast``.
    model_points : nn.Module, optional
        Default: ``build_backbone(cfg.backbone)``.
    dataset, collate : optional
        Default: :class:`PointContrastPairs` and :func:`collate_pairs`.
    """

    def __init__(self, cfg: PretrainConfig, model_points: Optional[torch.nn.Module] = None,
                 dataset: Optional[Dataset] = None, collate: Optional[Callable] = None) -> None:
        super().__init__(cfg, dataset, collate)
        if model_points is None:
            from slidr.models.unet import build_backbone

            model_points = build_backbone(cfg.backbone)
        self.model_points = model_points

    def build_train_dataset(self) -> tuple[Dataset, Callable]:
        from slidr.data.scan_pairs import PointContrastPairs, collate_pairs

        return PointContrastPairs(self.cfg), collate_pairs

    def scans_in_batch(self, batch: dict) -> int:
        return 2 * int(batch["batch_size"])  # two clouds per pair

    def planned_steps(self, world_size: int) -> Optional[int]:
        """Steps showing as many pairs as SLidR sees clouds in ``pairs.equivalent_epochs`` epochs of the training
        scans (``data.train_split``: give it SLidR's, the parametrizing scenes in the paper configs)."""
        if self.cfg.pairs.equivalent_epochs is None:
            return None
        if self.cfg.trainer.max_steps > 0:
            raise SlidrError("pointcontrast: set either trainer.max_steps or pairs.equivalent_epochs, not both "
                             "(pairs.equivalent_epochs=null to use trainer.max_steps)")
        from slidr.data.scan_pairs import PointContrastPairs

        dataset = cast(PointContrastPairs, self.train_dataset()[0])  # build_train_dataset's
        return pointcontrast_steps(len(dataset.samples), self.cfg.trainer.batch_size,
                                   self.cfg.pairs.equivalent_epochs, world_size)

    def point_features(self, view: dict) -> torch.Tensor:
        """(N, C) features of every point of a batched view."""
        voxel_features = self.model_points(sparse_input(view))
        return voxel_features[view["inverse_map"]]

    def compute_loss(self, batch: dict) -> tuple[Optional[torch.Tensor], dict[str, float]]:
        matches = batch["matches"]
        if matches.shape[0] == 0:
            return None, {"matches": 0.0}
        chosen = torch.randperm(matches.shape[0], device=matches.device)[: self.cfg.loss.num_matches]
        matches = matches[chosen]
        features_a = self.point_features(batch["a"])[matches[:, 0]]
        features_b = self.point_features(batch["b"])[matches[:, 1]]
        temperature = self.cfg.loss.temperature
        with torch.autocast(device_type=features_a.device.type, enabled=False):
            features_a, features_b = features_a.float(), features_b.float()
            if self.cfg.loss.gather_negatives:
                loss = gathered_info_nce(features_a, features_b, temperature)
            else:
                loss, _ = losses.point_infonce(features_a, features_b, temperature)
        return loss, {"pairs": float(matches.shape[0])}
