"""The attentive probe on cached patch grids: the estimator (:class:`AttentiveProbe`), its
attention-pooling model and streamed CPU step, and :func:`run_attentive`, a whole
cross-validated run with patch maps and grounding."""

from probes._lazy import lazy_exports

__all__ = ["AttentiveProbe", "run_attentive", "run_attentive_spec"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AttentiveProbe": ".probe",
        "run_attentive": ".run",
        "run_attentive_spec": ".run",
    },
)
