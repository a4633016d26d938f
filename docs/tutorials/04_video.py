# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Video classification from MP4 files
#
# Clips from MP4 files, C3D (Tran et al. 2015: 3×3×3 convolutions over space and time) against a 2D network
# run on each frame and averaged over time (the no-motion baseline), and video accuracy (the softmax
# averaged over several clips per video). The data are the embedded synthetic motion videos: six classes
# (move left/right, rotate clockwise/anticlockwise, grow/shrink) where **no single frame tells the class**,
# so only a model that sees motion can learn them. Both models are tiny and trained for a few epochs here;
# the quickstart (`configs/quickstart/video.yaml`, 30 epochs) reaches 0.81 video accuracy with C3D.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
import torch
import yaml

import densecnn

WORK = Path(os.environ.get("DENSECNN_TUTORIAL_DIR") or tempfile.mkdtemp(prefix="densecnn-tutorial-"))
WORK.mkdir(parents=True, exist_ok=True)
CONFIGS = Path(densecnn.__file__).resolve().parents[1] / "configs" / "quickstart"
print("writing into", WORK)

# %% [markdown]
# ## The videos and their clips
#
# `root/<class>/*.mp4` with UCF101-style split lists (Kinetics CSVs, MMAction2 lists or a seeded split work
# too). The DataModule decodes with PyAV, resizes the short side to `resize`, and cuts `clip_len`-frame clips:
# random ones for training, `clips_per_video` evenly spaced ones for evaluation.

# %%
from densecnn.data.synthetic.video import write_video_dataset
from tasks import VideoFolderDataModule

root = write_video_dataset(WORK / "motion", videos_per_class={"train": 16, "test": 4}, num_frames=16,
                           frame_size=(32, 44))
print(sorted(p.name for p in root.iterdir()))
data_args = yaml.safe_load((CONFIGS / "video.yaml").read_text())["data"]["init_args"]
data_args.update(root=str(root), synthetic=False, num_workers=0)
for key in [k for k in data_args if k.startswith("synthetic_")]:
    del data_args[key]
datamodule = VideoFolderDataModule(**data_args)
datamodule.setup("fit")
batch = next(iter(datamodule.train_dataloader()))
print("a training batch of clips:", tuple(batch["video"].shape), "(N, C, T, H, W)")

# %%
from densecnn.viz import to_uint8_images

clip = batch["video"][0]  # (C, T, H, W)
frames = to_uint8_images(clip.permute(1, 0, 2, 3), datamodule.mean, datamodule.std)
fig, axes = plt.subplots(1, len(frames), figsize=(1.5 * len(frames), 1.6))
for t, (ax, frame) in enumerate(zip(axes, frames)):
    ax.imshow(frame)
    ax.set_title(f"t={t}", fontsize=7)
    ax.axis("off")
fig.suptitle(f"one clip: {datamodule.class_names[int(batch['label'][0])]}", fontsize=9)
plt.show()

# %% [markdown]
# ## C3D against the per-frame baseline
#
# The same task class and data; only the backbone changes. `c3d` at a quarter width with batch norm (the
# quickstart's), and a narrow 2D ResNet-18 that `VideoClassificationTask` runs on each frame and averages over
# time.

# %%
from tasks import VideoClassificationTask

model_args = yaml.safe_load((CONFIGS / "video.yaml").read_text())["model"]["init_args"]
models = {"C3D": {}, "per-frame ResNet-18": {"backbone": "resnet18",
                                             "backbone_kwargs": {"widths": [16, 32, 64, 128]}}}
results, tasks_by_name = {}, {}
for name, change in models.items():
    pl.seed_everything(42)
    task = VideoClassificationTask(**{**model_args, **change})
    trainer = pl.Trainer(max_epochs=8, accelerator="cpu", devices=1,
                         default_root_dir=str(WORK / name.replace(" ", "_")), enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=5)
    trainer.fit(task, datamodule=datamodule)
    results[name] = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    tasks_by_name[name] = task

# %% [markdown]
# ## Video accuracy
#
# `clip_acc1` scores each clip alone; `video_acc1_3clips_1crop` averages the softmax over three evenly
# spaced clips of each video (one centre crop), as C3D's evaluation does. Chance is 1/6 ≈ 0.17. With eight
# short epochs neither model is trained; run the quickstart for the separation (a slow test checks C3D
# ≥ 0.8 against the per-frame model ≤ 0.32).

# %%
print(f"{'model':22s} {'clip acc':>9s} {'video acc':>10s}")
for name, metrics in results.items():
    clip_key = next(k for k in metrics if k.endswith("clip_acc1"))
    video_key = next(k for k in metrics if "video_acc1" in k)
    print(f"{name:22s} {metrics[clip_key]:9.3f} {metrics[video_key]:10.3f}")

# %% [markdown]
# ## Look inside: saliency over space and time
#
# For video, `explain_task` attributes a clip's class logit to every pixel of every frame and draws the
# frames as a strip.

# %%
from tasks.explain import explain_task

c3d = tasks_by_name["C3D"]
datamodule.setup("test")
test_batch = next(iter(datamodule.test_dataloader()))
test_clips = test_batch["video"].reshape(-1, *test_batch["video"].shape[-4:])  # every clip of the videos
picture = explain_task(c3d, test_clips[:1], method="saliency", progress=False)[0]
plt.figure(figsize=(12, 2.5))
plt.imshow(picture.image)
plt.title(picture.title, fontsize=8)
plt.axis("off")
plt.show()

# %% [markdown]
# ## Export to ONNX
#
# One (N, 3, T, H, W) clip in, class probabilities out; `preprocess.json` records the clip sampling.

# %%
import json

import onnxruntime as ort

from tasks.export import export_task

exported = export_task(c3d, WORK / "c3d_onnx", fmt="onnx")
print(json.dumps({k: v for k, v in json.loads(exported.preprocess_path.read_text()).items()
                  if k in ("inputs", "outputs", "clip")}, indent=1)[:600])
session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
clips = test_clips[:2].numpy()
(probs,) = session.run(None, {session.get_inputs()[0].name: clips})
with torch.no_grad():
    np.testing.assert_allclose(probs, c3d.eval()(torch.from_numpy(clips)).softmax(1).numpy(), atol=1e-4)
print("onnxruntime probabilities:", probs.round(3))
