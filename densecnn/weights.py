"""Loading weights into densecnn backbones, without ever unpickling arbitrary objects.

Sources ``create_backbone(weights=...)`` accepts:
  * a local path: a torchvision/timm state_dict (``.pth``/``.pt``/``.bin``), a ``.safetensors`` file, or a
    densecnn/Lightning ``.ckpt`` (the task's ``backbone.*`` weights are extracted);
  * an ``http(s)://`` or ``file://`` URL, fetched into torch.hub's cache;
  * a named torchvision weight, ``torchvision:ResNet50_Weights.IMAGENET1K_V2``, fetched the same way
    (set ``TORCH_HOME`` to point at a pre-filled cache on a machine without network access).

Downloads are checked against the SHA256 their source publishes: torchvision's (and torch.hub's) file names
end in ``-<first hex digits of the SHA256>.pth``, e.g. ``resnet50-11ad3fa6.pth``. torch.hub checks that only
while it downloads (``check_hash=True``); a file already in the cache (a pre-filled ``TORCH_HOME``) is
checked here too, so a corrupt or substituted file is an error naming it, never a silent load.
Files are read with ``torch.load(..., weights_only=True)`` (torch >= 2.6's default) or safetensors.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import UserError

TORCHVISION_PREFIX = "torchvision:"

# Wrappers found around state_dicts: Lightning checkpoints, timm/DeiT-style training checkpoints.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


class WeightsError(UserError):
    """A weights file that cannot be used: unreadable, unsafe, or for another architecture."""


def read_state_dict(source: str | os.PathLike, *, whole_task: bool = False) -> dict[str, torch.Tensor]:
    """Read tensors from ``source`` (path, URL or ``torchvision:<Enum>.<NAME>``), unwrapped to a flat state_dict:
    a task checkpoint's backbone (its ``backbone.*`` keys, prefix removed) or, with ``whole_task``, all of it."""
    source = str(source)
    if source.startswith(TORCHVISION_PREFIX):
        raw = _download(_torchvision_weight_url(source[len(TORCHVISION_PREFIX):]), source)
    elif source.startswith(("http://", "https://", "file://")):
        raw = _download(source, source)
    else:
        raw = _read_file(Path(source))
    return _unwrap(raw, source, strip_backbone=not whole_task)


def _torchvision_weight_url(name: str) -> str:
    from torchvision.models import get_weight

    try:
        return get_weight(name).url
    except (ValueError, AttributeError, KeyError) as err:
        raise WeightsError(f"torchvision:{name}: not a torchvision weight name such as "
                           f"'ResNet50_Weights.IMAGENET1K_V2' ({err})") from err


def published_hash_prefix(filename: str) -> str | None:
    """The SHA256 prefix a torch.hub-style file name publishes (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``), found
    with torch.hub's own pattern; at least 8 hex digits, so a name like ``model-v2.pth`` or ``net-abc.pth``
    claims none."""
    match = torch.hub.HASH_REGEX.search(filename)
    return match.group(1) if match and len(match.group(1)) >= 8 else None


def check_file_hash(path: Path, prefix: str, label: str) -> None:
    """``path``'s SHA256 must start with ``prefix`` (the one its name publishes)."""
    sha256 = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha256.update(block)
    digest = sha256.hexdigest()
    if not digest.startswith(prefix):
        raise WeightsError(f"{label}: {path} is corrupt or not the published file: its name says its SHA256 starts "
                           f"with {prefix}, but it is {digest}. Delete it and download it again.")


def _download(url: str, label: str):
    filename = os.path.basename(urlparse(url).path)
    prefix = published_hash_prefix(filename)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if prefix and cached.is_file():  # torch.hub checks only what it downloads itself
        check_file_hash(cached, prefix, label)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, progress=False,
                                                  check_hash=prefix is not None)
    except pickle.UnpicklingError as err:
        raise WeightsError(_unsafe_message(label, err)) from err
    except OSError as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(f"{label}: could not fetch {url} ({err}). Without network access, place the file "
                           f"in {cache} (torch.hub's cache; set TORCH_HOME to move it).") from err
    except RuntimeError as err:
        if "invalid hash value" in str(err):
            raise WeightsError(f"{label}: the download of {filename} from {url} is corrupt or not the published "
                               f"file: its name says its SHA256 starts with {prefix} ({err}); nothing was "
                               f"saved.") from err
        raise WeightsError(f"{cached}: not a readable PyTorch weights file ({err})") from err


