import pytest
import torch
import torch.nn.functional as F

from leanformer.evaluate import default_device, evaluate, predict, tta_logits


def linear_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))


def test_predict_reads_uint8_as_float_in_batches_and_leaves_the_mode_alone():
    model = linear_model().train()
    images = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(images.float() / 255)
    logits = predict(model, images, batch_size=5)  # the last batch is a short one
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(predict(model, images.float() / 255, batch_size=23), expected)
    assert model.training  # it evaluates in eval mode and gives the model back as it was


def test_evaluate_gives_the_accuracy_and_cross_entropy_of_the_logits():
    model = linear_model()
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))
    logits = predict(model, images)
    acc, loss = evaluate(model, images, labels)
    assert acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item())
    labels = logits.argmax(1)  # labels it gets all right
    assert evaluate(model, images, labels)[0] == 1.0


def test_flip_tta_is_the_flip_mode():
    model = linear_model()
    images = torch.rand(6, 3, 8, 8)
    torch.testing.assert_close(predict(model, images, flip_tta=True), predict(model, images, tta="flip"))
    with torch.no_grad():
        torch.testing.assert_close(predict(model, images, tta="flip"), tta_logits(model, images, "flip"))


def test_the_default_device_is_the_gpu_when_there_is_one():
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_predict_builds_no_autograd_graph(make_tiny_vit):
    """Predictions never record the operations for a backward pass: that would cost time and
    memory for nothing (a model's weights require gradients while it trains)."""
    import torch

    from leanformer.evaluate import predict

    model = make_tiny_vit(0).train()
    assert all(p.requires_grad for p in model.parameters())
    out = predict(model, torch.rand(4, 3, 32, 32))
    assert not out.requires_grad and out.grad_fn is None
    assert model.training  # the mode it was given back
