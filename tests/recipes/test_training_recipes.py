"""Lightning's training options from YAML with our tasks: EMA of weights, gradient accumulation and clipping,
the learning-rate finder, and the timm-style recipe config."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging, LearningRateFinder

from densecnn.data.transforms import RandAugment, RandomErasing
from tasks import ClassificationTask
from tasks.cli import main as cli
from tests.helpers import REPO, classification_args
from tests.recipes.recorders import StepRecorder, WeightRecorder

TRAIN_IMAGES = 60  # classification_root: 6 classes x 10
RECORD_STEPS = "trainer:\n  callbacks:\n    - class_path: tests.recipes.recorders.StepRecorder\n"


def fit(root: Path, run_dir: Path, yaml: str = "", *extra: str):
    args = classification_args(root, run_dir, *extra)
    if yaml:
        (run_dir / "extra.yaml").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "extra.yaml").write_text(yaml)
        args += ["--config", str(run_dir / "extra.yaml")]
    return cli(["fit", *args])


def callback(trainer, kind):
    return next(cb for cb in trainer.callbacks if isinstance(cb, kind))


def floats(state: dict) -> dict:
    return {k: v for k, v in state.items() if v.is_floating_point()}


EMA_DECAY = 0.9


@pytest.fixture(scope="module")
def ema_run(classification_root, tmp_path_factory):
    """A 2-epoch run with EMAWeightAveraging, and the EMA computed by hand from its per-step weights."""
    run_dir = tmp_path_factory.mktemp("ema")
    run = fit(classification_root, run_dir, f"""
trainer:
  callbacks:
    - class_path: pytorch_lightning.callbacks.EMAWeightAveraging
      init_args: {{decay: {EMA_DECAY}}}
    - class_path: tests.recipes.recorders.WeightRecorder
""", "--trainer.max_epochs", "2")
    recorder = callback(run.trainer, WeightRecorder)
    # oracle: the EMA as torch.optim.swa_utils defines it: a copy at the first update, then
    # ema = decay * ema + (1 - decay) * weights, after every optimizer step (BN statistics included)
    ema, history = None, []
    for weights in recorder.after_step:
        weights = floats(weights)
        ema = dict(weights) if ema is None else {k: EMA_DECAY * ema[k] + (1 - EMA_DECAY) * w
                                                 for k, w in weights.items()}
        history.append(ema)
    return run, recorder, history


def test_ema_weights_are_validated_saved_and_loaded(ema_run):
    run, recorder, history = ema_run
    assert len(recorder.after_step) == run.trainer.global_step == 8
    assert [step for step, _ in recorder.at_validation] == [4, 8]
    for step, state in recorder.at_validation:
        for k, v in history[step - 1].items():
            torch.testing.assert_close(state[k], v, atol=1e-6, rtol=0)
    ema, raw = history[-1], floats(recorder.after_step[-1])
    assert max((ema[k] - raw[k]).abs().max() for k in raw) > 1e-3  # the averaging is visible

    best = torch.load(run.trainer.checkpoint_callback.best_model_path, weights_only=True)  # saved at a validation
    step = best["global_step"]
    last = Path(run.trainer.log_dir) / "checkpoints" / "last.ckpt"
    last_state = torch.load(last, weights_only=True)["state_dict"]
    for k in ema:
        torch.testing.assert_close(best["state_dict"][k], history[step - 1][k], atol=1e-6, rtol=0)
        # the trained weights travel beside the average, to resume training from
        assert torch.equal(best["current_model_state"][k], recorder.after_step[step - 1][k])
        torch.testing.assert_close(last_state[k], ema[k], atol=1e-6, rtol=0)
    loaded = ClassificationTask.load_from_checkpoint(last)
    for k, v in floats(loaded.state_dict()).items():
        torch.testing.assert_close(v, ema[k], atol=1e-6, rtol=0)


def test_ema_last_checkpoint_keeps_the_trained_weights_to_resume_from(ema_run):
    run, recorder, _ = ema_run
    last = torch.load(Path(run.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    for k, v in floats(recorder.after_step[-1]).items():
        assert torch.equal(last["current_model_state"][k], v)


def test_accumulation_steps_the_optimizer_and_the_warmup_every_k_batches(classification_root, tmp_path):
    k = 4
    run = fit(classification_root, tmp_path, RECORD_STEPS, "--data.init_args.batch_size", "4",
              "--trainer.accumulate_grad_batches", str(k))
    batches = TRAIN_IMAGES // 4
    steps = math.ceil(batches / k)  # the last, partial group of batches also steps
    assert run.trainer.global_step == steps == 4
    lrs = callback(run.trainer, StepRecorder).lrs
    assert len(lrs) == steps
    # the quickstart's linear warm-up (60 steps from 0.1 x 0.05) advances once per optimizer step, not per batch
    for i, group_lrs in enumerate(lrs):
        assert group_lrs == pytest.approx([0.05 * (0.1 + 0.9 * i / 60)] * len(group_lrs))


LR = 0.1


def _one_sgd_step(root, run_dir, *clip: str):
    run = fit(root, run_dir, RECORD_STEPS, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
              "--model.init_args.momentum", "0", "--model.init_args.warmup_steps", "0",
              "--model.init_args.lr_scheduler", "none", "--model.init_args.lr", str(LR), *clip)
    start = callback(run.trainer, StepRecorder).start
    # SGD without momentum: p1 = p0 - lr (g + wd p0), with each param group's weight decay
    step = torch.cat([(p.detach() - p0).flatten() for p, p0, _, _ in start]).double()
    decay = torch.cat([(lr * wd * p0).flatten() for _, p0, lr, wd in start]).double()
    gradient = -(step + decay) / LR  # the (clipped) gradient the optimizer applied
    return step, decay, gradient


@pytest.fixture(scope="module")
def unclipped_gradient(classification_root, tmp_path_factory):
    return _one_sgd_step(classification_root, tmp_path_factory.mktemp("unclipped"))[2]


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_bounds_one_sgd_step(classification_root, tmp_path, unclipped_gradient, algorithm):
    # 0.01 rather than 1e-6: float32 rounding of the weights (~1e-8 each, / lr) over ~270k parameters would
    # swamp a gradient norm of 1e-6 in the check below
    clip = 0.01
    step, decay, gradient = _one_sgd_step(classification_root, tmp_path, "--trainer.gradient_clip_val", str(clip),
                                          "--trainer.gradient_clip_algorithm", algorithm)
    # the bound from the update rule: |step| <= lr clip + |lr wd p|, for the whole vector (norm) or per element
    if algorithm == "norm":
        assert step.norm() <= LR * clip + decay.norm() + 1e-7
        assert gradient.norm() == pytest.approx(clip, rel=0.01)  # clipped to the threshold, not below
        assert unclipped_gradient.norm() > 20 * clip
    else:
        assert torch.all(step.abs() <= LR * clip + decay.abs() + 1e-7)
        assert gradient.abs().max() == pytest.approx(clip, rel=0.01)
        assert unclipped_gradient.abs().max() > 20 * clip


def test_lr_finder_sets_the_lr_the_warmup_and_the_backbone_scale_follow(classification_root, tmp_path):
    # 14 search steps over 4-batch epochs: the search runs validation at its epoch ends too
    run = fit(classification_root, tmp_path, """
