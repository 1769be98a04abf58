"""Input data: `sources` (where a run's data comes from), `pipeline` (tf.data train / eval
batches with static shapes), `transforms` (shared TensorFlow augmentation ops; each family's
recipe is in its detectors/<family>/recipe.py), `wider/` (the WIDER FACE formats and TFDS
builder) and `embedded/` (the embedded dataset)."""
