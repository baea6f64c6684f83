"""Training loop: resume gives the same weights, NaN stop keeps the checkpoint,
fine-tune init, the train command and its resume line."""

from __future__ import annotations

import dataclasses
import math
import shlex

import pytest
import torch
from tiny_checkpoint import SMALL

from detr.data.synthetic import ShapesConfig, make_shapes_dataset
from detr.train import TrainConfig, train
from detr.train.flags import resume_command
from runtime.errors import InputError, ModelFormatError, TrainingDivergedError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, ShapesConfig(seed=3, num_train=8, num_val=4, image_size=64,
                                           max_objects=3), progress=False)
    return root


@pytest.fixture(scope="module")
def one_step_run(shapes, tmp_path_factory):
    """A finished 1-epoch, 1-step run shared by the tests that only read it."""
    return train(_config(shapes, tmp_path_factory.mktemp("one") / "run", epochs=1, max_steps=1))


def _config(data, out, **changes) -> TrainConfig:
    base = TrainConfig(data=str(data), out=str(out), preset="detr-tiny", epochs=2, batch_size=4,
                       lr=1e-4, lr_backbone=1e-4, num_workers=0, seed=7, eval_every=0,
                       scales=(64, 56), max_size=64, model_overrides=dict(SMALL), progress=False)
    return dataclasses.replace(base, **changes)


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_matches_uninterrupted_run(shapes, tmp_path):
    full = train(_config(shapes, tmp_path / "full", epochs=2))
    assert full.epochs_completed == 2

    first = train(_config(shapes, tmp_path / "split", epochs=1))
    assert first.epochs_completed == 1
    after_first = _weights(first.checkpoint)
    resumed = train(_config(shapes, tmp_path / "split", epochs=2, resume=True))
    assert resumed.epochs_completed == 2

    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    # ... and training did change the weights (the comparison is not vacuous).
    assert not torch.equal(after_first["class_embed.weight"], a["class_embed.weight"])

    raw = torch.load(resumed.checkpoint, map_location="cpu", weights_only=True)
    assert raw["epoch"] == 1 and len(raw["rng_state"]) == 1
    assert raw["label_map"] == [2, 5, 7, 11, 13, 17]
    log = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2 and all(math.isfinite(float(line.split('"train_loss": ')[1].split(",")[0]))
                                 for line in log)


def test_resume_errors(shapes, tmp_path, one_step_run):
    with pytest.raises(ModelFormatError, match="no checkpoint to resume from"):
        train(_config(shapes, tmp_path / "none", resume=True))
    run = one_step_run.checkpoint.parent
    with pytest.raises(InputError, match="already holds checkpoint.pth; pass --resume"):
        train(_config(shapes, run, epochs=1))
    with pytest.raises(InputError, match="raise --epochs"):
        train(_config(shapes, run, epochs=1, resume=True))
    other = dict(SMALL, num_queries=7)
    with pytest.raises(ModelFormatError, match="model_overrides"):
        train(_config(shapes, run, epochs=2, resume=True, model_overrides=other))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFormatError, match="cannot read training checkpoint"):
        train(_config(shapes, tmp_path / "bad", resume=True))


def test_resume_with_new_lr_drop_reschedules(shapes, tmp_path, one_step_run):
    import json
    import shutil

    out = tmp_path / "drop"
    shutil.copytree(one_step_run.checkpoint.parent, out)  # 1 epoch at lr 1e-4, lr_drop 200
    train(_config(shapes, out, epochs=3, max_steps=1, lr=1e-4, lr_drop=2, resume=True))
    lrs = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-5])  # epoch 2 after the drop at 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(shapes, tmp_path):
    # An absurd lr blows the weights up in epoch 0's single update; epoch 0's loss was
    # computed before it (finite, checkpoint written), epoch 1's first loss is not.
    out = tmp_path / "nan"
    config = _config(shapes, out, epochs=3, max_steps=1, lr=1e30, lr_backbone=1e30)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 1, step 0.*"
                       r"checkpoint.pth \(epoch 0\) is kept"):
        train(config)
    raw = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert raw["epoch"] == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert not list(out.glob(".*.tmp")), "a half-written checkpoint was left behind"


def test_engine_raises_before_updating(shapes):
    import detr
    from detr.data import build_dataset, collate_fn, make_coco_transforms
    from detr.train.epoch import train_one_epoch
    from detr.train.optim import build_optimizer

    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", num_classes=6, **SMALL)
    with torch.no_grad():
        model.class_embed.bias[0] = float("inf")  # softmax of inf - inf = NaN in the CE loss
    before = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = detr.build_criterion(6, dec_layers=SMALL["dec_layers"])
    optimizer = build_optimizer(model, lr=1e-3, lr_backbone=1e-3, weight_decay=1e-4)
    dataset = build_dataset(shapes, "train", make_coco_transforms("val", scales=[64], max_size=64))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_fn)
    with pytest.raises(TrainingDivergedError, match="non-finite terms: .*loss_ce"):
        train_one_epoch(model, criterion, loader, optimizer, torch.device("cpu"), 0,
                        progress=False)
    after = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    assert all(torch.equal(before[k], after[k]) for k in params)
    assert not optimizer.state  # no step was taken


