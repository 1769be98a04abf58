"""Torch-free readers of PyTorch checkpoints (torch_pickle) and the shared name-map converter
with the ImageNet trunk importers (backbones_pth); each family's whole-model importers are in
detectors/<family>/weights.py."""
