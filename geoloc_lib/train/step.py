"""One training step, and the two ways of running the steps of an epoch.

- `TrainStep`: forward, loss, backward and optimiser update of one batch, with no host synchronisation.
- `EagerStepper`: calls it for every batch a feature source hands out.
- `GraphStepper` (CUDA, cached features): the feature gather and the whole step captured once as a
  CUDA graph and replayed; its static input buffers are made in the constructor.

`select_stepper` picks one of them once per run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from geoloc_lib.base.devices import autocast_for
from geoloc_lib.data.feature_sources import CachedFeatures
from geoloc_lib.model.decoding import Decoder
from geoloc_lib.model.heads import GeolocModel
from geoloc_lib.model.losses import LOSS_TERMS, GeolocLoss

StepResult = dict[str, torch.Tensor]  # "terms" [T] in LOSS_TERMS order, "pred" [B, 5]
PRED_FIELDS = ("province", "lat", "lon", "oracle_lat", "oracle_lon")  # columns of StepResult["pred"]


class TrainStep:
    """Forward, loss, backward and optimiser update; returns the loss terms and the batch's predictions."""

    def __init__(
        self,
        model: GeolocModel,
        loss_fn: GeolocLoss,
        optimizer: torch.optim.Optimizer,
        labels: dict[str, torch.Tensor],
        decoder: Decoder,
        device: torch.device,
        heads=None,
    ):
        self.model = model
        self.heads = heads or model.heads  # what the forward pass calls: the heads, or their DDP wrapper
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.labels = labels  # "province", "cell", "lat", "lon": [N] for the whole training split
        self.decoder = decoder
        self.device = device

    def __call__(
        self, idx: torch.Tensor, clip: torch.Tensor, scene: torch.Tensor, offset_weight: torch.Tensor
    ) -> StepResult:
        province, cell = self.labels["province"][idx], self.labels["cell"][idx]
        with autocast_for(self.device):
            out = self.heads(clip, scene, cell_ids=cell, province_ids=province)
        losses = self.loss_fn(out, province, self.labels["lat"][idx], self.labels["lon"][idx], offset_weight)
        losses["total"].backward()
        self.optimizer.step()
        with torch.no_grad():
            pred = self.decoder(self.model.heads, out, trust=False)  # the prediction alone, at every step
            oracle = out["oracle_coords"].detach().float()
        return {
            "terms": torch.stack([losses[k].detach().float() for k in LOSS_TERMS]),  # [T]
            "pred": torch.stack(
                [pred["province"].float(), pred["lat"], pred["lon"], oracle[:, 0], oracle[:, 1]], 1
            ),  # [B, 5] in PRED_FIELDS order
        }


class EagerStepper:
    def __init__(self, step: TrainStep, source):
        self.step = step
        self.source = source

    def run(
        self,
        batches: torch.Tensor,
        generator: torch.Generator,
        offset_weight: torch.Tensor,
        lrs: list[list[float]],
    ) -> Iterator[tuple[torch.Tensor, StepResult]]:
        """Train on every row of `batches` [S, B] with learning rates `lrs` [S][G] (one per optimiser group);
        yields (the rows trained on, the step's result)."""
        for (idx, clip, scene), rates in zip(self.source.train_batches(batches, generator), lrs, strict=True):
            for group, lr in zip(self.step.optimizer.param_groups, rates, strict=True):
                group["lr"] = lr
            self.step.optimizer.zero_grad(set_to_none=True)
            yield idx, self.step(idx, clip, scene, offset_weight)


class TrainingStateSnapshot:
    """Parameters and optimizer state of a moment, restored in place (a CUDA graph keeps addresses).

    Undoes the warm-up steps before graph capture. State that did not exist at the snapshot (a fresh
    run's Adam moments and step count) is zeroed, which is what AdamW starts from; state that did exist
    (a resumed run's) gets its saved values back.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.saved_params = [p.detach().clone() for p in self.params]
        self.saved_state = {
            p: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, torch.Tensor)}
            for p in self.params
            if p in optimizer.state
        }

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.params, self.saved_params, strict=True):
            p.copy_(saved)
        for p, state in self.optimizer.state.items():
            saved = self.saved_state.get(p, {})
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key in saved:
                    value.copy_(saved[key])
                else:
                    value.zero_()
        self.optimizer.zero_grad(set_to_none=True)


class GraphStepper:
    """Feature gather + `TrainStep` captured as one CUDA graph; each step copies its rows in and replays.

    The view choice inside the graph draws from the default CUDA generator (each replay advances its
    offset), which the epoch loop seeds from (seed, epoch). Construction runs three warm-up steps on a
    side stream, undoes them with a `TrainingStateSnapshot` and captures; it raises RuntimeError when
    capture fails.
    """

    WARMUP_STEPS = 3

    def __init__(self, step: TrainStep, source: CachedFeatures, batch_size: int):
        self.step = step
        self.source = source
        self.static_idx = torch.zeros(batch_size, dtype=torch.long, device=step.device)
        self.static_offset_weight = torch.zeros((), device=step.device)
        # each group's learning rate lives in a device tensor that the captured update reads at each replay
        self.static_lrs = []
        for group in step.optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["base_lr"]), device=step.device)
            self.static_lrs.append(group["lr"])
        snapshot = TrainingStateSnapshot(step.optimizer)
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(self.WARMUP_STEPS):
                    step.optimizer.zero_grad(set_to_none=True)
                    self._graph_step()
            torch.cuda.current_stream().wait_stream(stream)
            snapshot.restore()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output = self._graph_step()
        except RuntimeError:
            snapshot.restore()
            raise

    def _graph_step(self) -> StepResult:
        idx = self.static_idx
        return self.step(idx, *self.source.gather(idx, None), self.static_offset_weight)

    def run(
        self,
        batches: torch.Tensor,
        generator: torch.Generator,
        offset_weight: torch.Tensor,
        lrs: list[list[float]],
    ) -> Iterator[tuple[torch.Tensor, StepResult]]:
        self.static_offset_weight.copy_(offset_weight)
        for idx, lr in zip(batches, lrs, strict=True):
            self.static_idx.copy_(idx)
            for static, rate in zip(self.static_lrs, lr, strict=True):
                static.fill_(rate)
            self.graph.replay()
            yield idx, self.output


def select_stepper(
    step: TrainStep, source, batch_size: int, use_graph: bool, log: Callable[[str], None]
) -> EagerStepper | GraphStepper:
    """The graph stepper when asked for and possible (CUDA and cached features), else the eager one."""
    if use_graph and step.device.type == "cuda" and isinstance(source, CachedFeatures):
        try:
            stepper = GraphStepper(step, source, batch_size)
            log("the cached-feature step runs as one CUDA graph")
            return stepper
        except RuntimeError as err:
            log(f"CUDA graph capture failed ({err}); training continues eagerly")
    return EagerStepper(step, source)
