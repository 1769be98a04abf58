"""Experiment configs (`configs/<name>.py` with `get_config(arg=None)`)."""
