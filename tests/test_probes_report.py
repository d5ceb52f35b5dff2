"""``probes report`` end to end on real run folders of a phantom cohort: files and figures,
the HTML in headless Chromium, numbers equal to the runs' own, comparability, overlays on the
probe's own raster, provenance, errors; the clustered bootstrap against scikit-learn."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from embedcache.intake import load_manifest
from embedcache.provenance import git_commit
from probes.cli import main
from probes.core.bootstrap import clustered_ci
from probes.core.metrics import format_mean_sd, format_median_range
from probes.core.results import read_table
from probes.report import load_run, load_runs
from probes.report.overlays import extreme_cases, load_cases, store_preprocessing

CHROMIUM = Path("/usr/bin/chromium")
LINEAR = ("global", "grid16", "grid32")  # three probes on the same folds
#: Further protocols on the same folds: their runs and their extra options.
PROTOCOLS = {
    "attentive": ["--epochs", "30", "--grounding-mask", "ptx_mask"],
    "mlp": ["--epochs", "30"],
    "knn": [],
}
SAME_FOLDS = [f"lin-{f}" for f in LINEAR] + list(PROTOCOLS)
HEADINGS = (
    "Runs",
    "Classification",
    "Classification: pneumothorax",
    "Segmentation",
    "Comparisons: classification",
    "Friedman / Nemenyi: pneumothorax AUROC",
    "Subgroups",
    "Segmentation overlays",
    "Grounding",
    "Provenance",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_encoder_spec):
    """A 50-image phantom cohort, one store, three linear probes, an attentive (grounded on
    the pneumothorax masks), an MLP and a k-NN probe on the same folds, a linear probe on other
    folds, a segmentation probe with saved masks, and the report over all eight."""
    from embedcache.extract import extract
    from embedcache.phantoms import CohortSpec, make_cohort

    root = tmp_path_factory.mktemp("report-study")
    manifest = make_cohort(root / "cohort", CohortSpec(n_patients=24, size=96))
    store = root / "s.zarr"
    extract(
        manifest,
        tiny_encoder_spec,
        store,
        rows_per_shard=8,
        batch_size=8,
        num_workers=0,
        progress=False,
        log=lambda *_: None,
    )
    common = [str(store), "--manifest", str(manifest), "--n-boot", "50", "--quiet"]
    linear = [*common, "--label", "pneumothorax", "--label", "cardiomegaly", "--Cs", "0.1", "1"]
    runs = {}
    for feature in LINEAR:
        runs[feature] = root / f"lin-{feature}"
        assert main(["linear", *linear, "--feature", feature, "--out", str(runs[feature])]) == 0
    labels = ["--label", "pneumothorax", "--label", "cardiomegaly"]
    for command, extra in PROTOCOLS.items():
        runs[command] = root / command
        assert main([command, *common, *labels, *extra, "--out", str(runs[command])]) == 0
    runs["3folds"] = root / "lin-3folds"
    assert main(["linear", *linear, "--n-folds", "3", "--out", str(runs["3folds"])]) == 0
    runs["seg"] = root / "seg"
    seg = ["seg", *common, "--mask", "heart_mask", "--epochs", "20", "--lr", "0.03"]
    assert main([*seg, "--save-masks", "--format", "csv", "--out", str(runs["seg"])]) == 0
    out = root / "report"
    code = main(
        [
            "report",
            *map(str, runs.values()),
            "--out",
            str(out),
            "--subgroup",
            "chest_tube",
            "--size-column",
            "ptx_area_pct",
            "--n-boot",
            "100",
            "--overlays",
            "2",
        ]
    )
    assert code == 0
    return {"root": root, "manifest": manifest, "store": store, "runs": runs, "out": out}


def _section(markdown: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of any level."""
    start = markdown.index(f"\n{heading}\n")
    rest = markdown[start + len(heading) + 2 :]
    end = re.search(r"^#{1,6} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def _row(table_text: str, *cells: str) -> list[str]:
    """The cells of the first pipe-table row starting with ``cells``."""
    for line in table_text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts[: len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row {cells} in:\n{table_text}")


# -- files and figures ------------------------------------------------------------------------


def test_report_writes_markdown_html_figures_and_tables(study):
    out = study["out"]
    figures = sorted((out / "figures").glob("*.png"))
    names = {f.stem for f in figures}
    expected = {
        "roc_pneumothorax",
        "roc_cardiomegaly",
        "cd_classification_1_pneumothorax",
        "cd_classification_1_cardiomegaly",
        "subgroups_classification_pneumothorax",
        "subgroups_segmentation",
        "overlays_seg",
        "patch_maps_attentive",
    }
    assert expected <= names, names
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for figure in figures:
        data = figure.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, figure.name
        with Image.open(figure) as image:
            image.verify()
        with Image.open(figure) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
        assert len(colours) > 20, (figure.name, len(colours))
        # embedded byte for byte in the HTML, linked from the Markdown
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in html
        assert f"(figures/{figure.name})" in markdown
    # self-contained: no scripts, no external resources
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, flags=re.I)
    assert html.count("<img ") == len(figures)
    tables = {p.name for p in (out / "tables").glob("*.csv")}
    assert {"runs.csv", "classification_metrics.csv", "segmentation_metrics.csv"} <= tables
    assert {"paired_tests_classification_1.csv", "provenance.csv", "versions.csv"} <= tables
    runs = pd.read_csv(out / "tables" / "runs.csv")
    assert runs["run"].tolist() == [*SAME_FOLDS, "lin-3folds", "seg"]
    assert runs["images"].tolist() == [50] * 8
    assert {"grounding.csv"} <= tables


def _open_in_chromium(html: Path) -> dict:
    """Load ``html`` in headless Chromium: console errors, image widths, headings, title and
    the URLs requested. Skips without Chromium (fails when CI is set)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing and CI is set: the browser test must run")
        pytest.skip(f"{CHROMIUM} not installed (make browser)")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.resolve().as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            headings = page.eval_on_selector_all("h1, h2, h3", "els => els.map(e => e.textContent)")
            title = page.title()
        finally:
            browser.close()
    return dict(errors=errors, widths=widths, headings=headings, title=title, requests=requests)


def test_html_loads_in_headless_chromium_without_errors(study):
    page = _open_in_chromium(study["out"] / "report.html")
    errors, widths, headings = page["errors"], page["widths"], page["headings"]
    title, requests = page["title"], page["requests"]
    assert errors == []
    assert len(widths) >= 7 and all(w > 0 for w in widths), widths
    for heading in HEADINGS:
        assert heading in headings, (heading, headings)
    assert title.startswith("Probe report")
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


# -- label efficiency, calibration, controls --------------------------------------------------

EXTENDED_HEADINGS = (
    "Calibration and operating points",
    "Calibration: pneumothorax",
    "Label efficiency",
    "Label efficiency: pneumothorax",
    "Label efficiency: paired tests at each budget",
    "Comparisons: classification",
)


@pytest.fixture(scope="module")
def extended(study):
    """Budgeted linear probes of two features, the two controls and a plain run, on the same
    folds of the same cohort, and their report."""
    root = study["root"]
    common = [str(study["store"]), "--manifest", str(study["manifest"]), "--n-boot", "50"]
    common += ["--label", "pneumothorax", "--quiet"]
    runs = {"lin-global": study["runs"]["global"]}
    budgets = ["--budgets", "0.25,1.0", "--budget-draws", "2", "--prevalence", "0.1"]
    for feature in ("global", "grid16"):
        runs[f"budget-{feature}"] = root / f"budget-{feature}"
        argv = ["linear", *common, *budgets, "--Cs", "0.1", "1", "--feature", feature]
        assert main([*argv, "--out", str(runs[f"budget-{feature}"])]) == 0
    controls = {"image-stats": ["--metadata", "view", "sex", "age"], "shuffled-label": []}
    for kind, extra in controls.items():
        runs[kind] = root / kind
        argv = ["control", *common, "--kind", kind, *extra, "--Cs", "0.1", "1"]
        assert main([*argv, "--out", str(runs[kind])]) == 0
    out = root / "report-extended"
    argv = ["report", *map(str, runs.values()), "--out", str(out), "--n-boot", "100"]
    argv += ["--prevalence", "0.1"]
    assert main(argv) == 0
    return {"runs": runs, "out": out}


def test_label_efficiency_calibration_and_controls_render_in_chromium(extended):
    out = extended["out"]
    page = _open_in_chromium(out / "report.html")
    assert page["errors"] == []
    assert page["widths"] and all(w > 0 for w in page["widths"])
    for heading in EXTENDED_HEADINGS:
        assert heading in page["headings"], (heading, page["headings"])
    names = {f.stem for f in (out / "figures").glob("*.png")}
    assert {
        "budgets_classification_pneumothorax_fraction",
        "reliability_pneumothorax",
        "decision_curve_pneumothorax",
    } <= names
    markdown = (out / "report.md").read_text()
    runs = _section(markdown, "## Runs")
    assert "(control: image-stats)" in runs and "(control: shuffled-label)" in runs
    assert "25%, 100% x 2 draws" in runs and "whole training fold" in runs
    assert "(net benefit against risk threshold) at prevalence 0.1." in markdown


def test_label_efficiency_numbers_are_the_budget_curve(extended):
    from probes.analysis.budgets import budget_curve

    out, runs = extended["out"], extended["runs"]
    table = pd.read_csv(out / "tables" / "budgets_classification_pneumothorax_fraction.csv")
    assert set(table["run"]) == {"budget-global", "budget-grid16"}
    run = load_run(runs["budget-global"])
    curve = budget_curve(run.predictions, n_boot=100, seed=5656)
    mine = table[table["run"] == "budget-global"].reset_index(drop=True)
    for column in ("budget", "estimate", "ci_low", "ci_high", "draws"):
        assert mine[column].tolist() == pytest.approx(curve[column].tolist()), column
    section = _section((out / "report.md").read_text(), "### Label efficiency: pneumothorax")
    first = curve.iloc[0]
    row = _row(section, "budget-global", "25%")
    assert row[3] == f"{first['estimate']:.3f} [{first['ci_low']:.3f}, {first['ci_high']:.3f}]"
    paired = pd.read_csv(out / "tables" / "budgets_paired_tests.csv")
    assert set(zip(paired["a"], paired["b"], paired["budget"], strict=True)) == {
        ("budget-global", "budget-grid16", 0.25),
        ("budget-global", "budget-grid16", 1.0),
    }
    # the main tables show a budgeted run at its largest budget (draw 0)
    table = _section((out / "report.md").read_text(), "### Classification: pneumothorax")
    full = run.results[run.results["budget"] == 1.0]["auroc"]
    assert _row(table, "budget-global", "AUROC")[2] == format_median_range(full)
    assert _row(table, "budget-global", "AUROC")[5] == "5"


# -- numbers ----------------------------------------------------------------------------------


def test_markdown_tables_equal_the_runs_results(study):
    markdown = (study["out"] / "report.md").read_text()
    table = _section(markdown, "### Classification: pneumothorax")
    for name_of_run in SAME_FOLDS:  # every protocol: linear, attentive, MLP, k-NN
        folder = study["runs"][name_of_run.removeprefix("lin-")]
        results = read_table(folder / "results.csv")
        results = results[results["label"] == "pneumothorax"]
        for column, name in (
            ("auroc", "AUROC"),
            ("auprc", "AUPRC"),
            ("sens_at_0.5", "sensitivity"),
        ):
            row = _row(table, name_of_run, name)
            assert row[2] == format_median_range(results[column])
            assert row[3] == format_mean_sd(results[column])
            assert row[5] == "5"
    seg = read_table(study["runs"]["seg"] / "results.csv")
    row = _row(_section(markdown, "### Segmentation: metrics"), "seg", "Dice")
    assert row[2] == format_median_range(seg["dice"]) and row[3] == format_mean_sd(seg["dice"])


def test_a_fold_summary_recomputed_from_the_predictions(study):
    """AUROC per round from predictions.parquet by scikit-learn, summarised by hand."""
    predictions = read_table(study["runs"]["grid16"] / "predictions.parquet")
    test = predictions[(predictions["split"] == "test") & (predictions["label"] == "cardiomegaly")]
    per_round = [roc_auc_score(p["truth"], p["score"]) for _, p in test.groupby("round")]
    assert len(per_round) == 5
    expected = (
        f"{np.median(per_round):.3f} [{min(per_round):.3f}, {max(per_round):.3f}]",
        f"{np.mean(per_round):.3f} ± {np.std(per_round, ddof=1):.3f}",
    )
    markdown = (study["out"] / "report.md").read_text()
    row = _row(_section(markdown, "### Classification: cardiomegaly"), "lin-grid16", "AUROC")
    assert (row[2], row[3]) == expected
    # the pooled CI column is the clustered bootstrap of the pooled test rows, and holds the
    # pooled AUROC
    numbers = pd.read_csv(study["out"] / "tables" / "classification_metrics.csv")
    mine = numbers[
        (numbers["run"] == "lin-grid16")
        & (numbers["label"] == "cardiomegaly")
        & (numbers["metric"] == "AUROC")
    ].iloc[0]
    low, high = clustered_ci(
        test["truth"], test["score"], test["patient_id"], n_boot=100, seed=5656
    )["auroc"]
    assert (mine["ci_low"], mine["ci_high"]) == pytest.approx((low, high))
    assert row[4] == f"[{low:.3f}, {high:.3f}]"
    assert low < roc_auc_score(test["truth"], test["score"]) < high


def test_the_grounding_section_shows_the_runs_own_scores(study):
    from probes.analysis.grounding import grounding_summary

    markdown = (study["out"] / "report.md").read_text()
    section = _section(markdown, "## Grounding")
    grounding = read_table(study["runs"]["attentive"] / "grounding.csv")
    assert len(grounding) and set(grounding["map"]) == {"attention", "score"}
    summary = grounding_summary(grounding, n_boot=100, seed=5656)
    for r in summary.itertuples():
        row = _row(section, "attentive", r.label, r.map, "ptx_mask", str(r.images))
        assert row[5].startswith(f"{r.pointing_game:.3f} [{r.pointing_game_ci_low:.3f}")
    assert "patch_maps_attentive.png" in markdown


# -- comparisons --------------------------------------------------------------------------------


def test_only_runs_on_the_same_folds_are_compared(study):
    markdown = (study["out"] / "report.md").read_text()
    section = _section(markdown, "## Comparisons: classification")
    assert f"`lin-3folds` not compared with {', '.join(f'`{r}`' for r in SAME_FOLDS)}" in section
    assert "different rounds" in section  # check_same_folds' own reason
    paired = pd.read_csv(study["out"] / "tables" / "paired_tests_classification_1.csv")
    pairs = set(zip(paired["a"], paired["b"], strict=True))
    assert pairs == set(itertools.combinations(SAME_FOLDS, 2))
    # several images per patient in the phantom cohort: DeLong, plus the pooled patient bootstrap
    assert set(paired["test"]) == {"delong", "bootstrap"} and set(paired["label"]) == {
        "pneumothorax",
        "cardiomegaly",
    }
    assert set(paired["round"]) == {-1, 0, 1, 2, 3, 4}
    assert set(paired.loc[paired["test"] == "bootstrap", "round"]) == {-1}
    assert "One segmentation run (`seg`): nothing to compare." in markdown
    ranks = pd.read_csv(
        study["out"] / "tables" / "friedman_ranks_classification_1_pneumothorax.csv"
    )
    assert ranks["average rank"].sum() == pytest.approx(sum(range(1, len(SAME_FOLDS) + 1)))


# -- overlays -----------------------------------------------------------------------------------


def test_overlays_use_the_probes_own_raster(study):
    run = load_run(study["runs"]["seg"])
    best, worst = extreme_cases(run, 2)
    assert best["dice"].min() >= worst["dice"].max()
    assert not set(best["image_id"]) & set(worst["image_id"])
    manifest = load_manifest(study["manifest"], check_files=False)
    preprocessing = store_preprocessing(run)
    assert preprocessing is not None and preprocessing["resize"] == "crop"
    rows = pd.concat([best, worst])
    cases, problems = load_cases(run, rows, manifest, preprocessing)
    assert problems == [] and len(cases) == 4
    for case, (_, row) in zip(cases, rows.iterrows(), strict=True):
        assert case.truth.shape == case.predicted.shape == (16, 16)
        assert case.image.shape == (56, 56)  # the tiny encoder's input
        # the re-decoded masks are the ones the probe scored
        assert case.truth.mean() == pytest.approx(row["mask_area"])
        assert case.predicted.mean() == pytest.approx(row["pred_area"])
        tp = (case.truth & case.predicted).sum()
        assert tp == row["tp"]
    # a store that moved: the overlays still render, stretched onto the masks' raster
    moved = dataclasses.replace(run, info={**run.info, "store": str(study["root"] / "gone")})
    assert store_preprocessing(moved) is None
    stretched, _ = load_cases(moved, best, manifest, None)
    assert stretched[0].image.shape[0] % 16 == 0 and stretched[0].truth is not None


# -- provenance and errors --------------------------------------------------------------------


def test_provenance_block(study):
    markdown = (study["out"] / "report.md").read_text()
    section = markdown.split("\n## Provenance\n")[1]  # to the end: its code block has "# " lines
    commit = git_commit()
    for name, folder in study["runs"].items():
        info = json.loads((folder / "run.json").read_text())
        assert info["git_commit"] == commit
        row = _row(section, folder.name)
        assert info["encoder"] in row and info["manifest_digest"] in row
        assert (commit or "not recorded") in row, name
    assert f"# this report (git commit {commit or 'not a git working tree'})" in section
    versions = pd.read_csv(study["out"] / "tables" / "versions.csv")
    assert {"torch", "numpy", "scikit-learn"} <= set(versions["library"])
    assert "this report" in versions.columns


def test_runs_on_other_manifests_are_reported_but_not_compared(study, tmp_path):
    from probes.report import build_report

    moved = tmp_path / "other-cohort"
    shutil.copytree(study["runs"]["global"], moved)
    info = json.loads((moved / "run.json").read_text())
    info["manifest_digest"] = "f" * 64
    (moved / "run.json").write_text(json.dumps(info))
    runs = load_runs([study["runs"]["grid16"], moved])
    files = build_report(runs, tmp_path / "r", n_boot=20, overlays=0)
    markdown = files.markdown.read_text()
    section = _section(markdown, "## Comparisons: classification")
    assert "`other-cohort` not compared with `lin-grid16`: different manifests" in section
    assert "no test was run" in section and "### Paired tests" not in markdown
    table = _section(markdown, "### Classification: pneumothorax")
    assert _row(table, "other-cohort", "AUROC") and _row(table, "lin-grid16", "AUROC")


def test_folder_without_run_json_fails_naming_it(study, tmp_path, capsys):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    code = main(["report", str(study["runs"]["seg"]), str(empty), "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "no run.json" in err
    assert not (tmp_path / "r" / "report.html").exists()


def test_runs_with_the_same_folder_name_get_distinct_names(study, tmp_path):
    for parent in ("a", "b"):
        shutil.copytree(study["runs"]["global"], tmp_path / parent / "out")
    runs = load_runs([tmp_path / "a" / "out", tmp_path / "b" / "out"])
    assert [r.name for r in runs] == ["a/out", "b/out"]
    assert runs[0].task == "classification" and runs[0].labels == ["cardiomegaly", "pneumothorax"]


def test_git_commit_of_a_repository_and_outside_one(tmp_path):
    assert git_commit(tmp_path) is None
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.txt").write_text("x")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "m"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(repo) == head
