"""The modern recipes' losses and batch mixing, pinned against their definitions and timm."""

import pytest
import torch
import torch.nn.functional as F

from resdet.models.classifier import BatchMix, Classifier, ClsLoss, classification_loss


def test_label_smoothing_targets_are_one_minus_eps_plus_eps_over_k():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    eps = 0.1
    target = F.one_hot(labels, 5) * (1 - eps) + eps / 5
    expected = -(target * logits.log_softmax(1)).sum(1).mean()
    got = classification_loss(logits, labels, ClsLoss(label_smoothing=eps))
    assert torch.allclose(got, expected)


@pytest.mark.parametrize(("smoothing", "thresh"), [(0.0, 0.0), (0.1, 0.0), (0.1, 0.2)])
def test_bce_is_timms_binary_cross_entropy(smoothing, thresh):
    from timm.loss import BinaryCrossEntropy

    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    reference = BinaryCrossEntropy(smoothing=smoothing, target_threshold=thresh or None)
    loss = ClsLoss(kind="bce", label_smoothing=smoothing, bce_target_thresh=thresh)
    assert torch.allclose(classification_loss(logits, labels, loss), reference(logits, labels))


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 4)  # Classifier reads the class count from fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _classifier(mix: BatchMix) -> Classifier:
    return Classifier(TinyNet(), mix=mix).train()


def test_mixup_mixes_images_and_labels_with_one_lambda():
    model = _classifier(BatchMix(mixup_alpha=0.2))
    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, targets = model._mixed(images, labels)
    lam = float(targets[0, 0])  # image 0 mixes with image 3 (torchvision rolls the batch by 1)
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-6)
    onehot = F.one_hot(labels, 4).float()
    assert torch.allclose(targets, lam * onehot + (1 - lam) * onehot.roll(1, 0))


def test_cutmix_weighs_labels_by_the_pasted_area():
    model = _classifier(BatchMix(cutmix_alpha=1.0))
    for seed in range(5):
        torch.manual_seed(seed)
        images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
        mixed, targets = model._mixed(images, labels)
        pasted = (mixed != images).any(1).float().mean(dim=(1, 2))  # fraction from the roll
        assert torch.allclose(targets[:, :4].diagonal(), 1 - pasted)


def test_mixing_probability_and_switch():
    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    never = _classifier(BatchMix(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.0))
    mixed, targets = never._mixed(images, labels)
    assert torch.equal(mixed, images) and torch.equal(targets, F.one_hot(labels, 4).float())
    both = _classifier(BatchMix(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=1.0))
    mixed, _ = both._mixed(images, labels)
    changed = (mixed != images).any(1)
    # cutmix every time: pixels outside the box are untouched (mixup would change them all)
    assert changed.any() and not changed.all()


def test_training_forward_reports_loss_and_error_against_the_main_label():
    model = _classifier(BatchMix(mixup_alpha=0.2))
    out = model(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert set(out) == {"loss_cls", "top1_err"} and out["loss_cls"].requires_grad


def test_stochastic_depth_rates_rise_linearly_and_leave_evaluation_and_weights_alone():
    from torchvision.ops import StochasticDepth

    from resdet.models import create_model
    from resdet.models.blocks import set_stochastic_depth

    torch.manual_seed(0)
    net = create_model("cifar_resnet20", num_classes=10)
    keys = set(net.state_dict())
    x = torch.rand(4, 3, 32, 32)
    before = net.eval()(x)
    set_stochastic_depth(net, 0.1)
    rates = [
        b.drop_path.p if isinstance(b.drop_path, StochasticDepth) else 0.0
        for b in (m for m in net.modules() if hasattr(m, "drop_path"))
    ]
    assert rates == pytest.approx([0.1 * i / 8 for i in range(9)])  # 9 blocks: timm's rule
    assert set(net.state_dict()) == keys
    assert torch.equal(net.eval()(x), before)
    # in training a dropped branch leaves the block its shortcut: outputs differ between draws
    net.train()
    assert not torch.equal(net(x), net(x))
    with pytest.raises(ValueError, match="plain net has none"):
        set_stochastic_depth(create_model("cifar_plain20"), 0.1)
