"""zoomfeat.mil.aggregators: every aggregator trains on MUSK1 in the one training loop; padding and
masking change no output; instance scores (attention, gradient x input) are what they claim;
aggregators that cannot do a task say so in one line."""

import numpy as np
import pytest
import torch

from zoomfeat.mil.aggregators import ARCHS, build_net, check_support
from zoomfeat.mil.config import MILConfig
from zoomfeat.mil.feeding import BagFeeder, pad_batch, predict_logits
from zoomfeat.mil.instance_csv import load_instance_csv
from zoomfeat.mil.metrics import binary_metrics
from zoomfeat.mil.splits import fold_keys, fold_parts, make_splits
from zoomfeat.mil.train import train_fold
from zoomfeat.runtime.errors import ConfigError

#: every conf/mil/*.yaml aggregator: (name, arch, overrides of the small test network)
AGGREGATORS = [
    ("abmil", dict(arch="abmil")),
    ("gated_abmil", dict(arch="abmil", gated=True)),
    ("clam_sb", dict(arch="clam_sb", gated=True, k_sample=3)),
    ("transmil", dict(arch="transmil", att_dim=16, heads=2, hidden=[16], dropout=0.0)),
    ("dsmil", dict(arch="dsmil", dropout=0.0)),
    ("meanpool", dict(arch="meanpool")),
    ("maxpool", dict(arch="maxpool")),
]


def small(name: str, **over) -> MILConfig:
    base = dict(name=name, hidden=[64], att_dim=32, lr=1e-3, epochs=12, patience=4, min_epochs=6,
                warmup=2, amp=False)  # fmt: skip
    return MILConfig(**{**base, **over})


@pytest.fixture(scope="module")
def musk1():
    torch.set_num_threads(1)
    return load_instance_csv("pkg:zoomfeat/data/mil/musk1.csv")


@pytest.mark.parametrize("name,over", AGGREGATORS, ids=[a[0] for a in AGGREGATORS])
def test_every_aggregator_learns_musk1(musk1, name, over):
    """One fold of a 3-fold split of MUSK1 (92 bags, 166 features; 31 test bags): test AUC well
    above chance (the published MUSK1 accuracies are 0.85-0.93; this short, small training reaches
    AUC > 0.8 for every aggregator; chance would give 0.5 +- 0.1 on 31 bags)."""
    cfg = small(name, **over)
    splits = make_splits(musk1.slide_ids, musk1.case_ids, musk1.labels, folds=3, seed=0)
    feeder = BagFeeder(musk1, torch.device("cpu"))
    repeat, fold = fold_keys(splits)[0]
    parts = fold_parts(splits, repeat, fold)
    tr, va, te = (musk1.index(parts[p]) for p in ("train", "val", "test"))
    result = train_fold(musk1, tr, va, cfg, seed=fold, device="cpu", progress=False)
    assert result.model.arch == over["arch"] and result.steps > 0
    out, scores = predict_logits(result.model, feeder, te, attention=True)
    assert [len(s) for s in scores] == [int(musk1.n_instances[i]) for i in te]
    assert all(np.isfinite(s).all() for s in scores)
    auc = binary_metrics(musk1.labels[te], 1 / (1 + np.exp(-out)))["auc"]
    assert auc > 0.8, (name, auc)


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_gives_each_bags_own_output(arch):
    """A padded, masked batch of bags of different sizes gives every bag its single-bag output
    (TransMIL, which has no mask, runs such a batch bag by bag). Outputs are O(1) sums of O(100)
    float32 products: 1e-5 covers the changed summation order."""
    torch.manual_seed(0)
    over = dict(AGGREGATORS)[arch] if arch in dict(AGGREGATORS) else {}
    cfg = small(arch, **{**over, "arch": arch, "dropout": 0.0})
    net = build_net(12, cfg, n_out=1).eval()
    bags = [torch.randn(n, 12) for n in (5, 9, 3)]
    X, mask = pad_batch(bags)
    assert mask is not None
    with torch.no_grad():
        batched = net(X, mask)
        single = torch.cat([net(b.unsqueeze(0)) for b in bags])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_gradient_x_input_of_linear_meanpool_is_each_instances_share():
    """meanpool without hidden layers: y = b + w . mean_i z_i, so gradient x input gives
    s_i = w . z_i / N and sum_i s_i = y - b exactly (float32 rounding of O(1) values: 1e-5)."""
    torch.manual_seed(1)
    net = build_net(6, small("meanpool", arch="meanpool", hidden=[]), n_out=1).eval()
    x = torch.randn(1, 7, 6)
    scores = net.instance_scores(x)
    with torch.no_grad():
        y = net(x)
    bias = net.net.classifier.bias
    assert scores.shape == (1, 7)
    torch.testing.assert_close(scores.sum(), (y - bias).sum(), atol=1e-5, rtol=1e-5)
    w = net.net.classifier.weight[0]
    torch.testing.assert_close(scores[0], (x[0] @ w) / 7, atol=1e-5, rtol=1e-5)


