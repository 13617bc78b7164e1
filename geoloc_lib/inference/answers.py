"""A prediction as people and programs read it: `readable_table` rounds `Predictor.predict`'s table and names
the nearest town (`geoloc-predict`'s table and CSV), `answer_records` turns it into JSON objects
(`geoloc-serve`'s answers). One home, so the command line and the server give the same fields and rounding."""

from __future__ import annotations

import json

import pandas as pd

from geoloc_lib.geo.places import nearest_places


def readable_table(frame: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Coordinates to 5 decimals (about 1 m), probabilities to 4, kilometres to 1; the nearest bundled town of
    each prediction; the `top_k` most probable hypotheses."""
    towns = nearest_places(frame["lat"], frame["lon"])
    frame = frame.assign(nearest_town=towns["nearest_town"].to_numpy(), town_km=towns["town_km"].to_numpy())
    for column in frame.columns:
        if column.endswith(("lat", "lon")):
            frame[column] = frame[column].astype(float).round(5)
        elif column.endswith("_km") or column == "novelty_distance":
            frame[column] = frame[column].astype(float).round(1 if column.endswith("_km") else 4)
    frame[["confidence", "cell_prob"]] = frame[["confidence", "cell_prob"]].astype(float).round(4)
    rounding = {"prob": 4, "lat": 5, "lon": 5}
    frame["hypotheses"] = [
        [{k: round(v, rounding[k]) if k in rounding else v for k, v in h.items()} for h in hyps[:top_k]]
        for hyps in frame["hypotheses"]
    ]
    return frame


def answer_records(frame: pd.DataFrame) -> list[dict]:
    """`readable_table`'s rows as JSON objects: numbers as JSON numbers, an empty radius or confidence as
    null, the hypotheses as a list of objects."""
    return json.loads(frame.to_json(orient="records", double_precision=10))
