"""What an export directory shares besides the graph: ``model.safetensors`` (the task's weights, no pickle) and a
Hugging Face-style ``README.md`` model card; reading such an export back into a task; pushing it to the Hub.

``model.safetensors`` holds the task's ``state_dict`` (backbone under ``backbone.``, as in a ``.ckpt``) and, in its
string metadata, everything needed to rebuild the task without the original config: the densecnn version, the
task class, its hyper-parameters as JSON, the class names and ``FORMAT_VERSION``. ``densecnn.create_backbone(...,
weights="model.safetensors")`` reads the backbone part (``densecnn.weights``), ``Task.load_from_checkpoint`` all.
"""
from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml

from densecnn.errors import UserError

from .checkpoints import CheckpointError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
#: bumped when the metadata's meaning changes; a reader refuses a newer one
FORMAT_VERSION = "1"

# Which paper each task family reproduces (README and shared/SEED_NOTES.md); classification cites its backbone's.
TASK_PAPERS = {
    "OverFeatTask": "Sermanet et al. 2014, OverFeat: Integrated Recognition, Localization and Detection using "
                    "Convolutional Networks (arXiv:1312.6229)",
    "RCNNTask": "Girshick et al. 2014, Rich feature hierarchies for accurate object detection and semantic "
                "segmentation (arXiv:1311.2524)",
    "FastRCNNTask": "Girshick 2015, Fast R-CNN (arXiv:1504.08083)",
    "FasterRCNNTask": "Ren et al. 2015, Faster R-CNN: Towards Real-Time Object Detection with Region Proposal "
                      "Networks (arXiv:1506.01497)",
    "DensePredictionTask": "Eigen & Fergus 2015, Predicting Depth, Surface Normals and Semantic Labels with a Common "
                           "Multi-Scale Convolutional Architecture (arXiv:1411.4734)",
    "VideoClassificationTask": "Tran et al. 2015, Learning Spatiotemporal Features with 3D Convolutional Networks "
                               "(arXiv:1412.0767)",
}
# arXiv ids of the backbone papers the registry names by author and year
BACKBONE_ARXIV = {"He et al. 2015": "1512.03385", "Simonyan & Zisserman 2014": "1409.1556",
                  "Szegedy et al. 2014": "1409.4842", "Ioffe & Szegedy 2015": "1502.03167",
                  "Lin et al. 2013": "1312.4400", "Zeiler & Fergus 2013": "1311.2901",
                  "Springenberg et al. 2015": "1412.6806", "Krizhevsky 2014": "1404.5997",
                  "Carreira & Zisserman 2017": "1705.07750", "Tran et al. 2015": "1412.0767"}


# ---- writing --------------------------------------------------------------------------------------------------------
def densecnn_version() -> str:
    """The installed densecnn version (the package's ``__version__`` when it is not installed)."""
    try:
        return version("densecnn")
    except PackageNotFoundError:
        import densecnn

        return getattr(densecnn, "__version__", "unknown")


def task_hparams(task) -> dict[str, Any]:
    """The hyper-parameters that rebuild ``task`` (``weights`` dropped: the export holds the weights), as JSON
    values; one that JSON cannot hold is an error naming it (it would not rebuild the same task)."""
    hparams = {k: v for k, v in dict(task.hparams).items() if not k.startswith("_")}
    hparams["weights"] = None
    for key, value in hparams.items():
        try:
            json.dumps(value)
        except TypeError as err:
            raise UserError(f"model.init_args.{key}: {value!r} cannot be stored in {WEIGHTS_FILE}'s metadata "
                            f"(not a JSON value: {err})") from err
    return hparams


def pipeline_tag(task) -> str:
    """The Hub's task category: dense prediction is depth-estimation unless it predicts only labels."""
    name = type(task).__name__
    if name == "DensePredictionTask":
        return "image-segmentation" if "depth" not in task.hparams.targets and "semantic" in task.hparams.targets \
            else "depth-estimation"
    if name == "VideoClassificationTask":
        return "video-classification"
    if name in ("OverFeatTask", "RCNNTask", "FastRCNNTask", "FasterRCNNTask") or "Detection" in name:
        return "object-detection"
    return "image-classification"


def paper_for(task) -> str:
    """The task family's paper, and the backbone's (with its arXiv id where it has one)."""
    from densecnn.backbones.registry import get_entry

    backbone = task.hparams.backbone
    try:
        entry = get_entry(backbone).paper
    except ValueError:
        entry = "unknown"
    arxiv = next((f" (arXiv:{i})" for author, i in BACKBONE_ARXIV.items() if entry.startswith(author)), "")
    backbone_paper = f"backbone `{backbone}`: {entry}{arxiv if 'arXiv' not in entry else ''}"
    own = TASK_PAPERS.get(type(task).__name__)
    return f"{own}; {backbone_paper}" if own else backbone_paper


def run_dir_of(checkpoint_path: Path) -> Path:
    """A checkpoint's run directory: Lightning saves into ``<run dir>/checkpoints/``."""
    return checkpoint_path.parent.parent if checkpoint_path.parent.name == "checkpoints" else checkpoint_path.parent


