"""Plan and write a synthetic cohort: patients, images, labels, planted shortcut, manifest.

Labels are assigned so that the configured rates hold exactly (a fixed number of shuffled
patients or images), not by chance, so that tests and demos can rely on them:
- pneumothorax and cardiomegaly are patient-level conditions: ``round(prevalence * n_patients)``
  patients each, every image of such a patient shows the finding;
- chest tubes are image-level: ``round(tube_rate_positive * n)`` of the ``n`` pneumothorax
  images and ``round(tube_rate_negative * m)`` of the ``m`` others carry one (the shortcut the
  reference study found: tubes in 71-77% of positives, 11% of negatives).

Randomness is split into independent streams (cohort plan, each patient, each image) from one
``SeedSequence``, so the same seed gives byte-identical files, and the image format (cycled
over ``formats``) never changes the pixels.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcache.intake.masks import siim_rle_encode
from embedcache.phantoms.anatomy import Anatomy, cardiothoracic_ratio, draw_anatomy
from embedcache.phantoms.radiograph import render_phantom
from embedcache.phantoms.writers import IMAGE_FORMATS, write_image, write_mask_png

__all__ = ["MANIFEST_COLUMNS", "CohortSpec", "PlannedImage", "make_cohort", "plan_cohort"]

MANIFEST_COLUMNS = (
    "image_id",
    "path",
    "patient_id",
    "pneumothorax",
    "cardiomegaly",
    "ctr",
    "ptx_area_pct",
    "chest_tube",
    "sex",
    "age",
    "view",
    "format",
    "heart_mask",
    "ptx_mask",
    "ptx_rle",
    "lungs_mask",
)

# Cardiothoracic ratios are drawn away from the 0.5 threshold so that pixel rounding and
# per-image jitter never flip a patient's label.
CTR_NORMAL = (0.38, 0.47)
CTR_ENLARGED = (0.53, 0.66)
# Pneumothorax area as a fraction of the image, log-uniform: tiny to large, as in SIIM-ACR.
PTX_AREA = (0.001, 0.08)
AP_VIEW_RATE = 0.3


@dataclass(frozen=True)
class CohortSpec:
    """What cohort to generate. Rates are per image for tubes, per patient for findings."""

    n_patients: int = 40
    images_per_patient: tuple[int, int] = (1, 3)  # inclusive range, drawn per patient
    size: int = 256  # image side, pixels
    prevalence_pneumothorax: float = 0.5
    prevalence_cardiomegaly: float = 0.5
    tube_rate_positive: float = 0.75  # P(chest tube | pneumothorax): the planted shortcut
    tube_rate_negative: float = 0.11  # P(chest tube | no pneumothorax)
    formats: tuple[str, ...] = ("png", "dicom-mono2", "dicom-mono1")  # cycled over images
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self.images_per_patient
        if self.n_patients < 1 or not 1 <= low <= high:
            raise ValueError("need n_patients >= 1 and 1 <= images_per_patient[0] <= [1]")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        for name in (
            "prevalence_pneumothorax",
            "prevalence_cardiomegaly",
            "tube_rate_positive",
            "tube_rate_negative",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        unknown = set(self.formats) - set(IMAGE_FORMATS)
        if not self.formats or unknown:
            raise ValueError(f"formats must be a non-empty subset of {sorted(IMAGE_FORMATS)}")


@dataclass(frozen=True)
class PlannedImage:
    """Everything decided about one image before it is rendered."""

    image_id: str
    patient_id: str
    sex: str
    age: int
    anatomy: Anatomy
    pneumothorax: bool
    pneumothorax_side: str
    pneumothorax_area: float  # target fraction of the image; 0 for negatives
    ctr: float  # target; the manifest records the value measured on the masks
    chest_tube: bool
    view: str
    image_format: str
    seed: np.random.SeedSequence  # this image's own random stream


def _exactly(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Bool array of length n with exactly round(rate * n) True entries, shuffled."""
    flags = np.zeros(n, dtype=bool)
    flags[: int(round(rate * n))] = True
    return rng.permutation(flags)


