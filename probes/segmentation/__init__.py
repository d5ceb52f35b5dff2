"""The linear segmentation probe on cached patch grids: the estimator
(:class:`SegmentationProbe`), its head, loss and fused CPU step, masks aligned with the grids,
Dice/IoU, and :func:`run_seg`, a whole cross-validated run."""

from probes._lazy import lazy_exports

__all__ = ["SegmentationProbe", "cross_validate_segmentation", "run_seg"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SegmentationProbe": ".probe",
        "cross_validate_segmentation": ".run",
        "run_seg": ".run",
    },
)
