"""The embedded WIDER-format dataset, built deterministically from photos that pip packages
ship: `package_images` (the source photos and face crops), `blending` (pasting geometry and
photometry), `build` (layout, rendering, the WIDER-format release; `tinyfaces-build-embedded`)."""
