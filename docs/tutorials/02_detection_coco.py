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
# # 2. Detection on COCO-format data
#
# Look at a COCO-format dataset with its boxes, train Faster R-CNN (Ren et al. 2015), evaluate COCO AP with
# pycocotools, draw the detections, export the COCO results JSON, and compare with OverFeat (Sermanet et al.
# 2014) and Fast R-CNN (Girshick 2015) on the same data. The embedded synthetic shapes (three classes,
# 96×96 images, `annotations/instances_<split>.json` in COCO's format) keep it to a few CPU minutes; the
# models are the quickstart configs' (a half-width ResNet-18) trained for fewer epochs and on fewer images, so the
# numbers are far below the quickstart's.

# %%
import json
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
# ## The data and its boxes
#
# `root/annotations/instances_{train,val,test}.json` plus `root/{train,val,test}/*.png`: your own COCO
# export has the same layout (both paths are `CocoDetectionDataModule` arguments).

# %%
from densecnn.data.synthetic import write_detection_dataset
from densecnn.viz_detection import draw_detections

root = write_detection_dataset(WORK / "shapes_coco", image_size=96, splits={"train": 96, "val": 24, "test": 24})
coco = json.loads((root / "annotations" / "instances_train.json").read_text())
class_names = [c["name"] for c in coco["categories"]]
print(class_names, len(coco["images"]), "training images,", len(coco["annotations"]), "boxes")

fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
for ax, info in zip(axes, coco["images"][:4]):
    anns = [a for a in coco["annotations"] if a["image_id"] == info["id"]]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]  # COCO xywh -> xyxy
    labels = [1 + [c["id"] for c in coco["categories"]].index(a["category_id"]) for a in anns]
    ax.imshow(draw_detections(np.asarray(Image.open(root / "train" / info["file_name"]).convert("RGB")),
                              boxes, labels, class_names=class_names))
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Train Faster R-CNN
#
# The model arguments come from `configs/quickstart/faster_rcnn.yaml` (torchvision's RPN and RoI heads on
# the stride-4 map of a half-width ResNet-18, anchors 16–48 px); only the number of epochs is cut.

# %%
from tasks import CocoDetectionDataModule, FasterRCNNTask


def quickstart_args(name: str) -> dict:
    """The model's init_args in configs/quickstart/<name>.yaml."""
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]["init_args"]


def trainer(name: str, epochs: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=str(WORK / name),
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5, **kwargs)


datamodule = CocoDetectionDataModule(str(root), image_size=96, batch_size=8, num_workers=0)
pl.seed_everything(42)
faster = FasterRCNNTask(**quickstart_args("faster_rcnn"))
faster_trainer = trainer("faster_rcnn", epochs=12)
faster_trainer.fit(faster, datamodule=datamodule)

# %% [markdown]
# ## Evaluate: COCO AP
#
# `test` computes COCO's AP@[.5:.95], AP50, AP75 and the size breakdown with pycocotools' `COCOeval`
# (and the Pascal VOC APs), and writes the per-class table and the precision/recall curves.

# %%
metrics = faster_trainer.test(faster, datamodule=datamodule, verbose=False)[0]
for key in ("test/map", "test/map_50", "test/map_75", "test/map_voc"):
    print(f"{key:14s} {metrics[key]:.3f}")

# %% [markdown]
# ## Draw detections

# %%
from densecnn.viz_detection import detection_grid

datamodule.setup("test")
batch = next(iter(datamodule.test_dataloader()))
faster.eval()
with torch.no_grad():
    detections = faster.predict_step(batch, 0)
images = [np.asarray(Image.open(p).convert("RGB")) for p in batch["path"][:4]]
shown = [{k: d[k][d["scores"] >= 0.5] for k in ("boxes", "scores", "labels")} for d in detections[:4]]
plt.figure(figsize=(12, 3.5))
plt.imshow(detection_grid(images, shown, class_names, columns=4, cell=192))
plt.axis("off")
plt.title("Faster R-CNN detections (score ≥ 0.5)")
plt.show()

