"""Vector maths and Arrow conversions: the one home for both (numpy and pyarrow only, no torch).

>>> import numpy as np
>>> v = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
>>> v.tolist()
[[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
>>> to_numpy(to_fixed_list(v), 2).shape
(2, 2)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise (last axis) L2 normalisation in float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def mean_vector(vectors: np.ndarray) -> np.ndarray:
    """Normalised mean of normalised vectors (an item's frames or images)."""
    return l2_normalize(np.asarray(vectors, dtype=np.float32).mean(axis=0))


def to_numpy(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed-size-list float column as a writable, C-contiguous (N, dim) float32 array (one copy at most)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, dim), np.float32)
    values = arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim)
    if values.dtype != np.float32 or not values.flags.writeable or not values.flags.c_contiguous:
        values = np.array(values, dtype=np.float32)  # Arrow buffers are read-only; torch wants writable memory
    return values


def to_fixed_list(values: np.ndarray, dim: int | None = None) -> pa.FixedSizeListArray:
    """An (N, dim) array as an Arrow fixed-size-list<float32> array (the vector column type)."""
    values = np.asarray(values, dtype=np.float32)
    dim = dim or (values.shape[1] if values.ndim == 2 else 0)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), dim)


def vector_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)
