"""Importers of pretrained weights (PyTorch checkpoints read without torch)."""

from tinyfaces_jax.pretrained.retinaface_pth import (convert_retinaface, load_backbone_pth,
                                                     load_retinaface_pth)
from tinyfaces_jax.pretrained.torch_pickle import (checkpoint_format, load_torch_checkpoint,
                                                   state_dict_of)

__all__ = ["checkpoint_format", "convert_retinaface", "load_backbone_pth",
           "load_retinaface_pth", "load_torch_checkpoint", "state_dict_of"]
