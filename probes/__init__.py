"""probes: fast probes on an embedcache store, as a library and a command line.

::

    import probes

    run = probes.run_linear("cohort.zarr", "manifest.csv", label="pneumothorax", out="runs/ptx")
    run.results                      # one row per round: AUROC, AUPRC, CIs over patients
    probes.Run.open("runs/ptx")      # any run folder, this format or older
    probes.report([run], "report/")

    fs = probes.FeatureSet.open("cohort.zarr", "manifest.csv")       # estimators on arrays
    split = probes.patient_split(fs.labels("pneumothorax"), fs.patient_ids)
    probes.LinearProbe().fit(X_train, y_train, X_val=X_val, y_val=y_val)
    probes.run_attentive(...), probes.run_mlp(...), probes.run_knn(...)   # the same tables

Every name here loads lazily: ``import probes`` imports no torch, transformers, timm,
open_clip or matplotlib; each loads when a name that needs it is used.
"""

from probes._lazy import SUBMODULE, lazy_exports

__all__ = [
    "AttentiveProbe",
    "FeatureSet",
    "KNNProbe",
    "LinearProbe",
    "MLPProbe",
    "Run",
    "RunSpec",
    "SGDHeadProbe",
    "SegmentationProbe",
    "check_no_leakage",
    "cross_predict",
    "finetune",
    "patient_split",
    "reference_rotation",
    "report",
    "results_table",
    "run_control",
    "run_attentive",
    "run_knn",
    "run_linear",
    "run_mlp",
    "run_seg",
    "run_shortcut",
    "summary_table",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "FeatureSet": "probes.core.features",
        "LinearProbe": "probes.linear.probe",
        "SGDHeadProbe": "probes.linear.probe",
        "SegmentationProbe": "probes.segmentation.probe",
        "AttentiveProbe": "probes.attentive.probe",
        "MLPProbe": "probes.mlp.probe",
        "KNNProbe": "probes.knn.probe",
        "Run": "probes.core.run",
        "RunSpec": "probes.core.run",
        "patient_split": "probes.core.splits",
        "reference_rotation": "probes.core.splits",
        "check_no_leakage": "probes.core.splits",
        "cross_predict": "probes.core.results",
        "results_table": "probes.core.results",
        "summary_table": "probes.core.results",
        "run_linear": "probes.linear.run",
        "run_seg": "probes.segmentation.run",
        "run_attentive": "probes.attentive.run",
        "run_mlp": "probes.mlp.run",
        "run_knn": "probes.knn.run",
        "run_shortcut": "probes.analysis.shortcut_run",
        "run_control": "probes.controls.run",
        # packages whose modules are callable (probes._lazy.make_callable): the function and
        # the package share one name
        "finetune": SUBMODULE,
        "report": SUBMODULE,
    },
)
