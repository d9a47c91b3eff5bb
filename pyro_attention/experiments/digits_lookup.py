"""Attention as a soft dictionary lookup: fill in the missing pixels of a binarized digit.

Given the observed pixels :math:`x_O` of a test digit (its top half, or a random half of its
pixels), a Bernoulli mixture :math:`(\\pi, \\mu)` predicts every missing pixel as the attention
read-out of its components (Hennig, *Probabilistic ML*, lecture 24):

.. math::

    p(x_d = 1 \\mid x_O) = \\sum_k p(k \\mid x_O)\\, \\mu_{kd}, \\qquad
    p(k \\mid x_O) \\propto \\pi_k \\prod_{e \\in O} \\mu_{ke}^{x_e} (1 - \\mu_{ke})^{1 - x_e},

which is :class:`~pyro_attention.nn.MixtureAttention` (``kind="bernoulli"``) with the components'
logits as keys, their means as values, :math:`\\log\\pi` as the log prior and ``observed=O``.
With posterior draws :math:`\\theta^{(s)}` the read-out is averaged over the draws.

It is compared with

* :class:`PixelTransformer`, a small softmax-attention transformer over the pixel tokens trained to
  fill in the same kinds of masks (:func:`train_pixel_transformer`);
* :func:`nearest_neighbour_lookup`, hard attention on the ``k`` training images closest in Hamming
  distance on the observed pixels;
* the pixel marginals (a one-component mixture), the floor every method should beat.

All are scored on the missing pixels only: negative log-likelihood per pixel (nats) and the
accuracy of the prediction rounded at 1/2 (:func:`score_predictions`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from pyro_attention._io import write_json
from pyro_attention._validation import check_positive_int, check_tensor
from pyro_attention.nn import MixtureAttention

#: how the observed pixels are chosen: the top rows, or a uniformly random half of the pixels
SCHEMES = ("top-half", "random")
LOOKUP_COLUMNS = ("method", "scheme", "pixel_nll", "pixel_accuracy", "seconds", "parameters")
_EPS = 1e-6


def _check_images(images: object, name: str, dim: int | None = None) -> torch.Tensor:
    images = check_tensor(images, name, ndim=2, last_dim=dim)
    if not torch.all((images == 0) | (images == 1)):
        raise ValueError(f"{name} must be binary (0/1); binarize it first, e.g. (x > 0.5).float()")
    return images


def _check_observed(observed: object, images: torch.Tensor) -> torch.Tensor:
    if not isinstance(observed, torch.Tensor) or observed.dtype != torch.bool:
        raise ValueError("observed must be a boolean tensor (True = pixel observed)")
    if observed.shape != images.shape:
        raise ValueError(
            f"observed has shape {tuple(observed.shape)} but the images have "
            f"{tuple(images.shape)}; build it with observation_mask(...)"
        )
    return observed


def observation_mask(
    num_images: int,
    image_shape: tuple[int, int],
    scheme: str,
    *,
    fraction: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Which pixels are observed, ``(num_images, H * W)`` boolean.

    :param scheme: ``"top-half"`` (rows ``0 .. H/2 - 1`` observed) or ``"random"`` (each image its
        own uniformly random set of ``round(fraction * H * W)`` observed pixels).
    :param fraction: the observed share for ``"random"``, in ``(0, 1)``.
    :param generator: CPU random generator for ``"random"`` (seeded for reproducible masks).
    """
    check_positive_int(num_images, "num_images")
    height, width = image_shape
    dim = height * width
    if scheme == "top-half":
        rows = torch.arange(height, device=device).repeat_interleave(width)
        return (rows < height // 2).expand(num_images, dim).clone()
    if scheme == "random":
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        ranks = torch.rand(num_images, dim, generator=generator).argsort(-1).argsort(-1)
        return (ranks < round(fraction * dim)).to(device)
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def score_predictions(
    probs: torch.Tensor, images: torch.Tensor, observed: torch.Tensor
) -> dict[str, float]:
    """NLL per missing pixel (nats) and accuracy of ``probs > 1/2`` on the missing pixels.

    :param probs: predicted :math:`p(x_d = 1 \\mid x_O)`, ``(N, D)``; clamped to
        :math:`[10^{-6}, 1 - 10^{-6}]`.
    """
    missing = ~observed
    if not missing.any():
        raise ValueError("observed marks every pixel observed: there is nothing to predict")
    p = probs.clamp(_EPS, 1 - _EPS)
    log_lik = images * p.log() + (1 - images) * torch.log1p(-p)
    correct = ((p > 0.5).to(images.dtype) == images).to(images.dtype)
    return {
        "pixel_nll": float(-log_lik[missing].mean()),
        "pixel_accuracy": float(correct[missing].mean()),
        "missing_pixels": int(missing.sum()),
    }


# ----------------------------------------------------------------------------- the lookups


@dataclass
class MixtureLookup:
    """A mixture's prediction: pixel probabilities ``(N, D)`` and the attention weights
    :math:`p(k \\mid x_O)` ``(N, K)``, both averaged over the posterior draws."""

    probs: torch.Tensor
    responsibilities: torch.Tensor


def mixture_lookup(
    weights: torch.Tensor,
    probs: torch.Tensor,
    images: torch.Tensor,
    observed: torch.Tensor,
    *,
    draws_per_chunk: int = 16,
) -> MixtureLookup:
    """Predict the missing pixels by attention over the mixture's components.

    :param weights: :math:`\\pi`, ``(K,)`` or posterior draws ``(S, K)``.
    :param probs: :math:`\\mu`, ``(K, D)`` or ``(S, K, D)``.
    :param images: ``(N, D)`` binary; only the observed entries are read.
    :param observed: ``(N, D)`` boolean.
    :param draws_per_chunk: draws processed together (caps memory at ``chunk * N * K * D``).
    """
    images = _check_images(images, "images")
    observed = _check_observed(observed, images)
    weights, probs = weights.to(images), probs.to(images)
    if weights.dim() == 1:
        weights, probs = weights.unsqueeze(0), probs.unsqueeze(0)
    if weights.dim() != 2 or probs.shape != (*weights.shape, images.shape[1]):
        raise ValueError(
            f"weights {tuple(weights.shape)} and probs {tuple(probs.shape)} must be (K,), (K, D) "
            f"or (S, K), (S, K, D) with D = {images.shape[1]} pixels"
        )
    attention = MixtureAttention("bernoulli")
    query, mask = images[:, None, :], observed[:, None, :]  # (N, Tq=1, D)
    probs_sum = images.new_zeros(images.shape)
    resp_sum = images.new_zeros(images.shape[0], weights.shape[1])
    for start in range(0, weights.shape[0], draws_per_chunk):
        mu = probs[start : start + draws_per_chunk].clamp(_EPS, 1 - _EPS)
        key = torch.logit(mu)[:, None]  # (S, 1, K, D)
        log_prior = weights[start : start + draws_per_chunk].clamp_min(1e-30).log()[:, None]
        kwargs = {"log_prior": log_prior, "observed": mask}
        probs_sum += attention(query, key, mu[:, None], **kwargs).sum(0).squeeze(-2)
        resp_sum += attention.responsibilities(query, key, **kwargs).sum(0).squeeze(-2)
    return MixtureLookup(probs_sum / weights.shape[0], resp_sum / weights.shape[0])


def nearest_neighbour_lookup(
    train: torch.Tensor,
    images: torch.Tensor,
    observed: torch.Tensor,
    *,
    k: int = 5,
    smoothing: float = 0.5,
) -> torch.Tensor:
    """Hard attention on the training set: average the ``k`` training images that disagree with
    the observed pixels least (Hamming distance on the observed pixels; ties to the lower
    index), smoothed as :math:`(\\sum_{j} t_{jd} + a) / (k + 2a)` so the NLL stays finite.

    :returns: ``(N, D)`` pixel probabilities.
    """
    train = _check_images(train, "train")
    images = _check_images(images, "images", train.shape[1])
    observed = _check_observed(observed, images)
    check_positive_int(k, "k")
    if k > train.shape[0]:
        raise ValueError(f"k={k} exceeds the {train.shape[0]} training images")
    if not smoothing > 0:
        raise ValueError(f"smoothing must be positive (add-a counts), got {smoothing!r}")
    m = observed.to(images.dtype)
    train = train.to(images)
    mismatches = (m * images) @ (1 - train).T + (m * (1 - images)) @ train.T  # (N, M)
    nearest = mismatches.argsort(dim=-1, stable=True)[:, :k]
    return (train[nearest].sum(1) + smoothing) / (k + 2 * smoothing)


class PixelTransformer(nn.Module):
    """A small softmax-attention transformer that fills in missing pixels.

    Each pixel is a token: an embedding of its state (0, 1 or missing) plus a learned position
    embedding; ``num_layers`` pre-norm encoder layers (``torch.nn.TransformerEncoderLayer``,
    scaled dot-product self-attention over all tokens) and a linear read-out give the logit of
    :math:`p(x_d = 1 \\mid x_O)` for every pixel.

    :param num_pixels: ``D``; :param d_model: token width; :param num_heads: attention heads.
    """

    def __init__(
        self,
        num_pixels: int,
        d_model: int = 32,
        num_heads: int = 4,
        num_layers: int = 3,
        dim_feedforward: int = 64,
    ) -> None:
        super().__init__()
        self.num_pixels = check_positive_int(num_pixels, "num_pixels")
        self.state = nn.Embedding(3, d_model)
        self.position = nn.Parameter(torch.randn(num_pixels, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, dim_feedforward, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, 1)

    def forward(self, images: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, D)`` of every pixel given ``images`` ``(N, D)`` where ``observed``."""
        state = torch.where(observed, images.long(), torch.full_like(images, 2).long())
        tokens = self.state(state) + self.position
        return self.readout(self.norm(self.encoder(tokens))).squeeze(-1)


def train_pixel_transformer(
    train: torch.Tensor,
    image_shape: tuple[int, int],
    *,
    schemes: Sequence[str] = SCHEMES,
    num_steps: int = 2000,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> tuple[PixelTransformer, list[float]]:
    """Fit a :class:`PixelTransformer` to fill in masks drawn from ``schemes``.

    Each step draws ``batch_size`` training images, gives each a mask of a scheme drawn uniformly
    from ``schemes`` and minimises the binary cross-entropy of the missing pixels (Adam, cosine
    decayed rate). ``options`` go to :class:`PixelTransformer`.

    :returns: the model (in eval mode, on ``train``'s device and dtype) and the loss per step.
    """
    train = _check_images(train, "train")
    check_positive_int(num_steps, "num_steps")
    check_positive_int(batch_size, "batch_size")
    with torch.random.fork_rng(devices=[]):  # seeded, leaving the global generator alone
        torch.manual_seed(seed)
        model = PixelTransformer(train.shape[1], **options).to(train)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_steps)
    losses = []
    model.train()
    for _ in tqdm(range(num_steps), desc="pixel transformer", disable=not progress):
        index = torch.randint(train.shape[0], (batch_size,), generator=generator)
        images = train[index.to(train.device)]
        choice = torch.randint(len(schemes), (batch_size,), generator=generator)
        observed = torch.empty(images.shape, dtype=torch.bool, device=train.device)
        for i, scheme in enumerate(schemes):
            rows = (choice == i).nonzero().squeeze(-1)
            if len(rows):
                observed[rows.to(train.device)] = observation_mask(
                    len(rows), image_shape, scheme, generator=generator, device=train.device
                )
        logits = model(images, observed)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, images, reduction="none")
        loss = bce[~observed].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return model, losses


# ----------------------------------------------------------------------------- the comparison


@dataclass
class LookupComparison:
    """Rows ``(method, scheme)`` of the lookup comparison, and what is behind them.

    :ivar rows: dicts with :data:`LOOKUP_COLUMNS`, ``kind`` and ``missing_pixels``.
    :ivar predictions: ``{scheme: {method: (N, D) probabilities}}`` on the test images.
    :ivar masks: ``{scheme: (N, D) observed}``.
    """

    rows: list[dict[str, Any]]
    predictions: dict[str, dict[str, torch.Tensor]]
    masks: dict[str, torch.Tensor]
    settings: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        from pyro_attention.infer.compare import format_table

        return format_table(self.rows, LOOKUP_COLUMNS)


def digits_lookup(
    mixtures: Mapping[str, Mapping[str, torch.Tensor]],
    train: torch.Tensor,
    test: torch.Tensor,
    *,
    image_shape: tuple[int, int] = (8, 8),
    schemes: Sequence[str] = SCHEMES,
    knn: int = 5,
    transformer_steps: int = 2000,
    transformer_options: Mapping[str, Any] | None = None,
    plot_mixture: str | None = None,
    num_plot: int = 3,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> LookupComparison:
    """Fill in the missing pixels of ``test`` with each mixture, the transformer, nearest
    neighbours and the pixel marginals; score them on the same masks.

    :param mixtures: ``{name: {"weights": (S, K), "probs": (S, K, D)}}``, e.g. the posterior draws
        of :func:`~pyro_attention.infer.compare.compare` (``comparison.draws[m].samples``).
    :param train: binary training images ``(M, D)`` (nearest neighbours, transformer, marginals).
    :param test: binary test images ``(N, D)``.
    :param schemes: which masks to score (:data:`SCHEMES`); masks are drawn from ``seed``.
    :param knn: ``k`` of the nearest-neighbour lookup.
    :param transformer_steps: training steps of the transformer (0 leaves it out);
        ``transformer_options`` go to :func:`train_pixel_transformer`.
    :param plot_mixture: the mixture whose components ``lookup.png`` shows (default: the first).
    :param out: folder for ``lookup.json`` and ``lookup.png``.
    """
    train = _check_images(train, "train", image_shape[0] * image_shape[1])
    test = _check_images(test, "test", train.shape[1])
    if test.device != train.device or test.dtype != train.dtype:
        raise ValueError("test must have train's dtype and device; use test.to(train)")
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown or not schemes:
        raise ValueError(f"schemes must be a non-empty subset of {SCHEMES}, got {list(schemes)}")
    for name, samples in mixtures.items():
        if "weights" not in samples or "probs" not in samples:
            raise ValueError(f"mixture {name!r} needs 'weights' and 'probs' draws")
    generator = torch.Generator().manual_seed(seed)
    masks = {
        s: observation_mask(len(test), image_shape, s, generator=generator, device=test.device)
        for s in schemes
    }
    rows: list[dict[str, Any]] = []
    predictions: dict[str, dict[str, torch.Tensor]] = {s: {} for s in schemes}
    lookups: dict[str, dict[str, MixtureLookup]] = {s: {} for s in schemes}

    def add(method: str, kind: str, scheme: str, probs: torch.Tensor, **extra: Any) -> None:
        predictions[scheme][method] = probs.detach()
        scores = score_predictions(probs.detach(), test, masks[scheme])
        rows.append({"method": method, "kind": kind, "scheme": scheme, **scores, **extra})

    for name, samples in mixtures.items():
        weights, probs = samples["weights"].detach(), samples["probs"].detach()
        for scheme in schemes:
            t0 = time.perf_counter()
            lookup = mixture_lookup(weights, probs, test, masks[scheme])
            lookups[scheme][name] = lookup
            parameters = probs.shape[-2] * (probs.shape[-1] + 1)
            add(
                f"mixture ({name})",
                "mixture",
                scheme,
                lookup.probs,
                seconds=time.perf_counter() - t0,
                parameters=parameters,
            )
    if transformer_steps:
        t0 = time.perf_counter()
        model, losses = train_pixel_transformer(
            train,
            image_shape,
            schemes=schemes,
            num_steps=transformer_steps,
            seed=seed,
            progress=progress,
            **dict(transformer_options or {}),
        )
        fit_seconds = time.perf_counter() - t0
        parameters = sum(p.numel() for p in model.parameters())
        for scheme in schemes:
            t0 = time.perf_counter()
            with torch.no_grad():
                probs = torch.sigmoid(model(test, masks[scheme]))
            add(
                "transformer",
                "transformer",
                scheme,
                probs,
                seconds=fit_seconds + time.perf_counter() - t0,
                parameters=parameters,
                final_train_loss=sum(losses[-50:]) / len(losses[-50:]),
            )
    marginal = (train.sum(0) + 0.5) / (len(train) + 1.0)
    for scheme in schemes:
        t0 = time.perf_counter()
        probs = nearest_neighbour_lookup(train, test, masks[scheme], k=knn)
        add(
            f"{knn}-nearest-neighbour",
            "nearest-neighbour",
            scheme,
            probs,
            seconds=time.perf_counter() - t0,
            parameters=train.numel(),
        )
        add(
            "pixel marginals",
            "marginal",
            scheme,
            marginal.expand_as(test),
            seconds=0.0,
            parameters=train.shape[1],
        )
    rows.sort(key=lambda r: (schemes.index(r["scheme"]), r["pixel_nll"]))
    settings = {
        "schemes": list(schemes),
        "knn": knn,
        "transformer_steps": transformer_steps,
        "transformer_options": dict(transformer_options or {}),
        "num_train": len(train),
        "num_test": len(test),
        "seed": seed,
    }
    result = LookupComparison(rows, predictions, masks, settings)
    if out is not None:
        out = Path(out)
        result.files.append(write_json(out / "lookup.json", {"settings": settings, "rows": rows}))
        if mixtures:
            from pyro_attention.diagnostics.plots import save_figure

            name = plot_mixture or next(iter(mixtures))
            if name not in mixtures:
                raise ValueError(f"plot_mixture {name!r} is not one of {list(mixtures)}")
            fig = plot_lookup(result, test, mixtures[name], name, lookups, image_shape, num_plot)
            result.files.append(save_figure(fig, out / "lookup.png"))
    return result


def plot_lookup(
    result: LookupComparison,
    test: torch.Tensor,
    mixture: Mapping[str, torch.Tensor],
    mixture_name: str,
    lookups: Mapping[str, Mapping[str, MixtureLookup]],
    image_shape: tuple[int, int],
    num_plot: int = 3,
    top: int = 3,
) -> Figure:
    """For ``num_plot`` test digits per scheme: the digit, its observed part (missing pixels
    grey), the ``top`` components with their weights :math:`p(k \\mid x_O)`, and each method's
    prediction of the missing pixels (observed pixels shown as given)."""
    probs = mixture["probs"].detach().cpu()
    probs = probs.mean(0) if probs.dim() == 3 else probs  # the draws' mean components
    shown = result.predictions[next(iter(result.predictions))]
    methods = [m for m in shown if m == f"mixture ({mixture_name})" or "mixture" not in m]
    methods = [m for m in methods if m != "pixel marginals"]
    columns = 2 + top + len(methods)
    schemes = list(result.masks)
    fig = Figure(figsize=(1.1 * columns, 1.25 * num_plot * len(schemes) + 0.4))
    axes = fig.subplots(num_plot * len(schemes), columns, squeeze=False)
    height, width = image_shape

    def show(ax: Any, image: torch.Tensor, title: str) -> None:
        ax.imshow(image.reshape(height, width).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])

    for s, scheme in enumerate(schemes):
        observed = result.masks[scheme].cpu()
        resp = lookups[scheme][mixture_name].responsibilities.cpu()
        for i in range(num_plot):
            row = axes[s * num_plot + i]
            truth = test[i].detach().cpu()
            show(row[0], truth, "digit")
            row[0].set_ylabel(scheme, fontsize=7)
            show(row[1], torch.where(observed[i], truth, torch.tensor(0.35)), "observed")
            weights, order = resp[i].topk(top)
            for j in range(top):
                show(row[2 + j], probs[order[j]], f"k={int(order[j])}: {float(weights[j]):.2f}")
            for j, method in enumerate(methods):
                pred = result.predictions[scheme][method][i].cpu()
                show(row[2 + top + j], torch.where(observed[i], truth, pred), method)
    fig.suptitle(
        f"missing pixels from attention over {mixture_name}'s components p(k | observed)",
        fontsize=9,
    )
    return fig