def find_metrics(checkpoint_path: Path | None) -> tuple[dict[str, float], Path] | None:
    """The newest ``metrics.json`` of the checkpoint's run: ``MetricsJSONWriter`` writes it in the run directory
    (``local_log_dir``); a ``validate``/``test`` run given ``--ckpt_path`` writes its own version directory beside
    it and records the path in its ``config.yaml``, so sibling runs that evaluated this checkpoint count too."""
    if checkpoint_path is None:
        return None
    checkpoint_path = Path(checkpoint_path).resolve()
    run_dir = run_dir_of(checkpoint_path)
    candidates = [run_dir / "metrics.json"]
    if run_dir.parent.is_dir():
        for sibling in run_dir.parent.iterdir():
            if sibling != run_dir and _evaluated(sibling / "config.yaml", checkpoint_path):
                candidates.append(sibling / "metrics.json")
    found = [p for p in candidates if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    try:
        metrics = json.loads(newest.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{newest}: not a readable metrics.json ({err})") from err
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, newest


def _evaluated(config_file: Path, checkpoint_path: Path) -> bool:
    if not config_file.is_file():
        return False
    try:
        ckpt = (yaml.safe_load(config_file.read_text()) or {}).get("ckpt_path")
    except yaml.YAMLError:
        return False
    return bool(ckpt) and Path(str(ckpt)).resolve() == checkpoint_path


def find_config(checkpoint_path: Path | None, config: dict | None) -> dict | None:
    """The run config for a model card: the one given, or the ``config.yaml`` of the checkpoint's run directory.

    Args:
        checkpoint_path: the checkpoint.
        config: an explicit config.
    """
    if config is not None or checkpoint_path is None:
        return config
    saved = run_dir_of(Path(checkpoint_path).resolve()) / "config.yaml"
    return yaml.safe_load(saved.read_text()) if saved.is_file() else None


def write_weights(task, path: Path) -> Path:
    """``task``'s state_dict as safetensors, with the metadata ``load_export`` rebuilds the task from."""
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage (tied weights), and wants them contiguous
    state = {k: v.detach().cpu().contiguous().clone() for k, v in task.state_dict().items()}
    metadata = {"format": "pt", "densecnn_version": densecnn_version(), "densecnn_task": type(task).__name__,
                "densecnn_hparams": json.dumps(task_hparams(task), sort_keys=True),
                "densecnn_class_names": json.dumps(task.class_names),
                "densecnn_format_version": FORMAT_VERSION}
    save_file(state, str(path), metadata=metadata)
    return path


def card_text(task, *, checkpoint_path: Path | None, config: dict | None) -> str:
    """The model card: YAML front matter (Hugging Face's layout) and the sections a user needs."""
    name = type(task).__name__
    tag = pipeline_tag(task)
    config = find_config(checkpoint_path, config)
    fit = config.get("fit", config) if isinstance(config, dict) else None
    data = (fit or {}).get("data") or {}
    data_class = data.get("class_path", "not recorded") if isinstance(data, dict) else str(data)
    data_root = (data.get("init_args") or {}).get("root", "not recorded") if isinstance(data, dict) else "not recorded"
    found = find_metrics(checkpoint_path)
    front: dict[str, Any] = {"library_name": "densecnn", "pipeline_tag": tag,
                             "tags": ["densecnn", "pytorch", "onnx", tag, name, str(task.hparams.backbone)]}
    license_ = (fit or {}).get("license") if isinstance(fit, dict) else None
    if license_:
        front["license"] = license_
    if found:
        metrics, metrics_file = found
        front["metrics"] = sorted(metrics)
        front["model-index"] = [{"name": f"{name}-{task.hparams.backbone}", "results": [{
            "task": {"type": tag},
            "dataset": {"name": str(data_root), "type": str(data_class)},
            "metrics": [{"type": k, "name": k, "value": v} for k, v in sorted(metrics.items())]}]}]
        evaluation = (f"From `{metrics_file}` (the checkpoint run's last `metrics.json`):\n\n| metric | value |\n"
                      "|---|---|\n" + "".join(f"| {k} | {v:.6g} |\n" for k, v in sorted(metrics.items())))
    else:
        evaluation = "Not evaluated: no `metrics.json` was found beside the checkpoint.\n"
    classes = task.class_names
    shown = ", ".join(classes[:50]) + (f" ... ({len(classes)} in all)" if len(classes) > 50 else "")
    training_config = yaml.safe_dump(config, sort_keys=False) if config else "not recorded\n"
    return "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        f"# {name} on `{task.hparams.backbone}`", "",
        "## Model description", "",
        f"- Task: `tasks.{name}` ({tag}), trained with densecnn {densecnn_version()}.",
        f"- Backbone: `{task.hparams.backbone}`" + (f" with {task.hparams.backbone_kwargs}"
                                                    if task.hparams.get("backbone_kwargs") else "") + ".",
        f"- Paper: {paper_for(task)}.",
        f"- Classes: {shown or 'none'}.", "",
        "## Intended use and limits", "",
        "For research and for deployment of the same task on images like its training data. Inputs must be "
        "preprocessed as `preprocess.json` says (size, mean/std, channel order); the model has not been checked "
        "for robustness, bias or fairness outside its test set, and its scores are not calibrated probabilities "
        "of correctness.", "",
        "## Training data", "",
        f"- DataModule: `{data_class}`", f"- Root: `{data_root}`", "",
        "## Training config", "", "```yaml", training_config.rstrip(), "```", "",
        "## Evaluation", "", evaluation,
        "## How to use", "",
        "With ONNX Runtime, numpy and pillow only (`docs/examples/onnx_classify.py`, `onnx_depth.py` in densecnn):",
        "", "```bash", "python onnx_classify.py <this folder> photo.jpg", "```", "",
        "With densecnn:", "", "```python",
        f"from tasks import {name}",
        f"task = {name}.load_from_checkpoint(\"{WEIGHTS_FILE}\")  # or this folder",
        "import densecnn",
        f"backbone = densecnn.create_backbone(\"{task.hparams.backbone}\", weights=\"{WEIGHTS_FILE}\")",
        "```", ""])