def test_engine_amp_step_updates_weights(shapes):
    import detr
    from detr.data import build_dataset, collate_fn, make_coco_transforms
    from detr.train.epoch import train_one_epoch
    from detr.train.optim import build_optimizer

    torch.manual_seed(0)
    model = detr.build_model("detr-tiny", num_classes=6, **SMALL)
    before = model.class_embed.weight.detach().clone()
    criterion = detr.build_criterion(6, dec_layers=SMALL["dec_layers"])
    optimizer = build_optimizer(model, lr=1e-3, lr_backbone=1e-3, weight_decay=1e-4)
    dataset = build_dataset(shapes, "train", make_coco_transforms("val", scales=[64], max_size=64))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_fn)
    stats = train_one_epoch(model, criterion, loader, optimizer, torch.device("cpu"), 0,
                            amp=True, max_steps=1, progress=False)  # bf16 autocast on CPU
    means = stats.means()
    assert stats.steps == 1 and stats.images == 4
    assert {"loss", "loss_ce", "loss_bbox", "loss_giou", "class_error"} <= set(means)
    assert not any(k.endswith("_0") for k in means)  # aux terms are in 'loss', not listed
    assert math.isfinite(means["loss"]) and means["loss"] > 0
    assert not torch.equal(before, model.class_embed.weight)


def test_init_loads_all_but_class_embed(shapes, tmp_path, one_step_run):
    source = one_step_run
    # lr 0: the fine-tuned run's parameters stay what --init loaded.
    tuned = train(_config(shapes, tmp_path / "ft", epochs=1, max_steps=1, lr=0.0,
                          lr_backbone=0.0, init=str(source.checkpoint), seed=99))
    a, b = _weights(source.checkpoint), _weights(tuned.checkpoint)
    loaded = [k for k in a if not k.startswith("class_embed.") and "running_" not in k
              and "num_batches" not in k]
    assert loaded and all(torch.equal(a[k], b[k]) for k in loaded)
    assert not torch.equal(a["class_embed.weight"], b["class_embed.weight"])  # re-initialised


