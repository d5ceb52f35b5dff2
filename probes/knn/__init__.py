"""The k-NN probe on feature vectors: :class:`KNNProbe` (cosine, DINO's weighted votes, k
chosen on the validation fold), its blocked exact search, and :func:`run_knn`."""

from probes._lazy import lazy_exports

__all__ = ["KNNProbe", "cosine_topk", "run_knn", "run_knn_spec"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "KNNProbe": ".probe",
        "cosine_topk": ".search",
        "run_knn": ".run",
        "run_knn_spec": ".run",
    },
)
