import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cllmfs_trainer.training.losses import add_noise, neftune_scale, select_tokens, supervised_contrastive_loss


def naive_loss(features, labels, noised, temperature, anchor_outside):
    """Reference: the definition written out with explicit loops. Returns (loss, num_anchors, pos_sim, neg_sim)."""
    vectors = list(features) + ([] if noised is None else list(noised))
    ys = labels.tolist() * (1 if noised is None else 2)
    z = [v / v.norm() for v in vectors]
    cos = lambda i, j: float(z[i].detach() @ z[j].detach())  # noqa: E731
    total, count, pos_cos, neg_cos = 0.0, 0, [], []
    for i in range(len(z)):
        if ys[i] == 0 and not anchor_outside:
            continue
        positives = [j for j in range(len(z)) if j != i and ys[j] == ys[i]]
        negatives = [j for j in range(len(z)) if ys[j] != ys[i]]
        if not positives or not negatives:
            continue
        denom = sum(torch.exp(z[i] @ z[a] / temperature) for a in range(len(z)) if a != i)
        total = total - sum(torch.log(torch.exp(z[i] @ z[p] / temperature) / denom) for p in positives) / len(positives)
        count += 1
        pos_cos += [cos(i, p) for p in positives]
        neg_cos += [cos(i, n) for n in negatives]
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return total / max(count, 1), count, mean(pos_cos), mean(neg_cos)


def random_case(seed, m, d, num_types, with_noised, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(m, d, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, num_types + 1, (m,), generator=g)
    noised = torch.randn(m, d, generator=g, dtype=dtype, requires_grad=True) if with_noised else None
    return features, labels, noised


# --- supervised_contrastive_loss --------------------------------------------------------------------------------------


@pytest.mark.parametrize("anchor_outside", [False, True])
@pytest.mark.parametrize("with_noised", [False, True])
@pytest.mark.parametrize(
    ("seed", "m", "d", "num_types", "temperature"),
    [
        (0, 6, 4, 2, 0.5),
        (1, 10, 8, 3, 0.1),
        (2, 12, 5, 1, 0.07),
        (3, 9, 16, 4, 1.0),
    ],
)
def test_matches_naive_reference_value_and_gradients(seed, m, d, num_types, temperature, with_noised, anchor_outside):
    features, labels, noised = random_case(seed, m, d, num_types, with_noised)
    out = supervised_contrastive_loss(features, labels, noised, temperature=temperature, anchor_outside=anchor_outside)
    ref, count, pos_sim, neg_sim = naive_loss(features, labels, noised, temperature, anchor_outside)
    assert count > 0, "the case should not be degenerate"
    assert out.num_anchors == count
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.pos_sim.item(), pos_sim)
    torch.testing.assert_close(out.neg_sim.item(), neg_sim)
    assert not out.pos_sim.requires_grad and not out.neg_sim.requires_grad

    inputs = [features] + ([noised] if with_noised else [])
    grads = torch.autograd.grad(out.loss, inputs)
    ref_grads = torch.autograd.grad(ref, inputs)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad)
        assert grad.abs().sum() > 0


def test_float32_at_low_temperature_matches_float64_reference():
    # cos / 0.01 reaches 100 and exp(100) overflows float32: only a logsumexp formulation survives.
    features, labels, noised = random_case(7, 10, 3, 2, True, dtype=torch.float32)
    with torch.no_grad():
        features[1:] = features[0] + 1e-3 * features[1:]  # nearly parallel vectors: similarities close to 1/temp
    out = supervised_contrastive_loss(features, labels, noised, temperature=0.01)
    ref = naive_loss(features.double(), labels, noised.double(), 0.01, False)[0]
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "labels, with_noised, anchor_outside",
    [
        ([0, 0, 0, 0], True, False),  # no entity token
        ([0, 0, 0, 0], True, True),  # O anchors, but nothing to contrast with
        ([3, 3, 3, 3], True, False),  # a single class and no O: no negatives
        ([2], True, False),  # M = 1: its noised view is a positive, but there is no negative
        ([2], False, True),  # M = 1 without a second view
        ([1, 2, 3], False, False),  # every class appears once: no positives
        ([], True, True),  # M = 0
    ],
)
def test_degenerate_batches_give_attached_zero(labels, with_noised, anchor_outside):
    features = torch.randn(len(labels), 8, requires_grad=True)
    noised = torch.randn(len(labels), 8, requires_grad=True) if with_noised else None
    out = supervised_contrastive_loss(
        features, torch.tensor(labels, dtype=torch.long), noised, anchor_outside=anchor_outside
    )
    assert out.num_anchors == 0
    assert out.loss.item() == 0.0 and out.loss.requires_grad and out.loss.dim() == 0
    assert math.isnan(out.pos_sim.item()) and math.isnan(out.neg_sim.item())
    out.loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    if with_noised:
        assert torch.equal(noised.grad, torch.zeros_like(noised))