# %% [markdown]
# ## The COCO results JSON
#
# `predict` writes (through the `PredictionWriter` callback every task adds) `detections.json`, COCO's
# results format (`image_id`, `category_id`, `bbox` as xywh, `score`), and a picture per image. pycocotools
# reads it back, and its `COCOeval` on the test annotations gives the task's `test/map` again (up to the
# file's boxes being rounded to 0.01 px).

# %%
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


trainer("faster_rcnn_predict", 1, logger=False).predict(faster, datamodule=datamodule)
results_json = next((WORK / "faster_rcnn_predict").rglob("detections.json"))
print(results_json, json.loads(results_json.read_text())[0])

ground_truth = COCO(str(root / "annotations" / "instances_test.json"))
evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(results_json)), "bbox")
evaluation.evaluate()
evaluation.accumulate()
evaluation.summarize()
print(f"pycocotools AP@[.5:.95] from the JSON: {evaluation.stats[0]:.3f}; "
      f"the task's test/map: {metrics['test/map']:.3f}")
assert abs(evaluation.stats[0] - metrics["test/map"]) < 0.005

# %% [markdown]
# ## OverFeat and Fast R-CNN on the same data
#
# OverFeat slides a classifier and a box regressor over a pyramid of scales; Fast R-CNN classifies
# selective-search proposals pooled from one feature map (the DataModule computes the proposals with
# `proposals="selective_search"`, cached under the data folder). Both use their quickstart configs, for four
# epochs: too few to rank the methods (the quickstarts train 12–15), enough to see the same data, metric
# and table for all three.

# %%
from tasks import FastRCNNTask, OverFeatTask

rows = [{"model": "Faster R-CNN", "epochs": 12, **{k: metrics[k] for k in ("test/map", "test/map_50")}}]
proposal_data = CocoDetectionDataModule(str(root), image_size=96, batch_size=8, num_workers=0,
                                        proposals="selective_search")
for name, title, cls, data in [("overfeat", "OverFeat", OverFeatTask, datamodule),
                               ("fast_rcnn", "Fast R-CNN", FastRCNNTask, proposal_data)]:
    pl.seed_everything(42)
    model = cls(**quickstart_args(name))
    run = trainer(name, epochs=4)
    run.fit(model, datamodule=data)
    result = run.test(model, datamodule=data, verbose=False)[0]
    rows.append({"model": title, "epochs": 4,
                 **{k: result[k] for k in ("test/map", "test/map_50")}})
print(f"{'model':14s} {'epochs':>6s} {'AP':>7s} {'AP50':>7s}")
for row in rows:
    print(f"{row['model']:14s} {row['epochs']:6d} {row['test/map']:7.3f} {row['test/map_50']:7.3f}")

# %% [markdown]
# ## Look inside: Grad-CAM of a detection
#
# For Faster R-CNN, `explain_task` explains each detected box's class logit with the box held fixed as the
# region of interest.

# %%
from tasks.explain import explain_task

one = {k: v[:1] for k, v in batch.items()}
pictures = explain_task(faster, one, method="gradcam", max_boxes=2, progress=False)
for picture in pictures:
    plt.figure(figsize=(6, 3))
    plt.imshow(picture.image)
    plt.title(picture.title, fontsize=8)
    plt.axis("off")
plt.show()

# %% [markdown]
# ## Export to ONNX
#
# The Faster R-CNN graph takes one RGB image in [0, 1] of any size and returns `boxes` (xyxy pixels),
# `labels` and `scores`; `export_task` checks it against PyTorch in onnxruntime.

# %%
import onnxruntime as ort

from tasks.export import export_task

exported = export_task(faster, WORK / "faster_rcnn_onnx", fmt="onnx")
print(exported.model_path.name, "verified on the", exported.verified_on, "max |onnx - torch| =",
      exported.max_abs_diff)
session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
print("inputs:", [(i.name, i.shape) for i in session.get_inputs()],
      "outputs:", [o.name for o in session.get_outputs()])
