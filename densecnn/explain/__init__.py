"""What a trained network learned (issue 14): filters, top activations with deconvnet projections, layer
statistics, attributions through captum, activation maximisation and fooling images. Plain PyTorch on any
registered backbone (the feature contract of ``densecnn.backbones.base``) and on any task's model; no Lightning.
"""
from .attribution import (
                      METHODS,
                      attribute,
                      attribution_figure,
                      frame_strip_figure,
                      heat_map,
                      layer_attribution,
)
from .deconvnet import (
                      deconv_projection,
                      deconv_projections,
                      zeiler_fergus_figures,
                      zeiler_fergus_grid,
)
from .filters import (
                      filter_picture,
                      kernel_tiles,
                      towers,
                      weight_statistics,
                      weight_statistics_picture,
)
from .fooling import (
                      Adversarial,
                      FoolingImage,
                      adversarial_picture,
                      fooling_image,
                      fooling_images,
                      fooling_picture,
                      targeted_adversarial,
)
from .layer_stats import layer_response_std, response_std_picture
from .maximise import (
                      Maximisation,
                      Regularisers,
                      maximisation_picture,
                      maximise,
                      maximise_channel,
                      maximise_class,
)
from .pictures import (
                      figure_to_array,
                      heatmap_overlay,
                      labelled_grid,
                      new_figure,
                      normalise_tile,
                      save_figure,
)
from .receptive_field import ReceptiveField, receptive_field, receptive_fields
from .topk import TopActivations, gather_images, top_activations

__all__ = [
                      "METHODS",
                      "Adversarial",
                      "FoolingImage",
                      "Maximisation",
                      "ReceptiveField",
                      "Regularisers",
                      "TopActivations",
                      "adversarial_picture",
                      "attribute",
                      "attribution_figure",
                      "deconv_projection",
                      "deconv_projections",
                      "figure_to_array",
                      "filter_picture",
                      "fooling_image",
                      "fooling_images",
                      "fooling_picture",
                      "frame_strip_figure",
                      "gather_images",
                      "heat_map",
                      "heatmap_overlay",
                      "kernel_tiles",
                      "labelled_grid",
                      "layer_attribution",
                      "layer_response_std",
                      "maximisation_picture",
                      "maximise",
                      "maximise_channel",
                      "maximise_class",
                      "new_figure",
                      "normalise_tile",
                      "receptive_field",
                      "receptive_fields",
                      "response_std_picture",
                      "save_figure",
                      "targeted_adversarial",
                      "top_activations",
                      "towers",
                      "weight_statistics",
                      "weight_statistics_picture",
                      "zeiler_fergus_figures",
                      "zeiler_fergus_grid",
]
