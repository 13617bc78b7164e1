"""Photos unlike every training photo: several signals of strangeness in the frozen encoders' feature spaces,
combined into one score against a threshold fixed on validation.

The validation photos come from places the model never trained on (whole location blocks), so their scores
show how far a genuine new photo of the same world lies. A photo scoring above the `quantile`-th quantile of
those scores (97 % by default) is flagged `out_of_domain`: a chart, a flat colour, or a photo from another
country is then reported instead of being silently placed in Pakistan. About 1 - quantile of genuine photos
are flagged too; that share is the price of the threshold. 3 % leaves room below the 5 % a user was promised for
the threshold's own sampling spread (about 1 point either way on 300 validation photos); at 99 % the demo
caught 67 % of street-layout strangers from another world (`strangers.street_strangers`), at 97 % 83 %.

**Signals** (`SIGNALS`), each computed on the features standardised with the training photos' mean and spread:

- `joined`: the distance to the nearest training photo in both encoders' features together;
- `clip`, `scene`: the same in one encoder's features alone. A photo can look ordinary to one encoder and
  strange to the other; the joined distance averages that away;
- `typicality`: the distance to the training photos' mean feature. A real photo from elsewhere can sit next
  to some odd training photo yet far from where training photos usually lie;
- `uncertainty`: the heads' own doubt, the entropy of the photo's probability over every cell (given when the
  caller passes the decoder's `cell_probs`). It does not depend on how the photo's features lie, but on the
  demo the heads are as sure of a stranger as of a genuine photo, so the choice leaves it out there.

Each signal is put on a common footing by its validation median and interquartile range, and the score is the
largest of the chosen signals: a photo is strange when any of them says so. Which signals to combine is chosen
by `fit_novelty` on generated strangers only (`evaluate/strangers.py`: validation photos recoloured,
re-textured and inverted, and procedural images; never a real photo): the subset that flags the most of them,
on average over the kinds, at the validation threshold. The index keeps, per signal, what it alone catches of
each kind, so 03's log and the README can say what each signal is worth.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from geoloc_lib.base.atomic_files import atomic_torch_save, load_checkpoint

NOVELTY_QUANTILE = 0.97
MAX_REFERENCE_PHOTOS = 20_000  # a seeded sample of the training photos keeps the index small on huge data
CHUNK = 4096
SIGNALS = ("joined", "clip", "scene", "typicality", "uncertainty")


def _joined(clip: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
    return torch.cat([clip.float(), scene.float()], dim=-1)  # [N, Dc + Ds]


def _nearest(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[B] Euclidean distance of each query row [B, D] to its nearest reference row [M, D], in chunks."""
    nearest = [torch.cdist(query, reference[i : i + CHUNK]).amin(-1) for i in range(0, len(reference), CHUNK)]
    return torch.stack(nearest).amin(0)


