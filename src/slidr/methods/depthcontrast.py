"""DepthContrast (baseline of SLidR's Table 1): a voxel U-Net and a point network trained jointly, MoCo-style.

Two augmented views of each scan (:class:`slidr.data.scan_pairs.TwoViews`). The query encoders (the U-Net with
a pooled projection head, the PointNet++-style network with its head) embed view a; momentum copies of them
(``loss.momentum``, 0.999) embed view b. Loss: the mean of four MoCo InfoNCE terms, within each format and
across formats (voxel query vs point key and the reverse), each against a queue of ``loss.queue_size``
earlier keys of the key's format (60,000 in the paper; lower it for small data). Embeddings are
``loss.embedding_dim``-d and L2-normalised. Paper optimiser: SGD momentum 0.9, weight decay 1e-4, lr 0.001
cosine down to 1e-6, batch 8. Only the voxel network (``model_points``) is exported.

With ``loss.gather_negatives`` under DDP the keys of every process enter the queues (MoCo's shuffle-free
variant); otherwise each process enqueues its own keys.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from slidr.config import PretrainConfig
from slidr.engine.distributed import gather_with_grad
from slidr.engine.module import PretrainModule
from slidr.methods import METHODS, losses
from slidr.models import sparse_input
from slidr.models.pointnet import PointNet2Encoder

if TYPE_CHECKING:
    from slidr.models.unet import SRUNet


def projection_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """MLP projecting a pooled feature to the contrastive embedding (normalised by the caller)."""
    return nn.Sequential(nn.Linear(in_channels, in_channels), nn.ReLU(inplace=True),
                         nn.Linear(in_channels, out_channels))


def pooled_mean(features: torch.Tensor, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B, C) mean of the rows of ``features`` (V, C) of each sample (``batch`` (V,) sample of each row)."""
    sums = features.new_zeros(batch_size, features.shape[1]).index_add_(0, batch, features)
    counts = torch.bincount(batch, minlength=batch_size).clamp_(min=1).to(features.dtype)
    return sums / counts.unsqueeze(1)


class VoxelEncoder(nn.Module):
    """U-Net features, mean-pooled per scan, projected: batched view -> (B, embedding_dim)."""

    def __init__(self, backbone: SRUNet, embedding_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = projection_head(backbone.feature_channels, embedding_dim)

    def forward(self, view: dict, batch_size: int) -> torch.Tensor:
        coords = view["voxel_coords"]
        features = self.backbone.forward_features(sparse_input(view))
        return self.head(pooled_mean(features, coords[:, 0].long(), batch_size))


class PointEncoder(nn.Module):
    """PointNet++-style network and head: ``sampled_points`` (B, N, 4) -> (B, embedding_dim)."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.backbone = PointNet2Encoder(in_channels=1)
        self.head = projection_head(self.backbone.out_channels, embedding_dim)

    def forward(self, view: dict, batch_size: int) -> torch.Tensor:
        return self.head(self.backbone(view["sampled_points"]))


@METHODS.register("depthcontrast")
class DepthContrastModule(PretrainModule):
    """DepthContrast pretraining; ``model_points`` is the voxel U-Net (the exported network).

    Parameters
    ----------
    cfg : PretrainConfig
        ``method: depthcontrast``.
    model_points : nn.Module, optional
        The voxel U-Net (needs ``forward_features`` and ``feature_channels``); default from ``cfg.backbone``.
    dataset, collate : optional
        Default: :class:`TwoViews` and :func:`collate_two_views`.
    """

    trains_output = False  # the loss reads forward_features (pooled, projected); ``final`` is untouched

    queue_voxel: torch.Tensor  # buffers registered in __init__
    queue_point: torch.Tensor

    def __init__(self, cfg: PretrainConfig, model_points: Optional[nn.Module] = None,
                 dataset: Optional[Dataset] = None, collate: Optional[Callable] = None) -> None:
        super().__init__(cfg, dataset, collate)
        if model_points is None:
            from slidr.models.unet import build_backbone

            model_points = build_backbone(cfg.backbone)
        dim = cfg.loss.embedding_dim
        self.model_points = model_points
        self.voxel_query = VoxelEncoder(cast("SRUNet", model_points), dim)  # a U-Net, as documented above
        self.point_query = PointEncoder(dim)
        self.voxel_key = copy.deepcopy(self.voxel_query).requires_grad_(False)
        self.point_key = copy.deepcopy(self.point_query).requires_grad_(False)
        for name in ("voxel", "point"):
            self.register_buffer(f"queue_{name}", F.normalize(torch.randn(cfg.loss.queue_size, dim), dim=1))
            self.register_buffer(f"queue_{name}_next", torch.zeros((), dtype=torch.long))

    def build_train_dataset(self) -> tuple[Dataset, Callable]:
        from slidr.data.scan_pairs import TwoViews, collate_two_views

        return TwoViews(self.cfg), collate_two_views

    @torch.no_grad()
    def _update_key_encoders(self) -> None:
        momentum = self.cfg.loss.momentum
        for query, key in ((self.voxel_query, self.voxel_key), (self.point_query, self.point_key)):
            for q, k in zip(query.parameters(), key.parameters()):
                k.mul_(momentum).add_(q.detach(), alpha=1 - momentum)
            for q_buffer, k_buffer in zip(query.buffers(), key.buffers()):
                k_buffer.copy_(q_buffer)

    @torch.no_grad()
    def _enqueue(self, name: str, keys: torch.Tensor) -> None:
        if self.cfg.loss.gather_negatives:
            keys, _ = gather_with_grad(keys)
        queue = getattr(self, f"queue_{name}")
        pointer = getattr(self, f"queue_{name}_next")
        size = queue.shape[0]
        keys = keys[-size:]
        slots = (pointer + torch.arange(keys.shape[0], device=queue.device)) % size
        queue[slots] = keys.to(queue.dtype)
        pointer.copy_((pointer + keys.shape[0]) % size)

    def compute_loss(self, batch: dict) -> tuple[Optional[torch.Tensor], dict[str, float]]:
        batch_size = int(batch["batch_size"])
        if batch_size == 0:
            return None, {}
        view_a, view_b = batch["a"], batch["b"]
        self._update_key_encoders()
        with torch.no_grad():
            key_voxel = F.normalize(self.voxel_key(view_b, batch_size).float(), dim=1)
            key_point = F.normalize(self.point_key(view_b, batch_size).float(), dim=1)
        query_voxel = F.normalize(self.voxel_query(view_a, batch_size).float(), dim=1)
        query_point = F.normalize(self.point_query(view_a, batch_size).float(), dim=1)
        temperature = self.cfg.loss.temperature
        terms = []
        # copies: the queues are updated in place below, before backward reads them
        queues = (self.queue_voxel.clone(), self.queue_point.clone())
        with torch.autocast(device_type=query_voxel.device.type, enabled=False):
            for query in (query_voxel, query_point):
                for key, queue in zip((key_voxel, key_point), queues):
                    loss, _ = losses.moco_infonce(query, key, queue, temperature)
                    terms.append(loss)
        self._enqueue("voxel", key_voxel)
        self._enqueue("point", key_point)
        return torch.stack(terms).mean(), {"negatives": float(self.queue_voxel.shape[0])}
