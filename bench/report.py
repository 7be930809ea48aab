"""Tables and plots of a run's output folder (see ``runner.py`` for the layout)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

QUALITY = {  # metric -> higher is better?
    "structure_distance": False, "psnr_unedit_part": True, "lpips_unedit_part": False, "mse_unedit_part": False,
    "ssim_unedit_part": True, "clip_similarity_target_image": True, "clip_similarity_target_image_edit_part": True,
}


def load_records(out: Path, method_dirs: list[str]) -> pd.DataFrame:
    rows = []
    for d in method_dirs:
        for rec in sorted((out / "cases" / d).glob("*/record.json")):
            try:
                rows.append(json.loads(rec.read_text()))
            except ValueError:
                continue
    return pd.DataFrame(rows)


ROW_COLUMNS = ["case_id", "method", "method_dir", "editing_type_id", "editing_type", "status", "error", "seconds",
               "finished_at", "server", "attempts", "mask_convention", "notes", "edited_image"]  # then the metrics
METRIC_NAMES = [  # EditMetrics' names (nodes/evaluation/measure.py METRICS)
    "structure_distance", "psnr_unedit_part", "lpips_unedit_part", "mse_unedit_part", "ssim_unedit_part",
    "psnr_edit_part", "lpips_edit_part", "mse_edit_part", "ssim_edit_part", "clip_similarity_source_image",
    "clip_similarity_target_image", "clip_similarity_target_image_edit_part"]


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in METRIC_NAMES if c in df.columns]


def write_reports(out: Path, method_dirs: list[str]) -> pd.DataFrame:
    df = load_records(out, method_dirs)
    if df.empty:
        df = pd.DataFrame(columns=ROW_COLUMNS)
    metrics = metric_columns(df)
    for c in metrics:  # "inf" (identical parts) stays infinite; "not available" stays empty
        df[c] = pd.to_numeric(df[c].replace({"inf": float("inf"), "-inf": float("-inf")}), errors="coerce")
    cols = [c for c in ROW_COLUMNS if c in df.columns] + metrics
    df = df[cols + [c for c in df.columns if c not in cols]].sort_values(["case_id", "method"], kind="stable")
    df.to_csv(out / "results.csv", index=False)
    df.to_parquet(out / "results.parquet", index=False)
    df[df["status"] != "ok"][["case_id", "method", "error"]].to_csv(out / "failures.csv", index=False)
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return df
    agg = {c: "mean" for c in metrics + ["seconds"]}
    by_method = ok.groupby("method").agg(agg)
    counts = df.groupby("method")["status"].value_counts().unstack(fill_value=0)
    by_method = by_method.join(counts.rename(columns={"ok": "cases_ok", "failed": "cases_failed"}), how="outer")
    by_method.rename(columns={"seconds": "seconds_per_case"}).to_csv(out / "summary_by_method.csv")
    by_type = ok.groupby(["method", "editing_type"]).agg(agg)
    by_type.rename(columns={"seconds": "seconds_per_case"}).to_csv(out / "summary_by_type.csv")
    _plots(out, by_method, by_type, metrics)
    return df


def _plots(out: Path, by_method: pd.DataFrame, by_type: pd.DataFrame, metrics: list[str]) -> None:
    quality = [m for m in QUALITY if m in metrics and by_method[m].notna().any()]
    if not quality:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    if quality:
        fig, axes = plt.subplots(1, len(quality), figsize=(4 * len(quality), 3.6), squeeze=False)
        for ax, m in zip(axes[0], quality):
            for name, row in by_method.iterrows():
                ax.scatter(row["seconds"], row[m], s=40)
                ax.annotate(str(name), (row["seconds"], row[m]), fontsize=8, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("seconds per case")
            ax.set_title(m + (" (higher better)" if QUALITY[m] else " (lower better)"), fontsize=9)
        fig.tight_layout()
        fig.savefig(plots / "quality_vs_time.png", dpi=100)
        plt.close(fig)
    for m in quality:
        table = by_type[m].unstack("method")
        if table.notna().any().any():
            ax = table.plot.bar(figsize=(max(5, 1.2 * len(table)), 3.6), rot=20)
            ax.set_title(m)
            ax.figure.tight_layout()
            ax.figure.savefig(plots / f"by_type_{m}.png", dpi=100)
            plt.close(ax.figure)
