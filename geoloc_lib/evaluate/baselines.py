"""The baseline ladder: the simplest predictors that use the same data and features as the model.

Every rung sees the model's training rows and the same clean frozen features (`feature_cache.clean_features`),
and is scored with the project's own metrics, so a model number can be read against them:

- constant: always the centre (mean coordinate) of the most common training province;
- 1-NN: the coordinate of the most similar training photo (cosine similarity of standardised features);
- 5-NN: the geometric median of the five most similar training photos;
- logistic regression: a linear cell classifier, its regularisation chosen by cross-validation on the
  training rows alone, predicting the centre of its cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import KFold
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from geoloc_lib.evaluate.metrics import SUMMARY_METRICS, prediction_metrics, predictions_frame
from geoloc_lib.geo.sphere import geometric_median

LOGISTIC_CS = (0.01, 0.1, 1.0)  # inverse regularisation strengths tried by cross-validation
LOGISTIC_FOLDS = 3


def feature_matrix(features: dict[str, torch.Tensor]) -> np.ndarray:
    """{"clip": [N, Dc], "scene": [N, Ds]} -> [N, Dc + Ds] float32."""
    return torch.cat([features["clip"].float(), features["scene"].float()], 1).numpy()


def constant_prediction(train: pd.DataFrame, n: int) -> dict[str, np.ndarray]:
    top = train["province_id"].value_counts().idxmax()
    own = train[train["province_id"] == top]
    return {
        "province": np.full(n, top),
        "lat": np.full(n, own["latitude"].mean()),
        "lon": np.full(n, own["longitude"].mean()),
    }


def constant_baseline(train: pd.DataFrame, split: pd.DataFrame) -> dict[str, float]:
    """The metrics of the constant rung alone (it needs no features)."""
    return prediction_metrics(predictions_frame(split, constant_prediction(train, len(split))))


def standardized(train_x: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices scaled by the training rows' per-feature mean and std (what every learned rung reads)."""
    scaler = StandardScaler().fit(train_x)
    return scaler.transform(train_x), scaler.transform(x)


def nearest_neighbours(train_z: np.ndarray, z: np.ndarray, k: int) -> np.ndarray:
    """[N, k] rows of the k training photos most similar to each query (cosine), most similar first."""
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(train_z)
    return index.kneighbors(z, return_distance=False)


def knn_prediction(train: pd.DataFrame, neighbours: np.ndarray) -> dict[str, np.ndarray]:
    """1 neighbour: its coordinate; more: the geometric median of theirs. Province: the nearest one's."""
    lat = train["latitude"].to_numpy(float)[neighbours]  # [N, k]
    lon = train["longitude"].to_numpy(float)[neighbours]
    if neighbours.shape[1] > 1:
        lat, lon = geometric_median(lat, lon)
    else:
        lat, lon = lat[:, 0], lon[:, 0]
    return {"province": train["province_id"].to_numpy()[neighbours[:, 0]], "lat": lat, "lon": lon}


def logistic_cell_prediction(
    train_z: np.ndarray, train: pd.DataFrame, z: np.ndarray, cells: pd.DataFrame, seed: int = 0
) -> tuple[dict[str, np.ndarray], float]:
    """The centre of the cell a cross-validated multinomial logistic regression picks; and its C."""
    # plain shuffled folds: a cell can have fewer photos than there are folds, which stratifying refuses
    folds = KFold(LOGISTIC_FOLDS, shuffle=True, random_state=seed)
    model = LogisticRegressionCV(
        Cs=list(LOGISTIC_CS),
        l1_ratios=(0.0,),  # plain L2
        cv=folds,
        scoring="accuracy",
        max_iter=300,
        tol=1e-3,
        random_state=seed,
        use_legacy_attributes=False,
    )
    model.fit(train_z, train["cell_id"].to_numpy())
    cell = model.predict(z)
    row = cells.set_index("cell_id").loc[cell]
    prediction = {
        "province": row["province_id"].to_numpy(),
        "lat": row["center_lat"].to_numpy(float),
        "lon": row["center_lon"].to_numpy(float),
        "cell_id": cell,
    }
    return prediction, float(model.C_)


def baseline_ladder(
    train_features: dict[str, torch.Tensor],
    train: pd.DataFrame,
    features: dict[str, torch.Tensor],
    split: pd.DataFrame,
    cells: pd.DataFrame,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per baseline (index: its name) with SUMMARY_METRICS, scored on `split`."""
    train_z, z = standardized(feature_matrix(train_features), feature_matrix(features))
    neighbours = nearest_neighbours(train_z, z, k=5)
    logistic, c = logistic_cell_prediction(train_z, train, z, cells, seed)
    predictions = {
        "constant (centre of the largest province)": constant_prediction(train, len(split)),
        "1-NN (nearest training photo)": knn_prediction(train, neighbours[:, :1]),
        "5-NN (geometric median)": knn_prediction(train, neighbours),
        f"logistic regression -> cell centre (C={c:g})": logistic,
    }
    rows = {
        name: prediction_metrics(predictions_frame(split, predicted))
        for name, predicted in predictions.items()
    }
    return pd.DataFrame(rows).T[SUMMARY_METRICS]


def ladder_table(model_metrics: dict[str, float], baselines: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """The model's row above the baselines' (columns SUMMARY_METRICS)."""
    model = pd.DataFrame({model_name: {k: model_metrics[k] for k in SUMMARY_METRICS}}).T
    return pd.concat([model, baselines])[SUMMARY_METRICS]