def test_attention_scores_are_the_pooling_weights():
    """ABMIL's scores are the attention logits whose softmax weights the pooled embedding."""
    torch.manual_seed(2)
    net = build_net(5, small("abmil", hidden=[8], dropout=0.0), n_out=1).eval()
    x = torch.randn(1, 6, 5)
    logits = net.instance_scores(x)[0]
    h = net.net.feat_ext(net.standardize(x))[0]
    z = torch.softmax(logits, 0) @ h
    torch.testing.assert_close(net.net.classifier(z).reshape(()), net(x).reshape(()), atol=1e-5, rtol=1e-5)


def test_support_matrix_is_one_clear_line():
    for task, k in (("regression", 2), ("survival", 2), ("classification", 3)):
        with pytest.raises(ConfigError, match=r"mil=clam_sb .* does not support") as err:
            check_support(MILConfig(name="clam_sb", arch="clam_sb"), task, k)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not support multiclass"):
        check_support(MILConfig(name="dsmil", arch="dsmil"), "classification", 3)
    for arch in ("abmil", "transmil", "meanpool", "maxpool"):
        for task, k in (("regression", 2), ("survival", 2), ("classification", 3), ("classification", 2)):
            check_support(MILConfig(name=arch, arch=arch), task, k)


def test_transmil_landmarks_fit_short_bags():
    """TransMIL's Nystrom layers: a bag of T <= m0 tokens uses T landmarks (every token), which is
    softmax attention up to the 6-step iterative pseudo-inverse; torchmil's zero-padding up to m0
    landmarks let the padded keys take almost all of the softmax. A bag of T >= m0 tokens keeps m0.
    Tolerance 0.05 on outputs of magnitude ~0.6: the pseudo-inverse iteration, not float32 rounding
    (1e-6 here), limits the agreement (measured 0.014)."""
    from torchmil.nn.attention import NystromAttention

    from zoomfeat.mil.aggregators import fit_landmarks

    torch.manual_seed(0)
    att = NystromAttention(in_dim=64, att_dim=64, n_heads=4, n_landmarks=256)
    x = torch.randn(1, 10, 64)
    with torch.no_grad():
        q, k, v = (t.view(1, 10, 4, 16).permute(0, 2, 1, 3) for t in att.qkv_nn(x).chunk(3, -1))
    with torch.no_grad():
        exact = torch.softmax(q @ k.transpose(-1, -2) * 16**-0.5, -1) @ v
        exact = att.out_proj(exact.permute(0, 2, 1, 3).reshape(1, 10, 64))
        padded = att(x)
        att.n_landmarks = 10
        fitted = att(x)
    assert float((padded - exact).abs().max()) > 0.3 * float(exact.abs().max())  # the padding's dilution
    torch.testing.assert_close(fitted, exact, atol=0.05, rtol=0)

    net = build_net(5, small("transmil", arch="transmil", att_dim=16, heads=2, hidden=[16], dropout=0.0))
    m0 = net.net.n_landmarks  # att_dim // 2 = 8
    assert fit_landmarks(net.net, 5) == min(m0, 3 * 3 + 1)
    assert fit_landmarks(net.net, 2) == 2 * 2 + 1
    assert fit_landmarks(net.net, 1000) == m0
    assert all(layer.att_module.n_landmarks == m0 for layer in net.net.layers)
