"""matplotlib figures used by the notebooks. Each returns its Figure; nothing is shown or saved here."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from sklearn.neighbors import BallTree

from geoloc_lib.evaluate.metrics import ACCURACY_RADII_KM
from geoloc_lib.geo import provinces as prov
from geoloc_lib.geo.sphere import EARTH_RADIUS_KM
from geoloc_lib.model.decode_modes import DECODE_MODES
from geoloc_lib.model.losses import LOSS_TERMS
from geoloc_lib.viz.maps import PROVINCE_COLORS


def province_balance_plot(balance: pd.DataFrame):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
    balance[["train", "test"]].plot.bar(ax=left, logy=True, color=["#3182bd", "#fd8d3c"])
    left.set_ylabel("photos (log)")
    left.set_title("Photos per province")
    balance[["train_share_%", "batch_share_%"]].plot.bar(ax=right, color=["#9ecae1", "#31a354"])
    right.set_ylabel("%")
    right.set_title("Share of the data vs share of a balanced batch")
    fig.tight_layout()
    return fig


def geocell_plots(cells: pd.DataFrame, train: pd.DataFrame):
    fig, (hist, box) = plt.subplots(1, 2, figsize=(11, 3.5))
    hist.hist(train["cell_id"].value_counts().to_numpy(), bins=30, color="#3182bd")
    hist.set_xlabel("training photos per cell")
    hist.set_ylabel("cells")
    hist.set_title("Geocell sizes")
    groups = [cells.loc[cells["province_id"] == p.id, "radius_km"].to_numpy() for p in prov.PROVINCES]
    box.boxplot(groups, tick_labels=list(prov.PROVINCE_NAMES))
    box.tick_params(axis="x", labelrotation=30)
    box.set_ylabel("radius (km)")
    box.set_title("Cell radius by province")
    fig.tight_layout()
    return fig


def sampler_share_plot(shares: pd.DataFrame, target: pd.Series):
    """shares: one row per batch, one column per province (fraction of the batch)."""
    fig, ax = plt.subplots(figsize=(11, 3.5))
    for p in prov.PROVINCES:
        ax.plot(shares.index, shares[p.name], lw=0.8, color=PROVINCE_COLORS[p.id], label=p.name)
        ax.axhline(target[p.name], color=PROVINCE_COLORS[p.id], ls="--", lw=0.8)
    ax.set_xlabel("batch")
    ax.set_ylabel("share of batch")
    ax.set_title("Province share per batch (dashed: target)")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    return fig


def _epoch_axis(ax, epochs: pd.Series) -> None:
    """An x axis of whole epochs, at least half an epoch either side of the first and last: after one or two
    epochs matplotlib would tick 0.95, 0.975, 1.0, ..."""
    ax.set_xlabel("epoch")
    ax.set_xlim(min(ax.get_xlim()[0], epochs.min() - 0.5), max(ax.get_xlim()[1], epochs.max() + 0.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def loss_curves(losses: pd.DataFrame, terms: tuple[str, ...] = LOSS_TERMS):
    """Train (solid) and validation (dashed) loss per epoch, one panel per term."""
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms) + 1, 3.2), squeeze=False)
    axes = axes[0]
    for ax, term in zip(axes, terms, strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            part = losses[losses["split"] == split]
            ax.plot(part["epoch"], part[f"loss_{term}"], style, marker="o", ms=3, label=split)
        ax.set_title(term)
        _epoch_axis(ax, losses["epoch"])
    axes[0].legend()
    fig.tight_layout()
    return fig


def live_curves(losses: pd.DataFrame):
    """The two curves to watch while a run trains: the total loss and the end-to-end median error, train
    (solid) and validation (dashed), per epoch."""
    fig, (loss_ax, error_ax) = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    for split, style in (("train", "-"), ("val", "--")):
        part = losses[losses["split"] == split]
        loss_ax.plot(part["epoch"], part["loss_total"], style, marker="o", ms=3, label=split)
        error_ax.plot(part["epoch"], part["median_error_km"], style, marker="o", ms=3, label=split)
    loss_ax.set_title("total loss")
    error_ax.set_title("median error (km)")
    error_ax.set_yscale("log")
    for ax in (loss_ax, error_ax):
        _epoch_axis(ax, losses["epoch"])
        ax.legend(fontsize=8)
    return fig


def error_curves(losses: pd.DataFrame, baseline_km: float | None = None):
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for split, style in (("train", "-"), ("val", "--")):
        part = losses[losses["split"] == split]
        ax.plot(part["epoch"], part["median_error_km"], style, marker="o", label=f"{split} end-to-end median")
        ax.plot(
            part["epoch"],
            part["oracle_median_error_km"],
            style,
            alpha=0.5,
            label=f"{split} oracle-cell median",
        )
    if baseline_km is not None:
        ax.axhline(baseline_km, color="grey", ls=":", label="naive baseline median")
    ax.set_yscale("log")
    _epoch_axis(ax, losses["epoch"])
    ax.set_ylabel("km")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _axes(ax, xlabel: str, ylabel: str, title: str, log: str) -> None:
    """Labels, a title, a small legend, and a log scale on the `log` axis ("x" or "y")."""
    (ax.set_xscale if log == "x" else ax.set_yscale)("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def comparison_curves(curves: pd.DataFrame):
    """The validation median per epoch of several runs (run, epoch, median_error_km), one line each."""
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    for run, part in curves.groupby("run", sort=False):
        ax.plot(part["epoch"], part["median_error_km"], marker="o", ms=3, label=run)
    _axes(ax, "epoch", "validation median (km)", "Validation median error per epoch", log="y")
    _epoch_axis(ax, curves["epoch"])
    return fig


def comparison_cdf(predictions: dict[str, pd.DataFrame]):
    """The error CDF of several runs' predictions on one axis (log km)."""
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    for run, pred in predictions.items():
        e = np.sort(pred["error_km"].to_numpy())
        ax.plot(e, np.arange(1, len(e) + 1) / len(e), label=f"{run} (median {np.median(e):.1f} km)")
    _axes(ax, "error (km)", "fraction of photos", "Error distribution, best validation epoch", log="x")
    return fig


