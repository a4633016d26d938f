"""Safe loading everywhere: timm's own loading arguments go through densecnn.load_weights or are refused,
downloads are checked against the SHA256 prefix their file names publish (torch.hub's convention, used by
every torchvision weight), every torch.load in the repository passes weights_only=True, and the torch
minimum is one where that is the default."""
from __future__ import annotations

import ast
import hashlib
import os
import re
from pathlib import Path

import pytest
import torch
import torchvision
from packaging.requirements import Requirement
from packaging.version import Version

from densecnn import WeightsError, create_backbone
from densecnn.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[2]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED_MARKER",))


# ---- timm's checkpoint_path / pretrained_cfg_overlay ---------------------------------------------------------
def test_timm_checkpoint_path_is_read_by_load_weights(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", num_classes=10).eval()
    path = tmp_path / "resnet10t.pth"
    torch.save(reference.state_dict(), path)
    # timm's classifier (10 classes) is our head; another class count drops it with load_weights' message
    with pytest.warns(UserWarning, match="head.weight, head.bias were trained for another number of classes"):
        model = create_backbone("timm:resnet10t", num_classes=4, checkpoint_path=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x)[-1], reference.forward_features(x))
    same_classes = create_backbone("timm:resnet10t", num_classes=10, checkpoint_path=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(same_classes(x), reference(x), rtol=1e-4, atol=1e-5)


def test_timm_checkpoint_path_never_unpickles(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _RunsCode()}, path)
    with pytest.raises(WeightsError, match="evil.pth: refused to load"):
        create_backbone("timm:resnet10t", checkpoint_path=str(path))
    assert not (tmp_path / "PWNED_MARKER").exists()


@pytest.mark.parametrize("key, cfg", [("pretrained_cfg_overlay", {"file": "x.pth"}),
                                      ("pretrained_cfg_overlay", {"url": "https://example.com/x.pth"}),
                                      ("pretrained_cfg_overlay", {"hf_hub_id": "someone/net"}),
                                      ("pretrained_cfg", {"file": "x.pth", "num_classes": 1000})])
def test_timm_weight_sources_in_pretrained_cfg_are_refused(key, cfg):
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=rf"backbone_kwargs\.{key} sets .*'weights:'") as info:
        create_backbone("timm:resnet10t", pretrained=True, **{key: cfg})
    assert isinstance(info.value, UserError)


def test_a_timm_overlay_without_a_weight_source_still_works():
    pytest.importorskip("timm")
    model = create_backbone("timm:resnet10t", num_classes=3, pretrained_cfg_overlay={"mean": (0.5, 0.5, 0.5)})
    assert model.body.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


# ---- download hashes -----------------------------------------------------------------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub directory (torch.hub.get_dir() returns it) and a state_dict file to fetch."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture
def lenet_file(tmp_path) -> tuple[Path, str, dict]:
    torch.manual_seed(0)
    state = create_backbone("lenet5").state_dict()
    source = tmp_path / "source" / "lenet.pth"
    source.parent.mkdir()
    torch.save(state, source)
    return source, hashlib.sha256(source.read_bytes()).hexdigest(), state


def _published(source: Path, prefix: str) -> Path:
    named = source.with_name(f"lenet5-{prefix}.pth")
    named.write_bytes(source.read_bytes())
    return named


def test_a_download_with_its_published_hash_loads(hub, lenet_file):
    source, sha, state = lenet_file
    model = create_backbone("lenet5", weights=_published(source, sha[:8]).as_uri())
    torch.testing.assert_close(model.c1.weight, state["c1.weight"])
    assert (hub / f"lenet5-{sha[:8]}.pth").is_file()


def test_a_download_with_a_wrong_hash_is_an_error_naming_the_file(hub, lenet_file):
    source, sha, _ = lenet_file
    wrong = "0" * 8 if not sha.startswith("0" * 8) else "1" * 8
    with pytest.raises(WeightsError, match=rf"lenet5-{wrong}\.pth.*SHA256 starts with {wrong}"):
        create_backbone("lenet5", weights=_published(source, wrong).as_uri())
    assert not (hub / f"lenet5-{wrong}.pth").exists()  # nothing was cached


def test_a_tampered_file_in_the_cache_is_an_error_naming_it(hub, lenet_file):
    source, sha, _ = lenet_file
    url = _published(source, sha[:8]).as_uri()
    create_backbone("lenet5", weights=url)  # cached now
    cached = hub / f"lenet5-{sha[:8]}.pth"
    torch.manual_seed(1)
    torch.save(create_backbone("lenet5").state_dict(), cached)  # another network's weights under the same name
    with pytest.raises(WeightsError, match=rf"{cached.name} is corrupt or not the published file.*{sha[:8]}"):
        create_backbone("lenet5", weights=url)


def test_a_named_torchvision_weight_is_checked_in_a_prefilled_cache(hub):
    # torchvision's GoogLeNet file name carries its hash (googlenet-1378be20.pth); any other content is refused
    url = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.url
    name = os.path.basename(url)
    hub.mkdir(parents=True)
    torch.save(torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict(), hub / name)
    with pytest.raises(WeightsError, match=rf"torchvision:GoogLeNet_Weights.IMAGENET1K_V1: .*{name} is corrupt"):
        create_backbone("googlenet_torchvision", weights="torchvision:GoogLeNet_Weights.IMAGENET1K_V1")


def test_a_name_without_a_published_hash_is_not_checked(hub, lenet_file):
    source, _, state = lenet_file
    model = create_backbone("lenet5", weights=source.as_uri())  # lenet.pth: no hash in the name
    torch.testing.assert_close(model.c1.weight, state["c1.weight"])


def test_every_torchvision_weight_publishes_its_hash_where_torch_hub_finds_one():
    from torchvision.models import get_model_weights, list_models

    from densecnn.weights import published_hash_prefix

    urls = [w.url for m in list_models() for w in get_model_weights(m)]
    checked = [u for u in urls if published_hash_prefix(os.path.basename(u))]
    # the four quantized files name their hash after an underscore, which torch.hub's pattern does not read
    assert len(urls) - len(checked) <= 4 and len(checked) > 150
    assert published_hash_prefix("resnet50-11ad3fa6.pth") == "11ad3fa6"
    assert published_hash_prefix("model-v2.pth") is None and published_hash_prefix("net-abc.pth") is None


# ---- weights_only everywhere, and a torch that defaults to it ----------------------------------------------------
def _torch_load_calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def test_every_torch_load_in_the_repository_passes_weights_only_true():
    files = [p for top in ("densecnn", "tasks", "tests", "benchmarks", "docs", "configs") if (ROOT / top).exists()
             for p in (ROOT / top).rglob("*.py")]
    calls, unsafe = 0, []
    for path in files:
        for call in _torch_load_calls(path):
            calls += 1
            keyword = next((k for k in call.keywords if k.arg == "weights_only"), None)
            if not (keyword and isinstance(keyword.value, ast.Constant) and keyword.value.value is True):
                unsafe.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert calls > 10 and unsafe == []


def test_the_torch_minimum_defaults_to_weights_only():
    # the quoted requirement strings of pyproject.toml (no TOML parser on Python 3.10, which is supported)
    quoted = re.findall(r'"([A-Za-z0-9_.\-\[\]]+\s*[<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text())
    torch_req = next(Requirement(d) for d in quoted if Requirement(d).name == "torch")
    minimum = min(Version(s.version) for s in torch_req.specifier if s.operator in (">=", "=="))
    assert minimum >= Version("2.6")  # torch 2.6 made weights_only=True torch.load's default
    assert not torch_req.specifier.contains("2.5.1")
