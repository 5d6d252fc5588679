"""Cross-check of lib.cem against alibi's CEM (the reference implementation), iterate by iterate."""
import pytest
import torch
import torch.nn.functional as F

from lib.cem import CEMConfig, fista_path
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
    fit(cnn, x, y, F.cross_entropy, epochs=1, batch_size=64, seed=0, progress=False)
    fit(ae, x[:1000], x[:1000], F.mse_loss, epochs=1, batch_size=128, seed=0, progress=False)
    return cnn.eval(), ae.eval()


@pytest.fixture(scope="module")
def digit():
    return load_mnist(verbose=False).x_test[:1] - 0.5


def test_keras_copies_compute_the_same_functions(models, digit):
    cnn, ae = models
    x = torch.cat([digit, torch.rand(3, 1, 28, 28) - 0.5])
    assert ref.max_port_error(cnn, ref.keras_classifier(cnn), x, softmax=True) < 1e-5
    assert ref.max_port_error(ae, ref.keras_autoencoder(ae), x, softmax=False) < 1e-5


@pytest.mark.parametrize("gamma, c", [(0.0, 1e4), (100.0, 10.0)])
def test_pn_iterates_match_alibi(models, digit, gamma, c):
    """Same FISTA path: after 10 iterations the PN iterate agrees with alibi's to float32 precision."""
    cnn, ae = models
    cfg = CEMConfig(gamma=gamma, c_init=c, c_steps=1, max_iterations=10)
    target = cnn(digit).argmax(1)
    *_, (ours, _) = fista_path(cnn, digit, target, torch.full((1,), cfg.c_init), "PN", cfg, ae)
    assert (ours - digit).abs().max() > 1e-3  # the iterate has moved: the comparison is not vacuous
    for _ in range(3):  # alibi's iterates must be reproducible too (see lib.reference.alibi_cem)
        theirs = ref.alibi_last_iterate(cnn, digit, "PN", cfg, ae)
        assert (ours - theirs).abs().max() < 1e-4


def test_pp_differs_only_through_maxpool_ties(models):
    """A PP starts from the all-zero image. There, every max-pooling window is a tie, and TensorFlow
    and torch route the gradient to different elements: the frameworks' gradients differ at zero
    but agree on a real input. This is why PP iterates differ from the first step."""
    tf = ref.tf_session()
    cnn, _ = models
    kc = ref.keras_classifier(cnn)
    sess = tf.compat.v1.keras.backend.get_session()
    ph = tf.compat.v1.placeholder(tf.float32, (1, 28, 28, 1))
    grad_tf = tf.gradients(tf.reduce_sum(kc(ph)[:, 3]), ph)[0]

    def gap(x):
        theirs = sess.run(grad_tf, {ph: ref.nchw_to_nhwc(x)})
        xx = x.clone().requires_grad_(True)
        (ours,) = torch.autograd.grad(cnn(xx).softmax(1)[:, 3].sum(), xx)
        return float(abs(ref.nchw_to_nhwc(ours) - theirs).max()), float(abs(theirs).max())

    gap_zero, scale_zero = gap(torch.zeros(1, 1, 28, 28))
    gap_rand, scale_rand = gap(torch.rand(1, 1, 28, 28) - 0.5)
    assert gap_rand < 1e-4 * max(scale_rand, 1e-6) + 1e-9
    assert gap_zero > 1e-3 * scale_zero