def plan_cohort(spec: CohortSpec) -> list[PlannedImage]:
    """Decide every patient's and image's labels, anatomy and format, without rendering."""
    plan_seed, patient_seeds, image_seeds = np.random.SeedSequence(spec.seed).spawn(3)
    plan = np.random.default_rng(plan_seed)
    n = spec.n_patients
    low, high = spec.images_per_patient
    n_images = plan.integers(low, high + 1, size=n)
    has_ptx = _exactly(plan, n, spec.prevalence_pneumothorax)
    has_cardiomegaly = _exactly(plan, n, spec.prevalence_cardiomegaly)

    patients = []
    for index, patient_seed in enumerate(patient_seeds.spawn(n)):
        rng = np.random.default_rng(patient_seed)
        sex = "F" if rng.random() < 0.5 else "M"
        ctr_range = CTR_ENLARGED if has_cardiomegaly[index] else CTR_NORMAL
        log_area = rng.uniform(math.log(PTX_AREA[0]), math.log(PTX_AREA[1]))
        patients.append(
            {
                "patient_id": f"P{index:05d}",
                "sex": sex,
                "age": int(np.clip(round(rng.normal(58, 16)), 18, 95)),
                "anatomy": draw_anatomy(rng, sex),
                "ctr": float(rng.uniform(*ctr_range)),
                "ctr_range": ctr_range,
                "side": "right" if rng.random() < 0.5 else "left",
                "area": math.exp(log_area) if has_ptx[index] else 0.0,
            }
        )

    owners = np.repeat(np.arange(n), n_images)
    image_is_positive = has_ptx[owners]
    tube = np.zeros(owners.size, dtype=bool)
    for group, rate in (
        (image_is_positive, spec.tube_rate_positive),
        (~image_is_positive, spec.tube_rate_negative),
    ):
        tube[group] = _exactly(plan, int(group.sum()), rate)
    is_ap = plan.random(owners.size) < AP_VIEW_RATE
    jitter = plan.uniform(-1.0, 1.0, size=(owners.size, 2))

    planned, taken = [], np.zeros(n, dtype=int)
    for flat, (owner, seed) in enumerate(zip(owners, image_seeds.spawn(owners.size), strict=True)):
        patient = patients[owner]
        ctr_low, ctr_high = patient["ctr_range"]
        planned.append(
            PlannedImage(
                image_id=f"{patient['patient_id']}_{taken[owner]:03d}",
                patient_id=patient["patient_id"],
                sex=patient["sex"],
                age=patient["age"],
                anatomy=patient["anatomy"],
                pneumothorax=bool(has_ptx[owner]),
                pneumothorax_side=patient["side"],
                # Follow-up films show the same pneumothorax, a little larger or smaller.
                pneumothorax_area=patient["area"] * float(1.25 ** jitter[flat, 0]),
                ctr=float(np.clip(patient["ctr"] + 0.006 * jitter[flat, 1], ctr_low, ctr_high)),
                chest_tube=bool(tube[flat]),
                view="AP" if is_ap[flat] else "PA",
                image_format=spec.formats[flat % len(spec.formats)],
                seed=seed,
            )
        )
        taken[owner] += 1
    return planned


def _write_one(out_dir: Path, item: PlannedImage, spec: CohortSpec) -> dict[str, str]:
    """Render, write the image and its masks, and return the image's manifest row."""
    image, masks = render_phantom(
        np.random.default_rng(item.seed),
        spec.size,
        ctr=item.ctr,
        pneumothorax_area=item.pneumothorax_area,
        tube=item.chest_tube,
        anatomy=item.anatomy,
        pneumothorax_side=item.pneumothorax_side,
        view=item.view,
    )
    image_path = f"images/{item.image_id}{IMAGE_FORMATS[item.image_format]}"
    header = {"patient_id": item.patient_id, "sex": item.sex, "age": str(item.age)}
    header["view"] = item.view
    write_image(
        out_dir / image_path, image, item.image_format, f"{spec.seed}/{item.image_id}", header
    )
    mask_paths = {}
    for name, short in (("heart", "heart"), ("pneumothorax", "ptx"), ("lungs", "lungs")):
        mask_paths[short] = f"masks/{item.image_id}_{short}.png"
        write_mask_png(out_dir / mask_paths[short], masks[name])

    ptx = masks["pneumothorax"]
    ctr = cardiothoracic_ratio(masks["heart"], masks["lungs"])
    return {
        "image_id": item.image_id,
        "path": image_path,
        "patient_id": item.patient_id,
        "pneumothorax": str(int(ptx.any())),
        "cardiomegaly": str(int(ctr > 0.5)),
        "ctr": f"{ctr:.4f}",
        "ptx_area_pct": f"{100.0 * ptx.mean():.4f}",
        "chest_tube": str(int(item.chest_tube)),
        "sex": item.sex,
        "age": str(item.age),
        "view": item.view,
        "format": item.image_format,
        "heart_mask": mask_paths["heart"],
        "ptx_mask": mask_paths["ptx"],
        "ptx_rle": siim_rle_encode(ptx),
        "lungs_mask": mask_paths["lungs"],
    }


def make_cohort(out_dir: str | Path, spec: CohortSpec = CohortSpec(), workers: int = 1) -> Path:
    """Generate a cohort under ``out_dir`` and return the path of its ``manifest.csv``.

    Writes ``images/<image_id>.{png,dcm}``, ``masks/<image_id>_{heart,ptx,lungs}.png`` (uint8
    0/255, image size; an all-zero ptx mask for negatives) and ``manifest.csv`` with
    ``MANIFEST_COLUMNS``. Paths in the manifest are relative to ``out_dir``. ``ctr`` is
    measured on the written masks (heart width / outer lung width) and ``cardiomegaly`` is
    ``ctr > 0.5``; ``ptx_area_pct`` is the pneumothorax mask area in % of the image;
    ``ptx_rle`` is that mask in SIIM-ACR RLE over the ``size x size`` raster ("-1" if empty).

    ``workers`` > 1 renders images in that many spawned processes (a 1024 px image takes
    ~0.8 s on one core); every image has its own seed, so the files are the same bytes either
    way. Spawned processes re-import the caller's main module: from a script, call it under
    ``if __name__ == "__main__":``.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    planned = plan_cohort(spec)
    if workers > 1 and len(planned) > 1:
        # spawn: the caller may hold threads (torch) that a forked child must not inherit.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(planned)), mp_context=context) as pool:
            n = len(planned)
            rows = list(pool.map(_write_one, [out_dir] * n, planned, [spec] * n, chunksize=4))
    else:
        rows = [_write_one(out_dir, item, spec) for item in planned]
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest
