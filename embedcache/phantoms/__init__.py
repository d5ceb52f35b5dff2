"""Synthetic chest X-ray cohorts with planted ground truth, for demos, tests and benchmarks.

``make_cohort(out_dir, CohortSpec(...))`` writes images (PNG and DICOM, MONOCHROME1 included),
heart / lung / pneumothorax masks and a ``manifest.csv``; ``render_phantom`` draws one image.
The planted signals (pneumothorax, cardiothoracic ratio, and a chest-tube shortcut correlated
with pneumothorax) are known exactly, so a pipeline can be checked end to end without real data.

Modules: ``anatomy`` (patient geometry and masks), ``radiograph`` (tissue density, exposure:
one image), ``writers`` (DICOM/PNG files), ``cohort`` (labels, shortcut rates, manifest).
"""

from embedcache.phantoms.anatomy import Anatomy, cardiothoracic_ratio, draw_anatomy
from embedcache.phantoms.cohort import (
    MANIFEST_COLUMNS,
    CohortSpec,
    PlannedImage,
    make_cohort,
    plan_cohort,
)
from embedcache.phantoms.radiograph import render_phantom

__all__ = [
    "MANIFEST_COLUMNS",
    "Anatomy",
    "CohortSpec",
    "PlannedImage",
    "cardiothoracic_ratio",
    "draw_anatomy",
    "make_cohort",
    "plan_cohort",
    "render_phantom",
]
