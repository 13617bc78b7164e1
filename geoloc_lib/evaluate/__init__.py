"""Stage 4, evaluate: scoring predictions, honestly.

Owns the metrics and their column names (`metrics`), the one evaluation of heads on a split
(`evaluation.evaluate`, used by every epoch's validation and by the predictor), the baseline ladder
(`baselines`), credible radii calibrated on validation (`calibration`), selective accuracy (`selective`), the
out-of-domain score (`novelty`) and the generated strangers it is checked on (`strangers`), and the computed
conclusions of the notebooks (`conclusions`). It sits below training because
training validates every epoch with it. May import `base`, `geo`, `data` and `model`.
"""
