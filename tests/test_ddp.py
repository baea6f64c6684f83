"""DDP: two CPU processes (gloo) train a couple of steps; only rank 0 writes."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from tiny_checkpoint import SMALL

from detr.data.synthetic import ShapesConfig, make_shapes_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, data: str, out: str, report: str) -> None:
    # What torchrun would set for each process.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from detr.train import TrainConfig, train

    config = TrainConfig(data=data, out=out, preset="detr-tiny", epochs=1, batch_size=2,
                         lr=1e-4, lr_backbone=1e-4, num_workers=0, seed=5, eval_every=0,
                         scales=(64,), max_size=64, crop=False, model_overrides=dict(SMALL),
                         device="cpu", progress=False)
    result = train(config)
    # The test's own record of what each rank ended with (not written by the library).
    torch.save({"epochs": result.epochs_completed,
                "process_group_destroyed": not torch.distributed.is_initialized()},
               f"{report}.{rank}")


def test_two_process_gloo_training(tmp_path):
    data = tmp_path / "shapes"
    make_shapes_dataset(data, ShapesConfig(seed=2, num_train=8, num_val=2, image_size=64,
                                           max_objects=2), progress=False)
    out = tmp_path / "run"
    report = tmp_path / "report"
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(out), str(report)), nprocs=2,
             join=True)

    # Only rank 0 wrote: exactly the checkpoint and the log, no temp files from rank 1.
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pth", "log.jsonl"]
    raw = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert raw["epoch"] == 0
    # RNG states of both processes were gathered (needed to resume exactly), and differ
    # because each rank is seeded with seed + rank.
    assert len(raw["rng_state"]) == 2
    assert not torch.equal(raw["rng_state"][0]["torch"], raw["rng_state"][1]["torch"])
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and '"images": 8' in log[0]  # 2 ranks x 2 steps x batch 2
    for rank in (0, 1):
        rec = torch.load(f"{report}.{rank}", weights_only=True)
        assert rec == {"epochs": 1, "process_group_destroyed": True}
