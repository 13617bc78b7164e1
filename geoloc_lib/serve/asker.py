"""The model behind the server: a run loaded once, the photos of one request decoded (or refused, each with its
reason and HTTP status) and placed together, each answer in `geoloc-predict`'s fields and rounding
(`inference/answers.py`), and what the run is (`GET /run`, the page's header).

The run folder is only read. Photos are decoded from the request's bytes in memory; no name a client sends is
ever used as a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from geoloc_lib.base.folder_marks import TRAIN_CSV
from geoloc_lib.data.photos import DAMAGED, NOT_AN_IMAGE, TOO_MANY_PIXELS, UnreadablePhoto, decode_photo
from geoloc_lib.inference.answers import answer_records, readable_table
from geoloc_lib.inference.predictor import Predictor, predictor_of_run
from geoloc_lib.inference.run_evaluation import EVALUATION_SOURCE, EvaluationFolderError, read_evaluation
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.serve.batcher import Batcher
from geoloc_lib.viz.answer_card import answer_card

TOO_LARGE = "too large"
STATUS = {NOT_AN_IMAGE: 415, DAMAGED: 422, TOO_MANY_PIXELS: 413, TOO_LARGE: 413}
HEADLINE_METRICS = ("median_error_km", "acc_25km", "acc_200km", "province_acc")
MAX_NAME_CHARS = 200  # of a file name echoed back


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_upload_mb: float = 25.0  # per photo
    max_photos: int = 16  # per request
    top_k: int = 5  # hypotheses per answer

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        """A request's body: every photo at its limit, and room for the form's own lines."""
        return self.max_photos * self.max_upload_bytes + 1024 * 1024


@dataclass
class Sent:
    """One photo of a request: the name its client gave and its bytes (None: over the size limit, not read)."""

    file: str
    data: bytes | None


class Asker:
    """A run's predictor shared by every request: one forward pass at a time (torch already uses every core),
    the photos of the requests waiting for it placed together, up to `batch_photos` (`serve/batcher.py`)."""

    def __init__(
        self, run_dir: str | Path, predictor: Predictor, limits: Limits = Limits(), batch_photos: int = 32
    ):
        self.folder = RunFolder(run_dir)
        self.predictor = predictor
        self.limits = limits
        self.batcher = Batcher(predictor.predict, batch_photos)
        self.facts = run_facts(self.folder, predictor)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        limits: Limits = Limits(),
        checkpoint: str = "best",
        device="auto",
        data_dir=None,
        batch_photos: int = 32,
    ):
        """`data_dir`: the run's data folder, if it moved since training (as `geoloc-predict --data-dir`)."""
        return cls(run_dir, predictor_of_run(run_dir, checkpoint, device, data_dir), limits, batch_photos)

    def answer_files(self, paths: list[str | Path], still_maps: bool = False) -> list[dict]:
        """`answer` with cards for photos on disk (notebook 06), each read only when it is within the size
        limit; a path that is not a file stops it with the path named."""
        paths = [Path(p) for p in paths]
        if missing := [str(p) for p in paths if not p.is_file()]:
            raise FileNotFoundError(f"photo not found: {', '.join(missing)}")
        limit = self.limits.max_upload_bytes
        sent = [Sent(p.name, p.read_bytes() if p.stat().st_size <= limit else None) for p in paths]
        return self.answer(sent, cards=True, still_maps=still_maps)

    def answer(self, sent: list[Sent], cards: bool = False, still_maps: bool = False) -> list[dict]:
        """One object per photo, in the order sent: `status` 200 and the answer's fields, or a 4xx `status` and
        `error`, the reason. With `cards`, each answer also carries its HTML card (`viz/answer_card.py`; its
        map a still picture with `still_maps`)."""
        out: list[dict] = []
        photos = {}
        for i, item in enumerate(sent):
            name = item.file[:MAX_NAME_CHARS]
            if item.data is None:
                limit = self.limits.max_upload_mb
                out.append(
                    _refusal(name, TOO_LARGE, f"over the size limit of {limit:g} MB (--max-upload-mb)")
                )
                continue
            try:
                photos[i] = decode_photo(item.data)
            except UnreadablePhoto as err:
                out.append(_refusal(name, err.kind, str(err)))
                continue
            out.append({"file": name, "status": 200})
        if photos:
            frame = self.batcher.predict(list(photos.values()), cell_probs=cards)
            table = readable_table(frame, self.limits.top_k)
            records = answer_records(table.drop(columns=["image", "cell_probs"], errors="ignore"))
            for k, (i, record) in enumerate(zip(photos, records, strict=True)):
                out[i].update(record)
                if cards:
                    cells = self.predictor.cell_table(frame["cell_probs"].iloc[k])
                    out[i]["card"] = answer_card(out[i], cells, photos[i], still_maps)
        return out


def _refusal(name: str, kind: str, reason: str) -> dict:
    return {"file": name, "status": STATUS[kind], "error": f"{name}: {reason}"}


def run_facts(folder: RunFolder, predictor: Predictor) -> dict:
    """What the run is: its name, encoder, cells, training data, decoding, calibration, out-of-domain rule,
    and its test figures when it has an evaluation (04_error_maps)."""
    cfg = predictor.run_config or folder.read_config()  # the predictor's: read once, its data folder found
    mode = predictor.decoder.config.mode
    train_csv = Path(cfg.data_dir) / TRAIN_CSV
    calibration = predictor.calibration
    novelty = predictor.novelty
    return {
        "run": folder.root.name,
        "phase": cfg.phase,
        "encoder": cfg.encoder,
        "decoding": mode,
        "cells": int(len(predictor.cells)),
        "training_data": {
            "data_dir": str(cfg.data_dir),
            "train_photos": int(sum(1 for _ in train_csv.open(encoding="utf-8")) - 1)
            if train_csv.is_file()
            else None,
        },
        "calibration": None
        if calibration is None
        else {"levels": list(calibration.levels), "spread": calibration.spread, "photos": calibration.photos},
        "out_of_domain": None
        if novelty is None
        else {"signals": list(novelty.signals), "quantile": novelty.quantile, "threshold": novelty.threshold},
        "test": _test_figures(folder, mode),
    }


def _test_figures(folder: RunFolder, mode: str) -> dict | None:
    """The run's evaluation figures in its own decoding mode (None when it has no complete evaluation)."""
    if not (folder.evaluation / EVALUATION_SOURCE).is_file():
        return None
    try:
        source = json.loads((folder.evaluation / EVALUATION_SOURCE).read_text(encoding="utf-8"))
        summary: pd.DataFrame = read_evaluation(folder.evaluation, "summary")
    except (EvaluationFolderError, ValueError) as err:
        return {"error": str(err)}
    figures = {k: round(float(summary.loc[k, mode]), 1) for k in HEADLINE_METRICS if k in summary.index}
    return {"split": source.get("split"), "photos": source.get("rows"), **figures}
