"""A run is one document: what describes a run, and runs made by earlier versions still read the same."""

from pathlib import Path

import numpy as np
import pandas as pd

V2_RUN = Path(__file__).parent / "fixtures" / "v2_run"


def test_a_run_made_before_checkpoint_version_3_predicts_what_it_predicted_then():
    from geoloc_lib.inference.predictor import Predictor

    expected = pd.read_csv(V2_RUN / "expected_predictions.csv")
    predictor = Predictor.from_run(V2_RUN / "run", data_dir=V2_RUN / "data", device="cpu")
    found = predictor.predict([str(V2_RUN / "data" / "photos" / name) for name in expected["photo"]])
    assert list(found["province"]) == list(expected["province"])
    numbers = [c for c in expected.columns if c not in ("photo", "province")]
    np.testing.assert_allclose(found[numbers].to_numpy(float), expected[numbers].to_numpy(float), atol=2e-5)