def confusion_plot(confusion: pd.DataFrame):
    """Counts and the share of each true province's photos (rows sum to 100 %), in a colour each cell's shade
    leaves readable; the colour bar sits beside the matrix, clear of the title."""
    rates = confusion.div(confusion.sum(1).replace(0, np.nan), axis=0).fillna(0)  # [P, P] rows sum to 1
    fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
    im = ax.imshow(rates.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(rates)), list(prov.PROVINCE_NAMES), rotation=35, ha="right")
    ax.set_yticks(range(len(rates)), list(prov.PROVINCE_NAMES))
    for i in range(len(rates)):
        for j in range(len(rates)):
            count, share = int(confusion.iat[i, j]), rates.iat[i, j]
            if count:
                colour = "white" if share > 0.55 else "#1a1a1a"  # dark on light shades, white on dark ones
                ax.text(
                    j, i, f"{count}\n{100 * share:.0f}%", ha="center", va="center", fontsize=7.5, color=colour
                )
    ax.set_xlabel("predicted province")
    ax.set_ylabel("true province")
    ax.set_title("Province confusion: photos, and % of the true province")
    fig.colorbar(im, ax=ax, label="share of the true province's photos", shrink=0.8)
    return fig


def error_cdf_plot(pred: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 4))
    for p in prov.PROVINCES:
        e = np.sort(pred.loc[pred["province_id"] == p.id, "error_km"].to_numpy())
        if len(e):
            ax.plot(
                e,
                np.arange(1, len(e) + 1) / len(e),
                color=PROVINCE_COLORS[p.id],
                label=f"{p.name} ({len(e)})",
            )
    _axes(ax, "error (km)", "fraction of photos", "Error CDF per province", log="x")
    fig.tight_layout()
    return fig


