"""Early, explicit checks of user input: every error names the argument and the fix."""

from __future__ import annotations

import torch


def check_tensor(
    value: object,
    name: str,
    *,
    ndim: int | None = None,
    last_dim: int | None = None,
    floating: bool = True,
    allow_empty: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Refuse data that would make inference fail later or silently.

    :param value: the user's data.
    :param name: the argument's name, used in the error message.
    :param ndim: required number of dimensions.
    :param last_dim: required size of the last dimension (e.g. the model's ``dim``).
    :param floating: require a floating dtype (float32/float64).
    :param allow_empty: accept a tensor with no elements.
    :param device: the device the tensor must be on (that of the model's parameters).
    :raises TypeError: not a tensor, or wrong dtype.
    :raises ValueError: wrong shape, empty, NaN/inf, or wrong device.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__name__}; "
            f"convert it with torch.as_tensor({name}, dtype=torch.float32)"
        )
    if floating and not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {value.dtype}; "
            f"use {name}.float() or {name}.double()"
        )
    if floating and value.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{name} has dtype {value.dtype}; inference needs float32 or float64 (the "
            f"conjugate updates and log-densities lose too much in half precision): use "
            f"{name}.float()"
        )
    if ndim is not None and value.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}"
            + ("; reshape it to (num_points, dim)" if ndim == 2 else "")
        )
    if last_dim is not None and value.shape[-1] != last_dim:
        raise ValueError(
            f"{name} has {value.shape[-1]} features in its last dimension but the model expects "
            f"{last_dim}; build the model with dim={value.shape[-1]} or select {last_dim} columns"
        )
    if not allow_empty and value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)}); pass at least one row")
    if device is not None and value.device.type != torch.device(device).type:
        raise ValueError(
            f"{name} is on {value.device} but the model's tensors are on {device}; "
            f"move it with {name}.to({str(device)!r})"
        )
    if value.is_floating_point() and not torch.isfinite(value).all():
        bad = (~torch.isfinite(value)).nonzero()
        first = tuple(bad[0].tolist())
        raise ValueError(
            f"{name} contains {len(bad)} non-finite value(s) (NaN or inf), the first at index "
            f"{first}; drop or impute those entries before inference"
        )
    return value


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int, refusing anything below 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_count(value: object, name: str, low: int = 1) -> int:
    """``value`` as a count: an int (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` as a seed of torch, numpy and Python's random: an int in ``[0, 2**32)``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"{name} must be an integer in [0, 2**32 - 1], got {value!r}")
    return value


def check_mixture_data(data: object, dim: int, num_components: int) -> torch.Tensor:
    """``data`` checked as ``(N, dim)`` finite floats with at least ``num_components`` points."""
    data = check_tensor(data, "data", ndim=2, last_dim=dim)
    if data.shape[0] < num_components:
        raise ValueError(
            f"data has {data.shape[0]} points but the model has {num_components} "
            "components; use fewer components or more data"
        )
    return data
