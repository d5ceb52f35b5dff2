"""The probes' core: features joined with the manifest, splits, per-row predictions and the
tables built from them, metrics, the one bootstrap, the run folder, streamed grids.

Light: nothing here imports torch.
"""
