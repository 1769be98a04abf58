"""Flax detector models: RetinaFace and its backbones / necks."""

from tinyfaces_jax.models.backbones import MobileNetV1, ResNet, make_backbone
from tinyfaces_jax.models.necks import FPN, SSH
from tinyfaces_jax.models.retinaface import (PRESETS, RetinaFace, RetinaFaceConfig, decode,
                                             detect, dets_array, init_variables)

__all__ = ["FPN", "MobileNetV1", "PRESETS", "ResNet", "RetinaFace", "RetinaFaceConfig",
           "SSH", "decode", "detect", "dets_array", "init_variables", "make_backbone"]
