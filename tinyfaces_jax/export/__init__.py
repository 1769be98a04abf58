"""Exported detectors: what is exported (functions.py) and the formats (stablehlo.py: jax.export
with a symbolic batch; savedmodel.py: a TensorFlow SavedModel through jax2tf; onnx_graph.py: the
raw networks as ONNX by our own jaxpr translator, run in onnxruntime); the command is
cli/export.py (`tinyfaces-export`)."""
