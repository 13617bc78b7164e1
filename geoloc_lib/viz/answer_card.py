"""One photo's answer as an HTML card: the photo, where the model puts it and how sure it is, a warning when the
photo is unlike every training photo, the top hypotheses, and its probability map (`photo_maps`), offline.

The server's page (`geoloc-serve`, `serve/page.py`) and notebook 06 show the same card. Every string in it that
came from outside (a file name, a province or town name) is escaped here, once.
"""

from __future__ import annotations

import base64
import html
import io
import math

import pandas as pd
from PIL import Image

from geoloc_lib.geo.sphere import haversine_km
from geoloc_lib.viz import maps, photo_maps
from geoloc_lib.viz.photo_maps import MAP_PX

THUMBNAIL_PX = 256
OUT_OF_DOMAIN_TEXT = (
    "Out of domain: this photo is unlike every training photo, so its place below is not to be trusted."
)


def jpeg_thumbnail(photo: Image.Image | str) -> bytes:
    """The photo (an image or a path) as a JPEG at most THUMBNAIL_PX on its longer side."""
    if isinstance(photo, Image.Image):
        small = photo.convert("RGB")  # a copy: the caller's image stays as it was
    else:
        with Image.open(photo) as image:
            small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def hypotheses_table(hypotheses: list[dict], truth: tuple[float, float] | None = None) -> str:
    """The hypotheses, most probable first (rank, province, cell, probability, place; the distance from the
    truth when it is known)."""
    far = "<th>km from truth</th>" if truth else ""
    rows = "".join(
        f"<tr><td>{rank}</td><td>{html.escape(str(h['province']))}</td><td>{int(h['cell_id'])}</td>"
        f"<td>{h['prob']:.3f}</td><td>({h['lat']:.3f}, {h['lon']:.3f})</td>"
        + (f"<td>{haversine_km(*truth, h['lat'], h['lon']):.0f}</td>" if truth else "")
        + "</tr>"
        for rank, h in enumerate(hypotheses, 1)
    )
    return (
        "<table class='geoloc-hypotheses'><tr><th>#</th><th>province</th><th>cell</th><th>p</th><th>place</th>"
        f"{far}</tr>{rows}</table>"
    )


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _sureness(answer: dict) -> str:
    r50, r90 = _number(answer.get("radius_50_km")), _number(answer.get("radius_90_km"))
    if r50 is None or r90 is None:
        return "no credible radii: the run is not calibrated"
    return (
        f"credible radius: 50 % within {r50:.0f} km, 90 % within {r90:.0f} km "
        f"(confidence {float(answer['confidence']):.2f})"
    )


def answer_card(answer: dict, cells: pd.DataFrame, photo: Image.Image, still_map: bool = False) -> str:
    """The card of one answered photo: `answer` is one photo's answer as the server's JSON gives it (the fields
    of `geoloc-predict`'s CSV, the file name in `file`), `cells` its probability of every cell
    (`Predictor.cell_table`). The map is a live one in a frame (the page, a widget), or with `still_map` a
    notebook output's still picture that its scripts replace where they run (`maps.notebook_html`)."""
    radii = {
        level: km
        for level, km in (
            (0.5, _number(answer.get("radius_50_km"))),
            (0.9, _number(answer.get("radius_90_km"))),
        )
        if km is not None
    }
    chart = photo_maps.probability_map(
        cells, (answer["lat"], answer["lon"]), radii, view_px=MAP_PX, hypotheses=answer["hypotheses"]
    )
    if still_map:
        shown = maps.notebook_html(chart, MAP_PX[1])
    else:
        page = html.escape(maps.offline_html(chart), quote=True)
        shown = (
            f"<iframe class='geoloc-map' title='map of {html.escape(str(answer.get('file', '')))}' "
            f"srcdoc=\"{page}\" style='width:{MAP_PX[0]}px;max-width:100%;height:{MAP_PX[1]}px;border:0'></iframe>"
        )
    picture = base64.b64encode(jpeg_thumbnail(photo)).decode("ascii")
    warning = (
        f"<p class='geoloc-out-of-domain' style='background:#d7191c;color:#fff;padding:6px 10px;font-weight:bold'>"
        f"{html.escape(OUT_OF_DOMAIN_TEXT)}</p>"
        if answer.get("out_of_domain")
        else ""
    )
    name = html.escape(str(answer.get("file", "")))
    return (
        f"<section class='geoloc-card' style='font:13px sans-serif;margin:12px 0'>"
        f"<h3 class='geoloc-file' style='margin:4px 0'>{name}</h3>{warning}"
        f"<div style='display:flex;gap:12px;align-items:flex-start'>"
        f"<img class='geoloc-photo' alt='{name}' src='data:image/jpeg;base64,{picture}' width='{THUMBNAIL_PX}'>"
        f"<div class='geoloc-answer'><b class='geoloc-province'>{html.escape(str(answer['province']))}</b>, "
        f"{answer['town_km']:.0f} km from {html.escape(str(answer['nearest_town']))} "
        f"({answer['lat']:.4f}, {answer['lon']:.4f})<br>{_sureness(answer)}<br>top hypotheses:"
        f"{hypotheses_table(answer['hypotheses'])}</div></div>{shown}</section>"
    )
