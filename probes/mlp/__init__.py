"""The MLP probe on feature vectors: :class:`MLPProbe` (one hidden layer, dropout, early
stopping) and :func:`run_mlp`, a whole cross-validated run."""

from probes._lazy import lazy_exports

__all__ = ["MLPProbe", "run_mlp", "run_mlp_spec"]
__getattr__, __dir__ = lazy_exports(
    __name__, {"MLPProbe": ".probe", "run_mlp": ".run", "run_mlp_spec": ".run"}
)
