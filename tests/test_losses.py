import math

import numpy as np
import pytest
import torch

from q2_aam.engine.losses import (nuc_loss, pairwise_distances, target_loss, total_loss,
                                  unifrac_loss)


def test_unifrac_loss_is_mse_on_strict_upper_triangle():
    embedding = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    # only the upper triangle counts: the lower one and the diagonal are garbage
    distances = torch.tensor([[9.0, 4.0, 2.0],
                              [-5.0, 9.0, 1.0],
                              [7.0, 7.0, 9.0]])
    pairs = {(0, 1): 5.0, (0, 2): 1.0, (1, 2): math.sqrt(9 + 9)}
    expected = np.mean([(pairs[0, 1] - 4.0) ** 2, (pairs[0, 2] - 2.0) ** 2,
                        (pairs[1, 2] - 1.0) ** 2])
    assert unifrac_loss(embedding, distances).item() == pytest.approx(expected, rel=1e-5)


def test_unifrac_loss_zero_when_distances_match():
    embedding = torch.tensor([[0.0, 0.0], [0.6, 0.8]])
    assert unifrac_loss(embedding, torch.tensor([[0.0, 1.0], [1.0, 0.0]])).item() == \
        pytest.approx(0.0, abs=1e-6)


def test_unifrac_loss_none_for_one_sample():
    assert unifrac_loss(torch.randn(1, 4), torch.zeros(1, 1)) is None


def test_pairwise_distances_gradient_finite_for_identical_vectors():
    embedding = torch.ones(3, 4, requires_grad=True)
    d = pairwise_distances(embedding)
    assert d.shape == (3,)
    d.sum().backward()
    assert torch.isfinite(embedding.grad).all()


def test_nuc_loss_only_on_masked_positions():
    tokens = torch.tensor([[5, 1, 2, 0], [5, 3, 4, 4]])
    mask = torch.tensor([[False, True, False, False], [False, False, False, True]])
    logits = torch.randn(2, 4, 8)
    expected = np.mean([-torch.log_softmax(logits[0, 1], -1)[1].item(),
                        -torch.log_softmax(logits[1, 3], -1)[4].item()])
    assert nuc_loss(logits, tokens, mask).item() == pytest.approx(expected, rel=1e-5)
    # what the unmasked positions predict does not matter
    scrambled = torch.where(mask.unsqueeze(-1), logits, torch.randn(2, 4, 8) * 100)
    assert nuc_loss(scrambled, tokens, mask).item() == pytest.approx(expected, rel=1e-5)


def test_nuc_loss_none_without_masked_positions():
    assert nuc_loss(torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.long),
                    torch.zeros(1, 3, dtype=torch.bool)) is None


def test_target_loss_mse_and_huber():
    prediction = torch.tensor([[0.0], [1.0], [5.0]])
    targets = torch.tensor([0.5, 1.0, 1.0])
    assert target_loss(prediction, targets, 'regression').item() == \
        pytest.approx((0.25 + 0 + 16) / 3)
    # Huber (delta 1): 0.5 r² for |r| <= 1, |r| - 0.5 beyond
    assert target_loss(prediction, targets, 'regression', 'huber').item() == \
        pytest.approx((0.5 * 0.25 + 0 + 3.5) / 3)


def test_target_loss_of_a_classifier_is_the_mean_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([0, 2, 2])
    nll = [-torch.log_softmax(logits[i], -1)[t].item() for i, t in enumerate(targets.tolist())]
    assert target_loss(logits, targets, 'classification').item() == \
        pytest.approx(np.mean(nll), rel=1e-5)


def test_total_loss_is_weighted_sum_of_present_terms():
    terms = {'unifrac_loss': torch.tensor(2.0), 'nuc_loss': None,
             'target_loss': torch.tensor(3.0)}
    weights = {'unifrac_loss': 0.5, 'nuc_loss': 10.0, 'target_loss': 2.0}
    assert total_loss(terms, weights).item() == pytest.approx(0.5 * 2 + 2 * 3)
    assert total_loss({'nuc_loss': None}, weights) is None
    assert total_loss({'nuc_loss': torch.tensor(1.5)}, {}).item() == 1.5   # default weight 1


def test_unifrac_loss_leaves_out_pairs_of_unknown_distance():
    import math
    torch.manual_seed(0)
    embedding = torch.randn(3, 4, requires_grad=True)
    distances = torch.tensor([[0.0, 0.5, float('nan')],
                              [0.5, 0.0, float('nan')],
                              [float('nan'), float('nan'), 0.0]])
    loss = unifrac_loss(embedding, distances)
    only_pair = (torch.dist(embedding[0], embedding[1]) - 0.5) ** 2
    assert math.isclose(loss.item(), only_pair.item(), rel_tol=1e-5)
    loss.backward()
    assert torch.isfinite(embedding.grad).all() and embedding.grad[2].abs().sum() == 0
    nan = torch.full((2, 2), float('nan'))
    assert unifrac_loss(torch.randn(2, 4), nan) is None
