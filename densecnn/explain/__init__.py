"""What a trained network learned (issue 14): filters, top activations with deconvnet projections, layer
statistics, attributions through captum, activation maximisation and fooling images. Plain PyTorch on any
registered backbone (the feature contract of ``densecnn.backbones.base``) and on any task's model; no Lightning.
"""
from .deconvnet import deconv_projection, deconv_projections, zeiler_fergus_figures, zeiler_fergus_grid
from .filters import filter_picture, kernel_tiles, towers, weight_statistics, weight_statistics_picture
from .layer_stats import layer_response_std, response_std_picture
from .pictures import figure_to_array, heatmap_overlay, labelled_grid, new_figure, normalise_tile, save_figure
from .receptive_field import ReceptiveField, receptive_field, receptive_fields
from .topk import TopActivations, gather_images, top_activations

__all__ = ["ReceptiveField", "TopActivations", "deconv_projection", "deconv_projections", "figure_to_array",
           "filter_picture", "gather_images", "heatmap_overlay", "kernel_tiles", "labelled_grid", "layer_response_std",
           "new_figure", "normalise_tile", "receptive_field", "receptive_fields", "response_std_picture",
           "save_figure", "top_activations", "towers", "weight_statistics", "weight_statistics_picture",
           "zeiler_fergus_figures", "zeiler_fergus_grid"]