def _read_file(path: Path):
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(_unsafe_message(str(path), err)) from err
    except Exception as err:  # noqa: BLE001  (random bytes fail anywhere in the unpickler: any of them is unreadable)
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(err).__name__}: {err})") from err


def _unsafe_message(label: str, err: Exception) -> str:
    return (f"{label}: refused to load: the file holds Python objects other than tensors and plain "
            f"containers, and unpickling them could run code. Re-save only the state_dict "
            f"(torch.save(model.state_dict(), path)) or use safetensors. Detail: {str(err).splitlines()[0]}")


def _unwrap(raw, label: str, strip_backbone: bool = True) -> dict[str, torch.Tensor]:
    if isinstance(raw, Mapping):
        for key in _WRAPPER_KEYS:
            if key in raw and isinstance(raw[key], Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{label}: expected a state_dict (a mapping of names to tensors)")
    state = dict(raw)
    # A densecnn task checkpoint stores the backbone under "backbone."; DDP wrappers add "module.".
    for prefix in ("module.", "backbone.") if strip_backbone else ("module.",):
        if state and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_weights(model: nn.Module, source: str | os.PathLike, *, strict: bool = True,
                 whole_task: bool = False) -> nn.Module:
    """Load ``source`` into ``model`` (see the module docstring for what ``source`` may be).

    The classifier's weights are dropped, with a message, when their shape differs (weights trained for
    another number of classes): that is the ordinary fine-tuning case; a model built with ``num_classes=0``
    (a feature extractor) ignores them. Any other shape mismatch is an error,
    and so are missing or unexpected keys unless ``strict=False``, where they are reported by name.
    ``whole_task``: ``model`` is a task and ``source`` a checkpoint of the same task (all its weights).
    """
    state = read_state_dict(source, whole_task=whole_task)
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state)
    own = model.state_dict()
    classifier = getattr(model, "classifier_name", None)
    if classifier and getattr(model, "num_classes", None) == 0:
        # built as a feature extractor (num_classes=0): the file's classifier has nowhere to go
        state = {k: v for k, v in state.items() if not (k.startswith(classifier + ".") and k not in own)}
    dropped, mismatched = [], []
    for key in list(state):
        if key in own and own[key].shape != state[key].shape:
            if classifier and key.startswith(classifier + "."):
                dropped.append(key)
            else:
                mismatched.append(f"{key}: file {tuple(state[key].shape)} vs model {tuple(own[key].shape)}")
            del state[key]
    if mismatched:
        hint = getattr(model, "weights_mismatch_hint", None)  # a backbone may say why (C3D: fc6 and the clip size)
        raise WeightsError(f"{source}: shapes do not match this {type(model).__name__}: " + "; ".join(mismatched[:10])
                           + (f" (and {len(mismatched) - 10} more)" if len(mismatched) > 10 else "")
                           + (hint(mismatched) if callable(hint) else ""))
    if dropped:
        warnings.warn(f"{source}: classifier weights {', '.join(dropped)} were trained for another number of "
                      f"classes; they are dropped and the classifier keeps its fresh initialisation.", stacklevel=2)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in dropped]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        message = (f"{source}: keys do not match {type(model).__name__}"
                   + (f"; missing in the file: {_names(missing)}" if missing else "")
                   + (f"; unexpected in the file: {_names(unexpected)}" if unexpected else ""))
        if strict:
            raise WeightsError(message + " (pass strict=False to load the matching part)")
        warnings.warn(message, stacklevel=2)
    return model


def _names(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
