"""Fill the feature cache of a training config ahead of training, on one process or many.

    python -m geoloc_lib.extract --set data_dir=data/demo
    torchrun --nproc_per_node=4 -m geoloc_lib.extract --set data_dir=/data/geopak --set encoder=vit-b-16-places365
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=host0:29500 \\
        -m geoloc_lib.extract --set data_dir=/shared/geopak --set cache_dir=/shared/cache

It computes what `fit` would read from `cache_dir` for the same settings: the augmented training views, and
the clean features of the training, validation and test photos. Under torchrun every process takes its own
block of whole batches and the first one merges them, so the cache equals a single-process one to the bit
and a later `fit` finds it. (Several machines need a `cache_dir` they all see.)
"""

from __future__ import annotations

import sys

from geoloc_lib.base import distributed
from geoloc_lib.base.command_line import CommandParser, run_command
from geoloc_lib.data.feature_cache import augmented_features, clean_features
from geoloc_lib.data.transforms import AUGMENT_PRESETS
from geoloc_lib.model.encoders import DualEncoder
from geoloc_lib.run.folder import load_run_data
from geoloc_lib.run.spec import TrainConfig, config_from_command_line


def extract(cfg: TrainConfig) -> None:
    world = distributed.from_env(cfg.device)
    device = world.device(cfg.device)

    def log(message: str) -> None:
        if world.is_main:
            print(message, flush=True)

    data = load_run_data(cfg, cfg.image_check if world.is_main else "exists")
    encoders = DualEncoder(cfg.encoders).to(device)
    fingerprint = encoders.fingerprint()
    spec = cfg.cache
    augmented_features(spec, encoders, fingerprint, data.train, AUGMENT_PRESETS[cfg.augment], device, log)
    for split in (data.train, data.val, data.test):
        clean_features(spec, split, encoders, fingerprint, device, log)
    world.barrier()


PROG = "python -m geoloc_lib.extract"


def main(argv=None) -> int:
    config = config_from_command_line(argv, CommandParser(prog=PROG, description=__doc__))
    return run_command(PROG, lambda: extract(config))


if __name__ == "__main__":
    sys.exit(main())
