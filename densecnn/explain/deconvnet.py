"""Zeiler & Fergus's deconvnet projections of top activations, and their grid picture (ECCV 2014 Sec. 2.1;
S0 L1212-1249, S3 L1746-1860).

A unit's activation is projected back to pixels by captum's ``NeuronDeconvolution``: the backward pass with
each ReLU applied to the backward signal (the deconvnet's rectification), transposed filters (a convolution's
backward), and max-pooling's backward routing the signal to the position that won the forward pass (the
"switches" of their unpooling). Each projection is shown beside the image patch the unit sees, cut out by its
receptive field (``densecnn.explain.receptive_field``). LRN is passed through by its gradient, where the
paper's deconvnet skips it.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from captum.attr import NeuronDeconvolution
from matplotlib.figure import Figure
from torch import nn

from ..errors import UserError
from .pictures import labelled_grid, save_figure
from .receptive_field import ReceptiveField, layer_name, receptive_field
from .topk import TopActivations, gather_images, top_activations


def deconv_projections(model: nn.Module, layer: str | int, images: torch.Tensor, channel: int,
                       positions: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    """The deconvnet projection to pixels of unit ``(channel, *positions[i])`` of ``layer`` for each image
    ``images[i]`` (one batched backward pass). Returns a tensor shaped like ``images``."""
    name = layer_name(model, layer)
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(len(images), -1)
    device = next(model.parameters()).device
    rows = torch.arange(len(images), device=device)
    index = positions.to(device).t()

    def unit(output: torch.Tensor) -> torch.Tensor:  # captum: one neuron per example, chosen per example
        return output[(rows, torch.full_like(rows, channel), *index)]

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # captum announces that it sets requires_grad and ReLU hooks: expected
            warnings.filterwarnings("ignore", message=".*(required_grads has been set|backward hooks on ReLU).*")
            projection = NeuronDeconvolution(model, model.get_submodule(name)).attribute(
                images.to(device), neuron_selector=unit)
    finally:
        model.train(was_training)
    return projection.detach().cpu()


def deconv_projection(model: nn.Module, layer: str | int, image: torch.Tensor, channel: int,
                      position: Sequence[int]) -> torch.Tensor:
    """One image's (C x H x W) projection of unit ``(channel, *position)`` of ``layer``."""
    return deconv_projections(model, layer, image.unsqueeze(0), channel, [list(position)])[0]


def crop(image: torch.Tensor, field: ReceptiveField, position: Sequence[int]) -> torch.Tensor:
    """The part of ``image`` (C x *spatial) the unit at ``position`` sees, clipped to the image."""
    spans = field.box(*position, input_size=tuple(image.shape[1:]))
    return image[(slice(None), *(slice(lo, hi) for lo, hi in spans))]


def _displayable(image: torch.Tensor, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> torch.Tensor:
    """The image's pixels in [0, 1]: the input normalisation undone when its ``mean``/``std`` are known (the
    colours the data had), else the whole image min-max scaled before cropping (every patch keeps the image's
    own contrast; one scale for all channels shifts colours when they were normalised differently)."""
    image = image.float()
    if mean is not None and std is not None:
        shape = (-1,) + (1,) * (image.dim() - 1)
        return (image * torch.tensor(list(std)).view(shape) + torch.tensor(list(mean)).view(shape)).clamp(0, 1)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else torch.full_like(image, 0.5)


def zeiler_fergus_grid(model: nn.Module, top: TopActivations, images: dict[int, torch.Tensor], *,
                       channels: int | Sequence[int] = 8, k: int | None = None,
                       field: ReceptiveField | None = None, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> Figure:
    """Zeiler & Fergus's picture for one layer: one row per channel (the first ``channels``, or those listed),
    its top ``k`` deconvnet projections then the ``k`` image patches, labelled with layer, channel and
    activation. ``images``: the images by id (``gather_images``), as the model takes them; ``mean``/``std``:
    their input normalisation, undone to show the patches in their own colours (else each image is min-max
    scaled)."""
    chosen = list(range(min(channels, top.channels))) if isinstance(channels, int) else list(channels)
    bad = [c for c in chosen if not 0 <= c < top.channels]
    if bad:
        raise UserError(f"channels {bad} are not channels of {top.layer} (it has {top.channels})")
    k = k or top.values.shape[1]
    if field is None:  # an example input lets models torch.fx cannot trace be read layer by layer
        example = next(iter(images.values()))[None].to(next(model.parameters()).device)
        field = receptive_field(model, top.layer, spatial_dims=top.positions.shape[-1], example=example)
    tiles, labels, row_labels = [], [], []
    for c in chosen:
        entries = top.entries(c)[:k]
        if not entries:
            continue
        batch = torch.stack([images[i] for _, i, _ in entries])
        projections = deconv_projections(model, top.layer, batch, c, [pos for _, _, pos in entries])
        row = [None] * (2 * k)
        row_text = [""] * (2 * k)
        for j, ((value, image_id, pos), projection) in enumerate(zip(entries, projections)):
            row[j] = crop(projection, field, pos)
            row_text[j] = f"act {value:.3g}"
            row[k + j] = crop(_displayable(images[image_id], mean, std), field, pos)
            row_text[k + j] = f"image {image_id}"
        blank = torch.zeros(1, 1, 1)
        tiles += [t if t is not None else blank for t in row]
        labels += row_text
        row_labels.append(f"{top.layer} ch{c}")
    if not tiles:
        raise UserError(f"no stored activations for the chosen channels of {top.layer}")
    return labelled_grid(tiles, labels, columns=2 * k, row_labels=row_labels,
                         title=f"{top.layer}: top-{k} deconvnet projections (left) and image patches (right)")


def zeiler_fergus_figures(model: nn.Module, loader: Iterable, layers: Sequence[str | int], out_dir: str | Path, *,
                          k: int = 9, channels: int | Sequence[int] = 8, progress: bool = True,
                          max_images: int | None = None) -> list[Path]:
    """The whole procedure: top-``k`` activations per channel of ``layers`` over ``loader`` (one pass), the
    images they come from (a second pass), and one picture per layer, ``deconv_<layer>.png`` in ``out_dir``."""
    top = top_activations(model, loader, layers, k, progress=progress, max_images=max_images)
    wanted = {int(i) for t in top.values() for i in t.image_ids.flatten()}
    images = gather_images(loader, wanted, progress=progress)
    images = {i: torch.as_tensor(im) for i, im in images.items()}
    paths = []
    for name, t in top.items():
        fig = zeiler_fergus_grid(model, t, images, channels=channels, k=k)
        paths.append(save_figure(fig, Path(out_dir) / f"deconv_{name.replace('.', '_')}.png"))
    return paths
