"""Datasets: WIDER FACE annotation parsers (`wider_annotations`, numpy only) and the TFDS builder
(`wider_face`, imports TensorFlow; import it explicitly)."""

from tinyfaces_jax.data.wider_annotations import (  # noqa: F401
    ATTRIBUTE_NAMES,
    SETTINGS,
    ImageAnnotation,
    load_eval_settings,
    parse_bbx_gt,
    parse_filelist,
    parse_retinaface_labels,
    trainable_mask,
)
