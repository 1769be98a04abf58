"""Exported detectors: what is exported (functions.py) and the formats (stablehlo.py: jax.export
with a symbolic batch; savedmodel.py: a TensorFlow SavedModel through jax2tf); the command is
cli/export.py (`tinyfaces-export`)."""
