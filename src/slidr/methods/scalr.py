"""ScaLR-style distillation (Puy et al., CVPR 2024; valeoai/ScaLR): regress point features onto pixel features.

Per batch: voxel features -> the 3D network's features before its last layer (``forward_features``) -> features
of the paired points -> projection head (:class:`~slidr.models.heads.ProjectionHead`, linear as the release or a
small MLP; ``scalr.head``) -> :func:`~slidr.methods.losses.cosine_distillation` against the frozen teacher's
encoder features at the paired pixels. The teacher has no head: its target is the encoder's feature map upsampled
bilinearly to the image (align_corners=True, as the release), read at the paired pixels only
(:func:`~slidr.models.image.upsampled_at_pixels`, equal to upsampling then indexing). No negatives: the loss of a
pair does not depend on the rest of the batch, so it does not change with the batch size or the number of
processes (``loss.gather_negatives`` has nothing to gather).

Data (``scalr.one_camera``, ``scalr.paired_points_only``, ``scalr.max_points``; the release's defaults): one camera
drawn per scan and only its image decoded, the 3D network fed only the points that project into it, at most
20,000 of them (:class:`~slidr.data.datasets.CameraSubsetDataset`). The release's point augmentations are
rotation, flips and a +-10% scale, and its image is resized whole: set ``data.augment`` accordingly
(``pretrain/scalr_minkunet.yaml``; slidr has no scale augmentation).

Export: ``model_points`` as every method. Its last layer ``final`` takes no part in ScaLR's loss (the projection
head plays its role and reads ``forward_features``), so it stays frozen at its initialisation; the projection
head is not exported (ScaLR replaces it after pretraining, as the downstream classifier replaces ``final``).
So analyses of the export read ``forward_features`` (``trains_output = False``): ``slidr knn`` compares those,
the features the downstream tasks use, not the output of the untrained last layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset

from slidr.config import PretrainConfig, SuperpixelConfig
from slidr.errors import ConfigError
from slidr.methods import METHODS, losses
from slidr.methods.image_to_lidar import ImageToLidarModule
from slidr.models import sparse_input


@METHODS.register("scalr")
class ScalrModule(ImageToLidarModule):
    """ScaLR: 1 - cosine / normalised-distance regression of projected point features onto teacher features.

    Parameters
    ----------
    cfg : PretrainConfig
        ``scalr.*`` settings, ``image.*`` for the teacher (``image.out_channels`` unused: no head).
    model_points, model_images : nn.Module, optional
        The 3D network and the image teacher (without head); default: built from ``cfg``.
    head : nn.Module, optional
        The projection head; default: ``ProjectionHead(feature_channels, teacher channels, scalr.head,
        scalr.head_hidden)``.
    dataset, collate : optional
        Default: :class:`~slidr.data.datasets.CameraSubsetDataset` with the ``scalr`` settings.
    """

    trains_output = False  # the loss reads forward_features through the projection head; ``final`` is untouched

    def __init__(self, cfg: PretrainConfig, model_points: Optional[torch.nn.Module] = None,
                 model_images: Optional[torch.nn.Module] = None, head: Optional[torch.nn.Module] = None,
                 dataset: Optional[Dataset] = None, collate: Optional[Callable] = None) -> None:
        if not cfg.image.freeze_encoder:
            raise ConfigError("method scalr regresses onto a frozen teacher: image.freeze_encoder must be true",
                              key="image.freeze_encoder")
        if model_images is None:
            from slidr.models.image import build_image_model

            model_images = build_image_model(cfg.image, head=False)
        super().__init__(cfg, model_points, model_images, dataset, collate)
        # ``final`` is not in the loss: frozen, so that DDP does not wait for its gradients
        self.model_points.final.requires_grad_(False)
        if head is None:
            from slidr.models.heads import ProjectionHead

            head = ProjectionHead(self.model_points.feature_channels, self.model_images.encoder.out_channels,
                                  cfg.scalr.head, cfg.scalr.head_hidden)
        self.head = head

    def build_train_dataset(self) -> tuple[Dataset, Callable]:
        from slidr.data.datasets import CameraSubsetDataset, collate_pretrain

        data, scalr = self.cfg.data, self.cfg.scalr
        data = dataclasses.replace(data, superpixels=SuperpixelConfig(method="none"))  # ScaLR reads none
        dataset = CameraSubsetDataset(data.index, data.train_split, data, train=True, one_camera=scalr.one_camera,
                                      paired_points_only=scalr.paired_points_only, max_points=scalr.max_points)
        return dataset, collate_pretrain

    def images_head(self) -> Optional[torch.nn.Module]:
        return None

    def forward_points(self, batch: dict) -> torch.Tensor:
        """Projected features (P, teacher channels) of the paired points."""
        voxel_features = self.model_points.forward_features(sparse_input(batch))
        return self.head(voxel_features[batch["inverse_map"][batch["pairing_points"]]])

    def forward_images(self, batch: dict) -> torch.Tensor:
        """Teacher features (P, teacher channels) at the paired pixels (encoder map upsampled to the image)."""
        from slidr.models.image import upsampled_at_pixels

        images = batch["images"]
        return upsampled_at_pixels(self.model_images.encode(images), images.shape[-2:], batch["pairing_images"])

    def contrast(self, point_features: torch.Tensor, pixel_features: torch.Tensor, batch: dict
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        return losses.cosine_distillation(point_features, pixel_features, self.cfg.scalr.distance)
