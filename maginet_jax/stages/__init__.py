"""The three MAGINet training stages: `supervised` (stages 1 and 2) and `passes` (stage 3).

Each module is plain functions of the config; `maginet_jax.train.STAGES` names the ones the loop calls.
"""
