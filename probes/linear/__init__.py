"""Linear probes on frozen global features: :class:`LinearProbe` (standardised logistic
regression with C chosen on validation), :class:`SGDHeadProbe` (the reference study's head),
their solver backends, and :func:`run_linear`, a whole cross-validated run."""

from probes._lazy import lazy_exports

__all__ = ["DEFAULT_CS", "LinearProbe", "SGDHeadProbe", "run_linear"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DEFAULT_CS": ".probe",
        "LinearProbe": ".probe",
        "SGDHeadProbe": ".probe",
        "run_linear": ".run",
    },
)
