"""Attention as a mixture: responsibilities by Bayes' rule, heads, masks, the latent site."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyro_attention import handlers
from pyro_attention.alignment import is_alignment_site
from pyro_attention.handlers import enumerate_alignments
from pyro_attention.nn import MixtureAttention, dot_product_attention

TOL = {"rtol": 0.0, "atol": 1e-10}
B, TQ, TK, D, DV = 2, 3, 4, 6, 4


def randn(*shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)


def gaussian_inputs(device):
    q = randn(B, TQ, D, device=device, seed=1)
    k = randn(B, TK, D, device=device, seed=2)
    v = randn(B, TK, DV, device=device, seed=3)
    log_prior = torch.log_softmax(randn(B, TK, device=device, seed=4), -1)
    return q, k, v, log_prior


def bernoulli_inputs(device):
    g = torch.Generator().manual_seed(5)
    x = torch.bernoulli(torch.full((B, TQ, D), 0.5, dtype=torch.float64), generator=g)
    observed = torch.bernoulli(torch.full((B, TQ, D), 0.7, dtype=torch.float64), generator=g)
    key_logits = 2 * randn(B, TK, D, device=device, seed=6)
    v = randn(B, TK, DV, device=device, seed=7)
    log_prior = torch.log_softmax(randn(B, TK, device=device, seed=8), -1)
    return x.to(device), observed.to(device), key_logits, v, log_prior


def normalise(log_joint):
    return (log_joint - log_joint.logsumexp(-1, keepdim=True)).exp()


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
@pytest.mark.parametrize("with_observed", [False, True])
def test_gaussian_responsibilities_are_bayes_rule(device, sigma, with_observed):
    q, k, v, log_prior = gaussian_inputs(device)
    _, observed, *_ = bernoulli_inputs(device)
    m = observed if with_observed else torch.ones_like(q)
    # log N(q_i; k_j, σ² I) over the observed features, by torch.distributions: (B, Tq, Tk)
    comp = dist.Normal(k.unsqueeze(-3), sigma)  # (B, 1, Tk, D)
    log_lik = (comp.log_prob(q.unsqueeze(-2)) * m.unsqueeze(-2)).sum(-1)
    expected = normalise(log_lik + log_prior.unsqueeze(-2))

    attn = MixtureAttention("gaussian", sigma=sigma)
    obs = observed if with_observed else None
    resp = attn.responsibilities(q, k, log_prior=log_prior, observed=obs)
    torch.testing.assert_close(resp, expected, **TOL)
    out = attn(q, k, v, log_prior=log_prior, observed=obs)
    torch.testing.assert_close(out, expected @ v, **TOL)


@pytest.mark.parametrize("sigma", [0.5, 1.3])
def test_gaussian_is_softmax_attention_with_bias(device, sigma):
    q, k, v, log_prior = gaussian_inputs(device)
    bias = -k.square().sum(-1) / (2 * sigma**2) + log_prior  # (B, Tk)
    weights = torch.softmax(q @ k.mT / sigma**2 + bias.unsqueeze(-2), -1)
    attn = MixtureAttention("gaussian", sigma=sigma)
    torch.testing.assert_close(attn.responsibilities(q, k, log_prior=log_prior), weights, **TOL)
    out = attn(q, k, v, log_prior=log_prior)
    sdpa = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.unsqueeze(-2).expand(B, TQ, TK), scale=1 / sigma**2
    )
    torch.testing.assert_close(out, sdpa, **TOL)
    torch.testing.assert_close(out, weights @ v, **TOL)
    # the unnormalised log posterior differs from the exact one by a constant per query
    exact = (
        dist.Normal(k.unsqueeze(-3), sigma).log_prob(q.unsqueeze(-2)).sum(-1) + log_prior[:, None]
    )
    diff = exact - attn.logits(q, k, log_prior=log_prior)
    torch.testing.assert_close(diff, diff[..., :1].expand_as(diff), **TOL)


@pytest.mark.parametrize("with_observed", [False, True])
def test_bernoulli_responsibilities_are_bayes_rule(device, with_observed):
    x, observed, key_logits, v, log_prior = bernoulli_inputs(device)
    m = observed if with_observed else torch.ones_like(x)
    comp = dist.Bernoulli(logits=key_logits.unsqueeze(-3))
    log_lik = (comp.log_prob(x.unsqueeze(-2)) * m.unsqueeze(-2)).sum(-1)
    expected = normalise(log_lik + log_prior.unsqueeze(-2))

    attn = MixtureAttention("bernoulli")
    # unobserved pixels are ignored, whatever they hold
    query = torch.where(m > 0, x, torch.full_like(x, 0.5)) if with_observed else x
    obs = observed.bool() if with_observed else None
    resp = attn.responsibilities(query, key_logits, log_prior=log_prior, observed=obs)
    torch.testing.assert_close(resp, expected, **TOL)
    out = attn(query, key_logits, v, log_prior=log_prior, observed=obs)
    torch.testing.assert_close(out, expected @ v, **TOL)


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_heads_are_independent_mixtures(device, kind):
    H = 2
    if kind == "gaussian":
        q, k, v, log_prior = gaussian_inputs(device)
        observed, options = None, {"sigma": 0.8}
    else:
        q, observed, k, v, log_prior = bernoulli_inputs(device)
        options = {}
    multi = MixtureAttention(kind, num_heads=H, **options)
    single = MixtureAttention(kind, **options)
    dq, dv = D // H, DV // H
    per_head = [
        single(
            q[..., h * dq : (h + 1) * dq],
            k[..., h * dq : (h + 1) * dq],
            v[..., h * dv : (h + 1) * dv],
            log_prior=log_prior,
            observed=None if observed is None else observed[..., h * dq : (h + 1) * dq],
        )
        for h in range(H)
    ]
    out = multi(q, k, v, log_prior=log_prior, observed=observed)
    assert out.shape == (B, TQ, DV)
    torch.testing.assert_close(out, torch.cat(per_head, -1), **TOL)
    resp = multi.responsibilities(q, k, log_prior=log_prior, observed=observed)
    assert resp.shape == (B, H, TQ, TK)
    head1 = single.responsibilities(
        q[..., dq:],
        k[..., dq:],
        log_prior=log_prior,
        observed=None if observed is None else observed[..., dq:],
    )
    torch.testing.assert_close(resp[:, 1], head1, **TOL)
    # heads differ from one mixture over all features
    assert not torch.allclose(out, single(q, k, v, log_prior=log_prior, observed=observed))


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_key_mask_removes_components(device, kind, num_heads):
    if kind == "gaussian":
        q, k, v, log_prior = gaussian_inputs(device)
    else:
        q, _, k, v, log_prior = bernoulli_inputs(device)
    key_mask = torch.tensor([[True, False, True, True], [False, True, True, False]], device=device)
    attn = MixtureAttention(kind, num_heads=num_heads)
    resp = attn.responsibilities(q, k, log_prior=log_prior, key_mask=key_mask)
    mask = key_mask[:, None, :] if num_heads == 1 else key_mask[:, None, None, :]
    assert torch.all(resp.masked_select(~mask.expand_as(resp)) == 0)
    torch.testing.assert_close(resp.sum(-1), torch.ones_like(resp[..., 0]), **TOL)
    out = attn(q, k, v, log_prior=log_prior, key_mask=key_mask)
    # the masked keys' keys, values and prior can be anything
    k2, v2, lp2 = k.clone(), v.clone(), log_prior.clone()
    k2[~key_mask] = 3 * randn(int((~key_mask).sum()), D, device=device, seed=9)
    v2[~key_mask] = 100.0
    lp2[~key_mask] = 50.0
    torch.testing.assert_close(attn(q, k2, v2, log_prior=lp2, key_mask=key_mask), out, **TOL)
    # the mixture over the remaining keys only
    b = 1
    keep = key_mask[b]
    sub = attn(q[b], k[b, keep], v[b, keep], log_prior=log_prior[b, keep])
    torch.testing.assert_close(out[b], sub, **TOL)


def test_gaussian_self_attention(device):
    x = randn(B, 5, D, device=device, seed=10)
    attn = MixtureAttention("gaussian", sigma=0.05)
    torch.testing.assert_close(attn.self_attention(x), attn(x, x, x), **TOL)
    # each token is its own component: with small σ it takes all the responsibility
    resp = attn.responsibilities(x, x)
    torch.testing.assert_close(resp, torch.eye(5, dtype=x.dtype, device=device).expand_as(resp))
    with pytest.raises(ValueError, match="kind='gaussian'"):
        MixtureAttention("bernoulli").self_attention(x)


def test_latent_site_is_an_alignment(device):
    q, k, v, log_prior = gaussian_inputs(device)
    attn = MixtureAttention("gaussian", latent=True, name="memory")

    def model():
        with pyro.plate("batch", B, dim=-2), pyro.plate("queries", TQ, dim=-1):
            return attn(q, k, v, log_prior=log_prior)

    trace = poutine.trace(model).get_trace()
    site = trace.nodes["memory"]
    assert is_alignment_site(site)
    assert isinstance(site["fn"], dist.Categorical)
    assert site["value"].shape == (B, TQ)
    soft = MixtureAttention("gaussian").responsibilities(q, k, log_prior=log_prior)
    torch.testing.assert_close(site["fn"].probs, soft, **TOL)
    out = trace.nodes["_RETURN"]["value"]
    torch.testing.assert_close(out, v[torch.arange(B)[:, None], site["value"]])


def log_normal(y, loc):
    return dist.Normal(loc, 1.0).log_prob(y).sum(-1)


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_latent_enumeration_is_exact(device, kind):
    if kind == "gaussian":
        q, k, v, log_prior = gaussian_inputs(device)
        observed = None
    else:
        q, observed, k, v, log_prior = bernoulli_inputs(device)
    q, k, v, log_prior = q[0], k[0], v[0], log_prior[0]
    observed = None if observed is None else observed[0]
    key_mask = torch.tensor([True, True, False, True], device=device)
    y = randn(TQ, DV, device=device, seed=11)
    attn = MixtureAttention(kind, latent=True)
    kwargs = {"log_prior": log_prior, "key_mask": key_mask, "observed": observed}

    def model():
        with pyro.plate("queries", TQ, dim=-1):
            loc = attn(q, k, v, **kwargs)
            pyro.sample("y", dist.Normal(loc, 1.0).to_event(1), obs=y)

    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(enumerate_alignments(model), lambda: None)
    resp = MixtureAttention(kind).responsibilities(q, k, **kwargs)  # (Tq, Tk)
    brute = 0.0
    for i in range(TQ):
        brute += torch.stack(
            [resp[i, j].log() + log_normal(y[i], v[j]) for j in range(TK) if key_mask[j]]
        ).logsumexp(0)
    assert loss == pytest.approx(-brute.item(), abs=1e-10)

    # under soft(), the latent layer is the soft layer
    with handlers.soft():
        out = attn(q, k, v, **kwargs)
    torch.testing.assert_close(out, MixtureAttention(kind)(q, k, v, **kwargs), **TOL)


def test_latent_heads_enumerate_jointly(device):
    """Two heads, two sites: the likelihood sums over all pairs of keys."""
    q, k, v, log_prior = (t[0] for t in gaussian_inputs(device))
    y = randn(TQ, DV, device=device, seed=12)
    attn = MixtureAttention("gaussian", num_heads=2, latent=True, sigma=1.5)

    def model():
        with pyro.plate("queries", TQ, dim=-1):
            loc = attn(q, k, v, log_prior=log_prior)
            pyro.sample("y", dist.Normal(loc, 1.0).to_event(1), obs=y)

    trace = poutine.trace(model).get_trace()
    assert is_alignment_site(trace.nodes["key_head0"])
    assert is_alignment_site(trace.nodes["key_head1"])
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(enumerate_alignments(model), lambda: None)
    resp = MixtureAttention("gaussian", num_heads=2, sigma=1.5).responsibilities(
        q, k, log_prior=log_prior
    )  # (H, Tq, Tk)
    dv = DV // 2
    brute = 0.0
    for i in range(TQ):
        terms = [
            resp[0, i, a].log()
            + resp[1, i, b].log()
            + log_normal(y[i], torch.cat([v[a, :dv], v[b, dv:]]))
            for a, b in itertools.product(range(TK), repeat=2)
        ]
        brute += torch.stack(terms).logsumexp(0)
    assert loss == pytest.approx(-brute.item(), abs=1e-10)
    with handlers.soft():
        out = attn(q, k, v, log_prior=log_prior)
    soft = MixtureAttention("gaussian", num_heads=2, sigma=1.5)(q, k, v, log_prior=log_prior)
    torch.testing.assert_close(out, soft, **TOL)


def test_dot_product_attention_matches_softmax(device):
    q, k, v, _ = gaussian_inputs(device)
    mask = torch.rand(B, TQ, TK, generator=torch.Generator().manual_seed(0)) > 0.4
    mask[..., 0] = True
    mask = mask.to(device)
    scores = (q @ k.mT * 0.3).masked_fill(~mask, -torch.inf)
    expected = torch.softmax(scores, -1) @ v
    torch.testing.assert_close(dot_product_attention(q, k, v, mask, scale=0.3), expected, **TOL)
    default = torch.softmax(q @ k.mT / D**0.5, -1) @ v
    torch.testing.assert_close(dot_product_attention(q, k, v), default, **TOL)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q, k, v: dot_product_attention(q, k[..., :-1], v), "query .*key"),
        (lambda q, k, v: dot_product_attention(q, k, v[..., :-1, :]), "key .*value"),
        (lambda q, k, v: dot_product_attention(q, k, v, mask=torch.ones(B, TQ, TK)), "mask"),
        (lambda q, k, v: dot_product_attention(q, k, v, scale=0.0), "scale"),
        (lambda q, k, v: MixtureAttention()(q, k[..., :-1], v), "query .*key"),
        (lambda q, k, v: MixtureAttention()(q, k, v[:, :-1]), "key .*value"),
        (lambda q, k, v: MixtureAttention(num_heads=4)(q, k, v), "num_heads"),
        (lambda q, k, v: MixtureAttention(num_heads=3)(q, k, v), "num_heads"),
        (lambda q, k, v: MixtureAttention(num_heads=0), "num_heads"),
        (lambda q, k, v: MixtureAttention(sigma=0.0), "sigma"),
        (lambda q, k, v: MixtureAttention(sigma=-1.0), "sigma"),
        (lambda q, k, v: MixtureAttention("bernoulli", sigma=1.0), "sigma"),
        (lambda q, k, v: MixtureAttention("bernoulli")(q, k, v), "query must be binary"),
        (lambda q, k, v: MixtureAttention("poisson"), "kind"),
        (lambda q, k, v: MixtureAttention()(q, k, v, log_prior=torch.zeros(TK + 1)), "log_prior"),
        (lambda q, k, v: MixtureAttention()(q, k, v, key_mask=torch.ones(TK)), "key_mask"),
        (
            lambda q, k, v: MixtureAttention()(q, k, v, observed=torch.full_like(q, 0.5)),
            "observed",
        ),
    ],
)
def test_bad_inputs_refused(device, call, match):
    q, k, v, _ = gaussian_inputs(device)
    with pytest.raises(ValueError, match=match):
        call(q, k, v)


def test_all_keys_masked_refused(device):
    q, k, v, _ = gaussian_inputs(device)
    with pytest.raises(ValueError, match="every key of a row is excluded"):
        MixtureAttention()(q, k, v, key_mask=torch.zeros(TK, dtype=torch.bool, device=device))


@pytest.mark.parametrize("latent", [False, True])
@pytest.mark.parametrize(
    "case, match",
    [
        ("no keys", "key has no items"),
        ("all -inf prior", "every key of a row is excluded"),
        ("nan prior", "log_prior contains NaN"),
        ("+inf prior", "log_prior contains NaN"),
        ("nan query", "query contains NaN"),
        ("inf key", "key contains NaN"),
        ("inf value", "value contains NaN"),
    ],
)
def test_degenerate_inputs_refused_not_zero_or_nan(device, latent, case, match):
    q, k, v, log_prior = gaussian_inputs(device)
    row = log_prior.clone()
    row[1] = -torch.inf  # one batch row without a component
    kwargs = {
        "no keys": {"key": k[:, :0], "value": v[:, :0]},
        "all -inf prior": {"log_prior": row},
        "nan prior": {"log_prior": log_prior.masked_fill(log_prior < -1, torch.nan)},
        "+inf prior": {
            "log_prior": log_prior.clamp(max=-1).index_fill(-1, torch.tensor(0), torch.inf)
        },
        "nan query": {"query": q.index_fill(-1, torch.tensor(0), torch.nan)},
        "inf key": {"key": k.index_fill(-1, torch.tensor(0), torch.inf)},
        "inf value": {"value": v.index_fill(-1, torch.tensor(0), torch.inf)},
    }[case]
    args = {"query": q, "key": k, "value": v} | kwargs
    attn = MixtureAttention(latent=latent)
    with pytest.raises(ValueError, match=match):
        attn(**args)
    if not latent and case != "inf value":  # the weights alone do not read the values
        with pytest.raises(ValueError, match=match):
            attn.responsibilities(**args)


def test_minus_inf_prior_excludes_a_key(device):
    q, k, _, log_prior = gaussian_inputs(device)
    excluded = log_prior.clone()
    excluded[:, 0] = -torch.inf
    mask = torch.ones(TK, dtype=torch.bool, device=device)
    mask[0] = False
    attn = MixtureAttention()
    weights = attn.responsibilities(q, k, log_prior=excluded)
    assert (weights[..., 0] == 0).all()
    torch.testing.assert_close(
        weights, attn.responsibilities(q, k, log_prior=log_prior, key_mask=mask), **TOL
    )


def _reference_output(q, k, v, sigma):
    """The Gaussian mixture's read-out in float64 by Bayes' rule with torch.distributions."""
    q, k, v = q.double(), k.double(), v.double()
    log_lik = dist.Normal(k.unsqueeze(-3), sigma).log_prob(q.unsqueeze(-2)).sum(-1)
    return torch.softmax(log_lik, -1) @ v


@pytest.mark.parametrize(
    "dtype, spread, sigma",
    [
        (torch.float16, 300.0, 1.0),  # squared key norms ~1e6 overflow float16 (max 65504)
        (torch.bfloat16, 300.0, 1.0),
        (torch.float32, 1.0, 1e-30),  # 1/sigma^2 = 1e60 overflows float32
        (torch.float64, 1.0, 1e-30),
        (torch.float32, 1.0, 1e30),  # every key equally likely: the mean value
    ],
)
def test_low_precision_and_extreme_scales_are_computed_correctly(device, dtype, spread, sigma):
    q, k, v, _ = gaussian_inputs(device)
    q, k, v = (spread * q).to(dtype), (spread * k).to(dtype), v.to(dtype)
    attn = MixtureAttention(sigma=sigma)
    out = attn(q, k, v)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = _reference_output(q, k, v, sigma).to(dtype)
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    if sigma < 1:  # the nearest key takes all the weight
        weights = attn.responsibilities(q, k)
        assert ((weights == 0) | (weights == 1)).all() and (weights.sum(-1) == 1).all()


def test_sigma_whose_scale_overflows_float64_is_refused():
    with pytest.raises(ValueError, match="sigma=1e-200 is too small"):
        MixtureAttention(sigma=1e-200)


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("num_heads", [1, 2])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_through_the_key_bias_match_bayes_rule(device, kind, num_heads, with_mask, dtype):
    """Training differentiates the per-key bias (key norms or softplus sums, and the log prior):
    the fused route that carries it as an extra feature gives Bayes' rule's gradients."""
    if kind == "gaussian":
        q, k, v, log_prior = gaussian_inputs(device)
    else:
        q, _, k, v, log_prior = bernoulli_inputs(device)
    v = torch.cat([v, v[..., :1] ** 2, v[..., :1]], -1)  # Dv = 6 = D: widths padded alike
    key_mask = torch.tensor([[True, False, True, True], [True, True, True, False]], device=device)
    mask = key_mask if with_mask else torch.ones_like(key_mask)
    sigma = 0.8 if kind == "gaussian" else None
    H, d, dv = num_heads, D // num_heads, v.shape[-1] // num_heads
    cotangent = randn(B, TQ, v.shape[-1], device=device, seed=11).to(dtype)

    def reference(q, k, v, log_prior):  # per head: log N(q; k, σ²I) or log Bern(x; k), by torch
        outs = []
        for h in range(H):
            qh, kh = q[..., h * d : (h + 1) * d], k[..., h * d : (h + 1) * d]
            vh = v[..., h * dv : (h + 1) * dv]
            comp = (
                dist.Normal(kh.unsqueeze(-3), sigma)
                if kind == "gaussian"
                else dist.Bernoulli(logits=kh.unsqueeze(-3))
            )
            log_joint = comp.log_prob(qh.unsqueeze(-2)).sum(-1) + log_prior.unsqueeze(-2)
            log_joint = log_joint.masked_fill(~mask.unsqueeze(-2), -torch.inf)
            outs.append(torch.softmax(log_joint, -1) @ vh)
        return torch.cat(outs, -1)

    attn = MixtureAttention(kind, sigma=sigma, num_heads=num_heads)
    grads = []
    for fn in (reference, lambda *a: attn(*a[:3], log_prior=a[3], key_mask=mask)):
        inputs = [x.to(dtype).detach().requires_grad_() for x in (q, k, v, log_prior)]
        out = fn(*inputs)
        (out * cotangent).sum().backward()
        grads.append([out.detach()] + [x.grad for x in inputs])
        with torch.no_grad():  # the no-grad route (bias as a float mask) gives the same output
            torch.testing.assert_close(fn(*inputs), out.detach())
    tol = {} if dtype == torch.float32 else TOL
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, **tol)
    assert grads[1][2].abs().sum() > 0 and grads[1][4].abs().sum() > 0


@pytest.mark.parametrize("with_observed", [False, True])
def test_gaussian_inputs_far_from_the_origin_lose_no_precision(device, with_observed):
    """Queries and keys at 1e4 with a spread of 0.5, in float32: the dot-product form
    ``q·k - |k|²/2`` would cancel to noise; the output and every gradient match float64."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 10, 4, generator=g) * 0.5 + 1e4  # float32 values, exact in float64
    q = k[:, :3] + 0.1 * torch.randn(2, 3, 4, generator=g)
    v = torch.randn(2, 10, 6, generator=g)
    log_prior = torch.randn(2, 10, generator=g)
    observed = (torch.rand(2, 3, 4, generator=g) > 0.3).to(device) if with_observed else None
    results = []
    for dtype in (torch.float32, torch.float64):
        inputs = [x.to(device, dtype).detach().requires_grad_() for x in (q, k, v, log_prior)]
        out = MixtureAttention("gaussian")(*inputs[:3], log_prior=inputs[3], observed=observed)
        out.square().sum().backward()
        results.append([out.detach().double()] + [x.grad.double() for x in inputs])
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("exclude", ["key_mask", "log_prior"])
def test_excluded_keys_holding_huge_values_change_nothing(device, offset, exclude):
    """A padding key at 1e8 (masked, or with log prior -inf) takes no part in the centring: the
    float32 weights are those of the real keys alone, with or without an offset."""
    g = torch.Generator().manual_seed(1)
    k = torch.randn(6, 4, generator=g) + offset
    q = k[:3] + 0.3 * torch.randn(3, 4, generator=g)
    real = torch.tensor([True] * 5 + [False])
    expected = MixtureAttention("gaussian").responsibilities(q.double(), k[:5].double())
    padded = k.clone()
    padded[-1] = 1e8
    options = (
        {"key_mask": real.to(device)}
        if exclude == "key_mask"
        else {"log_prior": torch.where(real, 0.0, -torch.inf).to(device)}
    )
    got = MixtureAttention("gaussian").responsibilities(q.to(device), padded.to(device), **options)
    torch.testing.assert_close(got[:, -1], torch.zeros_like(got[:, -1]))
    torch.testing.assert_close(got[:, :5].double(), expected.to(device), rtol=0, atol=1e-6)
