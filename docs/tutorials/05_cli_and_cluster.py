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
# # 5. From the notebook to the command line and a cluster
#
# What a notebook does with `Trainer(...)` and `ClassificationTask(...)`, the command line does from one YAML
# file: `python -m densecnn fit --config run.yaml`. This notebook writes such a file, trains with it in a
# subprocess, resumes the run with `--ckpt_path last`, tests, explains and exports from the command line, and
# shows the commands that run the same file on several nodes (torchrun or SLURM). The run is the
# classification quickstart (the CIFAR ResNet-20 of He et al.) on a small copy of the synthetic shapes,
# for a few epochs.

# %%
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import yaml
from PIL import Image

import densecnn

WORK = Path(os.environ.get("DENSECNN_TUTORIAL_DIR") or tempfile.mkdtemp(prefix="densecnn-tutorial-"))
WORK.mkdir(parents=True, exist_ok=True)
REPO = Path(densecnn.__file__).resolve().parents[1]
print("writing into", WORK)


def densecnn_cli(*args: str) -> str:
    """Run `python -m densecnn ARGS` (the installed command `densecnn ARGS` is the same) and return its
    output; a failure shows the output and stops the notebook."""
    result = subprocess.run([sys.executable, "-m", "densecnn", *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        raise RuntimeError(f"exit code {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr

# %% [markdown]
# ## The run as a YAML config
#
# `configs/quickstart/classification.yaml` with the data root, the run folder and the length changed. Every
# key is an argument of `pl.Trainer`, the task (`model.class_path`) or the DataModule (`data.class_path`);
# a misspelt key fails before anything runs, naming it.

# %%
from densecnn.data.synthetic import write_classification_dataset

root = write_classification_dataset(WORK / "shapes", per_class={"train": 150, "val": 30, "test": 30})
config = yaml.safe_load((REPO / "configs" / "quickstart" / "classification.yaml").read_text())
config["trainer"].update(max_epochs=4, accelerator="cpu", default_root_dir=str(WORK / "run"),
                         enable_progress_bar=False, enable_model_summary=False)
config["model"]["init_args"]["warmup_steps"] = 20
config["data"]["init_args"].update(root=str(root), synthetic=False, num_workers=0)
config_file = WORK / "run.yaml"
config_file.write_text(yaml.safe_dump(config, sort_keys=False))
print(config_file.read_text())

# %% [markdown]
# ## `fit`
#
# The seed (42) makes the run repeatable: the same config gives bit-identical weights on CPU. `fit` keeps the
# best checkpoint on `val/acc1` and `checkpoints/last.ckpt`, and saves the resolved config beside the
# TensorBoard events.

# %%
log = densecnn_cli("fit", "--config", str(config_file))
print("\n".join(line for line in log.splitlines() if "max_epochs" in line or "acc" in line)[-800:])
last = next((WORK / "run").rglob("last.ckpt"))
print(last.relative_to(WORK))

# %% [markdown]
# ## Resume
#
# `--ckpt_path last` finds the newest checkpoint of the run (also after `kill -9` mid-epoch: the checkpoint
# holds the loader's position and every generator's state) and continues in the same log version. Here the
# run is extended from four to six epochs.

# %%
import torch

densecnn_cli("fit", "--config", str(config_file), "--trainer.max_epochs", "6", "--ckpt_path", "last")
state = torch.load(last, map_location="cpu", weights_only=True)
print("epochs completed in last.ckpt:", state["epoch"] + 1, "; global step:", state["global_step"])
print("log versions:", sorted(p.name for p in (WORK / "run" / "lightning_logs").iterdir()))

# %% [markdown]
# ## `test`
#
# `test` (and `validate`) print the metrics and write them to `metrics.json` in the run's folder.

# %%
densecnn_cli("test", "--config", str(config_file), "--ckpt_path", str(last))
metrics = json.loads(next((WORK / "run").rglob("metrics.json")).read_text())
print({k: round(v, 3) for k, v in metrics.items() if not k.startswith("test/acc_class")})

# %% [markdown]
# ## Many processes, many nodes
#
# Nothing in the config changes. On one machine with two processes (CPU, gloo; or GPUs with
# `--trainer.accelerator gpu`):
#
# ```bash
# python -m densecnn fit --config run.yaml --trainer.devices 2 --trainer.strategy ddp
# ```
#
# On several nodes, with torchrun (run on every node; `NODE_RANK` 0 on the node at `MASTER_ADDR`) or SLURM
# (one task per GPU; SIGUSR1 90 s before the time limit saves a checkpoint and requeues the job, which
# resumes with `--ckpt_path last`). The scripts are in `configs/cluster/`; they are shown here, not run:

# %%
run_yaml = config_file
commands = [
    f"NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 RUN_DIR=/shared/runs/exp1 "
    f"configs/cluster/torchrun_multinode.sh {run_yaml}",
    f"NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 RUN_DIR=/shared/runs/exp1 "
    f"configs/cluster/torchrun_multinode.sh {run_yaml}",
    f"RUN_DIR=/shared/runs/exp1 sbatch --nodes=4 configs/cluster/slurm_ddp.sbatch {run_yaml}",
]
print("\n".join(commands))
srun = (REPO / "configs" / "cluster" / "slurm_ddp.sbatch").read_text()
print("\nthe line every SLURM task runs:\n" + srun[srun.index("\nsrun "):].strip())

# %% [markdown]
# ## Look inside, from the command line
#
# `python -m densecnn explain <method>` builds the task from the config and checkpoint, explains test images
# and writes the pictures with an `index.html`.

# %%
explain_dir = WORK / "explain"
densecnn_cli("explain", "gradcam", "--config", str(config_file), "--ckpt_path", str(last), "--num-images", "2",
             "--output", str(explain_dir))
pictures = sorted(explain_dir.glob("*.png"))
fig, axes = plt.subplots(1, len(pictures), figsize=(6 * len(pictures), 3), squeeze=False)
for ax, path in zip(axes[0], pictures):
    ax.imshow(Image.open(path))
    ax.set_title(path.name, fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Export, and serve without densecnn
#
# `python -m densecnn export` writes and verifies `model.onnx` with `preprocess.json`;
# `docs/examples/onnx_classify.py` then classifies a photo with onnxruntime, numpy and pillow alone.

# %%
export_dir = WORK / "export"
log = densecnn_cli("export", "--config", str(config_file), "--ckpt_path", str(last), "--format", "onnx",
                   "--output", str(export_dir))
print("\n".join(line for line in log.splitlines() if "onnx" in line))
photo = sorted((root / "test" / "disk").glob("*.png"))[0]
served = subprocess.run([sys.executable, str(REPO / "docs" / "examples" / "onnx_classify.py"), str(export_dir),
                         str(photo)], capture_output=True, text=True, check=True)
print(photo.name, "->", served.stdout.strip())
