"""``timm:<name>``: any timm model as a densecnn backbone, through timm's ``features_only`` extraction."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import Backbone, FeatureInfo, StagesUnavailable, check_stages, linear_or_identity


# Keys of a timm pretrained config that make timm fetch and load weights itself (timm's _builder.load_pretrained)
_WEIGHT_SOURCE_KEYS = ("file", "url", "hf_hub_id", "hf_hub_filename", "state_dict")


def refuse_weight_sources(model_name: str, kwargs: dict) -> None:
    """timm would read weights named in ``pretrained_cfg``/``pretrained_cfg_overlay`` with its own loader, past
    densecnn's checks: refuse them and point at ``weights:``."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay"):
        cfg = kwargs.get(key)
        if cfg is None or isinstance(cfg, str):  # a string names one of timm's own configurations (a tag)
            continue
        cfg = cfg if isinstance(cfg, dict) else getattr(cfg, "__dict__", {})
        sources = [k for k in _WEIGHT_SOURCE_KEYS if cfg.get(k)]
        if sources:
            raise ConfigError(f"timm:{model_name}: backbone_kwargs.{key} sets {', '.join(sources)}: timm would "
                              f"load that file itself, unchecked. Give the file or URL as the model's "
                              f"'weights:' (create_backbone(weights=...)) instead.")


