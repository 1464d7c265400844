"""Projection heads: trainable maps from a backbone's features to a distillation target's feature space."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from slidr.config import ConfigError


class ProjectionHead(nn.Module):
    """Per-point projection of backbone features onto the teacher's channels, e.g. ScaLR's distillation head.

    ``kind="linear"``: one affine layer (ScaLR: the backbone's final 1x1 convolution from its 768 channels to
    the 1,024 of DINOv2 ViT-L/14, dropped after pretraining). ``kind="mlp"``: linear, ReLU, linear (the hidden
    width defaults to ``in_channels``). No normalisation layer: the output of one point does not depend on the
    rest of the batch. The loss normalises the output (:func:`slidr.methods.losses.cosine_distillation`).

    Parameters
    ----------
    in_channels, out_channels : int
        Backbone feature channels and teacher feature channels.
    kind : ``"linear"`` or ``"mlp"``
    hidden_channels : int, optional
        Width of the MLP's hidden layer (``kind="mlp"`` only; default ``in_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int, kind: Literal["linear", "mlp"] = "linear",
                 hidden_channels: Optional[int] = None) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ConfigError(f"projection head: channels must be >= 1, got {in_channels} -> {out_channels}")
        self.kind = kind
        if kind == "linear":
            if hidden_channels is not None:
                raise ConfigError("projection head: hidden_channels is for kind 'mlp' only")
            self.layers = nn.Sequential(nn.Linear(in_channels, out_channels))
        elif kind == "mlp":
            hidden = in_channels if hidden_channels is None else hidden_channels
            if hidden < 1:
                raise ConfigError(f"projection head: hidden_channels must be >= 1, got {hidden}")
            self.layers = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, out_channels))
        else:
            raise ConfigError(f"projection head: kind must be 'linear' or 'mlp', got {kind!r}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, in_channels) -> (N, out_channels)."""
        return self.layers(features)