def test_entity_type_seen_once_still_counts_with_noised_view():
    # Without a noised view a singleton type has no positive; its own noised copy provides one.
    features, noised = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([1, 0, 0])
    assert supervised_contrastive_loss(features, labels).num_anchors == 0
    assert supervised_contrastive_loss(features, labels, noised).num_anchors == 2


@pytest.mark.parametrize("case", ["low_temperature", "huge_magnitude", "bf16", "identical_vectors"])
def test_extreme_inputs_are_finite(case):
    features, labels, noised = random_case(11, 16, 8, 3, True, dtype=torch.float32)
    temperature = 0.07
    with torch.no_grad():
        if case == "low_temperature":
            temperature = 0.01
        elif case == "huge_magnitude":
            features.mul_(1e4)
            noised.mul_(1e4)
        elif case == "identical_vectors":
            features.copy_(features[0].expand_as(features))
            noised.copy_(features)
            temperature = 0.01
    if case == "bf16":
        features = features.detach().bfloat16().requires_grad_()
        noised = noised.detach().bfloat16().requires_grad_()
    out = supervised_contrastive_loss(features, labels, noised, temperature=temperature)
    assert out.num_anchors > 0
    assert out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for tensor in (features, noised):
        assert tensor.grad.dtype == tensor.dtype
        assert torch.isfinite(tensor.grad).all()


def test_clustered_representations_score_lower_than_shuffled():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 0, 0])
    centres = torch.randn(4, 32, generator=g)
    clustered = centres[labels] + 0.1 * torch.randn(len(labels), 32, generator=g)
    shuffled = clustered[torch.randperm(len(labels), generator=g)]
    noise = 0.05 * torch.randn(len(labels), 32, generator=g)
    for noised_of in (lambda f: None, lambda f: f + noise):
        good = supervised_contrastive_loss(clustered, labels, noised_of(clustered), temperature=0.1)
        bad = supervised_contrastive_loss(shuffled, labels, noised_of(shuffled), temperature=0.1)
        assert good.loss < bad.loss
        assert good.pos_sim > good.neg_sim


def test_rejects_bad_inputs():
    features = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels must be"):
        supervised_contrastive_loss(features, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=">= 0"):
        supervised_contrastive_loss(features, torch.tensor([1, 0, -100, 1]))
    with pytest.raises(ValueError, match="noised"):
        supervised_contrastive_loss(features, torch.tensor([1, 0, 1, 1]), torch.randn(3, 3))
    with pytest.raises(ValueError, match="temperature"):
        supervised_contrastive_loss(features, torch.tensor([1, 0, 1, 1]), temperature=0.0)


# --- select_tokens ---------------------------------------------------------------------------------------------------


def test_select_keeps_everything_under_budget():
    labels = torch.tensor([0, 1, 0, 2])
    assert select_tokens(labels, None).tolist() == [0, 1, 2, 3]
    assert select_tokens(labels, 4).tolist() == [0, 1, 2, 3]
    assert select_tokens(labels, 10).tolist() == [0, 1, 2, 3]


def test_select_drops_outside_tokens_first():
    labels = torch.tensor([0, 1, 0, 0, 2, 0, 3, 0, 0, 0])
    keep = select_tokens(labels, 5, torch.Generator().manual_seed(0))
    assert len(keep) == 5
    assert {1, 4, 6} <= set(keep.tolist())
    assert (labels[keep] == 0).sum() == 2


def test_select_subsamples_entities_only_when_they_exceed_budget():
    labels = torch.tensor([1, 0, 2, 2, 0, 3, 1, 0])
    keep = select_tokens(labels, 3, torch.Generator().manual_seed(0))
    assert len(keep) == 3 and (labels[keep] > 0).all()
    exact = select_tokens(labels, 5, torch.Generator().manual_seed(0))  # exactly the 5 entity tokens
    assert exact.tolist() == [0, 2, 3, 5, 6]


