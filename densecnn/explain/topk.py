"""The k strongest activations of every channel of chosen layers over a dataset, in one streamed pass.

Zeiler & Fergus (S0 L1212-1249, S3 L1746-1860) run the validation set through the net and keep, per feature
map, the images that excite it most. Here each image contributes its maximum over positions to each channel
(so the top k of a channel are k different images, as in their figures); a running top-k per channel is
merged with every batch, so memory is k x channels per layer whatever the dataset's size. Each entry keeps
the value, the image id (its position in the loader's order: the dataset index for an unshuffled loader) and
the unit's position in the map, from which ``receptive_field`` gives the image patch.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from .receptive_field import layer_name


@dataclass
class TopActivations:
    """One layer's top k per channel, strongest first: ``values`` (C, k), ``image_ids`` (C, k) and
    ``positions`` (C, k, spatial dims: (y, x) for images). Fewer than k images seen leaves -inf values and
    id -1."""

    layer: str
    values: torch.Tensor
    image_ids: torch.Tensor
    positions: torch.Tensor
    input_size: tuple[int, ...] = ()

    @property
    def channels(self) -> int:
        return self.values.shape[0]

    def entries(self, channel: int) -> list[tuple[float, int, tuple[int, ...]]]:
        """``(value, image id, position)`` for each of the channel's stored activations, strongest first."""
        return [(float(v), int(i), tuple(int(p) for p in pos))
                for v, i, pos in zip(self.values[channel], self.image_ids[channel], self.positions[channel])
                if int(i) >= 0]


def batch_images(batch) -> torch.Tensor:
    """The input tensor of a batch as loaders yield it: a tensor, ``(images, targets)``, a list of same-size
    images (the detection loaders), or a dict with ``image``/``images``/``video``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        for key in ("image", "images", "video", "input"):
            if key in batch:
                return batch_images(batch[key])
        raise UserError(f"a batch dict needs an 'image', 'images' or 'video' entry; it has {sorted(batch)}")
    if isinstance(batch, (tuple, list)) and batch:
        if all(isinstance(b, torch.Tensor) and b.dim() == 3 for b in batch):  # a list of CxHxW images
            if len({tuple(b.shape) for b in batch}) != 1:
                raise UserError("the batch's images differ in size; resize them to one size to compare activations")
            return torch.stack(list(batch))
        return batch_images(batch[0])
    raise UserError(f"cannot find the images in a batch of type {type(batch).__name__}")


@contextmanager
def capture_outputs(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that keep each layer's output of the latest forward pass (a layer that runs twice in one
    pass is read at its last call, as ``receptive_field`` reads it)."""
    outputs: dict[str, torch.Tensor] = {}

    def hook(name):
        def store(module, args, output):
            outputs[name] = (output[0] if isinstance(output, (tuple, list)) else output).detach()
        return store

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in layers]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def _per_image_max(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, *spatial) -> each image's max per channel (B, C) and its position (B, C, spatial dims)."""
    spatial = output.shape[2:]
    values, flat = output.flatten(2).max(dim=2) if spatial else (output, torch.zeros_like(output, dtype=torch.long))
    positions = torch.stack(torch.unravel_index(flat, tuple(spatial)), dim=-1) if spatial else \
        flat.new_zeros(*flat.shape, 0)
    return values.float(), positions


class _RunningTopK:
    def __init__(self, channels: int, k: int, ndim: int):
        self.values = torch.full((channels, k), float("-inf"))
        self.ids = torch.full((channels, k), -1, dtype=torch.long)
        self.positions = torch.zeros((channels, k, ndim), dtype=torch.long)

    def update(self, values: torch.Tensor, positions: torch.Tensor, first_id: int) -> None:
        """Merge a batch's per-image maxima (B, C) into the running top k of each channel."""
        b, c = values.shape
        ids = torch.arange(first_id, first_id + b).unsqueeze(1).expand(b, c).t()
        all_values = torch.cat([self.values, values.t().cpu()], dim=1)
        all_ids = torch.cat([self.ids, ids], dim=1)
        all_pos = torch.cat([self.positions, positions.transpose(0, 1).cpu()], dim=1)
        k = self.values.shape[1]
        # stable: among equal values the earlier image wins, so the result does not depend on batch size
        order = torch.sort(all_values, dim=1, descending=True, stable=True).indices[:, :k]
        self.values = all_values.gather(1, order)
        self.ids = all_ids.gather(1, order)
        self.positions = all_pos.gather(1, order.unsqueeze(-1).expand(-1, -1, all_pos.shape[-1]))


def top_activations(model: nn.Module, loader: Iterable, layers: Sequence[str | int], k: int = 9, *,
                    device: str | torch.device | None = None, max_images: int | None = None,
                    progress: bool = True) -> dict[str, TopActivations]:
    """The ``k`` strongest activations per channel of each of ``layers`` (module paths or ``feature_info``
    indices) over ``loader``, in one pass with no gradients. Returns ``{module path: TopActivations}``."""
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    names = [layer_name(model, layer) for layer in layers]
    if not names:
        raise UserError("top_activations: name at least one layer")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    running: dict[str, _RunningTopK] = {}
    seen = 0
    input_size: tuple[int, ...] = ()
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        with capture_outputs(model, names) as outputs, torch.no_grad():
            for batch in tqdm(loader, total=total, desc="top activations", disable=not progress, leave=False):
                images = batch_images(batch)
                if max_images is not None:
                    images = images[: max(0, max_images - seen)]
                if not len(images):
                    break
                input_size = tuple(images.shape[2:])
                outputs.clear()
                model(images.to(device))
                for name in names:
                    if name not in outputs:
                        raise UserError(f"layer {name!r} did not run in {type(model).__name__}'s forward pass")
                    values, positions = _per_image_max(outputs[name])
                    if name not in running:
                        running[name] = _RunningTopK(values.shape[1], k, positions.shape[-1])
                    running[name].update(values, positions, seen)
                seen += len(images)
    finally:
        model.train(was_training)
    if not seen:
        raise UserError("top_activations: the loader gave no images")
    return {name: TopActivations(name, r.values, r.ids, r.positions, input_size) for name, r in running.items()}


def gather_images(loader: Iterable, image_ids: Iterable[int], *, progress: bool = True) -> dict[int, torch.Tensor]:
    """The images with these ids (positions in the loader's order, as ``top_activations`` numbers them), in a
    second pass that stops once all are found."""
    wanted = {int(i) for i in image_ids if int(i) >= 0}
    found: dict[int, torch.Tensor] = {}
    seen = 0
    for batch in tqdm(loader, desc="gathering images", disable=not progress, leave=False):
        images = batch_images(batch)
        for j in range(len(images)):
            if seen + j in wanted:
                found[seen + j] = images[j].detach().cpu()
        seen += len(images)
        if len(found) == len(wanted):
            break
    missing = wanted - set(found)
    if missing:
        raise UserError(f"image ids {sorted(missing)[:5]} are past the loader's {seen} images: was it shuffled "
                        f"or shortened since the top activations were computed?")
    return found