def _max_abs_weight_error(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest |difference| over the floating state of two models of one architecture."""
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa
               if sa[k].is_floating_point() and sa[k].numel())


def test_release_checkpoint_fp16_loads_as_fp32(tmp_path, one_step_run):
    import detr
    from detr.train.release import release_checkpoint

    run = one_step_run
    dst = release_checkpoint(run.checkpoint, tmp_path / "release.pth", metrics={"AP50": 0.5})
    assert dst.stat().st_size < 0.3 * run.checkpoint.stat().st_size  # no Adam state, FP16
    full, small = detr.load_checkpoint(run.checkpoint), detr.load_checkpoint(dst)
    assert small.raw["model"]["class_embed.weight"].dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in small.model.parameters())
    assert "optimizer" not in small.raw and small.raw["metrics"] == {"AP50": 0.5}
    assert small.label_map == full.label_map and small.class_names == full.class_names
    # How it was trained travels with the release: scales (64, 56) pad every batch.
    assert small.raw["training_resize"] == full.raw["training_resize"] == {
        "shorter": 64, "max_size": 64, "padded": True, "source": "recorded"}
    # FP16 rounding only: relative error 2^-11 of weights well below 1.
    assert 0 < _max_abs_weight_error(full.model, small.model) < 1e-2


def test_bad_options_raise_input_error(shapes, tmp_path):
    with pytest.raises(InputError, match="--batch-size: must be > 0"):
        train(_config(shapes, tmp_path / "x", batch_size=0))
    with pytest.raises(InputError, match="--lr: must be >= 0"):
        train(_config(shapes, tmp_path / "x", lr=float("nan")))
    with pytest.raises(InputError, match="unknown DETRConfig override"):
        train(_config(shapes, tmp_path / "x", model_overrides={"bogus": 1}))
    with pytest.raises(InputError, match="fewer than one batch"):
        train(_config(shapes, tmp_path / "x", batch_size=9))


def test_resume_command_parses_back_to_the_same_config(shapes, tmp_path):
    from runtime.cli import build_parser

    config = _config(shapes, tmp_path / "r", epochs=5, crop=False, amp=True, lr_drop=3,
                     init="weights.pth")
    line = resume_command(config)
    argv = shlex.split(line)
    assert argv[:2] == ["detr-edge", "train"] and argv[-1] == "--resume"
    args = build_parser().parse_args(argv[1:])
    from detr.train.flags import parse_model_opts

    assert args.resume and not args.crop and args.amp and args.lr_drop == 3
    assert tuple(args.scales) == config.scales and args.init == "weights.pth"
    assert parse_model_opts(args.model_opt) == config.model_overrides


def test_train_command_end_to_end(shapes, tmp_path, capsys):
    from runtime.cli import main

    out = tmp_path / "cli"
    argv = ["train", "--data", str(shapes), "--out", str(out), "--epochs", "1", "--max-steps",
            "1", "--num-workers", "0", "--scales", "64", "--max-size", "64", "--eval-every", "1",
            "--no-crop",
            "--no-progress", "--batch-size", "2"] + \
        [a for k, v in SMALL.items() for a in ("--model-opt", f"{k}={v}")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "trained 1 epochs" in text and "val_AP50=" in text
    assert (out / "checkpoint.pth").is_file() and (out / "log.jsonl").is_file()
    from detr.training_resize import TrainingResize, from_checkpoint

    # One scale, no crop, square 64 px images: recorded as never padded.
    raw = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert from_checkpoint(raw) == TrainingResize(64, 64, padded=False, source="recorded")
    # Bad input: one line on stderr, exit code 2.
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out / "b")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_train_throughput_benchmark_times_real_steps():
    from benchmarks.train_throughput import TrainThroughputConfig, run_train_throughput

    result = run_train_throughput(TrainThroughputConfig(size=64, batch_size=2, steps=2, warmup=1,
                                                        device="cpu"))
    assert result["runs"] == 2 and result["batch_size"] == 2
    assert 0 < result["min_ms"] <= result["median_ms"]
    assert result["images_per_s"] == pytest.approx(2000.0 / result["median_ms"])


def _train_cli(data, out, epochs: int, resume: bool = False) -> list[str]:
    """``python -m runtime.cli train`` argv of the small one-step-per-epoch run."""
    import sys

    argv = [sys.executable, "-m", "runtime.cli", "train", "--data", str(data), "--out",
            str(out), "--epochs", str(epochs), "--max-steps", "1", "--num-workers", "0",
            "--scales", "64", "--max-size", "64", "--eval-every", "0", "--no-progress",
            "--batch-size", "2"]
    argv += [a for k, v in SMALL.items() for a in ("--model-opt", f"{k}={v}")]
    return argv + (["--resume"] if resume else [])


def _stop_after_first_epoch(argv: list[str], out, sig) -> tuple[int, str]:
    """Start ``argv``, send ``sig`` once an epoch finished; return (exit code, stderr)."""
    import os
    import subprocess
    import time

    from cli_checks import sigint_not_ignored

    sigint_not_ignored()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "log.jsonl").exists(), "no epoch finished in time"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(shapes, tmp_path, sig, code):
    """Ctrl-C (SIGINT) and SIGTERM (kill, schedulers) stop the same clean way."""
    import signal

    out = tmp_path / "interrupted"
    returncode, err = _stop_after_first_epoch(_train_cli(shapes, out, 1000), out,
                                              getattr(signal, sig))
    assert returncode == code, err
    assert "Resume with:" in err and "Traceback" not in err
    assert not list(out.glob(".*.tmp")), "a half-written file was left behind"
    resume_line = err.split("Resume with:")[1].strip().splitlines()[0]
    assert resume_line.startswith("detr-edge train") and resume_line.endswith("--resume")
    # The checkpoint on disk is a complete, resumable one.
    raw = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert raw["epoch"] >= 0 and "optimizer" in raw


def test_killed_run_resumes_to_the_same_weights(shapes, tmp_path):
    """SIGKILL (no clean-up at all) mid-run, then --resume: the weights equal those of
    a run that was never stopped, because checkpoints are written atomically and carry
    every RNG state."""
    import os
    import signal
    import subprocess

    killed = tmp_path / "killed"
    returncode, _ = _stop_after_first_epoch(_train_cli(shapes, killed, 1000), killed,
                                            signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    done = int(torch.load(killed / "checkpoint.pth", map_location="cpu",
                          weights_only=True)["epoch"]) + 1  # complete, loadable checkpoint
    epochs = done + 1
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same threads as the killed run
    for argv in (_train_cli(shapes, killed, epochs, resume=True),
                 _train_cli(shapes, tmp_path / "straight", epochs)):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stderr
    a = _weights(killed / "checkpoint.pth")
    b = _weights(tmp_path / "straight" / "checkpoint.pth")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
