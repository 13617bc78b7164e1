"""The one evaluation function: heads, batches of encoder features and their split -> predictions.

Per-epoch validation and the predictor both call `evaluate`, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from geoloc_lib.base.devices import autocast_for
from geoloc_lib.base.progress import progress_bar
from geoloc_lib.data.feature_sources import Batch
from geoloc_lib.data.photos import label_tensors
from geoloc_lib.evaluate.metrics import PREDICTION_COLUMNS, predictions_frame
from geoloc_lib.evaluate.novelty import NoveltyIndex
from geoloc_lib.model.decode_modes import DECODE_MODES
from geoloc_lib.model.decoding import Decoder
from geoloc_lib.model.heads import GeoHeads
from geoloc_lib.model.losses import LOSS_TERMS, GeolocLoss

# decoded outputs that go into the predictions table
TABLE_FIELDS = (
    *PREDICTION_COLUMNS,
    *[f"{mode}_{field}" for mode in DECODE_MODES for field in ("lat", "lon", "province")],
)


@dataclass
class Evaluation:
    predictions: pd.DataFrame  # see metrics.predictions_frame
    losses: dict[str, float] | None  # mean loss terms ("loss_total", ...) when a loss was given


@torch.no_grad()
def evaluate(
    heads: GeoHeads,
    batches: Iterable[Batch],
    split: pd.DataFrame,
    decoder: Decoder,
    loss_fn: GeolocLoss | None = None,
    offset_weight: float = 1.0,
    progress: bool = True,
    novelty: NoveltyIndex | None = None,
) -> Evaluation:
    """Predict every row of `split` from `batches` of encoder features without labels; the true cells
    give the oracle coordinate.

    With `loss_fn`, also the mean loss terms on the split (the true cells routed, as in training). With
    `novelty`, also each photo's distance to the training photos and whether it is out of domain.
    """
    heads.eval()
    device = next(heads.parameters()).device
    labels = label_tensors(split, device)
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in (*TABLE_FIELDS, "row", "oracle", "gate_alpha")}
    loss_sums = torch.zeros(len(LOSS_TERMS), device=device)
    with progress_bar(
        total=len(split), desc="evaluate", unit="img", disable=not progress, leave=False
    ) as bar:
        for idx, clip, scene in batches:
            cell, province = labels["cell"][idx], labels["province"][idx]
            with autocast_for(device):
                out = heads(clip, scene, cell_ids=cell, province_ids=province)
            if loss_fn is not None:
                terms = loss_fn(out, province, labels["lat"][idx], labels["lon"][idx], offset_weight)
                loss_sums += torch.stack([terms[k].float() for k in LOSS_TERMS]) * len(idx)
            pred = decoder(heads, out)
            for k in TABLE_FIELDS:
                columns[k].append(pred[k].cpu())
            columns["row"].append(idx.cpu())
            columns["oracle"].append(out["oracle_coords"].float().cpu())
            columns["gate_alpha"].append(
                out["gate_alpha"].float().mean(dim=-1).cpu()
            )  # [B] share of the scene CNN
            if novelty is not None:
                columns.setdefault("novelty", []).append(
                    novelty.distance(clip, scene, pred["cell_probs"]).cpu()
                )
            bar.update(len(idx))
    losses = None
    if loss_fn is not None:
        losses = {f"loss_{k}": v for k, v in zip(LOSS_TERMS, (loss_sums / len(split)).tolist(), strict=True)}
    return Evaluation(_table(columns, split, novelty), losses)


def _table(columns: dict[str, list[torch.Tensor]], split: pd.DataFrame, novelty) -> pd.DataFrame:
    """The predictions table from the batches' columns, in the split's row order."""
    cat = {k: torch.cat(v).numpy() for k, v in columns.items()}
    order = np.argsort(cat["row"], kind="stable")  # rows as in the split, whatever order batches came in
    if not np.array_equal(cat["row"][order], np.arange(len(split))):
        raise ValueError(
            f"the batches covered {len(cat['row'])} rows, not each of the split's {len(split)} once"
        )
    predicted = {k: cat[k][order] for k in TABLE_FIELDS}
    predicted["oracle_lat"], predicted["oracle_lon"] = cat["oracle"][order, 0], cat["oracle"][order, 1]
    frame = predictions_frame(split, predicted)
    frame["gate_alpha"] = cat["gate_alpha"][order]  # the fusion gate's mean weight on the scene CNN's feature
    if novelty is not None:
        frame["novelty_distance"] = cat["novelty"][order]
        frame["out_of_domain"] = frame["novelty_distance"] > novelty.threshold
    return frame
