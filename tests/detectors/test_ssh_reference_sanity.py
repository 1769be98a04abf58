"""Sanity of the numpy statement of the SSH release (tests/reference/ssh.py) itself: anchors
against the values in ../shared/references/s3fd_ssh.md 2.2, the box coding, hand-built
anchor_targets cases (border filter, thresholds, hard positives / negatives, ties, no OHEM,
no gt), the losses, the deconvolution, output arrangement, map sizes and the test pipeline."""

import math

import numpy as np
import pytest

from tests.reference import s3fd as s3fd_ref
from tests.reference import ssh as ref


def test_base_anchors_match_the_notes():
  np.testing.assert_array_equal(ref.generate_anchors(16, (1,), (1, 2)),
                                [[0, 0, 15, 15], [-8, -8, 23, 23]])
  np.testing.assert_array_equal(ref.generate_anchors(16, (1,), (4, 8)),
                                [[-24, -24, 39, 39], [-56, -56, 71, 71]])
  np.testing.assert_array_equal(ref.generate_anchors(16, (1,), (16, 32)),
                                [[-120, -120, 135, 135], [-248, -248, 263, 263]])
  # py-faster-rcnn's default 9 anchors (ratio outer, scale inner), first and last rows.
  nine = ref.generate_anchors(16, (0.5, 1, 2), (8, 16, 32))
  np.testing.assert_array_equal(nine[0], [-84, -40, 99, 55])
  np.testing.assert_array_equal(nine[-1], [-168, -344, 183, 359])


def test_anchor_grid_order_is_h_w_a():
  g = ref.anchor_grid(8, (1, 2), (2, 3))
  assert g.shape == (12, 4)
  base = ref.generate_anchors(16, (1,), (1, 2))
  for h in range(2):
    for w in range(3):
      for a in range(2):
        np.testing.assert_array_equal(g[(h * 3 + w) * 2 + a], base[a] + 8 * np.array([w, h, w, h]))
  # the release's own construction: meshgrid(shift_x, shift_y), (1, A, 4) + (K, 1, 4)
  sx, sy = np.meshgrid(np.arange(3) * 8, np.arange(2) * 8)
  shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], 1)
  np.testing.assert_array_equal(g, (base[None] + shifts[:, None]).reshape(-1, 4))


def test_box_coding_round_trip_and_plus_one_asymmetry():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 100, (50, 2))
  a = np.concatenate([a, a + rng.uniform(3, 60, (50, 2))], 1)
  g = rng.uniform(0, 100, (50, 2))
  g = np.concatenate([g, g + rng.uniform(3, 60, (50, 2))], 1)
  t = ref.bbox_transform(a, g)
  # decoding has no -1 on x2 / y2: inv(transform(g)) = g + [0, 0, 1, 1]
  np.testing.assert_allclose(ref.bbox_transform_inv(a, t), g + [0, 0, 1, 1], atol=1e-9)
  np.testing.assert_allclose(ref.bbox_transform_inv(a, np.zeros_like(a)), a + [0, 0, 1, 1])
  # identical boxes -> zero targets; +1 widths
  np.testing.assert_array_equal(ref.bbox_transform(a, a), np.zeros_like(a))
  np.testing.assert_allclose(ref.bbox_transform([[0, 0, 15, 15]], [[0, 0, 31, 15]]),
                             [[0.5, 0.0, math.log(2), 0.0]])


def test_decode_overflow_clamp():
  a = np.array([[0, 0, 15, 15], [0, 0, 15, 15]], np.float64)
  d = np.array([[0, 0, 60, 0], [0, 0, 0, 100]], np.float64)   # exp(100) overflows float32
  out = ref.bbox_transform_inv(a, d)
  # every dw / dh > 50 became 5
  np.testing.assert_allclose(out[:, 2] - out[:, 0], [16 * math.exp(5), 16])
  np.testing.assert_allclose(out[:, 3] - out[:, 1], [16, 16 * math.exp(5)])
  # no overflow in the call -> no clamp
  out = ref.bbox_transform_inv(a[:1], np.array([[0, 0, 60, 0]]))
  np.testing.assert_allclose(out[0, 2] - out[0, 0], 16 * math.exp(60))


def test_clip_and_overlaps():
  np.testing.assert_array_equal(ref.clip_boxes([[-5, -1, 70, 40]], (30, 64)), [[0, 0, 63, 29]])
  # +1 IoU; the zero row of wider.py is the 1x1 box at pixel (0, 0)
  ov = ref.bbox_overlaps([[0, 0, 15, 15], [1, 0, 15, 15], [0, 0, 15, 31]],
                         [[0, 0, 0, 0], [0, 0, 15, 15]])
  np.testing.assert_allclose(ov, [[1 / 256, 1], [0, 15 * 16 / 256], [1 / 512, 0.5]])


