"""``slidr bench loss``: the SLidR superpixel loss against the authors' one-hot formulation, side by side.

A batch of the paper's size (4 scans x 6 images at 224x416, 64-d features, 30,000 points per scan) with
Voronoi superpixels (~150 compact cells per image) and lidar-like pairings (points land in the lower part of
the images). The reference is the authors' release written out here: a sparse COO one-hot matrix superpixels x
pixels and one superpixels x paired points, ``torch.sparse.mm`` products, division by the counts, then the same
InfoNCE. Both get the same inputs; times are medians, memory is the peak above what was in use before the call.
That peak includes the gradients of the inputs (the pixel-feature gradient alone is ~550 MB at the default size),
which every implementation must write; the JSON also gives the memory beyond them (``*_beyond_grads_mb``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional, cast

import torch
import torch.nn.functional as F

from slidr.bench import DEVICE_FLAG, BenchResult, DeviceSetting, peak_memory_mb, resolve_device, time_call
from slidr.cli.settings import CommandSettings, Flag
from slidr.config import at_least, setting, subkey
from slidr.methods.losses import info_nce, superpixel_infonce

NAME = "loss"
HELP = "SLidR superpixel loss vs the authors' sparse one-hot formulation: time and memory"


@dataclass(frozen=True)
class LossBenchConfig(DeviceSetting):
    """``slidr bench loss``: the size of the batch the two loss formulations are timed on."""

    scans: int = setting(4, help="scans per batch")
    cameras: int = setting(6, help="images per scan")
    height: int = setting(224, help="image height")
    width: int = setting(416, help="image width")
    channels: int = setting(64, help="feature channels")
    points: int = setting(30_000, help="points per scan")
    superpixels: int = setting(150, help="superpixels per image")
    repeats: int = setting(3, help="timed runs per measurement (median)")
    threads: Optional[int] = setting(None, help="torch CPU threads (default: torch's)")
    seed: int = setting(0, help="seed of the random batch")

    def validate(self, where: str) -> None:
        for name in ("scans", "cameras", "channels", "points", "superpixels", "repeats"):
            at_least(getattr(self, name), 1, subkey(where, name))
        at_least(self.height, 8, subkey(where, "height"))
        at_least(self.width, 8, subkey(where, "width"))
        if self.threads is not None:
            at_least(self.threads, 1, subkey(where, "threads"))
        at_least(self.seed, 0, subkey(where, "seed"))


SETTINGS = CommandSettings(LossBenchConfig, flags=[Flag(name) for name in (
    "scans", "cameras", "height", "width", "channels", "points", "superpixels", "repeats", "threads", "seed")]
    + [DEVICE_FLAG])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)


def run(args: argparse.Namespace) -> BenchResult:
    cfg: LossBenchConfig = args.settings
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    batch = make_batch(cfg, device)
    num_labels = cfg.superpixels  # ids are < this in every image (the release's "superpixel_size")

    def slidr_loss():
        return superpixel_infonce(batch["point_features"], batch["pairing_images"], batch["pixel_features"],
                                  batch["superpixels"])[0]

    def onehot_loss():
        return onehot_reference(batch["point_features"], batch["pairing_images"], batch["pixel_features"],
                                batch["superpixels"], num_labels)

    slidr_value, onehot_value = slidr_loss(), onehot_loss()
    grads = {}
    for name, fn in (("slidr", slidr_loss), ("onehot", onehot_loss)):
        _clear_grads(batch)
        fn().backward()
        grads[name] = tuple(cast(torch.Tensor, batch[key].grad).clone()  # set by backward()
                            for key in ("point_features", "pixel_features"))
    grad_diff = max((a - b).abs().max().item() for a, b in zip(grads["slidr"], grads["onehot"]))
    del grads

    rows: list[dict] = []
    data: dict[str, Any] = {}
    for name, fn in (("slidr", slidr_loss), ("onehot", onehot_loss)):
        def forward_backward(fn=fn):
            _backward(fn, batch)

        forward_s = time_call(fn, repeats=cfg.repeats, device=device)
        forward_backward_s = time_call(forward_backward, repeats=cfg.repeats, device=device)
        _clear_grads(batch)
        forward_mb = peak_memory_mb(fn, device)
        _clear_grads(batch)
        forward_backward_mb = peak_memory_mb(forward_backward, device)
        data[f"{name}_forward_ms"] = round(forward_s * 1000, 1)
        data[f"{name}_ms"] = round(forward_backward_s * 1000, 1)
        data[f"{name}_forward_peak_mb"] = round(forward_mb, 1)
        data[f"{name}_peak_mb"] = round(forward_backward_mb, 1)
        rows.append({"implementation": name, "forward_ms": data[f"{name}_forward_ms"],
                     "fwd_bwd_ms": data[f"{name}_ms"], "forward_peak_mb": data[f"{name}_forward_peak_mb"],
                     "fwd_bwd_peak_mb": data[f"{name}_peak_mb"]})

    input_grads_mb = sum(batch[key].numel() * batch[key].element_size()
                         for key in ("point_features", "pixel_features")) / 2**20
    data.update(
        abs_diff=abs(slidr_value.item() - onehot_value.item()),
        grad_max_abs_diff=grad_diff,
        loss=slidr_value.item(),
        speedup_fwd_bwd=round(data["onehot_ms"] / data["slidr_ms"], 2),
        memory_ratio_fwd_bwd=round(data["slidr_peak_mb"] / max(data["onehot_peak_mb"], 1e-9), 3),
        pairs=int(batch["pairing_images"].shape[0]),
        superpixels_used=superpixel_infonce(batch["point_features"], batch["pairing_images"],
                                            batch["pixel_features"], batch["superpixels"])[1]["superpixels"],
        input_grads_mb=round(input_grads_mb, 1),
        slidr_beyond_grads_mb=round(data["slidr_peak_mb"] - input_grads_mb, 1),
        onehot_beyond_grads_mb=round(data["onehot_peak_mb"] - input_grads_mb, 1),
        settings={key: getattr(cfg, key) for key in ("scans", "cameras", "height", "width", "channels", "points",
                                                      "superpixels", "repeats", "threads", "seed")},
        device=str(device),
    )
    notes = [
        f"loss {data['loss']:.6f}, |slidr - onehot| = {data['abs_diff']:.2e}, "
        f"max gradient difference {grad_diff:.2e}",
        f"fwd+bwd: {data['speedup_fwd_bwd']}x faster, {data['memory_ratio_fwd_bwd']:.2f}x the peak memory; "
        f"the gradients of the inputs, which any implementation writes, are {data['input_grads_mb']} MB of it: "
        f"beyond them {data['slidr_beyond_grads_mb']} MB (slidr) vs {data['onehot_beyond_grads_mb']} MB (onehot)",
        f"{data['pairs']} pairs, {data['superpixels_used']} superpixels with points",
    ]
    return BenchResult(rows=rows, data=data, notes=notes)


def onehot_reference(point_features, pairing_images, pixel_features, superpixels, num_labels):
    """The authors' formulation: sparse one-hot matrices, sparse-dense products, division by the counts.

    Superpixel ids are offset by ``num_labels`` per image; superpixels without points are dropped through their
    point count (the release tests the first feature for 0 and adds 1e-6 to the counts, which only moves the
    result by ~1e-6; exact counts are used here so that both implementations compute the same function).
    """
    num_images, channels, height, width = pixel_features.shape
    device = pixel_features.device
    num_rows = num_images * num_labels
    global_ids = superpixels + torch.arange(num_images, device=device)[:, None, None] * num_labels
    image, row, col = pairing_images.long().T
    num_pairs, num_pixels = pairing_images.shape[0], global_ids.numel()
    with torch.no_grad():
        onehot_points = torch.sparse_coo_tensor(
            torch.stack((global_ids[image, row, col], torch.arange(num_pairs, device=device))),
            torch.ones(num_pairs, device=device), (num_rows, num_pairs), check_invariants=False,
        )
        onehot_pixels = torch.sparse_coo_tensor(
            torch.stack((global_ids.flatten(), torch.arange(num_pixels, device=device))),
            torch.ones(num_pixels, device=device), (num_rows, num_pixels), check_invariants=False,
        )
    point_counts = torch.sparse.sum(onehot_points, 1).to_dense()[:, None]
    pixel_counts = torch.sparse.sum(onehot_pixels, 1).to_dense()[:, None]
    superpoints = torch.sparse.mm(onehot_points, point_features) / point_counts.clamp(min=1)
    superpixel_means = torch.sparse.mm(onehot_pixels, pixel_features.permute(0, 2, 3, 1).flatten(0, 2))
    superpixel_means = superpixel_means / pixel_counts.clamp(min=1)
    kept = point_counts[:, 0] > 0
    return info_nce(superpoints[kept], superpixel_means[kept], 0.07)


def make_batch(cfg: LossBenchConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Random features, Voronoi superpixels and lidar-like pairings of the benchmark's size."""
    generator = torch.Generator().manual_seed(cfg.seed)
    num_images = cfg.scans * cfg.cameras
    superpixels = torch.stack(
        [voronoi_superpixels(cfg.height, cfg.width, cfg.superpixels, generator) for _ in range(num_images)]
    )
    # each point is seen by one camera of its scan (70% of points fall in some image, as with cropped views);
    # rows are drawn in the lower 60% of the image, where the lidar returns are
    points_in_view = int(cfg.points * 0.7)
    pairs = []
    for scan in range(cfg.scans):
        camera = torch.randint(0, cfg.cameras, (points_in_view,), generator=generator)
        row = (cfg.height * (0.4 + 0.6 * torch.rand(points_in_view, generator=generator))).long()
        col = torch.randint(0, cfg.width, (points_in_view,), generator=generator)
        pairs.append(torch.stack([scan * cfg.cameras + camera, row.clamp(max=cfg.height - 1), col], dim=1))
    pairing_images = torch.cat(pairs)
    point_features = F.normalize(torch.randn(len(pairing_images), cfg.channels, generator=generator), dim=1)
    pixel_features = F.normalize(
        torch.randn(num_images, cfg.channels, cfg.height, cfg.width, generator=generator), dim=1
    )
    return {
        "point_features": point_features.to(device).requires_grad_(),
        "pairing_images": pairing_images.to(device),
        "pixel_features": pixel_features.to(device).requires_grad_(),
        "superpixels": superpixels.to(device),
    }


def voronoi_superpixels(height: int, width: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(H, W) int64 labels of the Voronoi cells of ``count`` random seeds: compact, irregular superpixels."""
    seeds = torch.rand(count, 2, generator=generator) * torch.tensor([height, width])
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                                torch.arange(width, dtype=torch.float32), indexing="ij")
    pixels = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    return torch.cdist(pixels, seeds).argmin(dim=1).reshape(height, width)


def _backward(fn, batch):
    _clear_grads(batch)
    fn().backward()


def _clear_grads(batch):
    batch["point_features"].grad = None
    batch["pixel_features"].grad = None
