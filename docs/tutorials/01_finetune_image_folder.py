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
# # 1. Fine-tune a pretrained backbone on your own image folder
#
# You have images sorted into one folder per class. This notebook builds the DataModule on such a folder,
# loads a pretrained ResNet-18, trains only its new classifier first and then the whole network, evaluates
# it, looks at the confusion matrix and the predictions, saves and reloads the model, classifies a single
# image, looks inside with Grad-CAM and exports to ONNX.
#
# It runs on a CPU in a few minutes on the embedded synthetic shapes (six classes, 32×32 PNGs), and writes
# everything into a temporary folder (set `DENSECNN_TUTORIAL_DIR` to keep it somewhere else).

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image

WORK = Path(os.environ.get("DENSECNN_TUTORIAL_DIR") or tempfile.mkdtemp(prefix="densecnn-tutorial-"))
WORK.mkdir(parents=True, exist_ok=True)
print("writing into", WORK)

# %% [markdown]
# ## Your image folder
#
# The layout is torchvision's `ImageFolder`: `train/<class>/*.png`, `val/<class>/*.png` and an optional
# `test/`. Here the synthetic shapes stand in for your photos; `write_classification_dataset` writes them
# (the same bytes every time). With your own data, skip this cell and point `root` at your folder.

# %%
from densecnn.data.synthetic import write_classification_dataset

root = write_classification_dataset(WORK / "shapes", per_class={"train": 60, "val": 15, "test": 15})
print(sorted(p.name for p in (root / "train").iterdir()))

# %%
from tasks import ImageFolderDataModule

datamodule = ImageFolderDataModule(str(root), image_size=32, train_transforms="small", batch_size=16,
                                   num_workers=0)
datamodule.setup("fit")
print(len(datamodule.train_set), "training images,", len(datamodule.val_set), "validation images")

# %% [markdown]
# ## A pretrained backbone
#
# `weights` takes a torchvision or timm `state_dict`, a safetensors file, a densecnn checkpoint or a
# torchvision name such as `torchvision:ResNet18_Weights.IMAGENET1K_V1` (downloaded once into torch.hub's
# cache). **This notebook runs offline**, so the next cell makes the file a download would give you:
# torchvision's `resnet18(weights=None)` — the same architecture and key names, with random instead of
# ImageNet weights — saved with `torch.save`. With real ImageNet weights the frozen phase below is far
# stronger; the mechanics are the same. **Expect a low accuracy here** (about 0.3 against a chance of 1/6):
# random "pretrained" features and ten short epochs on 32×32 images are not enough for a ResNet-18. The
# quickstart's CIFAR ResNet-20 (`make demo`, 30 epochs) shows what the data allows.

# %%
weights_file = WORK / "resnet18_standin.pth"
torch.manual_seed(0)
torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_file)

# %% [markdown]
# ## Freeze, then unfreeze
#
# `freeze_backbone=True` trains only the new classifier ("re-train just the softmax"); frozen batch norm
# stays in eval mode. `unfreeze_backbone_at_epoch=2` releases the backbone from the third epoch on, at
# `backbone_lr_scale` times the learning rate. (The same is available as the `FreezeBackbone` callback.)
# The ImageNet classifier (1000 classes) is dropped with a message, as this task has six.

# %%
from tasks import ClassificationTask

pl.seed_everything(42)
task = ClassificationTask(backbone="resnet18", num_classes=6, weights=str(weights_file),
                          freeze_backbone=True, unfreeze_backbone_at_epoch=2, backbone_lr_scale=0.5,
                          optimizer="adamw", lr=3e-3, weight_decay=1e-4)
trainable = lambda: sum(p.numel() for p in task.parameters() if p.requires_grad)  # noqa: E731

# %% [markdown]
# ## Train with `Trainer`
#
# A plain Lightning `Trainer`; the task logs `train/loss`, `val/acc1` and `val/acc5`, and pictures of
# validation predictions under its run directory.

