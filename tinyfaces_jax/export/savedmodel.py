"""TensorFlow SavedModel artifacts through jax2tf: the Exportable as a `tf.function` with a
polymorphic batch (`None` in its input signature), saved under `<out_dir>/<name>/` with the
signature `serving_default` (inputs named as the Exportable's, outputs its dict keys).

jax2tf serialises the function natively (the StableHLO program inside an XlaCallModule op), so
the SavedModel runs in TensorFlow on CPU / GPU / TPU (TF Serving, TFLite's Select TF ops), not in
converters that read classic TF graphs op by op."""

from __future__ import annotations

from tinyfaces_jax import paths


def save(exportable, out_dir) -> list:
  """Writes the SavedModel folder `<out_dir>/<name>` -> [its path]."""
  import tensorflow as tf
  from jax.experimental import jax2tf
  poly = ["(b, " + ", ".join(str(d) for d in shape[1:]) + ")"
          for _, shape, _ in exportable.inputs]
  converted = jax2tf.convert(exportable.fn, polymorphic_shapes=poly, with_gradient=False)
  signature = [tf.TensorSpec((None,) + tuple(shape[1:]), getattr(tf, dtype), name=name)
               for name, shape, dtype in exportable.inputs]
  module = tf.Module()
  module.f = tf.function(converted, autograph=False, input_signature=signature)
  target = paths.resolve(out_dir) / exportable.name
  tf.saved_model.save(module, str(target), signatures={"serving_default": module.f})
  return [target]


def load(path):
  """-> the loaded SavedModel's `serving_default` (keyword inputs, dict of outputs)."""
  import tensorflow as tf
  return tf.saved_model.load(str(paths.resolve(path))).signatures["serving_default"]
