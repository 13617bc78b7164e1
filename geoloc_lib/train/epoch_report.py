"""The per-epoch summary written to the console and log.txt."""

from __future__ import annotations

from geoloc_lib.evaluate.metrics import ERROR_STATS, PROVINCE_ACCURACY_COLUMNS
from geoloc_lib.geo import provinces as prov
from geoloc_lib.model.losses import LOSS_LABELS, LOSS_TERMS
from geoloc_lib.run.phases import Phase


def _losses(row: dict) -> str:
    parts = ", ".join(f"{LOSS_LABELS[k]}: {row[f'loss_{k}']:.4f}" for k in LOSS_TERMS[1:])
    return f"{row['loss_total']:.4f} ({parts})"


def _errors(row: dict, prefix: str = "") -> str:
    return ", ".join(f"{stat}={row[f'{prefix}{stat}_error_km']:.2f}km" for stat in ERROR_STATS)


def _province_accuracies(row: dict) -> str:
    pairs = zip(prov.PROVINCES, PROVINCE_ACCURACY_COLUMNS, strict=True)
    return ", ".join(f"{p.key}={row[column]:.1f}" for p, column in pairs)


def epoch_summary(phase: Phase, epoch: int, epochs: int, rows: dict) -> str:
    """Phase 1: losses, errors, oracle error, accuracy within radii and per-province accuracy of the train
    and val rows. Phase 0 trains the province head alone, so it reports only the province loss and
    accuracies."""
    tr, va = rows["train"], rows["val"]
    lines = [f"Epoch {epoch}/{epochs}:"]
    if phase.province_only:
        lines += [
            f"   Train province loss: {tr['loss_province']:.4f}   Val province loss: {va['loss_province']:.4f}",
            f"   Val province accuracy: {va['province_acc']:.1f} % (balanced {va['province_balanced_acc']:.1f} %)",
        ]
    else:
        lines += [
            f"   Train Loss: {_losses(tr)}",
            f"   Val Loss:   {_losses(va)}",
            f"   Train Error: {_errors(tr)}",
            f"   Val Error:   {_errors(va)}",
            f"   Val oracle-cell error (true cell + offset, not a geolocation result): {_errors(va, 'oracle_')}",
            f"   Val within 25km={va['acc_25km']:.1f}%, 200km={va['acc_200km']:.1f}%, GeoScore={va['geoscore']:.0f}",
        ]
    lines += [
        f"   Province acc (%) train: {_province_accuracies(tr)}",
        f"   Province acc (%) val:   {_province_accuracies(va)}",
        f"   offset weight: {va['offset_weight']:.2f}, {va['seconds']:.1f}s"
        if not phase.province_only
        else f"   {va['seconds']:.1f}s",
    ]
    return "\n".join(lines)