@dataclass
class NoveltyIndex:
    reference: torch.Tensor  # [M, Dc + Ds] standardised features of (a sample of) the training photos
    mean: torch.Tensor  # [Dc + Ds] of the training photos' features
    std: torch.Tensor  # [Dc + Ds]
    threshold: float  # score beyond which a photo is out of domain
    quantile: float  # of the validation photos' scores that the threshold is
    # Dc: the first Dc columns are the CLIP tower's (0: an index of the joined signal alone)
    clip_dims: int = 0
    signals: tuple[str, ...] = ("joined",)  # the signals whose largest standardised value is the score
    centre: dict[str, float] = field(default_factory=lambda: {"joined": 0.0})  # validation median per signal
    scale: dict[str, float] = field(default_factory=lambda: {"joined": 1.0})  # validation IQR per signal
    # what each signal and the chosen rule catch, per stranger kind
    report: dict = field(default_factory=dict)

    @torch.no_grad()
    def signal_values(
        self, clip: torch.Tensor, scene: torch.Tensor, cell_probs: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """{signal: [B]} the raw value of every signal for encoder features clip [B, Dc], scene [B, Ds]; the
        heads' uncertainty only with the decoder's `cell_probs` [B, C]."""
        device = clip.device
        query = (_joined(clip, scene) - self.mean.to(device)) / self.std.to(device)  # [B, D]
        reference = self.reference.to(device, torch.float32)
        values = {"joined": _nearest(query, reference)}
        if self.clip_dims:
            d = self.clip_dims
            values["clip"] = _nearest(query[:, :d], reference[:, :d])
            values["scene"] = _nearest(query[:, d:], reference[:, d:])
            values["typicality"] = query.norm(dim=-1)  # the training mean is 0 once standardised
        if cell_probs is not None:
            p = cell_probs.to(device, torch.float32).clamp_min(1e-12)  # [B, C]
            values["uncertainty"] = -(p * p.log()).sum(-1)  # entropy, nats
        return values

    def combine(
        self, values: dict[str, torch.Tensor], signals: tuple[str, ...] | None = None
    ) -> torch.Tensor:
        """[B] the score: the largest of the signals, each as (value - validation median) / validation IQR."""
        signals = signals or self.signals
        return torch.stack([(values[s] - self.centre[s]) / self.scale[s] for s in signals]).amax(0)

    def distance(
        self, clip: torch.Tensor, scene: torch.Tensor, cell_probs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B] the novelty score of each photo (above `threshold`: out of domain); `cell_probs` [B, C], the
        decoder's, is needed when the rule uses the heads' uncertainty."""
        if "uncertainty" in self.signals and cell_probs is None:
            raise ValueError(
                "this out-of-domain rule uses the heads' uncertainty: pass the decoder's cell_probs"
            )
        return self.combine(self.signal_values(clip, scene, cell_probs))

    def save(self, path: os.PathLike) -> None:
        payload = {
            "reference": self.reference.half().cpu(),
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "clip_dims": self.clip_dims,
            "signals": list(self.signals),
            "centre": self.centre,
            "scale": self.scale,
            "report": self.report,
        }
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: os.PathLike) -> NoveltyIndex:
        p = load_checkpoint(path)
        # an index written before the signals were combined holds the joined distance alone, unscaled
        return cls(
            p["reference"],
            p["mean"],
            p["std"],
            float(p["threshold"]),
            float(p["quantile"]),
            int(p.get("clip_dims", 0)),
            tuple(p.get("signals", ("joined",))),
            dict(p.get("centre", {"joined": 0.0})),
            dict(p.get("scale", {"joined": 1.0})),
            dict(p.get("report", {})),
        )


@torch.no_grad()
def heads_cell_probs(
    heads, decoder, features: dict, device: torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """[N, C] each photo's probability of every cell, by the heads and the decoder, from its encoder features
    {"clip": [N, Dc], "scene": [N, Ds]}: what the uncertainty signal reads, on the CPU."""
    was_training = heads.training
    heads.eval()
    out = []
    for i in range(0, len(features["clip"]), batch_size):
        clip = features["clip"][i : i + batch_size].to(device, torch.float32)  # [B, Dc]
        scene = features["scene"][i : i + batch_size].to(device, torch.float32)  # [B, Ds]
        out.append(decoder(heads, heads(clip, scene))["cell_probs"].float().cpu())
    heads.train(was_training)
    return torch.cat(out)


def _caught(index: NoveltyIndex, val: dict, strangers: dict, signals: tuple[str, ...]) -> tuple[float, dict]:
    """(threshold, {kind: % flagged}) of the rule that combines `signals`, its threshold on validation."""
    threshold = float(np.quantile(index.combine(val, signals).numpy(), index.quantile))
    return threshold, {
        kind: 100 * float((index.combine(v, signals) > threshold).float().mean())
        for kind, v in strangers.items()
    }


def fit_novelty(
    train: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor],
    quantile: float = NOVELTY_QUANTILE,
    seed: int = 0,
    strangers: dict[str, dict[str, torch.Tensor]] | None = None,
) -> NoveltyIndex:
    """The index of the training photos' clean features {"clip": [N, Dc], "scene": [N, Ds]}, its score a
    combination of signals chosen on generated `strangers` ({kind: features}; without them the joined distance
    alone), its threshold at `quantile` of the validation photos' scores. Validation and strangers that also
    carry the decoder's "cell_probs" [N, C] let the choice consider the heads' uncertainty."""
    features = _joined(train["clip"], train["scene"])
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    if len(features) > MAX_REFERENCE_PHOTOS:
        keep = np.random.default_rng(seed).choice(len(features), MAX_REFERENCE_PHOTOS, replace=False)
        features = features[torch.as_tensor(np.sort(keep))]
    index = NoveltyIndex(
        (features - mean) / std, mean, std, float("inf"), quantile, clip_dims=train["clip"].shape[1]
    )
    val_values = {
        k: v.cpu() for k, v in index.signal_values(val["clip"], val["scene"], val.get("cell_probs")).items()
    }
    for name, values in val_values.items():
        low, mid, high = np.quantile(values.numpy(), [0.25, 0.5, 0.75])
        index.centre[name], index.scale[name] = float(mid), float(max(high - low, 1e-6))
    stranger_values = {
        kind: {k: v.cpu() for k, v in index.signal_values(f["clip"], f["scene"], f.get("cell_probs")).items()}
        for kind, f in (strangers or {}).items()
    }
    candidates = [("joined",)]
    available = [s for s in SIGNALS if s in val_values and all(s in v for v in stranger_values.values())]
    if stranger_values:  # every non-empty subset, fewer signals first: a tie keeps the simpler rule
        candidates = [c for r in range(1, len(available) + 1) for c in itertools.combinations(available, r)]
    results = {c: _caught(index, val_values, stranger_values, c) for c in candidates}

    def mean_caught(c):
        return float(np.mean(list(results[c][1].values()))) if stranger_values else 0.0

    best = max(candidates, key=mean_caught)  # max keeps the first of equals
    index.signals, index.threshold = best, results[best][0]
    index.report = {
        "chosen": {"signals": list(best), "caught_%": results[best][1]},
        "per_signal": {s: results[(s,)][1] for s in SIGNALS if (s,) in results},
    }
    return index