def accuracy_within_plot(pred: pd.DataFrame):
    """Share of photos within each distance, one line per decoding mode."""
    radii = np.logspace(0, np.log10(2000), 60)
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in DECODE_MODES:
        if f"{mode}_error_km" in pred:
            e = pred[f"{mode}_error_km"].to_numpy()
            ax.plot(radii, [100 * np.mean(e <= r) for r in radii], label=f"{mode} decoding")
    for r in ACCURACY_RADII_KM:
        ax.axvline(r, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("distance (km)")
    ax.set_ylabel("% of photos within")
    ax.set_title("Accuracy within distance")
    ax.legend()
    fig.tight_layout()
    return fig


def selective_accuracy_plot(curve: pd.DataFrame):
    """Accuracy within 25 km and median error against the share of photos kept, one line per ranking
    (`evaluate.selective.selective_accuracy`); the random ranking dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curve.groupby(level="ranking", sort=False):
        kept = rows.index.get_level_values("kept_%")
        style = {"ls": "--", "color": "grey"} if name == "random" else {}
        axes[0].plot(kept, rows["acc_25km"], label=name, **style)
        axes[1].plot(kept, rows["median_error_km"], label=name, **style)
    for ax, ylabel in zip(
        axes, ("% within 25 km of the kept photos", "median error of the kept photos (km)"), strict=True
    ):
        ax.set_xlabel("% of photos kept (least sure dropped)")
        ax.set_ylabel(ylabel)
        ax.invert_xaxis()  # from all photos on the left to the surest few on the right
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.suptitle("Selective accuracy")
    fig.tight_layout()
    return fig


def distance_to_nearest_train_km(pred: pd.DataFrame, train: pd.DataFrame) -> np.ndarray:
    tree = BallTree(np.deg2rad(train[["latitude", "longitude"]].to_numpy()), metric="haversine")
    dist, _ = tree.query(np.deg2rad(pred[["latitude", "longitude"]].to_numpy()), k=1)
    return dist[:, 0] * EARTH_RADIUS_KM


def error_vs_coverage_plot(pred: pd.DataFrame, train: pd.DataFrame):
    d = distance_to_nearest_train_km(pred, train)
    fig, ax = plt.subplots(figsize=(7, 4))
    for p in prov.PROVINCES:
        mine = (pred["province_id"] == p.id).to_numpy()
        if mine.any():
            ax.scatter(
                d[mine] + 0.01, pred["error_km"].to_numpy()[mine] + 0.01, s=6, color=PROVINCE_COLORS[p.id],
                alpha=0.6, label=p.name,
            )  # fmt: skip
    ax.legend(fontsize=7, markerscale=2, title="true province", title_fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distance to the nearest training photo (km)")
    ax.set_ylabel("error (km)")
    ax.set_title("Error against training coverage")
    fig.tight_layout()
    return fig


def offset_bounds_plot(cells: pd.DataFrame, bound_deg: np.ndarray, cell_rows: list[int]):
    """Each chosen cell's centre, its radius circle and the rectangle the offset head can reach."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for i in cell_rows:
        row = cells.iloc[i]
        color = PROVINCE_COLORS[int(row.province_id)]
        dlat, dlon = bound_deg[i]
        ax.add_patch(
            plt.Rectangle(
                (row.center_lon - dlon, row.center_lat - dlat),
                2 * dlon,
                2 * dlat,
                fill=False,
                color=color,
                ls="--",
            )
        )
        theta = np.linspace(0, 2 * np.pi, 100)
        r_lat = row.radius_km / 111.2
        r_lon = r_lat / np.cos(np.deg2rad(row.center_lat))
        ax.plot(row.center_lon + r_lon * np.cos(theta), row.center_lat + r_lat * np.sin(theta), color=color)
        ax.plot(row.center_lon, row.center_lat, "o", color=color)
        ax.annotate(
            f"cell {row.cell_id} ({prov.by_id(row.province_id).key})", (row.center_lon, row.center_lat)
        )
    ax.set_xlabel("lon")
    ax.set_ylabel("lat")
    ax.set_title("Offset bound (dashed) vs cell radius (solid)")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return fig


def soft_target_plot(cells: pd.DataFrame, targets: np.ndarray, true_row: int):
    """Soft-target probability of every cell of the true cell's province, drawn at the cell centres."""
    own = cells[cells["province_id"] == cells.iloc[true_row]["province_id"]]
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(
        own["center_lon"],
        own["center_lat"],
        c=targets[: len(own)],
        s=40 + 400 * targets[: len(own)],
        cmap="viridis",
    )
    ax.plot(
        cells.iloc[true_row]["center_lon"], cells.iloc[true_row]["center_lat"], "rx", ms=12, label="true cell"
    )
    fig.colorbar(sc, ax=ax, label="target probability")
    ax.set_xlabel("lon")
    ax.set_ylabel("lat")
    ax.legend()
    ax.set_title("Distance-aware soft target")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return fig
