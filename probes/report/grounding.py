"""The report's grounding section: where classification probes look.

For every run with patch maps (``patch_maps.parquet``: the attentive probe, the linear probe on
a pooled grid with ``--save-maps`` or ``--grounding-mask``): the pointing game and patch AUROC
against the masks where the run scored them (``grounding.csv``), with patient-bootstrap CIs,
and an overlay figure of the most confidently positive test images with each map over the
X-ray as the encoder saw it (its resize/crop/pad) and the mask contour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from probes.analysis.grounding import GROUNDING, grounding_summary
from probes.core.patchmaps import PATCH_MAPS, maps_array
from probes.report.figures import PatchMapCase, patch_map_figure
from probes.report.render import Section, Table, Text
from probes.report.runs import Run
from probes.report.tables import format_ci

__all__ = ["grounding_section", "has_maps"]


def has_maps(run: Run) -> bool:
    """Whether a run kept patch maps or grounding scores."""
    return PATCH_MAPS in run.extras or GROUNDING in run.extras


def grounding_section(
    runs: Sequence[Run], sink: Any, manifests: Any, k: int, *, n_boot: int, seed: int
) -> Section:
    """The section (see the module): a table over runs, then one figure per run with maps."""
    section = Section("Grounding").add(
        Text(
            "Per-patch maps of classification probes: for the attentive probe the attention "
            "(mean over queries) and each patch's contribution to the logit (`score`), for the "
            "linear probe on a pooled grid the logit of each patch (`score`). Against the "
            "masks, on test images with a non-empty mask: the pointing game (the top patch "
            "overlaps the mask) and the patch AUROC (patch scores against each patch's mask "
            "coverage: the pixel-level AUROC of the map upsampled nearest-neighbour). "
            f"95% CIs: bootstrap over patients ({n_boot} resamples, seed {seed}), test rows of "
            "all rounds pooled."
        )
    )
    tables = []
    for run in runs:
        if GROUNDING in run.extras and len(run.extras[GROUNDING]):
            summary = grounding_summary(run.extras[GROUNDING], n_boot=n_boot, seed=seed)
            summary.insert(0, "mask", str(run.info.get("grounding_mask") or ""))
            summary.insert(0, "run", run.name)
            tables.append(summary)
    if tables:
        table = pd.concat(tables, ignore_index=True)
        section.add(Table(_display(table), csv=sink.table(table, "grounding")))
    else:
        section.add(Text("No run scored its maps against masks (`--grounding-mask`)."))
    for run in runs:
        if PATCH_MAPS not in run.extras:
            continue
        try:
            cases = _cases(run, manifests, k)
        except (OSError, KeyError, ValueError) as exc:
            section.add(Text(f"`{run.name}`: no map overlays ({exc})."))
            continue
        if cases:
            section.add(
                sink.figure(
                    patch_map_figure(cases, run.name),
                    f"patch_maps_{run.name}",
                    f"{run.name}: patch maps of the {len(cases)} most confidently positive test "
                    f"images of {_shown_label(run)} (one row per map, each scaled per image), "
                    "the mask in green.",
                )
            )
    return section


def _display(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": table["run"],
            "label": table["label"],
            "map": table["map"],
            "mask": table["mask"],
            "images": table["images"],
            "pointing game [95% CI]": [
                f"{v:.3f} {format_ci(lo, hi)}"
                for v, lo, hi in zip(
                    table["pointing_game"],
                    table["pointing_game_ci_low"],
                    table["pointing_game_ci_high"],
                    strict=True,
                )
            ],
            "patch AUROC [95% CI]": [
                f"{v:.3f} {format_ci(lo, hi)}" if np.isfinite(v) else "—"
                for v, lo, hi in zip(
                    table["patch_auroc"],
                    table["patch_auroc_ci_low"],
                    table["patch_auroc_ci_high"],
                    strict=True,
                )
            ],
        }
    )


def _cases(run: Run, manifests: Any, k: int) -> list[PatchMapCase]:
    """The ``k`` test positives of :func:`_shown_label` with the highest scores, with their maps,
    the image at the model-input geometry and the grounding mask (when the run names one)."""
    from embedcache.intake.images import read_image
    from probes.report.overlays import model_view, store_preprocessing
    from probes.segmentation.masks import MaskSource

    maps = run.extras[PATCH_MAPS]
    label = _shown_label(run)
    maps = maps[maps["label"].astype(str) == label]
    test = run.test[(run.test["label"].astype(str) == label) & (run.test["truth"] == 1)]
    test = test[test["image_id"].isin(set(maps["image_id"]))].drop_duplicates("image_id")
    chosen = test.sort_values(["score", "image_id"], ascending=[False, True]).head(k)
    if chosen.empty:
        return []
    manifest = manifests.of(run)
    positions = pd.Series(np.arange(len(manifest.table)), index=manifest.table["image_id"])
    preprocessing = store_preprocessing(run)
    h, w = int(maps["height"].iat[0]), int(maps["width"].iat[0])
    masks: list[np.ndarray | None] = [None] * len(chosen)
    column = run.info.get("grounding_mask")
    if column:
        source = MaskSource(
            manifest,
            str(column),
            kind=run.spec.options.get("mask_format", "auto") if run.spec else "auto",
        )
        index = positions.loc[chosen["image_id"].astype(str)].to_numpy()
        packed = source.load((4 * h, 4 * w), index=index, preprocessing=preprocessing, workers=1)
        masks = list(packed.take(np.arange(len(packed))))
    cases = []
    for (_, row), mask in zip(chosen.iterrows(), masks, strict=True):
        image_id = str(row["image_id"])
        image = read_image(manifest.table["path"].iat[positions[image_id]])
        mine = maps[maps["image_id"] == image_id]
        cases.append(
            PatchMapCase(
                image_id=image_id,
                score=float(row["score"]),
                image=model_view(image, preprocessing, (4 * h, 4 * w)),
                maps={kind: maps_array(part)[0] for kind, part in mine.groupby("map", sort=False)},
                mask=mask,
            )
        )
    return cases


def _shown_label(run: Run) -> str:
    """The label whose maps are shown: with grounding scores, the one whose test positives most
    often have a mask (the mask's own finding); else the first label."""
    labels = sorted(run.extras[PATCH_MAPS]["label"].astype(str).unique())
    grounding = run.extras.get(GROUNDING)
    if grounding is None or not len(grounding):
        return labels[0]
    masked = set(grounding["image_id"].astype(str))
    test = run.test[run.test["truth"] == 1]

    def share(label: str) -> float:
        ids = set(test.loc[test["label"].astype(str) == label, "image_id"].astype(str))
        return len(ids & masked) / max(len(ids), 1)

    return max(labels, key=share)
