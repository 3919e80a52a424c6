"""The one resize routine srtool uses, and the exact operator norms derived from it.

Resizing happens inside ONNX graphs (ONNX `Resize`, bilinear, half-pixel centres: the convention of
OpenCV's INTER_LINEAR and torch's align_corners=False). The radius factors of DESIGN §3 need the
operator norm of that very resize, so we obtain its matrix by pushing basis vectors through the same
node on ONNX Runtime instead of re-deriving the interpolation weights by hand. The resize is
separable, U = U_h ⊗ U_w, hence ‖U‖₂ = ‖U_h‖₂ · ‖U_w‖₂.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
from onnx import TensorProto, helper

RESIZE_OPSET = 13
# The probed matrices hold float32 interpolation weights (relative error ~6e-8 against the exact
# bilinear weights), so every norm is raised by this much: a radius factor may be a hair too small,
# never too large.
NORM_MARGIN = 1 + 1e-6


def resize_nodes(src: str, dst: str, size_hw: tuple[int, int], prefix: str) -> tuple[list, list]:
    """Nodes and initializers resizing NCHW tensor `src` to spatial `size_hw` as `dst`.

    The output size is taken from a constant, so batch and channel axes pass through unchanged.
    """
    shape = f"{prefix}shape"
    head = f"{prefix}head"
    sizes = f"{prefix}sizes"
    spatial = helper.make_tensor(f"{prefix}spatial", TensorProto.INT64, [2], list(size_hw))
    first = helper.make_tensor(f"{prefix}starts", TensorProto.INT64, [1], [0])
    last = helper.make_tensor(f"{prefix}ends", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Shape", [src], [shape]),
        helper.make_node("Slice", [shape, first.name, last.name], [head]),
        helper.make_node("Concat", [head, spatial.name], [sizes], axis=0),
        helper.make_node("Resize", [src, "", "", sizes], [dst], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
    ]
    return nodes, [spatial, first, last]


class Resizer:
    """Resizes float32 NCHW arrays on the CPU with exactly the node used in sampling graphs."""

    def __init__(self, size_hw: tuple[int, int]):
        import onnxruntime as ort

        nodes, inits = resize_nodes("x", "y", size_hw, "r/")
        graph = helper.make_graph(
            nodes, "srtool_resize",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "h", "w"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "rh", "rw"])], inits)
        opset = helper.make_opsetid("", RESIZE_OPSET)
        # The lowest IR version for the opset keeps older ONNX Runtime builds able to load it.
        model = helper.make_model(graph, opset_imports=[opset],
                                  ir_version=helper.find_min_ir_version_for([opset]))
        onnx.checker.check_model(model)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(model.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


@lru_cache(maxsize=64)
def resize_matrix(src: int, dst: int) -> np.ndarray:
    """The dst×src matrix of the 1-D resize, probed through the ONNX Resize node.

    Resizing a (src × 1) image to (dst × 1) leaves the unit axis alone (1 → 1 is the identity), so
    feeding the src basis vectors as a batch yields the columns of the 1-D operator.
    """
    if src == dst:
        return np.eye(dst)
    basis = np.eye(src, dtype=np.float32).reshape(src, 1, src, 1)
    columns = Resizer((dst, 1))(basis).reshape(src, dst)
    return columns.T.astype(np.float64)


def resize_norm(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> float:
    """‖U‖₂ of the 2-D resize src_hw → dst_hw (one channel; channels do not mix)."""
    u_h = resize_matrix(src_hw[0], dst_hw[0])
    u_w = resize_matrix(src_hw[1], dst_hw[1])
    return float(np.linalg.norm(u_h, 2) * np.linalg.norm(u_w, 2)) * NORM_MARGIN


def coverage(size_hw: tuple[int, int], patch_hw: tuple[int, int], offsets: np.ndarray) -> np.ndarray:
    """How many patches cover each pixel of the (resized) image."""
    counts = np.zeros(size_hw, dtype=np.float64)
    for top, left in offsets:
        counts[top:top + patch_hw[0], left:left + patch_hw[1]] += 1
    return counts


def _axis_coverage(size: int, patch: int, starts) -> np.ndarray:
    counts = np.zeros(size)
    for start in starts:
        counts[start:start + patch] += 1
    return counts


def _is_full_grid(offsets: np.ndarray) -> bool:
    """True when the offsets are every (row, column) pair of their distinct rows and columns, once."""
    rows, cols = np.unique(offsets[:, 0]), np.unique(offsets[:, 1])
    pairs = {tuple(o) for o in offsets.tolist()}
    return len(pairs) == len(offsets) == len(rows) * len(cols)


def stacked_crop_norm(src_hw: tuple[int, int], dst_hw: tuple[int, int], patch_hw: tuple[int, int],
                      offsets: np.ndarray) -> float:
    """‖A‖₂ for A = [P_1 U; …; P_k U], the crops of the resized image stacked (DESIGN §3).

    AᵀA = Uᵀ D U with D the per-pixel coverage count, so ‖A‖₂² is the largest eigenvalue of Uᵀ D U.
    - No resize: U = I and ‖A‖₂² = max(D), exact.
    - A full grid of positions (dense sampling) has separable coverage D = D_h ⊗ D_w, so
      Uᵀ D U = (U_hᵀ D_h U_h) ⊗ (U_wᵀ D_w U_w) and its top eigenvalue is the product of two small
      symmetric eigenproblems: exact.
    - Other layouts (random positions): Lanczos (scipy's eigsh) on V ↦ U_hᵀ (D ∘ (U_h V U_wᵀ)) U_w.
      The Ritz value is raised by its residual (an eigenvalue lies within it) and capped by the
      always-valid bound ‖U‖₂² · max(D), so the norm is not undershot.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    counts = coverage(dst_hw, patch_hw, offsets)
    if src_hw == dst_hw:
        return float(np.sqrt(counts.max()))  # exact: U = I, integers
    u_h = resize_matrix(src_hw[0], dst_hw[0])
    u_w = resize_matrix(src_hw[1], dst_hw[1])
    if _is_full_grid(offsets):
        d_h = _axis_coverage(dst_hw[0], patch_hw[0], np.unique(offsets[:, 0]))
        d_w = _axis_coverage(dst_hw[1], patch_hw[1], np.unique(offsets[:, 1]))
        top_h = np.linalg.eigvalsh(u_h.T @ (d_h[:, None] * u_h))[-1]
        top_w = np.linalg.eigvalsh(u_w.T @ (d_w[:, None] * u_w))[-1]
        return float(np.sqrt(top_h * top_w)) * NORM_MARGIN
    upper = (np.linalg.norm(u_h, 2) * np.linalg.norm(u_w, 2)) ** 2 * counts.max()

    def gram(v: np.ndarray) -> np.ndarray:
        image = v.reshape(src_hw)
        return (u_h.T @ (counts * (u_h @ image @ u_w.T)) @ u_w).ravel()

    size = src_hw[0] * src_hw[1]
    if size <= 400:  # small: a dense eigensolve is cheaper than iterating
        dense = np.stack([gram(e) for e in np.eye(size)], axis=1)
        largest = float(np.linalg.eigvalsh((dense + dense.T) / 2)[-1])
        return float(np.sqrt(min(largest, upper))) * NORM_MARGIN
    from scipy.sparse.linalg import LinearOperator, eigsh

    operator = LinearOperator((size, size), matvec=gram, dtype=np.float64)
    values, vectors = eigsh(operator, k=1, which="LA", tol=1e-8)
    theta, v = float(values[0]), vectors[:, 0]
    residual = float(np.linalg.norm(gram(v) - theta * v))
    return float(np.sqrt(min(theta + residual, upper))) * NORM_MARGIN