trainer:
  callbacks:
    - class_path: pytorch_lightning.callbacks.LearningRateFinder
      init_args: {num_training_steps: 14, early_stop_threshold: null}
    - class_path: tests.recipes.recorders.StepRecorder
model:
  init_args: {backbone_lr_scale: 0.5}
""", "--trainer.max_epochs", "4")
    found = callback(run.trainer, LearningRateFinder).optimal_lr.suggestion()
    assert found is not None and found != 0.05
    assert run.model.hparams.lr == found
    checkpoint = torch.load(Path(run.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["lr"] == found
    recorder = callback(run.trainer, StepRecorder)
    # the optimizer's base lrs are the suggestion (body x backbone_lr_scale) and the quickstart's warm-up
    # starts at 0.1 x them
    assert sorted(set(recorder.initial_lrs)) == pytest.approx([0.5 * found, found])
    assert recorder.lrs[0] == pytest.approx([0.1 * lr for lr in recorder.initial_lrs])
    assert len(recorder.lrs) == run.trainer.global_step == 16
    # the finder's temporary checkpoint and its validation pictures are not left in the run directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.yaml", "lightning_logs"]


def test_timm_style_recipe_runs_from_yaml(classification_root, tmp_path):
    config = REPO / "configs" / "recipes" / "classification_timm_style.yaml"
    run = cli(["fit", "--config", str(config), "--data.init_args.root", str(classification_root),
               "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
               "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu",
               "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"])
    trainer, task = run.trainer, run.model
    assert trainer.global_step == 1
    ema = callback(trainer, EMAWeightAveraging)
    assert ema._average_model.n_averaged.item() == 1
    assert trainer.gradient_clip_val == 5.0 and trainer.gradient_clip_algorithm == "norm"
    assert task.criterion.label_smoothing == 0.1
    mixup, cutmix = task.batch_mix.transforms
    assert (mixup.alpha, cutmix.alpha, task.batch_mix.p) == (0.2, 1.0, [0.5, 0.5])
    steps = run.datamodule.train_transform.transforms
    names = [type(t).__name__ for t in steps]
    assert names[-3:] == ["Normalize", "ToTensorV2", "RandomErasing"] and "RandAugment" in names
    erasing = steps[-1].transform
    assert isinstance(steps[-1], RandomErasing) and (erasing.p, erasing.value) == (0.25, None)
    assert isinstance(steps[names.index("RandAugment")], RandAugment)
