"""Activation maximisation and fooling images (issue 14) on a small classifier trained here in about a second on
synthetic "bright quadrant" images, and on registered backbones through the feature contract.

Oracles: probabilities recomputed with an independent forward pass and hand normalisation; FGSM's one-step
formula (Goodfellow et al.); the closed form of L2 decay; the feature contract's own maps."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densecnn import create_backbone
from densecnn.errors import UserError
from densecnn.explain.fooling import (
    adversarial_picture,
    fooling_image,
    fooling_picture,
    targeted_adversarial,
)
from densecnn.explain.maximise import (
    Regularisers,
    ascend,
    maximisation_picture,
    maximise,
    maximise_channel,
    maximise_class,
    start_image,
    total_variation,
)
from densecnn.explain.pictures import save_figure

MEAN, STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)
SIZE = 16


def by_hand(x: torch.Tensor) -> torch.Tensor:
    """The normalisation the data pipeline applies, written out independently of densecnn.explain."""
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def probabilities(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.softmax(model(by_hand(pixels if pixels.ndim == 4 else pixels[None])), dim=1)


def quadrant_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy grey images; class k has its k-th quadrant (row-major) brighter by 0.15."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = 0.45 + 0.2 * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    half = SIZE // 2
    for i, k in enumerate(labels.tolist()):
        r, c = divmod(k, 2)
        images[i, :, r * half:(r + 1) * half, c * half:(c + 1) * half] += 0.15
    return images.clamp(0, 1), labels


@pytest.fixture(scope="module")
def classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A two-conv classifier trained for 150 Adam steps (under a second), and held-out images it gets right."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(64, 4))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        images, labels = quadrant_images(64, generator)
        loss = F.cross_entropy(model(by_hand(images)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    images, labels = quadrant_images(64, generator)
    predicted = probabilities(model, images).argmax(1)
    assert (predicted == labels).float().mean() > 0.95  # far above chance (0.25): the model learned the task
    right = predicted == labels
    return model, images[right][:8], labels[right][:8]


# ------------------------------------------------------------------------------------- activation maximisation


def test_class_maximisation_takes_each_class_from_chance_to_certainty(classifier):
    model, _, _ = classifier
    start = start_image((1, 3, SIZE, SIZE), torch.Generator().manual_seed(0), torch.device("cpu"))
    start_probs = probabilities(model, start)[0]
    # the grey start already looks like one class to the model; every other class starts near or below chance
    assert int((start_probs < 0.25).sum()) >= 3
    for k in range(4):
        result = maximise_class(model, k, image_size=SIZE, steps=100, mean=MEAN, std=STD, seed=0)
        assert result.image.shape == (3, SIZE, SIZE)
        assert 0.0 <= float(result.image.min()) and float(result.image.max()) <= 1.0  # the stated pixel range
        recomputed = probabilities(model, result.image)[0, k]
        assert result.probability == pytest.approx(float(recomputed), abs=1e-5)
        assert result.probability > 0.9, (k, start_probs, result.probability)
        assert len(result.trajectory) == result.steps == 100
        assert result.trajectory[-1] > result.trajectory[0] + 5  # the logit climbed substantially
        # the objective reported for the final image is its class logit, with no jitter
        with torch.no_grad():
            logit = model(by_hand(result.image[None]))[0, k]
        assert result.objective == pytest.approx(float(logit), rel=1e-5)


def test_maximisation_is_seeded_and_decorrelated_colour_works(classifier):
    model, _, _ = classifier
    options = {"image_size": SIZE, "steps": 30, "mean": MEAN, "std": STD}
    a = maximise_class(model, 2, seed=3, **options)
    b = maximise_class(model, 2, seed=3, **options)
    c = maximise_class(model, 2, seed=4, **options)
    assert torch.equal(a.image, b.image) and a.trajectory == b.trajectory
    assert not torch.equal(a.image, c.image)
    decorrelated = maximise_class(model, 1, regularisers=Regularisers(decorrelate=True, tv_weight=0.1),
                                  steps=100, **{k: v for k, v in options.items() if k != "steps"})
    assert decorrelated.probability > 0.9
    assert 0.0 < float(decorrelated.image.min()) and float(decorrelated.image.max()) < 1.0  # inside the sigmoid


def test_l2_decay_and_total_variation_match_their_formulas():
    start = start_image((1, 3, 8, 8), torch.Generator().manual_seed(1), torch.device("cpu"))
    # a flat objective: Adam's step is exactly zero, so only the decay acts: x_n = 0.5 + (1 - d)^n (x_0 - 0.5)
    decay, n = 0.1, 5
    image, trajectory, taken = ascend(lambda x: (x * 0).flatten(1).sum(1), start, normalise=lambda x: x, steps=n,
                                      lr=0.1, regularisers=Regularisers(jitter=0, l2_decay=decay, blur_every=0,
                                                                        blur_sigma=0.0),
                                      generator=torch.Generator().manual_seed(0))
    assert taken == n and trajectory == [0.0] * n
    torch.testing.assert_close(image, 0.5 + (1 - decay) ** n * (start - 0.5))
    x = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    # vertical |1-0| + |1-1| over 2 pairs = 0.5; horizontal |1-0| + |1-1| over 2 pairs = 0.5
    assert float(total_variation(x)[0]) == pytest.approx(1.0)


@pytest.mark.parametrize("name, channels, size, index, module", [
    ("cifar_resnet20", 3, 32, 2, "layer2"),
    ("lenet5", 1, 32, 1, None),  # its map 1 is tanh(s4(...)): no module outputs it, so no name to compare
    pytest.param("vgg11", 3, 32, 2, "features.9", marks=pytest.mark.slow),
    pytest.param("alexnet", 3, 67, 1, "features.5", marks=pytest.mark.slow),
    pytest.param("googlenet", 3, 64, 2, "inception3b", marks=pytest.mark.slow),
    pytest.param("timm:resnet18", 3, 32, 2, "body.layer2", marks=pytest.mark.slow),  # timm names the body's layer
])
def test_channel_maximisation_through_the_feature_contract(name, channels, size, index, module):
    torch.manual_seed(0)
    backbone = create_backbone(name, num_classes=5)
    mean, std = (0.5,) * channels, (0.25,) * channels
    # no jitter: an untrained net's channel prefers one pixel phase (AlexNet's stride-4 conv1), which rolling the
    # image breaks; jitter is for trained nets, whose features are near shift-invariant
    options = {"image_size": size, "steps": 40, "lr": 0.05, "mean": mean, "std": std, "seed": 0,
                   "regularisers": Regularisers(jitter=0)}
    by_index = maximise_channel(backbone, index, 3, **options)
    if module is not None:
        assert module in (backbone.feature_info[index].module, f"body.{backbone.feature_info[index].module}")
        by_name = maximise_channel(backbone, module, 3, **options)
        # the index reads the contract's map, the name a forward hook on the layer producing it: the same numbers
        assert by_index.trajectory == pytest.approx(by_name.trajectory, rel=1e-4, abs=1e-6)
    assert backbone.training  # the run put the model in eval mode and back
    backbone.eval()
    with torch.no_grad():
        maps = backbone.forward_features((by_index.image[None] - 0.5) / 0.25)
    assert by_index.objective == pytest.approx(float(maps[index][0, 3].mean()), rel=1e-4, abs=1e-6)
    assert by_index.objective > by_index.trajectory[0] + 0.25 * abs(by_index.trajectory[0]) + 0.05
    assert 0.0 <= float(by_index.image.min()) and float(by_index.image.max()) <= 1.0
    assert all(p.grad is None for p in backbone.parameters())  # only the input was differentiated


# --------------------------------------------------------------------------------------------- fooling images


def test_targeted_pgd_flips_each_correct_image_within_the_budget(classifier):
    model, images, labels = classifier
    targets = [(int(y) + 2) % 4 for y in labels]  # the opposite quadrant
    epsilon = 0.1
    results = targeted_adversarial(model, images, targets, epsilon=epsilon, steps=40, mean=MEAN, std=STD)
    for result, image, label, target in zip(results, images, labels, targets):
        assert result.original_label == int(label)  # it started correctly classified
        assert result.budget <= epsilon + 1e-6
        assert float((result.adversarial - image).abs().max()) <= epsilon + 1e-6
        torch.testing.assert_close(result.delta, result.adversarial - image)
        assert 0.0 <= float(result.adversarial.min()) and float(result.adversarial.max()) <= 1.0
        probs = probabilities(model, result.adversarial)[0]
        assert int(probs.argmax()) == result.predicted == target and result.success
        assert result.confidence == pytest.approx(float(probs[target]), abs=1e-5)
        assert 1 <= result.steps <= 40
    # a smaller ball and near-certainty asked for: the runs that never get there end on the ball's edge, not past it
    small = 0.05
    sure = targeted_adversarial(model, images, targets, epsilon=small, steps=100, min_confidence=0.999,
                                mean=MEAN, std=STD)
    for result in sure:
        assert result.budget <= small + 1e-6
        if result.steps < 100:
            assert result.success and result.target_confidence >= 0.999
        else:
            assert result.budget == pytest.approx(small, abs=1e-6)
    assert any(r.steps == 100 for r in sure)


def test_a_budget_too_small_is_reported_as_a_failure(classifier):
    model, images, labels = classifier
    results = targeted_adversarial(model, images[:4], [(int(y) + 2) % 4 for y in labels[:4]], epsilon=1e-3,
                                   steps=10, mean=MEAN, std=STD)
    for result, label in zip(results, labels[:4]):
        assert result.budget <= 1e-3 + 1e-6
        assert result.predicted == int(label) and not result.success and result.steps == 10


def test_one_step_targeted_pgd_is_fgsm(classifier):
    """Goodfellow et al.'s fast gradient sign step, towards the target: x - eps * sign(grad_x CE(f(x), t))."""
    model, images, labels = classifier
    # targets other than each image's label: the attack takes its one step (a reached target takes none)
    x, target, epsilon = images[:3].clone().requires_grad_(True), (labels[:3] + 1) % 4, 0.03
    (grad,) = torch.autograd.grad(F.cross_entropy(model(by_hand(x)), target, reduction="sum"), [x])
    expected = (x.detach() - epsilon * grad.sign()).clamp(0, 1)
    results = targeted_adversarial(model, images[:3], target.tolist(), epsilon=epsilon, steps=1, step_size=epsilon,
                                   mean=MEAN, std=STD)
    for result, want in zip(results, expected):
        torch.testing.assert_close(result.adversarial, want, atol=1e-6, rtol=0)


