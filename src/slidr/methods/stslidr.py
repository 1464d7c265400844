"""ST-SLidR (Mahmoud et al., CVPR 2023; TRAILab/ST-SLidR): SLidR with semantically tolerant negatives.

SLidR's superpixel InfoNCE in which every negative is weighted by how dissimilar its superpixel is to the
anchor's in the frozen teacher's own feature space (the encoder's output before the trainable head, averaged per
superpixel at the encoder's resolution), plus the class-agnostic balancing of the anchors
(:func:`~slidr.methods.losses.semantically_tolerant_infonce`; settings ``loss.min_quantile``,
``loss.max_quantile``, ``loss.class_balance``, ``loss.balance_threshold``). Everything else is SLidR's (data,
3D network, image head, export, imported-mask pairs): this module only changes the loss, and runs the frozen
encoder once per batch for both the head and the teacher similarities.

With ``loss.gather_negatives`` under DDP, the superpixel embeddings and the teacher features of every process are
gathered: the weights and the balancing votes are computed over the whole global batch, and each process's loss
is its anchors' share (:func:`~slidr.methods.losses.tolerant_info_nce`) times the number of processes, so that
the averaged gradients are those of one process holding the whole batch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from slidr.config import PretrainConfig
from slidr.engine.distributed import gather_with_grad, is_distributed
from slidr.errors import ConfigError
from slidr.methods import METHODS, losses
from slidr.methods.image_to_lidar import SLidRModule


@METHODS.register("stslidr")
class STSLidRModule(SLidRModule):
    """ST-SLidR: SLidR's superpixel InfoNCE with negatives weighted by the teacher's similarity.

    Parameters as :class:`~slidr.methods.image_to_lidar.ImageToLidarModule`.
    """

    def __init__(self, cfg: PretrainConfig, model_points: Optional[torch.nn.Module] = None,
                 model_images: Optional[torch.nn.Module] = None, dataset: Optional[Dataset] = None,
                 collate: Optional[Callable] = None) -> None:
        if cfg.data.superpixels.method == "none" or not cfg.loss.use_superpixels:
            raise ConfigError("method stslidr weighs superpixels: it needs data.superpixels.method slic, fh or masks "
                              f"(got {cfg.data.superpixels.method}) and loss.use_superpixels true "
                              f"(got {str(cfg.loss.use_superpixels).lower()})", key="data.superpixels.method")
        super().__init__(cfg, model_points, model_images, dataset, collate)

    def forward_images(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Head features (B*K, C, H, W) and the encoder's own features (B*K, D, h, w), from one encoder pass."""
        images = batch["images"]
        encoded = self.model_images.encode(images)
        return self.model_images.decode(encoded, images.shape[-2:]), encoded

    def contrast(self, point_features: torch.Tensor, pixel_features: Any, batch: dict
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        head_features, teacher_features = pixel_features
        loss_cfg = self.cfg.loss
        weighting: dict[str, Any] = {"temperature": loss_cfg.temperature, "min_quantile": loss_cfg.min_quantile,
                                     "max_quantile": loss_cfg.max_quantile, "class_balance": loss_cfg.class_balance,
                                     "balance_threshold": loss_cfg.balance_threshold}
        if loss_cfg.gather_negatives and is_distributed():
            embeddings = losses.tolerant_superpixel_embeddings(point_features, batch["pairing_images"], head_features,
                                                               batch["superpixels"], teacher_features,
                                                               loss_cfg.renormalize_means)
            return gathered_tolerant_info_nce(embeddings, **weighting)
        return losses.semantically_tolerant_infonce(point_features, batch["pairing_images"], head_features,
                                                    batch["superpixels"], teacher_features,
                                                    renormalize=loss_cfg.renormalize_means, **weighting)


def gathered_tolerant_info_nce(embeddings: losses.TolerantEmbeddings, temperature: float, min_quantile: float,
                               max_quantile: float, class_balance: bool, balance_threshold: float
                               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """ST-SLidR's loss over the superpixels of every DDP process, for this process's anchors.

    The superpixel embeddings (negatives, with gradients through the local ones) and teacher features of every
    process are gathered; the returned loss is this process's share of the global loss times the number of
    processes, so that their mean (what DDP's averaged gradients and the logged loss are) is the loss of one
    process holding the whole batch. Without DDP it is :func:`~slidr.methods.losses.tolerant_info_nce`.

    Parameters
    ----------
    embeddings : TolerantEmbeddings
        This process's (K, C) superpoints and superpixels and (K, D) teacher features.
    temperature, min_quantile, max_quantile, class_balance, balance_threshold
        As :func:`~slidr.methods.losses.semantically_tolerant_infonce`.

    Returns
    -------
    loss, stats : ``superpixels`` (local anchors), ``global_superpixels``, ``unseen_by_teacher``,
    ``dropped_negatives``.
    """
    positives, offset = gather_with_grad(embeddings.superpixels)
    teacher, _ = gather_with_grad(embeddings.teacher)
    if positives.shape[0] == 0:  # no process has a superpixel the teacher sees: an attached exact zero
        zero = embeddings.superpoints.sum() * 0.0
        return zero, {"superpixels": 0, "global_superpixels": 0, "unseen_by_teacher": embeddings.unseen}
    similarity = teacher @ teacher.transpose(0, 1)
    share, stats = losses.tolerant_info_nce(embeddings.superpoints, positives, similarity, temperature,
                                            min_quantile, max_quantile, class_balance, balance_threshold, offset)
    world = dist.get_world_size() if is_distributed() else 1
    return share * world, {"superpixels": embeddings.superpoints.shape[0], "global_superpixels": positives.shape[0],
                           "unseen_by_teacher": embeddings.unseen, **stats}