# %%
trainer = pl.Trainer(max_epochs=10, accelerator="cpu", devices=1, default_root_dir=str(WORK / "runs"),
                     enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5)
trainer.fit(task, datamodule=datamodule)
print("validation accuracy:", float(trainer.callback_metrics["val/acc1"]))
print("trainable parameters after the release:", trainable())

# %% [markdown]
# ## Evaluate
#
# `test` reports top-1/top-5 and per-class accuracy, and draws the confusion matrix (rows: true class,
# columns: predicted) into `<run dir>/pictures/`.

# %%
metrics = trainer.test(task, datamodule=datamodule, verbose=False)[0]
print({k: round(v, 3) for k, v in metrics.items()})

# %%
confusion_png = sorted((task.run_dir / "pictures").glob("test_confusion_matrix*.png"))[-1]
plt.figure(figsize=(4, 4))
plt.imshow(Image.open(confusion_png))
plt.axis("off")
plt.title("test confusion matrix")
plt.show()

# %% [markdown]
# ## Predictions
#
# `predict_image` classifies one HxWx3 uint8 image with the DataModule's evaluation transform.

# %%
test_files = sorted((root / "test").rglob("*.png"))[::15][:6]
fig, axes = plt.subplots(1, len(test_files), figsize=(2 * len(test_files), 2.4))
for ax, path in zip(axes, test_files):
    image = np.asarray(Image.open(path).convert("RGB"))
    result = task.predict_image(image, transform=datamodule.eval_transform)
    ax.imshow(image)
    ax.set_title(f"{result['label_name']} {float(result['probs'].max()):.2f}\n(true: {path.parent.name})",
                 fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Save and reload
#
# A checkpoint holds the weights, the hyper-parameters and the class names; `load_from_checkpoint`
# rebuilds the task without the pretrained file (it is never read again).

# %%
checkpoint = WORK / "finetuned.ckpt"
trainer.save_checkpoint(checkpoint)
reloaded = ClassificationTask.load_from_checkpoint(checkpoint).eval()
image = np.asarray(Image.open(test_files[0]).convert("RGB"))
before = task.predict_image(image, transform=datamodule.eval_transform)
after = reloaded.predict_image(image, transform=datamodule.eval_transform)
print(after["label_name"], after["probs"].numpy().round(3))
assert torch.allclose(before["probs"], after["probs"], atol=1e-6)

# %% [markdown]
# ## Look inside: Grad-CAM
#
# `explain_task` explains the predicted class of each image; Grad-CAM weighs the deepest feature map by
# the gradient of the class logit (Selvaraju et al. 2017). Other methods: `saliency`, `guided_backprop`,
# `deconvnet`, `occlusion`, `integrated_gradients`.

# %%
from tasks.explain import explain_task

batch = next(iter(datamodule.test_dataloader()))
pictures = explain_task(reloaded, batch["image"][:2], method="gradcam", progress=False)
for picture in pictures:
    plt.figure(figsize=(6, 3))
    plt.imshow(picture.image)
    plt.title(picture.title, fontsize=8)
    plt.axis("off")
plt.show()

# %% [markdown]
# ## Export to ONNX
#
# `export_task` writes `model.onnx` (softmax included), `preprocess.json` and a model card, and verifies
# the file in onnxruntime against PyTorch. Then onnxruntime alone classifies an image.

# %%
import onnxruntime as ort

from tasks.export import export_task

exported = export_task(task, WORK / "export", fmt="onnx")  # attached to the DataModule: 32x32 input
print(exported.model_path.name, "max |onnx - torch| =", exported.max_abs_diff)
session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
x = datamodule.eval_transform(image=image)["image"][None].numpy()
(probs,) = session.run(None, {session.get_inputs()[0].name: x})
print("onnxruntime:", reloaded.class_names[int(probs.argmax())], probs.round(3))
assert np.allclose(probs[0], after["probs"].numpy(), atol=1e-4)