def write_card_and_weights(task, out_dir: Path, *, checkpoint_path: Path | None = None,
                           config: dict | None = None) -> list[Path]:
    """Write ``model.safetensors`` and the ``README.md`` model card for ``task`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = write_weights(task, out_dir / WEIGHTS_FILE)
    card = out_dir / CARD_FILE
    card.write_text(card_text(task, checkpoint_path=checkpoint_path, config=config))
    return [weights, card]


# ---- reading back ---------------------------------------------------------------------------------------------------
def exported_weights_file(path: str | os.PathLike) -> Path | None:
    """``path`` itself when it is a ``.safetensors`` file, ``path/model.safetensors`` for an export directory,
    else None (a Lightning checkpoint)."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        return None
    local = Path(text.removeprefix("file://"))
    if local.suffix == ".safetensors":
        if not local.is_file():
            raise CheckpointError(f"{local}: exported weights file not found")
        return local
    if local.is_dir():
        if (local / WEIGHTS_FILE).is_file():
            return local / WEIGHTS_FILE
        raise CheckpointError(f"{local}: a folder without {WEIGHTS_FILE}; give a checkpoint file or an export "
                              f"directory")
    return None


def read_export(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights and metadata of an exported ``model.safetensors``.

    Args:
        path: the file.

    Raises:
        CheckpointError: not a readable safetensors file, naming it.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001  (a truncated or foreign file: one clear message)
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    return state, metadata


def load_export(cls, path: Path, *, map_location=None, strict: bool | None = None, **overrides):
    """Rebuild the task ``path``'s metadata names from its hyper-parameters (``overrides`` win) and load its weights.
    ``cls`` is ``BaseTask`` (any task) or the task class the file must come from."""
    import tasks

    state, metadata = read_export(path)
    saved = metadata.get("densecnn_task")
    if saved is None or "densecnn_hparams" not in metadata:
        raise CheckpointError(f"{path}: plain weights without densecnn's task metadata; pass it as "
                              f"model.init_args.weights (or densecnn.create_backbone(..., weights=...)) instead")
    if int(metadata.get("densecnn_format_version", "0")) > int(FORMAT_VERSION):
        raise CheckpointError(f"{path}: export format {metadata['densecnn_format_version']} is newer than this "
                              f"densecnn reads ({FORMAT_VERSION}); upgrade densecnn")
    if cls.__name__ != "BaseTask" and saved != cls.__name__:
        raise CheckpointError(f"{path}: saved by {saved}, not {cls.__name__}; load it with "
                              f"tasks.{saved}.load_from_checkpoint")
    target = getattr(tasks, saved, None)
    if target is None:
        raise CheckpointError(f"{path}: saved by {saved}, which this densecnn does not have")
    hparams = {**json.loads(metadata["densecnn_hparams"]), **overrides, "weights": overrides.get("weights")}
    try:
        task = target(**hparams)
        task.load_state_dict(state, strict=True if strict is None else strict)
    except (RuntimeError, ValueError, TypeError) as err:
        given = {k: v for k, v in overrides.items() if k != "weights"}
        raise CheckpointError(f"{path}: cannot load into {target.__name__} with the saved hyper-parameters"
                              f"{f' and overrides {given}' if given else ''}: {err}") from err
    task.eval()
    return task.to(map_location) if map_location is not None and not callable(map_location) else task


# ---- the Hub ----------------------------------------------------------------------------------------------------------
def push_to_hub(out_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str = "densecnn export") -> str:
    """Upload an export directory to the Hugging Face Hub (needs ``huggingface_hub`` and network); returns the
    commit URL."""
    out_dir = Path(out_dir)
    if not (out_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"{out_dir}: not an export directory (no {WEIGHTS_FILE})")
    try:
        from huggingface_hub import HfApi
    except ImportError as err:
        raise UserError("pushing to the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") from err
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, commit_message=commit_message))
