"""Image-to-lidar distillation: SLidR (superpixel-driven InfoNCE) and PPKT (point-pixel InfoNCE); the base of its
successors (:mod:`slidr.methods.stslidr`, :mod:`slidr.methods.scalr`).

Per batch: voxel features -> 3D network -> per-point features (``inverse_map``) -> features of the paired
points; image features from the frozen encoder and the trainable head; the method's contrastive loss between
them (:meth:`ImageToLidarModule.contrast`), computed in float32 outside autocast (its exponentials overflow in
half precision).

With ``loss.gather_negatives`` under DDP, the positives (superpixels / pixels) of every process are negatives of
every anchor; otherwise, as the authors' release, each process contrasts its own batch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset

from slidr.config import PretrainConfig
from slidr.engine.distributed import any_process, gathered_info_nce, is_distributed
from slidr.engine.module import PretrainModule
from slidr.methods import METHODS, losses
from slidr.models import sparse_input


class ImageToLidarModule(PretrainModule):
    """The 3D network distilled from a frozen image teacher; subclasses give the loss (:meth:`contrast`).

    Parameters
    ----------
    cfg : PretrainConfig
    model_points, model_images : nn.Module, optional
        The 3D network and the image teacher (``encoder`` frozen, ``head`` trainable); default: built from
        ``cfg.backbone`` and ``cfg.image``.
    dataset, collate : optional
        See :class:`~slidr.engine.module.PretrainModule`; default: :class:`slidr.data.datasets.PretrainDataset`.
    """

    # typed for what the methods use: a BACKBONES network (forward, forward_features, feature_channels, final)
    # and an ImageTeacher-like module (encode, decode, encoder, head)
    model_points: Any
    model_images: Any

    def __init__(self, cfg: PretrainConfig, model_points: Optional[torch.nn.Module] = None,
                 model_images: Optional[torch.nn.Module] = None, dataset: Optional[Dataset] = None,
                 collate: Optional[Callable] = None) -> None:
        super().__init__(cfg, dataset, collate)
        if model_points is None:
            from slidr.models.unet import build_backbone

            model_points = build_backbone(cfg.backbone)
        if model_images is None:
            from slidr.models.image import build_image_model

            model_images = build_image_model(cfg.image)
        self.model_points = model_points
        self.model_images = model_images

    def build_train_dataset(self) -> tuple[Dataset, Callable]:
        from slidr.data.datasets import PretrainDataset, collate_pretrain

        data = self.cfg.data
        return PretrainDataset(data.index, data.train_split, data, train=True), collate_pretrain

    def images_head(self) -> Optional[torch.nn.Module]:
        return self.model_images.head

    def images_encoder_to_export(self) -> Optional[torch.nn.Module]:
        # A randomly initialised teacher exists nowhere else: without it the pixel features of the export
        # (similarity maps) could not be rebuilt.
        return self.model_images.encoder if self.cfg.image.weights is None else None

    def teacher_record(self) -> Optional[dict[str, Any]]:
        from slidr.models.image import describe_teacher

        return describe_teacher(self.cfg.image)

    def forward_points(self, batch: dict) -> torch.Tensor:
        """Features (P, C) of the paired points."""
        voxel_features = self.model_points(sparse_input(batch))
        return voxel_features[batch["inverse_map"][batch["pairing_points"]]]

    def forward_images(self, batch: dict) -> Any:
        """Pixel features (B*K, C, H, W) from the frozen encoder and the trainable head (a method may return
        more, e.g. a tuple of tensors, that its :meth:`contrast` takes)."""
        return self.model_images(batch["images"])

    def select_pairs(self, batch: dict) -> dict:
        """The batch with only the pairs the loss uses (default: all of them, the batch itself)."""
        return batch

    def contrast(self, point_features: torch.Tensor, pixel_features: Any, batch: dict
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The method's loss and stats from float32 point features (P, C) and pixel features (B*K, C, H, W), or
        whatever :meth:`forward_images` returns, in float32."""
        raise NotImplementedError

    def loss_from_features(self, point_features: torch.Tensor, pixel_features: Any,
                           batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """:meth:`contrast` in float32, outside autocast; stats as plain floats."""
        with torch.autocast(device_type=point_features.device.type, enabled=False):
            loss, stats = self.contrast(point_features.float(), _float32(pixel_features), batch)
        stats = {key: float(value) for key, value in dict(stats).items() if key != "empty"}
        return loss, stats

    def compute_loss(self, batch: dict) -> tuple[Optional[torch.Tensor], dict[str, float]]:
        batch = self.select_pairs(batch)
        empty = batch["pairing_points"].numel() == 0
        if self.cfg.loss.gather_negatives and is_distributed():
            # gathering negatives is a collective operation: every process skips, or none does
            empty = any_process(empty, batch["pairing_points"].device)
        if empty:
            return None, {}
        point_features = self.forward_points(batch)
        pixel_features = self.forward_images(batch)
        loss, stats = self.loss_from_features(point_features, pixel_features, batch)
        stats.setdefault("pairs", float(batch["pairing_points"].numel()))
        return loss, stats


def _float32(features: Any) -> Any:
    """Tensors (or tuples of them) in float32."""
    if isinstance(features, tuple):
        return tuple(_float32(item) for item in features)
    return features.float()


@METHODS.register("slidr")
class SLidRModule(ImageToLidarModule):
    """SLidR: InfoNCE between superpixel-pooled point and pixel features (``loss.use_superpixels: false``: every
    pixel of ``loss.num_matches`` random pairs is its own superpixel).

    Imported masks (``data.superpixels.method: masks``, e.g. SAM's as in Seal): pixels no mask covers have id 0;
    the pairs on them are dropped before the loss (:meth:`select_pairs`), so that region is no superpixel.
    """

    def select_pairs(self, batch: dict) -> dict:
        if self.cfg.data.superpixels.method != "masks" or not self.cfg.loss.use_superpixels:
            return batch
        from slidr.data.pairing import pairs_in_labelled_superpixels

        keep = pairs_in_labelled_superpixels(batch["pairing_images"], batch["superpixels"])
        return {**batch, "pairing_points": batch["pairing_points"][keep],
                "pairing_images": batch["pairing_images"][keep]}

    def contrast(self, point_features: torch.Tensor, pixel_features: torch.Tensor, batch: dict
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        loss_cfg = self.cfg.loss
        pairing = batch["pairing_images"]
        superpixels = batch["superpixels"] if loss_cfg.use_superpixels else None
        if loss_cfg.gather_negatives and is_distributed():
            anchors, positives = losses.superpixel_embeddings(point_features, pairing, pixel_features, superpixels,
                                                              loss_cfg.renormalize_means, loss_cfg.num_matches)
            loss = gathered_info_nce(anchors, positives, loss_cfg.temperature)
            return loss, {"pairs": len(point_features), "superpixels": len(anchors)}
        return losses.superpixel_infonce(point_features, pairing, pixel_features, superpixels, loss_cfg.temperature,
                                         renormalize=loss_cfg.renormalize_means, num_matches=loss_cfg.num_matches)


@METHODS.register("ppkt")
class PPKTModule(ImageToLidarModule):
    """PPKT: InfoNCE between the features of ``loss.num_matches`` random point-pixel pairs."""

    def contrast(self, point_features: torch.Tensor, pixel_features: torch.Tensor, batch: dict
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        loss_cfg = self.cfg.loss
        image, row, col = batch["pairing_images"].long().unbind(1)
        at_pairs = pixel_features[image, :, row, col]
        if loss_cfg.gather_negatives and is_distributed():
            chosen = torch.randperm(len(at_pairs), device=at_pairs.device)[: loss_cfg.num_matches]
            loss = gathered_info_nce(point_features[chosen], at_pairs[chosen], loss_cfg.temperature)
            return loss, {"pairs": len(at_pairs), "matches": len(chosen)}
        return losses.ppkt_infonce(point_features, at_pairs, loss_cfg.num_matches, loss_cfg.temperature)
