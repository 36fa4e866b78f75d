"""Data generation and shading for the MAGINet reimplementation."""