def test_fooling_images_from_noise_reach_99_percent(classifier):
    model, _, _ = classifier
    noise = start_image((1, 3, SIZE, SIZE), torch.Generator().manual_seed(0), torch.device("cpu"), uniform=True)
    start = probabilities(model, noise)[0]
    targets = [k for k in range(4) if start[k] < 0.5]
    assert len(targets) >= 2
    for k in targets:
        result = fooling_image(model, k, image_size=SIZE, steps=300, mean=MEAN, std=STD, seed=0)
        probs = probabilities(model, result.image)[0]
        assert result.reached and result.predicted == k
        assert float(probs[k]) >= 0.99 and result.target_confidence == pytest.approx(float(probs[k]), abs=1e-6)
        assert 0.0 <= float(result.image.min()) and float(result.image.max()) <= 1.0
        # unrecognisable: it did not become the class's picture -- the target quadrant is no brighter than the rest
        r, c = divmod(k, 2)
        half = SIZE // 2
        quadrant = result.image[:, r * half:(r + 1) * half, c * half:(c + 1) * half].mean()
        assert float(quadrant - result.image.mean()) < 0.15


# ---------------------------------------------------------------------------------------- pictures and errors


def test_pictures_label_classes_budgets_and_amplify_the_perturbation(classifier, tmp_path):
    model, images, labels = classifier
    names = ["top-left", "top-right", "bottom-left", "bottom-right"]
    results = targeted_adversarial(model, images[:2], [(int(y) + 2) % 4 for y in labels[:2]], epsilon=0.1,
                                   mean=MEAN, std=STD)
    figure = adversarial_picture(results, names)
    assert len([ax for ax in figure.axes if ax.images]) == 6  # two rows of original | perturbation | adversarial
    perturbation = figure.axes[1].images[0].get_array()
    assert float(perturbation.min()) == pytest.approx(0.0, abs=1e-6) or float(perturbation.max()) == pytest.approx(1.0)
    texts = [figure.axes[i].get_xlabel() for i in range(3)]
    assert texts[0].startswith(names[int(labels[0])]) and f"{results[0].budget:.4f}" in texts[1]
    assert texts[2].startswith(names[results[0].predicted])
    assert save_figure(figure, tmp_path / "adversarial.png").stat().st_size > 1000
    maxima = maximise(model, [0, ("3", 2)], image_size=SIZE, steps=20, mean=MEAN, std=STD)
    figure = maximisation_picture(maxima, names)
    assert figure.axes[0].get_xlabel().startswith("top-left (0) p=")
    assert figure.axes[1].get_xlabel().startswith("3 ch 2 act=")
    plt.close(figure)
    fooled = [fooling_image(model, 3, image_size=SIZE, steps=50, mean=MEAN, std=STD)]
    figure = fooling_picture(fooled, names)
    assert figure.axes[0].get_xlabel() == f"bottom-right {fooled[0].confidence:.4f}"
    plt.close(figure)


