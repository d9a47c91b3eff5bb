"""``MixtureAttention``'s soft path against ``torch.nn.functional.scaled_dot_product_attention``.

The Gaussian mixture reading of attention adds a per-key bias (``-|k|^2 / 2σ² + log π``) and
input checks to plain scaled dot-product attention, then calls the same kernel (when no logit
can overflow; otherwise it computes the responsibilities explicitly, in float64 if need be).
This script times both on the same shapes (forward, and forward + backward) and reports the
ratio; the reference is ``scaled_dot_product_attention`` with no mask, measured in the same run
(the outputs differ by the key biases by design; that the mixture equals SDPA *with* those
biases is tested in ``tests/nn/test_mixture_attention.py``).

    python bench/bench_mixture_attention.py --threads 1 --out runs/bench/mixture_attention.json
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import environment, interleaved_median_seconds, print_machine, save_figures

from pyro_attention.nn import MixtureAttention

SHAPES = (  # (batch, heads, queries, keys, features)
    (32, 1, 64, 64, 64),
    (8, 8, 128, 128, 64),
    (4, 8, 512, 512, 64),
)


def measure(batch, heads, tq, tk, dim, sigma, repeats, device) -> dict:
    """Median times of both paths on one shape (forward; forward + backward)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, tq if i == 0 else tk, heads * dim, generator=generator).to(device)
        for i in range(3)
    )
    layer = MixtureAttention("gaussian", sigma=sigma, num_heads=heads)

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (heads, dim)).transpose(-2, -3)

    def sdpa(q=q, k=k, v=v) -> torch.Tensor:
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=sigma**-2)
        return out.transpose(-2, -3).flatten(-2)

    def mixture(q=q, k=k, v=v) -> torch.Tensor:
        return layer(q, k, v)

    def backward(fn):
        def run() -> None:
            qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
            fn(qq, kk, vv).sum().backward()

        return run

    with torch.no_grad():
        fwd = interleaved_median_seconds([sdpa, mixture], repeats, device)
    both = interleaved_median_seconds([backward(sdpa), backward(mixture)], repeats, device)
    return {
        "shape": [batch, heads, tq, tk, dim],
        "sdpa_forward_s": fwd[0],
        "mixture_forward_s": fwd[1],
        "forward_ratio": fwd[1] / fwd[0],
        "sdpa_forward_backward_s": both[0],
        "mixture_forward_backward_s": both[1],
        "forward_backward_ratio": both[1] / both[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="0 keeps torch's default")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sigma = 8.0  # 1/σ² = 1/64: the usual 1/√D scale would be σ = D^(1/4)
    load = print_machine()
    rows = []
    print(
        f"{'B x H x Tq x Tk x D':>22s} {'sdpa fwd ms':>12s} {'mixture fwd':>12s} {'ratio':>6s} "
        f"{'sdpa f+b ms':>12s} {'mixture f+b':>12s} {'ratio':>6s}"
    )
    for batch, heads, tq, tk, dim in SHAPES:
        row = measure(batch, heads, tq, tk, dim, sigma, args.repeats, device)
        rows.append(row)
        fwd = (row["sdpa_forward_s"], row["mixture_forward_s"])
        both = (row["sdpa_forward_backward_s"], row["mixture_forward_backward_s"])
        label = f"{batch}x{heads}x{tq}x{tk}x{dim}"
        print(
            f"{label:>22s} {1e3 * fwd[0]:12.3f} {1e3 * fwd[1]:12.3f} {fwd[1] / fwd[0]:6.2f} "
            f"{1e3 * both[0]:12.3f} {1e3 * both[1]:12.3f} {both[1] / both[0]:6.2f}"
        )
    figures = {"environment": environment(), "device": str(device), "rows": rows}
    figures["load_average"] = [load, print_machine()]
    save_figures(figures, args.out)


if __name__ == "__main__":
    main()
