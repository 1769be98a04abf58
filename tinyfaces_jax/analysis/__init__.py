"""Analyses across training runs: `scale_sweep` (WIDER AP per face-height bin, one curve per run
of a sweep launched by launch/sweep.py, after Hu & Ramanan's resolution-vs-size study)."""
