"""tinyfaces_jax: face detectors of the literature (HR, S3FD, SSH, RetinaFace, MTCNN) in JAX/Flax."""

__version__ = "0.1.0"