def _case():
  """gt one 32x32 face; 70 exact anchors (IoU 1), 20 in the ignore band, 300 negatives,
  an anchor on the border (x1 = 0, kept) and border-violating ones."""
  gt = np.array([[10, 10, 41, 41]], np.float64)
  pos = np.repeat(gt, 70, 0)
  band = np.repeat([[10, 10, 41, 80]], 20, 0)          # IoU 1024 / 2272 = 0.45
  neg = np.array([[60 + i % 4, 60, 75 + i % 4, 75] for i in range(300)], np.float64)
  edge = np.array([[0, 50, 15, 65]], np.float64)         # x1 = 0 >= -0: inside, negative
  out = np.array([[90, 90, 100, 99], [-1, 10, 30, 41], [10, 10, 41, 100]], np.float64)
  anchors = np.concatenate([pos, band, neg, edge, out])
  return anchors, gt


def test_anchor_targets_hard_mining():
  anchors, gt = _case()
  n = len(anchors)
  rng = np.random.default_rng(1)
  scores = rng.permutation(n) / n
  labels, targets, num = ref.anchor_targets(anchors, gt, (100, 100), border=0, fg_scores=scores)
  pos = np.arange(70)
  kept = pos[np.argsort(scores[pos])[:64]]
  assert set(np.where(labels == 1)[0]) == set(kept)
  assert (labels[pos[np.argsort(scores[pos])[64:]]] == -1).all()
  assert (labels[70:90] == -1).all()                     # ignore band
  negs = np.arange(90, 391)
  kept_neg = negs[np.argsort(-scores[negs])[:192]]
  assert set(np.where(labels == 0)[0]) == set(kept_neg)
  assert (labels[391:] == -1).all()                      # outside the border
  assert num == 256
  np.testing.assert_array_equal(targets[:70], 0)
  np.testing.assert_allclose(targets[70:90],
                             ref.bbox_transform(anchors[70:90], np.repeat(gt, 20, 0)))
  np.testing.assert_array_equal(targets[391:], 0)
  # a border of 512 admits the last three: a negative candidate and two in the ignore band
  # (IoU 672 / 1376 and 1024 / 2912)
  labels_b, _, _ = ref.anchor_targets(anchors, gt, (100, 100), border=512, fg_scores=scores)
  assert labels_b[391] in (0, -1) and labels_b[392] == -1 and labels_b[393] == -1
  # hard_positives=False: random positives, still hard negatives
  labels_r, _, _ = ref.anchor_targets(anchors, gt, (100, 100), border=0, fg_scores=scores,
                                      hard_positives=False, rng=np.random.default_rng(2))
  assert (labels_r == 1).sum() == 64 and set(np.where(labels_r == 0)[0]) == set(kept_neg)


def test_anchor_targets_ties_and_random_and_few_positives():
  anchors, gt = _case()
  n = len(anchors)
  labels, _, _ = ref.anchor_targets(anchors, gt, (100, 100), border=0, fg_scores=np.zeros(n))
  np.testing.assert_array_equal(np.where(labels == 1)[0], np.arange(64))
  np.testing.assert_array_equal(np.where(labels == 0)[0], np.arange(90, 90 + 192))
  # no OHEM blob: random subsampling of both
  labels, _, num = ref.anchor_targets(anchors, gt, (100, 100), border=0,
                                      rng=np.random.default_rng(3))
  assert (labels == 1).sum() == 64 and (labels == 0).sum() == 192 and num == 256
  assert set(np.where(labels == 1)[0]) <= set(range(70))
  assert set(np.where(labels == 0)[0]) <= set(range(90, 391))
  with pytest.raises(ValueError):
    ref.anchor_targets(anchors, gt, (100, 100), border=0)
  # 10 positives -> 246 negatives
  sub = np.concatenate([anchors[:10], anchors[90:391]])
  labels, _, num = ref.anchor_targets(sub, gt, (100, 100), border=0, fg_scores=np.zeros(len(sub)))
  assert (labels == 1).sum() == 10 and (labels == 0).sum() == 246 and num == 256


