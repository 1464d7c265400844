"""A sparse-convolution engine in plain PyTorch (no compiled extension), with an optional spconv backend.

``SparseTensor(coords (V, 4) int [batch, x, y, z], feats (V, C))`` carries a cache of coordinate levels and
kernel maps shared by every layer; the layers are submanifold convolution, stride-2 convolution, its transposed
convolution back onto the finer sites, batch norm over active sites, ReLU, skip concatenation and pooling.
"""

from slidr.models.sparse.conv import Conv3dDown, ConvTranspose3dUp, SparseConvFunction, SubmanifoldConv3d, sparse_conv
from slidr.models.sparse.layers import SparseBatchNorm, SparseReLU, cat, global_pool
from slidr.models.sparse.maps import KernelMap, KeyPacking, kernel_offsets
from slidr.models.sparse.tensor import CoordinateCache, SparseTensor

__all__ = [
    "Conv3dDown",
    "ConvTranspose3dUp",
    "CoordinateCache",
    "KernelMap",
    "KeyPacking",
    "SparseBatchNorm",
    "SparseConvFunction",
    "SparseReLU",
    "SparseTensor",
    "SubmanifoldConv3d",
    "cat",
    "global_pool",
    "kernel_offsets",
    "sparse_conv",
]
