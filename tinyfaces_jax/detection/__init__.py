"""The detection core shared by every detector: boxes, anchors, coders, matching, OHEM, NMS.

Everything here is jit-able with static shapes; per-image functions are vmapped over B.
"""