def test_user_mistakes_name_what_is_wrong(classifier):
    model, images, _ = classifier
    with pytest.raises(UserError, match=r"pixels in \[0, 1\]"):
        targeted_adversarial(model, by_hand(images[:1]), 1, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="class 7 is not one of the model's 4 classes"):
        targeted_adversarial(model, images[:1], 7, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="epsilon"):
        targeted_adversarial(model, images[:1], 1, epsilon=0, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="class 4 is not"):
        maximise_class(model, 4, image_size=SIZE, steps=1, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="channel 99 is not one of the 16 channels"):
        maximise_channel(model, "3", 99, image_size=SIZE, steps=1, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="needs a densecnn backbone"):
        maximise_channel(model, 1, 0, image_size=SIZE, steps=1, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="no module named 'layer9'"):
        maximise_channel(create_backbone("cifar_resnet20", num_classes=3), "layer9", 0, steps=1)
    with pytest.raises(UserError, match="4 feature maps"):
        maximise_channel(create_backbone("cifar_resnet20", num_classes=3), 7, 0, steps=1)
    with pytest.raises(UserError, match="l2_decay"):
        maximise_class(model, 0, image_size=SIZE, steps=1, mean=MEAN, std=STD, regularisers=Regularisers(l2_decay=1))


def test_a_task_is_a_model_with_its_own_normalisation():
    """The notebook path: a loaded task is passed as is; a feature-map index reaches its backbone."""
    from tasks import ClassificationTask

    task = ClassificationTask(backbone="cifar_resnet20", num_classes=4)
    mean, std = task.normalisation()
    options = {"image_size": 32, "steps": 5, "mean": mean, "std": std, "regularisers": Regularisers(jitter=0)}
    through_task = maximise_channel(task, 2, 3, **options)
    through_backbone = maximise_channel(task.backbone, 2, 3, **options)
    assert through_task.trajectory == through_backbone.trajectory
    assert torch.equal(through_task.image, through_backbone.image)
