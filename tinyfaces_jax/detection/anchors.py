"""SSD-style anchor grids (S3FD, RetinaFace, SSH) built on the host as static constants.

Anchors depend only on static shapes (image size, strides, sizes), so they are computed once
in numpy at trace time and enter the jitted step as constants: no work inside XLA.

Layout (the RetinaFace/S3FD head layout `permute(0, 2, 3, 1).view(N, -1, k)`): level (in the
order given), then feature row i, then column j, then anchor size. The centre of cell (i, j)
on a level of stride s is ((j + offset) * s, (i + offset) * s) in input pixels, with offset 0.5
as in Pytorch_Retinaface `PriorBox` and S3FD `PriorBox` (cx = (j + 0.5) * step / W, then
scaled back to pixels). Feature maps default to ceil(H / s) x ceil(W / s).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
  """Anchor layout of a detector.

  Attributes:
    strides: per level L, the feature stride in input pixels.
    sizes: per level, the square anchor side lengths (pixels) at every cell.
    offset: cell-centre offset in units of the stride (centre of cell i: (i + offset) *
      stride).
    centre_px: when set, the centre of cell i is centre_px + i * stride on every level instead
      (py-faster-rcnn / SSH: the 16 px base window's centre 7.5).
    pixel_offset: 1 for the +1 pixel convention (x2 - x1 + 1 = size: SSH), 0 continuous.
  """
  strides: tuple[int, ...]
  sizes: tuple[tuple[float, ...], ...]
  offset: float = 0.5
  centre_px: Optional[float] = None
  pixel_offset: float = 0.0

  def __post_init__(self):
    if len(self.strides) != len(self.sizes):
      raise ValueError(f"AnchorSpec: {len(self.strides)} strides but {len(self.sizes)} "
                       "size lists; give one size list per level")
    if any(s <= 0 for s in self.strides):
      raise ValueError(f"AnchorSpec: strides must be positive, got {self.strides}")
    if any(len(z) == 0 or min(z) <= 0 for z in self.sizes):
      raise ValueError(f"AnchorSpec: every level needs positive sizes, got {self.sizes}")

  @property
  def num_levels(self) -> int:
    return len(self.strides)

  def anchors_per_cell(self) -> tuple[int, ...]:
    return tuple(len(z) for z in self.sizes)


# Pytorch_Retinaface cfg_mnet / cfg_re50.
RETINAFACE = AnchorSpec(strides=(8, 16, 32), sizes=((16, 32), (64, 128), (256, 512)))
# biubug6/Face-Detector-1MB-with-landmark (the "1MB" RetinaFace-MobileNet0.25 retrain).
RETINAFACE_1MB = AnchorSpec(strides=(8, 16, 32), sizes=((10, 20), (32, 64), (128, 256)))
# S3FD (Zhang et al. 2017, Table 1): one square anchor of 4x the stride per level.
S3FD = AnchorSpec(strides=(4, 8, 16, 32, 64, 128), sizes=((16,), (32,), (64,), (128,),
                                                          (256,), (512,)))
# SSH (Najibi et al. 2017, SSH/layers/generate_anchors.py): M1 {16, 32} on stride 8, M2 {64, 128}
# on 16, M3 {256, 512} on 32; every centre at 7.5 + stride * i, +1 pixel widths.
SSH = AnchorSpec(strides=(8, 16, 32), sizes=((16, 32), (64, 128), (256, 512)), centre_px=7.5,
                 pixel_offset=1.0)

PRESETS = {"retinaface": RETINAFACE, "retinaface_1mb": RETINAFACE_1MB, "s3fd": S3FD,
           "ssh": SSH}


def get_spec(name: str) -> AnchorSpec:
  """Returns a preset AnchorSpec by name, with a clear error for a typo."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ValueError(f"unknown anchor preset {name!r}; known: {sorted(PRESETS)}") from None


def feature_sizes(image_hw: tuple[int, int], strides: Sequence[int]) -> list[tuple[int, int]]:
  """Default feature-map sizes [(h_l, w_l)] = ceil(H / s), ceil(W / s) per level."""
  h, w = image_hw
  return [(math.ceil(h / s), math.ceil(w / s)) for s in strides]


def level_anchors(fh: int, fw: int, stride: float, sizes: Sequence[float],
                  offset: float = 0.5, centre_px: Optional[float] = None,
                  pixel_offset: float = 0.0) -> np.ndarray:
  """Anchors of one level: [fh * fw * len(sizes), 4] xyxy float32, order (row, col, size);
  centres and widths as the AnchorSpec fields of the same names."""
  if centre_px is None:
    ys = (np.arange(fh, dtype=np.float64) + offset) * stride
    xs = (np.arange(fw, dtype=np.float64) + offset) * stride
  else:
    ys = centre_px + np.arange(fh, dtype=np.float64) * stride
    xs = centre_px + np.arange(fw, dtype=np.float64) * stride
  cy, cx, sz = np.meshgrid(ys, xs, np.asarray(sizes, np.float64), indexing="ij")
  half = (sz - pixel_offset) / 2.0
  boxes = np.stack([cx - half, cy - half, cx + half, cy + half], axis=-1)
  return boxes.reshape(-1, 4).astype(np.float32)


def anchor_grid(spec: AnchorSpec, image_hw: tuple[int, int],
                fmap_sizes: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
  """All anchors of an image size: [A, 4] xyxy float32 in input pixels.

  Args:
    spec: the detector's AnchorSpec.
    image_hw: (H, W) of the network input.
    fmap_sizes: optional per-level (h, w) of the real feature maps (when a backbone's
      rounding differs from ceil(H / s)); defaults to `feature_sizes`.
  """
  if fmap_sizes is None:
    fmap_sizes = feature_sizes(image_hw, spec.strides)
  if len(fmap_sizes) != spec.num_levels:
    raise ValueError(f"anchor_grid: {len(fmap_sizes)} feature maps for "
                     f"{spec.num_levels} levels")
  parts = [level_anchors(fh, fw, s, z, spec.offset, spec.centre_px, spec.pixel_offset)
           for (fh, fw), s, z in zip(fmap_sizes, spec.strides, spec.sizes)]
  return np.concatenate(parts, axis=0)


def level_slices(spec: AnchorSpec, image_hw: tuple[int, int],
                 fmap_sizes: Sequence[tuple[int, int]] | None = None) -> list[slice]:
  """The slice of the flat anchor axis A that belongs to each level."""
  if fmap_sizes is None:
    fmap_sizes = feature_sizes(image_hw, spec.strides)
  out, start = [], 0
  for (fh, fw), k in zip(fmap_sizes, spec.anchors_per_cell()):
    out.append(slice(start, start + fh * fw * k))
    start += fh * fw * k
  return out


def normalized_priors(spec: AnchorSpec, image_hw: tuple[int, int]) -> np.ndarray:
  """Priors as Pytorch_Retinaface `PriorBox.forward()` returns them.

  Returns [A, 4] float32 (cx, cy, w, h) divided by (W, H, W, H).
  """
  h, w = image_hw
  a = anchor_grid(spec, image_hw).astype(np.float64)
  cxcywh = np.concatenate([(a[:, :2] + a[:, 2:]) / 2, a[:, 2:] - a[:, :2]], axis=1)
  return (cxcywh / np.array([w, h, w, h], np.float64)).astype(np.float32)
