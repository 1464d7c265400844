"""Selections on point-pixel pairings: pure functions on the batch layout of docs/ARCHITECTURE.md.

A batch of B scans with K cameras each has B*K images; image ``b * K + k`` is camera k of scan b, and each pair
is ``pairing_images[p] = [image, row, col]`` (a single sample is the case B = 1).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

UNLABELLED = 0  # superpixel id of pixels that no imported mask covers (slidr.data.superpixels, method "masks")


class CameraChoice(NamedTuple):
    """One camera per scan and the pairs that fall in it.

    Attributes
    ----------
    images : (B,) int64 tensor
        Image index (``b * K + k``) of the camera chosen for each scan.
    keep : (P,) bool tensor
        The pairs whose image is their scan's chosen camera.
    pairing_images : (P', 3) int64 tensor
        The kept pairs with their image index replaced by the scan index b, i.e. their row in
        ``all_images[images]``.
    """

    images: torch.Tensor
    keep: torch.Tensor
    pairing_images: torch.Tensor


def one_camera_per_sample(pairing_images: torch.Tensor, cameras_per_sample: int, num_samples: int,
                          generator: Optional[torch.Generator] = None, require_pairs: bool = False) -> CameraChoice:
    """ScaLR's camera selection: one camera drawn uniformly at random for each scan; only its pairs are kept.

    ScaLR draws one of the six nuScenes cameras per scan (``torch.randint``), whether or not points project
    into it, and loads that image only; points outside it get no target. With ``require_pairs`` the draw is
    among the cameras that have at least one pair (uniformly among all when none has).

    Parameters
    ----------
    pairing_images : (P, 3) int64 tensor
        ``[image, row, col]`` of each pair, image = ``b * K + k``.
    cameras_per_sample : int
        K.
    num_samples : int
        B (the scans of the batch; 1 for one sample).
    generator : torch.Generator, optional
        Random source of the draw (CPU); the draw is B integers.
    require_pairs : bool
        Draw only among cameras with pairs (default False: ScaLR's uniform draw).

    Returns
    -------
    CameraChoice
    """
    if cameras_per_sample < 1 or num_samples < 0:
        raise ValueError(f"need cameras_per_sample >= 1 and num_samples >= 0, got {cameras_per_sample}, "
                         f"{num_samples}")
    if pairing_images.dim() != 2 or pairing_images.shape[1] != 3:
        raise ValueError(f"pairing_images must be (P, 3) [image, row, col], got {tuple(pairing_images.shape)}")
    device = pairing_images.device
    image = pairing_images[:, 0].long()
    if image.numel() and not 0 <= int(image.min()) <= int(image.max()) < cameras_per_sample * num_samples:
        raise ValueError(f"pairing image indices must be in [0, {cameras_per_sample * num_samples}), got "
                         f"[{int(image.min())}, {int(image.max())}]")
    if require_pairs:
        has_pairs = torch.zeros(num_samples * cameras_per_sample, dtype=torch.bool)
        has_pairs[image.cpu()] = True
        weights = has_pairs.reshape(num_samples, cameras_per_sample).double()
        weights[weights.sum(dim=1) == 0] = 1.0
        camera = (torch.multinomial(weights, 1, generator=generator).squeeze(1) if num_samples
                  else torch.zeros(0, dtype=torch.long))
    else:
        camera = torch.randint(cameras_per_sample, (num_samples,), generator=generator)
    chosen = (torch.arange(num_samples) * cameras_per_sample + camera).to(device)
    keep = image == chosen[image // cameras_per_sample]
    kept = pairing_images[keep].clone()
    kept[:, 0] = kept[:, 0] // cameras_per_sample
    return CameraChoice(chosen, keep, kept)


def pairs_in_labelled_superpixels(pairing_images: torch.Tensor, superpixels: torch.Tensor,
                                  unlabelled: int = UNLABELLED) -> torch.Tensor:
    """Which pairs fall on a pixel covered by a superpixel (mask), i.e. not on the ``unlabelled`` id.

    Imported mask superpixels (``superpixels.method: masks``) give id 0 to the pixels no mask covers. The
    superpixel losses keep only superpixels that receive points, so dropping these pairs before the loss leaves
    the unlabelled region out of the contrast without any change to the loss.

    Parameters
    ----------
    pairing_images : (P, 3) int64 tensor
        ``[image, row, col]`` of each pair.
    superpixels : (M, H, W) int64 tensor
        Superpixel id of every pixel.
    unlabelled : int
        The id to leave out.

    Returns
    -------
    (P,) bool tensor.
    """
    if pairing_images.dim() != 2 or pairing_images.shape[1] != 3:
        raise ValueError(f"pairing_images must be (P, 3) [image, row, col], got {tuple(pairing_images.shape)}")
    image, row, col = pairing_images.to(device=superpixels.device, dtype=torch.long).unbind(1)
    return (superpixels[image, row, col] != unlabelled).to(pairing_images.device)
