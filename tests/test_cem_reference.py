"""Cross-check of lib.cem against alibi's CEM (the reference implementation), iterate by iterate."""
import pytest
import torch
import torch.nn.functional as F

from lib.cem import CEMConfig, cem_explain, fista_path
from lib.data import load_mnist
from lib.models.cem_mnist import CEMAutoencoder, CEMClassifier
from lib.train import fit

ref = pytest.importorskip("lib.reference.alibi_cem")


@pytest.fixture(scope="module")
def models():
    """The chapter's architectures, briefly trained on real digits (an untrained classifier's flat
    probabilities give gradients too small to move the iterates)."""
    torch.manual_seed(0)
    ds = load_mnist(verbose=False)
    x, y = ds.x_train[:2000] - 0.5, ds.y_train[:2000]
    cnn, ae = CEMClassifier(n_blocks=2), CEMAutoencoder()
    # trained in float64 (then used in float32): float32 training amplifies the last-bit differences
    # between CPUs' vector kernels into different models, and on some CPUs into one whose gradients
    # barely move the iterates
    fit(cnn, x, y, F.cross_entropy, epochs=1, batch_size=64, seed=0, progress=False, dtype=torch.float64)
    fit(ae, x[:1000], x[:1000], F.mse_loss, epochs=1, batch_size=128, seed=0, progress=False, dtype=torch.float64)
    cnn.float(), ae.float()
    return cnn.eval(), ae.eval()


@pytest.fixture(scope="module")
def digit():
    return load_mnist(verbose=False).x_test[:1] - 0.5


def test_keras_copies_compute_the_same_functions(models, digit):
    cnn, ae = models
    x = torch.cat([digit, torch.rand(3, 1, 28, 28) - 0.5])
    assert ref.max_port_error(cnn, ref.keras_classifier(cnn), x, softmax=True) < 1e-5
    assert ref.max_port_error(ae, ref.keras_autoencoder(ae), x, softmax=False) < 1e-5


@pytest.mark.parametrize("mode, gamma, c, scores", [("PN", 100.0, 10.0, "probs"), ("PN", 100.0, 1.0, "logits")])
def test_iterates_match_alibi(models, digit, mode, gamma, c, scores):
    """Same FISTA path: after 10 iterations our iterate agrees with alibi's to float32 precision,
    with the hinge on probabilities (alibi's example) and on logits (the CEM authors' code)."""
    cnn, ae = models
    cfg = CEMConfig(gamma=gamma, c_init=c, c_steps=1, max_iterations=10, scores=scores)
    target = cnn(digit).argmax(1)
    *_, (ours, _) = fista_path(cnn, digit, target, torch.full((1,), cfg.c_init), mode, cfg, ae)
    assert (ours - digit).abs().max() > 1e-3  # the iterate has moved: the comparison is not vacuous
    for _ in range(3):  # alibi's iterates must be reproducible too (see lib.reference.alibi_cem)
        theirs = ref.alibi_last_iterate(cnn, digit, mode, cfg, ae)
        assert (ours - theirs).abs().max() < 1e-4


def test_whole_pp_search_matches_alibi_and_alibi_is_reproducible(models):
    """A whole search over c (5 values, 100 iterations each) for three digits: the same PPs."""
    cnn, ae = models
    x = load_mnist(verbose=False).x_test[:3] - 0.5
    cfg = CEMConfig(gamma=100.0, c_steps=5, max_iterations=100)
    ours = cem_explain(cnn, x, "PP", cfg, autoencoder=ae)
    first = ref.alibi_cem(cnn, x, "PP", cfg, autoencoder=ae)
    second = ref.alibi_cem(cnn, x, "PP", cfg, autoencoder=ae)
    assert torch.equal(first.explanation, second.explanation)  # reproducible (see _simultaneous_assign_session)
    assert ours.found.all() and torch.equal(ours.found, first.found) and torch.equal(ours.pred, first.pred)
    assert (ours.explanation - first.explanation).abs().max() < 1e-4


def test_tie_gradient_gap_is_measured_not_assumed(models):
    """The chapter reports how TensorFlow and torch route max-pool gradients on this machine
    (kernels differ between CPUs and versions, so no value is asserted); the measurement itself
    must be a finite relative gap, and off ties the two gradients agree (no max-pool ties in a
    random input, so both libraries compute the same function's gradient)."""
    cnn, _ = models
    torch.manual_seed(1)
    assert ref.maxpool_tie_gradient_gap(cnn, torch.rand(1, 1, 28, 28) - 0.5) < 1e-4
    gap = ref.maxpool_tie_gradient_gap(cnn, torch.zeros(1, 1, 28, 28))
    assert gap == gap and gap >= 0.0  # a number (NaN fails), whatever this CPU's kernels do