def test_anchor_targets_no_gt_zero_rows_and_no_inside():
  anchors = ref.anchor_grid(8, (1, 2), (24, 24))
  scores = np.linspace(0, 1, len(anchors))
  inside = np.where((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < 192) &
                    (anchors[:, 3] < 192))[0]
  assert len(inside) > 256
  face = np.array([[10., 10, 41, 41]])
  for gt, mask in ((np.zeros((0, 4)), None), (face, [False])):
    labels, targets, num = ref.anchor_targets(anchors, gt, (192, 192), border=0,
                                              fg_scores=scores, gt_mask=mask)
    assert (labels == 1).sum() == 0 and num == 256
    np.testing.assert_array_equal(np.where(labels == 0)[0], inside[-256:])
    np.testing.assert_array_equal(targets, 0)
  # the same face unmasked does make positives
  labels, _, _ = ref.anchor_targets(anchors, face, (192, 192), border=0, fg_scores=scores)
  assert (labels == 1).sum() > 0
  # zero-filled gt rows never make a positive (IoU 1 / 256 at most) but are gt rows: the
  # targets of inside anchors point at row 0
  labels, targets, _ = ref.anchor_targets(anchors, np.zeros((3, 4)), (192, 192), border=0,
                                          fg_scores=scores)
  assert (labels == 1).sum() == 0
  np.testing.assert_allclose(targets[0], ref.bbox_transform(anchors[:1], np.zeros((1, 4)))[0])
  # nothing inside the border -> every anchor is used
  far = np.array([[-50., -50, -10, -10], [-100, -100, -80, -80]])
  labels, _, num = ref.anchor_targets(far, far[:1], (10, 10), border=0, fg_scores=np.zeros(2))
  np.testing.assert_array_equal(labels, [1, 0])
  assert num == 2


def test_smooth_l1_and_module_loss():
  np.testing.assert_allclose(ref.smooth_l1([0.0, 1 / 9, 1.0, -1.0, 0.05]),
                             [0.0, 1 / 18, 17 / 18, 17 / 18, 0.5 * 9 * 0.05 ** 2])
  logits = np.array([[0.0, 1.0], [2.0, -1.0], [5.0, 5.0], [0.5, 0.5]])
  labels = np.array([1, 0, -1, 0])
  deltas = np.array([[0.0, 0.1, 1.0, 0.0], [9, 9, 9, 9], [9, 9, 9, 9], [9, 9, 9, 9]])
  targets = np.zeros((4, 4))
  cls, reg = ref.module_loss(logits, deltas, labels, targets)
  lsm = ref.log_softmax(logits)
  np.testing.assert_allclose(cls, -(lsm[0, 1] + lsm[1, 0] + lsm[3, 0]) / 3)
  np.testing.assert_allclose(reg, (0.5 * 9 * 0.1 ** 2 + 17 / 18) / 3)   # 0.1 < 1 / 9
  cls, reg = ref.module_loss(logits, deltas, -np.ones(4, np.int64), targets)
  assert cls == 0.0 and reg == 0.0


def _grouped_conv(y, w, stride, pad, group):
  """Grouped cross-correlation with the Convolution reading of the deconv blob [C, O/g, k, k]:
  y [O, H, W] -> [C, Ho, Wo]."""
  c, og = w.shape[:2]
  cg = c // group
  out = [s3fd_ref.conv2d(y[g * og:(g + 1) * og], w[g * cg:(g + 1) * cg], np.zeros(cg), pad, stride)
         for g in range(group)]
  return np.concatenate(out, 0)