def test_select_is_deterministic_given_the_generator():
    labels = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(1))
    pick = lambda seed: select_tokens(labels, 50, torch.Generator().manual_seed(seed)).tolist()  # noqa: E731
    assert pick(0) == pick(0)
    assert pick(0) != pick(1)


@settings(max_examples=200, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), max_size=60),
    budget=st.none() | st.integers(0, 70),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_tokens_properties(labels, budget, seed):
    labels = torch.tensor(labels, dtype=torch.long)
    keep = select_tokens(labels, budget, torch.Generator().manual_seed(seed))
    n = len(labels)
    num_entities = int((labels > 0).sum())
    assert keep.dtype == torch.long
    assert len(keep) == (n if budget is None else min(n, budget))
    assert keep.tolist() == sorted(set(keep.tolist()))
    assert all(0 <= i < n for i in keep.tolist())
    kept_entities = int((labels[keep] > 0).sum())
    assert kept_entities == min(num_entities, len(keep))  # entities are never dropped while O tokens are kept
    assert keep.tolist() == select_tokens(labels, budget, torch.Generator().manual_seed(seed)).tolist()


# --- noise -----------------------------------------------------------------------------------------------------------


def test_neftune_scale_uses_each_sequence_length():
    scale = neftune_scale(torch.tensor([4, 16, 0]), hidden_size=25, alpha=5.0)
    assert scale.shape == (3, 1, 1) and scale.dtype == torch.float32
    torch.testing.assert_close(scale.flatten(), torch.tensor([5 / math.sqrt(100), 5 / math.sqrt(400), 1.0]))


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_padding_gets_no_noise(distribution):
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = add_noise(x, mask, alpha=5.0, distribution=distribution, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[0, 4:], x[0, 4:])
    assert (out[mask.bool()] != x[mask.bool()]).all()


@pytest.mark.parametrize(("distribution", "std_factor"), [("uniform", 1 / math.sqrt(3)), ("gaussian", 1.0)])
def test_noise_statistics_follow_the_per_sequence_scale(distribution, std_factor):
    # 64 * 256 = 16k draws per sequence: the sample std is within ~1% of its expectation, so 5% is a safe bound.
    lengths = torch.tensor([64, 16])
    mask = (torch.arange(64)[None, :] < lengths[:, None]).long()
    x = torch.zeros(2, 64, 256)
    alpha = 5.0
    noise = add_noise(x, mask, alpha, distribution, generator=torch.Generator().manual_seed(0))
    scale = neftune_scale(lengths, 256, alpha).flatten()
    assert scale[1] == 2 * scale[0]
    for b in range(2):
        real = noise[b, : lengths[b]] / scale[b]
        assert abs(real.mean().item()) < 0.05
        assert real.std().item() == pytest.approx(std_factor, rel=0.05)
        if distribution == "uniform":
            assert real.abs().max() <= 1.0 + 1e-6


def test_no_mask_means_all_tokens_are_real():
    x = torch.zeros(1, 10, 4)
    out = add_noise(x, None, alpha=1.0, generator=torch.Generator().manual_seed(0))
    same = add_noise(x, torch.ones(1, 10), alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert (out.abs() <= neftune_scale(torch.tensor([10]), 4, 1.0)).all()


def test_noise_keeps_dtype_and_alpha_zero_is_identity():
    x = torch.randn(2, 5, 8).bfloat16()
    mask = torch.ones(2, 5)
    out = add_noise(x, mask, alpha=5.0, distribution="gaussian", generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert not torch.equal(out, x)
    assert torch.equal(add_noise(x, mask, alpha=0.0), x)


def test_noise_is_deterministic_given_the_generator():
    x = torch.randn(2, 5, 8)
    a = add_noise(x, None, 5.0, generator=torch.Generator().manual_seed(3))
    b = add_noise(x, None, 5.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_noise_rejects_bad_arguments():
    x = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="distribution"):
        add_noise(x, None, 1.0, distribution="laplace")
    with pytest.raises(ValueError, match="alpha"):
        add_noise(x, None, -1.0)
    with pytest.raises(ValueError, match="attention_mask"):
        add_noise(x, torch.ones(1, 4), 1.0)
