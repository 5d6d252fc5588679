"""The parts of GCE that build trained explainers: the VAE explainer, its loss, the batched
I(alpha; Y) estimator and the training loop (see :mod:`lib.gce` for the method's description).

They live in their own file because :func:`lib.cache.cached_model` keys a committed artifact on the
source files that build it: analysis functions added to :mod:`lib.gce` (sweeps, toy problems,
Algorithm 1, the reproduction's experiments) must not invalidate the committed explainers. Import
everything from :mod:`lib.gce`, which re-exports these names.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from lib.progress import progress_bar

EPS = 1e-8  # inside the logs, as in the reference estimator
ProbFn = Callable[[torch.Tensor], torch.Tensor]  # images -> class probabilities (rows sum to 1)


class GCEEncoder(nn.Module):
    """Images (N, C, side, side) -> mean and log-variance of the K + L latents."""

    def __init__(self, z_dim: int, channels: int = 1, side: int = 28, filters: int = 64):
        super().__init__()
        if side % 4:
            raise ValueError(f"image side must be a multiple of 4, got {side}")
        self.body = nn.Sequential(
            nn.Conv2d(channels, filters, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(filters, filters, 4, stride=2, padding=1), nn.ReLU(),
            nn.ZeroPad2d((1, 2, 1, 2)),
            nn.Conv2d(filters, filters, 4, stride=1, padding=0), nn.ReLU(),
        )
        flat = filters * (side // 4) ** 2
        self.mu = nn.Linear(flat, z_dim)
        self.logvar = nn.Linear(flat, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x).flatten(1)
        return self.mu(h), self.logvar(h)


class GCEDecoder(nn.Module):
    """Latents (N, K + L) -> images (N, C, side, side) in [0, 1]."""

    def __init__(self, z_dim: int, channels: int = 1, side: int = 28, filters: int = 64):
        super().__init__()
        self.filters, self.grid = filters, side // 4
        self.fc = nn.Sequential(nn.Linear(z_dim, filters * self.grid**2), nn.ReLU())
        self.body = nn.Sequential(
            nn.ConvTranspose2d(filters, filters, 4, stride=1, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(filters, filters, 4, stride=2, padding=2), nn.ReLU(),
            nn.ConvTranspose2d(filters, channels, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(len(z), self.filters, self.grid, self.grid))


class GCEExplainer(nn.Module):
    """The VAE explainer: the first ``K`` latents are causal (alpha), the other ``L`` non-causal (beta)."""

    def __init__(self, K: int, L: int, channels: int = 1, side: int = 28, filters: int = 64):
        super().__init__()
        if K < 0 or L < 0 or K + L < 1:
            raise ValueError(f"need K >= 0, L >= 0 and K + L >= 1, got K={K}, L={L}")
        self.K, self.L, self.channels, self.side = K, L, channels, side
        self.encoder = GCEEncoder(K + L, channels, side, filters)
        self.decoder = GCEDecoder(K + L, channels, side, filters)

    @property
    def z_dim(self) -> int:
        return self.K + self.L

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruction, mean and log-variance (a reparameterised sample in between)."""
        mu, logvar = self.encoder(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


def vae_loss(x: torch.Tensor, xhat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D = squared error + KL divergence to N(0, I), each summed over an image and averaged over the batch
    (the authors' ``loss_functions.VAE_LL_loss``). Returns (D, squared error, KL)."""
    n = len(x)
    sse = ((xhat - x) ** 2).sum() / n
    kld = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / n
    return sse + kld, sse, kld


def _latents(K: int, L: int, n_alpha: int, n_beta: int, dims: Sequence[int] | None, generator, dtype, device) -> torch.Tensor:
    """(n_alpha * n_beta, K + L) latents: the ``dims`` coordinates fixed per outer draw, the rest redrawn per inner one."""
    z_dim = K + L
    fixed = list(range(K)) if dims is None else list(dims)
    z = torch.randn(n_alpha, n_beta, z_dim, generator=generator, dtype=dtype).to(device)
    outer = torch.randn(n_alpha, 1, len(fixed), generator=generator, dtype=dtype).to(device)
    z[:, :, fixed] = outer.expand(n_alpha, n_beta, len(fixed))
    return z.reshape(n_alpha * n_beta, z_dim)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """I from class probabilities shaped (n_alpha, n_beta, M): mean_i sum p_i log p_i - sum q log q."""
    p = probs.mean(1)
    q = p.mean(0)
    return (p * torch.log(p + EPS)).sum(1).mean() - (q * torch.log(q + EPS)).sum()


def information_flow(
    decoder: nn.Module,
    classify: ProbFn,
    K: int,
    L: int,
    n_alpha: int,
    n_beta: int,
    dims: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Sampled estimate of I(alpha; Y) in nats (differentiable w.r.t. the decoder).

    ``classify`` maps images to class probabilities. ``dims``: the latent coordinates whose
    information flow is measured (default: the K causal ones, i.e. I(alpha; Y)); ``dims=[i]`` gives
    the flow of latent i alone, the other K + L - 1 latents being redrawn for every inner sample (the
    authors' ``joint_uncond_singledim``). All ``n_alpha * n_beta`` images are decoded and classified
    in batches of ``chunk``.
    """
    if dims is None and K == 0:
        if n_alpha < 1 or n_beta < 1:
            raise ValueError(f"n_alpha and n_beta must be >= 1, got {n_alpha}, {n_beta}")
        return torch.zeros((), dtype=next(decoder.parameters()).dtype)
    return mutual_information(flow_probs(decoder, classify, K, L, n_alpha, n_beta, dims, generator, chunk))


def flow_probs(
    decoder: nn.Module,
    classify: ProbFn,
    K: int,
    L: int,
    n_alpha: int,
    n_beta: int,
    dims: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """The class probabilities behind :func:`information_flow`, shaped (n_alpha, n_beta, M): row i
    holds the classifier's outputs for the n_beta images that share outer draw i. Keeping them lets
    one large sample give the estimate, its Monte-Carlo error (:func:`mi_estimate`) and the values
    of smaller estimators (:func:`subsampled_estimates`) without decoding again."""
    if n_alpha < 1 or n_beta < 1:
        raise ValueError(f"n_alpha and n_beta must be >= 1, got {n_alpha}, {n_beta}")
    if dims is None and K == 0:
        raise ValueError("K = 0: there is no alpha to fix (pass dims)")
    p0 = next(decoder.parameters())
    z = _latents(K, L, n_alpha, n_beta, dims, generator, p0.dtype, p0.device)
    probs = torch.cat([classify(decoder(z[i : i + chunk])) for i in range(0, len(z), chunk)])
    return probs.view(n_alpha, n_beta, -1)


def per_latent_flow(decoder: nn.Module, classify: ProbFn, K: int, L: int, n_alpha: int, n_beta: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """I(z_i; Y) for every latent i (alpha_1..alpha_K, then beta_1..beta_L), without gradients."""
    with torch.no_grad():
        return torch.stack([information_flow(decoder, classify, K, L, n_alpha, n_beta, dims=[i], generator=generator)
                            for i in range(K + L)])


@dataclass
class GCEConfig:
    """Training settings of one explainer (the reference code's names in brackets)."""

    K: int
    L: int
    lam: float  # [lambda] weight of D
    steps: int
    n_alpha: int  # [Nalpha] outer draws
    n_beta: int  # [Nbeta] inner draws
    batch_size: int = 64
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    classifier_mode: str = "eval"  # "train": dropout/batch norm active while the explainer trains (as the authors' code leaves it)
    seed: int = 0

    def asdict(self) -> dict:
        return asdict(self)


def train_gce(
    explainer: GCEExplainer,
    classifier: nn.Module,
    x: torch.Tensor,
    cfg: GCEConfig,
    to_probs: Callable[[torch.Tensor], torch.Tensor] = lambda logits: torch.softmax(logits, 1),
    progress: bool = True,
    desc: str = "GCE",
) -> dict:
    """Train ``explainer`` in place on images ``x`` (N, C, H, W in [0, 1]); return the per-step history.

    The classifier is frozen (no parameter updates) and kept in ``cfg.classifier_mode``: "eval"
    (dropout off, batch-norm running statistics) or "train" (the authors' code never calls
    ``classifier.eval()``, so dropout is on and batch norm normalises over each chunk of decoded
    images; its running statistics are restored afterwards so that the classifier is unchanged).
    History: ``I`` (nats), ``D`` and the total loss per step.
    """
    if cfg.classifier_mode not in ("eval", "train"):
        raise ValueError(f"classifier_mode must be 'eval' or 'train', got {cfg.classifier_mode!r}")
    if (explainer.K, explainer.L) != (cfg.K, cfg.L):
        raise ValueError(f"explainer has K={explainer.K}, L={explainer.L} but the config says K={cfg.K}, L={cfg.L}")
    gen = torch.Generator().manual_seed(cfg.seed)
    saved = {k: v.clone() for k, v in classifier.state_dict().items()}
    requires = [p.requires_grad for p in classifier.parameters()]
    for p in classifier.parameters():
        p.requires_grad_(False)
    classifier.train(cfg.classifier_mode == "train")
    dtype = next(explainer.parameters()).dtype

    def classify(images: torch.Tensor) -> torch.Tensor:
        return to_probs(classifier(images))

    opt = torch.optim.Adam(explainer.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    hist: dict = {"I": [], "D": [], "loss": []}
    bar = progress_bar(total=cfg.steps, desc=desc, enabled=progress, leave=False, mininterval=1.0)
    explainer.train()
    try:
        for _ in range(cfg.steps):
            idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
            xb = x[idx].to(dtype)
            opt.zero_grad(set_to_none=True)
            xhat, mu, logvar = explainer(xb, generator=gen)
            d, _, _ = vae_loss(xb, xhat, mu, logvar)
            info = information_flow(explainer.decoder, classify, cfg.K, cfg.L, cfg.n_alpha, cfg.n_beta, generator=gen)
            loss = -info + cfg.lam * d
            loss.backward()
            opt.step()
            hist["I"].append(info.item())
            hist["D"].append(d.item())
            hist["loss"].append(loss.item())
            bar.update(1)
            bar.set_postfix(I=f"{hist['I'][-1]:.3f}", D=f"{hist['D'][-1]:.1f}")
    finally:
        bar.close()
        classifier.load_state_dict(saved)
        for p, r in zip(classifier.parameters(), requires):
            p.requires_grad_(r)
        classifier.eval()
        explainer.eval()
    return hist
