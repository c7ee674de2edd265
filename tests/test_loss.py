import pytest
import torch
import torch.nn.functional as F

from lmforge.model.loss import linear_cross_entropy


def test_fused_loss_and_gradients_match_plain_cross_entropy():
    torch.manual_seed(0)
    hidden = torch.randn(70, 16, requires_grad=True)  # 70 rows: the last chunk is partial
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (70,))

    plain = F.cross_entropy(hidden @ weight.t(), targets)
    plain_grads = torch.autograd.grad(3.0 * plain, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, targets, chunk_rows=16)
    fused_grads = torch.autograd.grad(3.0 * fused, (hidden, weight))

    torch.testing.assert_close(fused, plain)
    for got, expected in zip(fused_grads, plain_grads):
        torch.testing.assert_close(got, expected)


def test_without_grad_mode_only_the_loss_is_computed():
    hidden, weight = torch.randn(8, 4), torch.randn(10, 4)
    targets = torch.randint(0, 10, (8,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.t(), targets))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(torch.randn(4, 3, 2), torch.randn(5, 2), torch.zeros(4, dtype=torch.long))
