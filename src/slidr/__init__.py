"""slidr: image-to-lidar self-supervised distillation (SLidR, CVPR 2022) and its baselines, in plain PyTorch.

Layers, each importing only from the ones before it (below them all: ``slidr.config``, ``slidr.errors``,
``slidr.registry``, ``slidr.utils``):

- ``slidr.data``: files on disk -> arrays (synthetic world, preparation, projection, voxelization,
  superpixels, augmentations, datasets).
- ``slidr.models``: the sparse-convolution engine, the 3D U-Net, the image teachers and heads.
- ``slidr.engine``: the training machinery shared by every method (data order, optimizers, checkpoints,
  trainers, the base pretraining module).
- ``slidr.methods``: pretraining methods (registered by name), losses, downstream training and evaluation.
- ``slidr.analysis``: feature-similarity maps and k-NN label transfer.
- ``slidr.cli`` and ``slidr.bench``: the ``slidr`` command and its benchmarks.
"""

__version__ = "0.1.0"