class TimmBackbone(Backbone):
    """The timm model's feature maps (``body``), then global average pooling and our linear classifier.

    ``pretrained=True`` asks timm for its own weights (network access needed); a local timm checkpoint can
    be given to ``create_backbone(weights=...)`` instead: its keys are mapped onto ``body`` by
    ``adapt_state_dict`` and timm's own classifier is left out. timm's ``checkpoint_path`` argument is
    read the same way (``densecnn.load_weights``: never unpickled, classifier dropped with a message when its
    class count differs); a ``pretrained_cfg``/``pretrained_cfg_overlay`` that points timm at a file or URL
    is refused, since timm would load it itself: give that file as ``weights:`` instead.
    """

    classifier_name = "head"

    def __init__(self, model_name: str, num_classes: int = 1000, in_chans: int = 3, pretrained: bool = False,
                 out_indices: tuple[int, ...] | None = None, **kwargs):
        super().__init__()
        import timm

        checkpoint_path = kwargs.pop("checkpoint_path", None)
        refuse_weight_sources(model_name, kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        try:
            self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True,
                                          in_chans=in_chans, **kwargs)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise ValueError(f"timm:{model_name}: {err}") from err
        self.model_name, self.in_chans = model_name, in_chans
        self.num_classes = num_classes
        self.feature_info = [FeatureInfo(d["num_chs"], d["reduction"], d["module"])
                             for d in self.body.feature_info.get_dicts()]
        self.num_features = self.feature_info[-1].num_chs
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = linear_or_identity(self.num_features, num_classes)
        if checkpoint_path:
            from ..weights import load_weights

            load_weights(self, checkpoint_path)

    def _body_path(self, module: str) -> str:
        """Where timm's ``feature_info`` module (a path in the full model) lives in ``body``: unchanged
        (EfficientNet/MobileNet feature classes), under ``model.`` (FeatureGetterNet, e.g. ViT), or with its
        first-level Sequential flattened, ``stages.0`` -> ``stages_0`` (FeatureListNet)."""
        paths = dict(self.body.named_modules())
        for path in (module, f"model.{module}", module.replace(".", "_", 1)):
            if path in paths:
                return path
        raise ValueError(f"timm:{self.model_name}: feature module {module!r} is not in the features_only model")

    def stage_parameters(self) -> list[list[tuple[str, nn.Parameter]]]:
        """timm's own declaration: ``feature_info`` names the module producing each map, and timm's feature
        extraction assumes modules are registered in the order they run (``FeatureDictNet``'s contract).
        So stage i is every parameter registered after map i-1's module, up to the end of map i's module;
        what comes after the last map (a final norm or head timm did not prune) is in no stage.

        Not for ``FeatureHookNet`` models (Xception, NASNet, PiT): they tap maps *inside* blocks whose
        layers are not registered in the order they run (Xception registers a block's shortcut before its
        stack), so the rule would put parameters in the wrong stage; they say so instead."""
        from timm.models._features import FeatureHookNet

        if isinstance(self.body, FeatureHookNet):
            raise StagesUnavailable(f"timm:{self.model_name} taps its feature maps inside blocks (timm's "
                                      f"FeatureHookNet), so its stages are not declared")
        order = list(dict(self.body.named_modules()))  # pre-order: a module, then its children
        position = {path: i for i, path in enumerate(order)}
        ends = []
        for info in self.feature_info:
            tap = self._body_path(info.module)
            ends.append(max(position[p] for p in order if p == tap or p.startswith(tap + ".")))
        stages: list[list[tuple[str, nn.Parameter]]] = [[] for _ in ends]
        for path, module in self.body.named_modules():
            stage = next((i for i, end in enumerate(ends) if position[path] <= end), None)
            if stage is None:
                continue
            for name, p in module.named_parameters(recurse=False):
                stages[stage].append((".".join(filter(None, ("body", path, name))), p))
        return check_stages(self, stages)

    def stage_modules(self) -> list[list[str]]:
        """Only a ``FeatureListNet`` body (most CNNs) runs its children one after another, so only there is
        a stage a chain of modules (the box head of Faster R-CNN's ``last_stage`` needs one)."""
        from timm.models._features import FeatureListNet

        if not isinstance(self.body, FeatureListNet):
            raise StagesUnavailable(f"timm:{self.model_name} extracts features with {type(self.body).__name__}, "
                                      f"whose stages are not a chain of modules")
        names = list(self.body.keys())
        taps = [names.index(name) for name in self.body.return_layers]
        starts = [0] + [tap + 1 for tap in taps[:-1]]
        return [[f"body.{name}" for name in names[start:tap + 1]] for start, tap in zip(starts, taps)]

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        """timm's maps. A ``FeatureListNet`` body (most CNNs: ResNet, ConvNeXt, RegNet, ...) is a chain of
        modules, run here one after another and stopped after the module producing map ``max_index``. The
        other bodies (EfficientNet/MobileNet feature classes, FeatureGetterNet for ViTs, FeatureHookNet) and a
        body with gradient checkpointing on compute every map, and the ones up to ``max_index`` are returned."""
        from timm.models._features import FeatureListNet

        last = self.feature_index(max_index)
        if not isinstance(self.body, FeatureListNet) or self.body.grad_checkpointing:
            return list(self.body(x))[:last + 1]
        features: list[torch.Tensor] = []
        for name, module in self.body.items():
            x = module(x)
            if name in self.body.return_layers:
                # as timm's FeatureDictNet._collect: a tap that returns several tensors gives their
                # concatenation (``concat``) or the first
                features.append((torch.cat(x, 1) if self.body.concat else x[0]) if isinstance(x, (tuple, list))
                                else x)
                if len(features) > last:
                    break
        return features

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(x), 1))

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a plain timm checkpoint (keys as in ``timm.create_model(name)``) onto ``body.*``, and timm's
        classifier onto ``head``. Other layers ``features_only`` leaves out (heads such as EfficientNet's
        ``conv_head``) are dropped; any other key stays, so a checkpoint of another architecture is still
        reported by name."""
        own = self.state_dict()
        if all(key in own for key in state_dict):
            return state_dict
        import timm

        with torch.device("meta"):  # the full model's key names, without allocating it
            full_model = timm.create_model(self.model_name, in_chans=self.in_chans)
        full = set(full_model.state_dict())
        classifier = (getattr(full_model, "pretrained_cfg", None) or {}).get("classifier")
        mapped = {}
        for key, value in state_dict.items():
            if f"body.{key}" in own:
                mapped[f"body.{key}"] = value
            elif isinstance(classifier, str) and key.startswith(classifier + ".") and key in full:
                # timm's linear classifier on the pooled last map is our head; where its input width differs
                # (a pruned conv_head) or the class count does, load_weights drops it with a message
                mapped["head." + key[len(classifier) + 1:]] = value
            elif key in own or key not in full:
                mapped[key] = value
        return mapped
