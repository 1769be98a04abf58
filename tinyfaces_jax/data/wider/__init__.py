"""WIDER FACE: the release's annotation formats (`annotations`, numpy only: bbx_gt, file lists,
RetinaFace's landmark labels, the eval_tools .mat settings) and the TFDS builder (`builder`,
imports tensorflow_datasets) that prepares a user's release files into sharded records."""