def test_deconv_is_the_adjoint_of_the_grouped_conv():
  rng = np.random.default_rng(4)
  for c, og, group, h, w in ((4, 3, 2, 3, 5), (6, 1, 6, 4, 4), (2, 2, 1, 1, 2)):
    wt = rng.standard_normal((c, og, 4, 4))
    x = rng.standard_normal((c, h, w))
    up = ref.deconv2d(x, wt, 2, 1, group)
    assert up.shape == (og * group, 2 * h, 2 * w)
    y = rng.standard_normal(up.shape)
    np.testing.assert_allclose((up * y).sum(), (x * _grouped_conv(y, wt, 2, 1, group)).sum())
  k = ref.bilinear_kernel(4)
  np.testing.assert_allclose(k, np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
  # the bilinear deconv doubles a constant map (interior) without scaling it
  up = ref.deconv2d(np.ones((1, 4, 4)), k[None, None], 2, 1, 1)
  np.testing.assert_allclose(up[0, 1:-1, 1:-1], 1.0)


def test_arrange_outputs_channels():
  a, h, w = 2, 3, 4
  cls = np.arange(2 * a * h * w, dtype=np.float64).reshape(2 * a, h, w)
  box = 1000 + np.arange(4 * a * h * w, dtype=np.float64).reshape(4 * a, h, w)
  logits, deltas = ref.arrange_outputs(cls, box)
  for y in range(h):
    for x in range(w):
      for k in range(a):
        i = (y * w + x) * a + k
        np.testing.assert_array_equal(logits[i], [cls[k, y, x], cls[a + k, y, x]])
        np.testing.assert_array_equal(deltas[i], box[4 * k: 4 * k + 4, y, x])


def test_blob_shapes_and_forward_map_sizes():
  shapes = ref.blob_shapes()
  assert sum(len(v) for v in shapes.values()) == 75
  assert sum(int(np.prod(s)) for v in shapes.values() for s in v) == 19_768_420
  rng = np.random.default_rng(5)
  blobs = {}
  for name, ss in shapes.items():
    w = rng.standard_normal(ss[0]) * math.sqrt(2.0 / np.prod(ss[0][1:]))
    blobs[name] = [w] + [rng.standard_normal(s) * 0.01 for s in ss[1:]]
  blobs["conv5_128_up"] = [np.tile(ref.bilinear_kernel(4), (128, 1, 1, 1))]
  out = ref.forward(blobs, rng.standard_normal((3, 36, 44)))
  # 36x44 -> pools (ceil) 18x22, 9x11, 5x6 (conv4), 3x3 (conv5), pool6 2x2
  assert {m: v[2] for m, v in out.items()} == {"m1": (5, 6), "m2": (3, 3), "m3": (2, 2)}
  for m, (logits, deltas, (h, w)) in out.items():
    assert logits.shape == (h * w * 2, 2) and deltas.shape == (h * w * 2, 4)
    assert np.isfinite(logits).all() and np.isfinite(deltas).all()
  anchors = ref.module_anchors({m: v[2] for m, v in out.items()})
  dets = ref.detect(out, anchors, (36, 44), score_threshold=0.0, scale=0.5)
  assert dets.shape[1] == 5 and len(dets) >= 1
  assert (np.diff(dets[:, 4]) <= 0).all()
  assert (dets[:, :4] >= 0).all() and (dets[:, [0, 2]] <= 43 / 0.5).all()


def test_detect_top_k_threshold_nms_drop_m3_and_pyramid():
  anchors = {"m1": np.array([[0., 0, 15, 15], [0, 0, 15, 15], [40, 40, 55, 55]]),
             "m3": np.array([[100., 100, 131, 131]])}
  fg = {"m1": [0.9, 0.8, 0.04], "m3": [0.7]}
  fo = {}
  for m in anchors:
    p = np.asarray(fg[m])
    logits = np.stack([np.zeros_like(p), np.log(p / (1 - p))], 1)
    fo[m] = (logits, np.zeros((len(p), 4)), (1, 1))
  dets = ref.detect(fo, anchors, (200, 200))
  # m1's two identical boxes: NMS keeps the 0.9 one; the 0.04 one is under the threshold
  np.testing.assert_allclose(dets[:, 4], [0.9, 0.7], rtol=1e-6)
  np.testing.assert_allclose(dets[0, :4], [0, 0, 16, 16])
  dets = ref.detect(fo, anchors, (200, 200), drop_m3=True, scale=2.0)
  np.testing.assert_allclose(dets[:, :4], [[0, 0, 8, 8]])
  dets = ref.detect(fo, anchors, (200, 200), top_per_module=1, score_threshold=0.0)
  np.testing.assert_allclose(dets[:, 4], [0.9, 0.7], rtol=1e-6)
  # pyramid: M3 dropped at the last scale only; boxes of each scale divided by its scale;
  # [0, 0, 16, 16] and [0, 0, 8, 8] overlap 81 / 289 < 0.3, so both stay (tie: scale 1 first)
  dets = ref.detect_pyramid([(fo, anchors, (200, 200), 1.0), (fo, anchors, (200, 200), 2.0)])
  np.testing.assert_allclose(dets[:, 4], [0.9, 0.9, 0.7], rtol=1e-6)
  np.testing.assert_allclose(dets[:2, :4], [[0, 0, 16, 16], [0, 0, 8, 8]])
  dets = ref.detect_pyramid([(fo, anchors, (200, 200), 2.0)])
  np.testing.assert_allclose(dets[:, 4], [0.9], rtol=1e-6)


def test_scales():
  assert ref.single_scale(600, 1000) == 1.6               # 1200 / 600 = 2 -> 2000 > 1600
  assert ref.single_scale(1000, 1000) == 1.2
  np.testing.assert_allclose(ref.pyramid_scales(600, 1000), [0.75, 1.2, 1.8, 2.4])
  np.testing.assert_allclose(ref.pyramid_scales(400, 500), [1.25, 2.0, 3.0, 4.0])
