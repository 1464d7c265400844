"""Networks: the sparse-convolution engine, the 3D U-Net, the image encoders and teacher, the point network.

Two registries choose networks by name (see :mod:`slidr.registry`); each module of this package that defines
one registers it where it is defined:

- :data:`BACKBONES`: 3D backbones, ``constructor(cfg: BackboneConfig) -> nn.Module`` with ``model(SparseTensor)
  -> (V, out_channels)``, ``forward_features`` (V, ``feature_channels``) and a point-wise ``final`` layer
  (``backbone.name``; built by :func:`slidr.models.unet.build_backbone`).
- :data:`IMAGE_ENCODERS`: frozen image encoders, ``constructor(**options) -> nn.Module`` with
  ``forward_features(x) -> (B, out_channels, H / output_stride, W / output_stride)`` and the attributes
  ``out_channels`` and ``output_stride`` (``image.encoder``; built by :func:`slidr.models.image.build_encoder`).
  Optional metadata given at registration: ``options`` (names of :class:`~slidr.config.ImageModelConfig`
  fields passed to the constructor as keyword arguments, e.g. ``("dilated",)``), ``mean`` / ``std`` (the input
  normalisation the weights expect, RGB in [0, 1]; default ImageNet's) and ``weight_prefixes`` (key prefixes
  to try stripping from weight files before :data:`slidr.models.image.COMMON_PREFIXES`).

Every public module of this package is imported on the first lookup of either registry.
"""

from __future__ import annotations

from typing import Any, Mapping

from slidr.registry import Registry

BACKBONES: Registry[Any] = Registry("backbone", home="slidr.models")
IMAGE_ENCODERS: Registry[Any] = Registry("image_encoder", home="slidr.models")


def sparse_input(batch: Mapping[str, Any]) -> Any:
    """The voxels of a batch (or of one view of a pair batch) as a :class:`slidr.models.sparse.SparseTensor`.

    ``batch["voxel_coords"]`` (V, 4) int32 ``[batch, x, y, z]`` and ``batch["voxel_feats"]`` (V, C).
    """
    from slidr.models.sparse import SparseTensor

    return SparseTensor(batch["voxel_coords"], batch["voxel_feats"])
