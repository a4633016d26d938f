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
# # 3. Depth and normals from one image (Eigen & Fergus)
#
# Eigen & Fergus's three-scale network (ICCV 2015, arXiv:1411.4734) predicts depth and surface normals
# from a single RGB image. This notebook trains it on the embedded synthetic rooms (rendered boxes and
# spheres with exact depth and normals, Kinect-like holes), shows prediction against ground truth, computes
# the standard depth metrics (Eigen et al. 2014: δ < 1.25ᵏ, abs rel, sq rel, RMSE, RMSE log) and the normal
# angle errors, and writes a 16-bit PNG depth map. The network is `configs/quickstart/depth.yaml`'s (ResNet-18
# as scale 1, narrowed head) trained for only a few epochs, so its errors are well above the quickstart's.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from PIL import Image

import densecnn

WORK = Path(os.environ.get("DENSECNN_TUTORIAL_DIR") or tempfile.mkdtemp(prefix="densecnn-tutorial-"))
WORK.mkdir(parents=True, exist_ok=True)
CONFIGS = Path(densecnn.__file__).resolve().parents[1] / "configs" / "quickstart"
print("writing into", WORK)

# %% [markdown]
# ## The rooms
#
# `root/<split>/rgb/*.png`, `depth/*.png` (uint16 millimetres, 0 = missing), `normals/*.png` (RGB-encoded
# unit vectors) and `camera.json`: the layout your own RGB-D folder uses (NYU Depth v2 and KITTI have their
# own DataModules).

# %%
from densecnn.data.synthetic import write_dense_dataset
from tasks import DenseDataModule

root = write_dense_dataset(WORK / "rooms", height=72, width=96, splits={"train": 96, "val": 16, "test": 16})
datamodule = DenseDataModule(str(root), maps=["depth", "normals"], image_size=(72, 96), crop_size=(64, 88),
                             scale=(1.0, 1.15), rotation=3.0, batch_size=16, num_workers=0)

# %% [markdown]
# ## Train
#
# The quickstart's architecture, with both targets: the scale-invariant depth loss with gradient matching
# and the normals' dot-product loss, summed.

# %%
from tasks import DensePredictionTask

args = yaml.safe_load((CONFIGS / "depth.yaml").read_text())["model"]["init_args"]
args["targets"] = ["depth", "normals"]
pl.seed_everything(42)
task = DensePredictionTask(**args)
trainer = pl.Trainer(max_epochs=6, accelerator="cpu", devices=1, default_root_dir=str(WORK / "runs"),
                     enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5)
trainer.fit(task, datamodule=datamodule)

# %% [markdown]
# ## Prediction against ground truth

# %%
from densecnn.viz import to_uint8_images
from densecnn.viz_dense import colourise_depth, normals_to_rgb

datamodule.setup("test")
batch = next(iter(datamodule.test_dataloader()))
task.eval()
with torch.no_grad():
    prediction = task.predict_step(batch, 0)
images = to_uint8_images(batch["image"][:3], *task.normalisation())
fig, axes = plt.subplots(3, 5, figsize=(13, 6.5))
for row, image in enumerate(images):
    truth = batch["depth"][row].squeeze().numpy()
    valid = truth[truth > 0]
    depth_range = (float(valid.min()), float(valid.max()))
    panels = [(image, "input"),
              (colourise_depth(prediction["depth"][row].squeeze(), *depth_range), "depth: predicted"),
              (colourise_depth(truth, *depth_range), "depth: ground truth"),
              (normals_to_rgb(prediction["normals"][row]), "normals: predicted"),
              (normals_to_rgb(batch["normals"][row]), "normals: ground truth")]
    for ax, (picture, title) in zip(axes[row], panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
plt.show()

# %% [markdown]
# ## The standard metrics
#
# `test` accumulates the depth errors over every valid pixel of the split (ground truth present and inside
# the depth range; the protocol is in the docs' *Dense prediction* page) and the normals' angle errors.
# `densecnn.metrics.depth_errors` computes the same per image, here on the batch above.

# %%
metrics = trainer.test(task, datamodule=datamodule, verbose=False)[0]
for key, value in metrics.items():
    if key.startswith(("test/depth/", "test/normals/")):
        print(f"{key:28s} {value:.3f}")

# %%
from densecnn.metrics.dense import depth_errors

errors, has_pixels = depth_errors(prediction["depth"], batch["depth"])
print({k: round(float(v.mean()), 3) for k, v in errors.items() if k in ("delta1", "abs_rel", "rmse")})

# %% [markdown]
# ## A 16-bit PNG depth map
#
# `write_depth_png` stores metres as uint16 millimetres (NYU's convention; 0 = missing), which any image
# tool opens; `read_depth_png` reads it back to metres (to the millimetre).

# %%
from densecnn.data.dense import read_depth_png, write_depth_png

rgb = np.asarray(Image.open(sorted((root / "test" / "rgb").glob("*.png"))[0]).convert("RGB"))
depth = task.predict_image(rgb)["depth"].squeeze()
write_depth_png(depth, WORK / "depth.png")
stored = Image.open(WORK / "depth.png")
print(stored.mode, np.asarray(stored).dtype, stored.size)
back = read_depth_png(WORK / "depth.png")
print("largest round-trip error:", float(np.abs(back - depth).max()), "m")
assert np.abs(back - depth).max() <= 0.0005 + 1e-6

# %% [markdown]
# ## Look inside: which pixels drive the predicted depth
#
# For dense tasks `explain_task` explains the mean predicted depth over a window of the output (`region`:
# top, left, bottom, right); saliency is the gradient's magnitude per input pixel.

# %%
from tasks.explain import explain_task

picture = explain_task(task, batch["image"][:1], method="saliency", target="depth", region=(16, 24, 40, 56),
                       progress=False)[0]
plt.figure(figsize=(7, 3))
plt.imshow(picture.image)
plt.title(picture.title, fontsize=8)
plt.axis("off")
plt.show()

# %% [markdown]
# ## Export to ONNX
#
# The exported graph is the three-scale network with depth in metres and unit normals as outputs;
# onnxruntime reproduces PyTorch's depth.

# %%
import onnxruntime as ort

from tasks.export import export_task

exported = export_task(task, WORK / "depth_onnx", fmt="onnx")
session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
image = batch["image"][:2]
outputs = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {session.get_inputs()[0].name: image.numpy()})))
print({name: value.shape for name, value in outputs.items()}, "max |onnx - torch| =", exported.max_abs_diff)
with torch.no_grad():
    np.testing.assert_allclose(outputs["depth"].squeeze(), task(image)["depth"].squeeze().numpy(), atol=1e-3)
