"""Stage configs: `configs/<stage>.py` with `get_config(variant)`, and `common.py`, the sections they share."""
