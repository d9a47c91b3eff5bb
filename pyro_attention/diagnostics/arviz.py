"""ArviZ bridge: posterior samples as an :class:`xarray.DataTree`, saved to and loaded from netCDF.

The tree follows the ArviZ schema (groups ``posterior``, ``log_likelihood``, ``observed_data``,
``sample_stats``) and is built with :func:`arviz_base.from_dict`, so that ``arviz_stats`` and
``arviz_plots`` read it directly::

    import arviz_stats

    # mu_samples: (S,) guide draws; log_lik: (S, N) pointwise log-likelihood
    dt = to_datatree({"mu": mu_samples}, log_likelihood={"obs": log_lik})
    arviz_stats.summary(dt)
    arviz_stats.loo(dt)
    save_datatree(dt, "runs/gmm/posterior.nc")

**Where the draws live.** arviz-stats 0.8 reads the sample dims only from
``arviz_base.rcParams["data.sample_dims"]`` (default ``("chain", "draw")``), never from the tree's
attrs, and ``arviz_stats.loo`` hard-codes ``("chain", "draw")``; ``summary``'s R-hat also needs
two sample dims. So every tree made here stores its draws on ``("chain", "draw")``: independent
draws (``sample_dims=("sample",)``, e.g. from a guide) become a single chain, which is also what
makes ``loo`` use relative efficiency ``r_eff = 1``, correct for independent draws. No global
setting is changed. ``attrs["sample_dims"]`` records the dims actually used (``["chain", "draw"]``)
and ``attrs["input_sample_dims"]`` the layout the arrays came in. ``arviz_base.extract(dt)``
stacks the draws back into one ``sample`` dim. With one chain, ``summary`` reports ``r_hat`` as NaN.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import arviz_base
import numpy as np
import torch
import xarray as xr

from pyro_attention._io import atomic_path

__all__ = ["add_heldout_log_likelihood", "load_datatree", "save_datatree", "to_datatree"]

#: The sample dims every tree made here stores its draws on (what arviz-stats 0.8 requires).
TREE_SAMPLE_DIMS: tuple[str, str] = ("chain", "draw")
_INPUT_LAYOUTS: tuple[tuple[str, ...], ...] = (("sample",), ("chain", "draw"))
_RESERVED_DIMS = frozenset({"sample", "chain", "draw"})
_RESERVED_ATTRS = frozenset({"sample_dims", "input_sample_dims"})
#: groups whose arrays start with the sample dims; ``heldout_log_likelihood`` (not an ArviZ
#: group) holds the pointwise log-likelihood of held-out data, read by
#: :func:`~pyro_attention.diagnostics.elpd.heldout_elpd`
_SAMPLE_GROUPS = (
    "posterior",
    "posterior_predictive",
    "log_likelihood",
    "heldout_log_likelihood",
    "sample_stats",
)
#: the pointwise log-likelihood groups (finite or -inf)
_LOG_LIKELIHOOD_GROUPS = ("log_likelihood", "heldout_log_likelihood")
#: every group name of the ArviZ schema
_GROUP_NAMES = frozenset(
    {*_SAMPLE_GROUPS, "prior", "prior_predictive", "observed_data", "constant_data"}
    | {"predictions", "predictions_constant_data", "warmup_posterior", "unconstrained_posterior"}
)
#: Attribute (per group) listing the attrs that :func:`save_datatree` stored as JSON text.
_JSON_ATTRS_KEY = "pyro_attention_json_attrs"

ArrayLike = torch.Tensor | np.ndarray


def _to_numpy(value: object, where: str) -> np.ndarray:
    """A tensor on any device, or array-like, as a numpy array of numbers or booleans."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        array = value.cpu().numpy()
    else:
        array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{where} must hold numbers or booleans, got dtype {array.dtype}; "
            "pass a torch.Tensor or a numeric numpy array"
        )
    return array


def _check_sample_dims(sample_dims: Sequence[str]) -> tuple[str, ...]:
    layout = (sample_dims,) if isinstance(sample_dims, str) else tuple(sample_dims)
    if layout not in _INPUT_LAYOUTS:
        raise ValueError(
            f"sample_dims must be ('sample',) for independent draws (a guide, importance "
            f"sampling) or ('chain', 'draw') for MCMC, got {sample_dims!r}"
        )
    return layout


def _convert_group(
    group: str,
    values: Mapping[str, object] | None,
    layout: tuple[str, ...],
    reference: tuple[str, tuple[int, ...]] | None,
) -> tuple[dict[str, np.ndarray], tuple[str, tuple[int, ...]] | None]:
    """Convert one group to ``(chain, draw, ...)`` numpy arrays, checking shared sample shape.

    ``reference`` is ``(where, leading shape)`` of the first array seen; returned updated.
    """
    if values is None:
        return {}, reference
    if not isinstance(values, Mapping):
        raise TypeError(
            f"{group} must be a mapping from variable name to array, got "
            f"{type(values).__name__}; e.g. {group}={{'mu': samples}}"
        )
    has_samples = group in _SAMPLE_GROUPS
    out: dict[str, np.ndarray] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{group} variable names must be non-empty strings, got {name!r}")
        where = f"{group}[{name!r}]"
        array = _to_numpy(value, where)
        if has_samples:
            if array.ndim < len(layout):
                raise ValueError(
                    f"{where} has shape {array.shape} but must start with the sample dims "
                    f"{layout}; give it leading axes of shape "
                    f"{'(S,)' if len(layout) == 1 else '(C, D)'}"
                )
            leading = array.shape[: len(layout)]
            if 0 in leading:
                raise ValueError(f"{where} has no draws (shape {array.shape}); pass at least one")
            if reference is None:
                reference = (where, leading)
            elif leading != reference[1]:
                raise ValueError(
                    f"{where} has leading sample shape {leading} (full shape {array.shape}) but "
                    f"{reference[0]} has {reference[1]}; every array of posterior, "
                    f"log_likelihood and sample_stats must start with the same sample dims "
                    f"{layout}"
                )
            if len(layout) == 1:
                array = array[np.newaxis]
        if group == "posterior" and array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = np.argwhere(~np.isfinite(array))
            kind = "NaN" if np.isnan(array).any() else "infinite"
            raise ValueError(
                f"{where} contains {len(bad)} non-finite ({kind}) value(s), the first at "
                f"index {tuple(int(i) for i in bad[0][len(TREE_SAMPLE_DIMS) - len(layout) :])}"
                "; the fit diverged or the guide is broken: fix it or drop those draws"
            )
        if group in _LOG_LIKELIHOOD_GROUPS and array.dtype.kind == "f":
            if np.isnan(array).any() or np.isposinf(array).any():
                raise ValueError(
                    f"{where} contains NaN or +inf; a pointwise log-likelihood must be finite "
                    "or -inf (zero likelihood)"
                )
        out[name] = array
    return out, reference


def _check_dims_and_coords(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    dims: Mapping[str, Sequence[str]],
    coords: Mapping[str, Sequence],
    sample_shape: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """Check ``dims`` against the arrays; return the coords of dims that occur in the tree."""
    sizes: dict[str, tuple[int, str]] = {
        dim: (size, "the posterior")
        for dim, size in zip(TREE_SAMPLE_DIMS, sample_shape, strict=True)
    }
    for group, variables in groups.items():
        skip = len(TREE_SAMPLE_DIMS) if group in _SAMPLE_GROUPS else 0
        for name, array in variables.items():
            if name not in dims:
                continue
            names = dims[name]
            if isinstance(names, str):
                raise TypeError(
                    f"dims[{name!r}] must be a sequence of dim names, got the string {names!r}; "
                    f"write dims={{{name!r}: [{names!r}]}}"
                )
            names = list(names)
            shape = array.shape[skip:]
            if group in _LOG_LIKELIHOOD_GROUPS:
                # ArviZ convention: the pointwise log-likelihood lacks the data's event dims,
                # so dims shared with observed_data may be longer; the extra names are dropped.
                names = names[: len(shape)]
            if len(names) != len(shape):
                raise ValueError(
                    f"dims[{name!r}] names {len(names)} dim(s) {names} but {group}[{name!r}] has "
                    f"{len(shape)} non-sample dim(s) with shape {shape}; name each of them"
                )
            for dim, size in zip(names, shape, strict=True):
                if dim in _RESERVED_DIMS:
                    raise ValueError(
                        f"dims[{name!r}] uses the reserved name {dim!r}; 'sample', 'chain' and "
                        "'draw' are the sample dims, pick another name (e.g. 'data')"
                    )
                seen = sizes.setdefault(dim, (size, f"{group}[{name!r}]"))
                if seen[0] != size:
                    raise ValueError(
                        f"dim {dim!r} has size {size} in {group}[{name!r}] but {seen[0]} in "
                        f"{seen[1]}; a dim name must mean the same axis everywhere"
                    )
    used: dict[str, np.ndarray] = {}
    for dim, values in coords.items():
        if dim == "sample":
            raise ValueError(
                "coords['sample'] is not supported: independent draws are stored on "
                "('chain', 'draw') with one chain; give coords['draw'] instead"
            )
        labels = np.asarray(values)
        if dim not in sizes:
            continue
        if labels.ndim != 1 or len(labels) != sizes[dim][0]:
            raise ValueError(
                f"coords[{dim!r}] has shape {labels.shape} but dim {dim!r} has size "
                f"{sizes[dim][0]} in {sizes[dim][1]}; give one label per position"
            )
        used[dim] = labels
    return used


def _check_attrs(attrs: Mapping[str, object]) -> dict[str, object]:
    out = dict(attrs)
    for key, value in out.items():
        if not isinstance(key, str):
            raise TypeError(f"attrs keys must be strings, got {key!r}")
        if key in _RESERVED_ATTRS or key == _JSON_ATTRS_KEY:
            raise ValueError(f"attrs[{key!r}] is set by to_datatree itself; drop it from attrs")
        if key in _GROUP_NAMES:  # ArviZ finds groups as attributes: this one would hide it
            raise ValueError(
                f"attrs[{key!r}] has the name of an ArviZ group, and arviz_stats would read it "
                f"as that group; rename it (e.g. {key + '_note'!r})"
            )
        try:
            json.dumps(_jsonable(value))
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"attrs[{key!r}] = {value!r} cannot be saved to netCDF ({error}); use strings, "
                "numbers, booleans, None, or lists/dicts of those"
            ) from None
    return out


def to_datatree(
    posterior: Mapping[str, ArrayLike],
    *,
    sample_dims: Sequence[str] = ("sample",),
    log_likelihood: Mapping[str, ArrayLike] | None = None,
    observed_data: Mapping[str, ArrayLike] | None = None,
    sample_stats: Mapping[str, ArrayLike] | None = None,
    posterior_predictive: Mapping[str, ArrayLike] | None = None,
    heldout_log_likelihood: Mapping[str, ArrayLike] | None = None,
    constant_data: Mapping[str, ArrayLike] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Sequence] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> xr.DataTree:
    """Posterior draws (and pointwise log-likelihood, data, sampler stats) as an ArviZ DataTree.

    Tensors may live on any device: they are detached and copied to the CPU.

    :param posterior: draws per latent variable, shape ``sample_shape + event_shape`` with
        ``sample_shape`` ``(S,)`` or ``(C, D)`` (see ``sample_dims``). Must not be empty; NaN or
        inf is refused.
    :param sample_dims: the leading axes of the input arrays: ``("sample",)`` for ``S``
        independent draws (guide samples, importance sampling), ``("chain", "draw")`` for ``C``
        MCMC chains of ``D`` draws. Either way the tree stores the draws on
        ``("chain", "draw")`` (independent draws as one chain): arviz-stats 0.8 needs that
        layout for ``summary``, ``ess`` and ``loo`` without extra arguments.
    :param log_likelihood: pointwise log-likelihood per observed site, shape
        ``sample_shape + data_shape`` (used by ``arviz_stats.loo``). NaN or +inf is refused.
    :param observed_data: the observed values per site, shape ``data_shape`` (no sample dims).
    :param sample_stats: per-draw sampler statistics (e.g. ``diverging``, ``lp``), shape
        ``sample_shape + ...``.
    :param posterior_predictive: draws of the observed variables from the posterior predictive,
        shape ``sample_shape + data_shape`` (for ``arviz_plots.plot_ppc_*``).
    :param heldout_log_likelihood: pointwise log-likelihood of *held-out* data per draw, shape
        ``sample_shape + heldout_shape``, in a group of that name (``log_likelihood`` stays the
        training data's, for ``loo``); :func:`~pyro_attention.diagnostics.elpd.heldout_elpd`
        turns it into ArviZ's ELPD object. NaN or +inf is refused.
    :param constant_data: data that is neither observed nor drawn (masks, inputs), no sample
        dims.
    :param dims: names of the non-sample dims per variable, shared by all groups, e.g.
        ``{"locs": ["component", "feature"], "obs": ["data", "feature"]}``. Entries for variables
        that are not given are ignored; unnamed dims get ArviZ's ``<var>_dim_<i>``. As in ArviZ,
        a ``log_likelihood`` variable may have fewer dims than named (the data's event dims,
        ``feature`` above, are summed out of the pointwise log-likelihood).
    :param coords: labels per dim name, e.g. ``{"component": ["a", "b", "c"]}``; labels of dims
        that do not occur are ignored.
    :param attrs: metadata stored on the tree's root, e.g. ``{"method": "enum", "model": "gmm"}``
        (JSON-like values, so that :func:`save_datatree` can write them).
    :returns: a DataTree with the given groups; ``attrs["sample_dims"] == ["chain", "draw"]``
        on the root and the sample groups, ``attrs["input_sample_dims"]`` the input layout.
    :raises ValueError: empty posterior, mismatched sample shapes, NaN draws, dims that do not
        fit the arrays (each message names the variable).

    Example::

        >>> import torch
        >>> dt = to_datatree({"mu": torch.randn(100)}, log_likelihood={"obs": torch.randn(100, 5)},
        ...                  dims={"obs": ["data"]}, attrs={"method": "enum"})
        >>> dict(dt.posterior.sizes), dict(dt.log_likelihood.sizes)
        ({'chain': 1, 'draw': 100}, {'chain': 1, 'draw': 100, 'data': 5})
    """
    layout = _check_sample_dims(sample_dims)
    if not isinstance(posterior, Mapping):
        raise TypeError(
            f"posterior must be a mapping from site name to samples, got "
            f"{type(posterior).__name__}; e.g. to_datatree({{'mu': samples}})"
        )
    if len(posterior) == 0:
        raise ValueError("posterior is empty; pass at least one variable, e.g. {'mu': samples}")
    user_attrs = _check_attrs(attrs or {})

    reference = None
    groups: dict[str, dict[str, np.ndarray]] = {}
    for group, values in (
        ("posterior", posterior),
        ("posterior_predictive", posterior_predictive),
        ("log_likelihood", log_likelihood),
        ("sample_stats", sample_stats),
        ("heldout_log_likelihood", heldout_log_likelihood),
        ("observed_data", observed_data),
        ("constant_data", constant_data),
    ):
        converted, reference = _convert_group(group, values, layout, reference)
        if values is not None:
            groups[group] = converted
    if reference is None:  # unreachable: posterior holds at least one checked array
        raise RuntimeError("to_datatree found no sample shape in a non-empty posterior")
    sample_shape = (1, *reference[1]) if len(layout) == 1 else reference[1]
    tree_coords = _check_dims_and_coords(groups, dims or {}, coords or {}, sample_shape)

    sample_attrs = {"sample_dims": list(TREE_SAMPLE_DIMS), "input_sample_dims": list(layout)}
    group_attrs: dict[str, dict[str, object]] = {
        group: dict(sample_attrs) for group in groups if group in _SAMPLE_GROUPS
    }
    group_attrs["/"] = {**user_attrs, **sample_attrs}
    return arviz_base.from_dict(
        groups,
        sample_dims=list(TREE_SAMPLE_DIMS),
        dims={name: list(names) for name, names in (dims or {}).items()},
        coords=tree_coords,
        attrs=group_attrs,
    )


def add_heldout_log_likelihood(
    tree: xr.DataTree,
    values: Mapping[str, ArrayLike],
    *,
    sample_dims: Sequence[str] = ("sample",),
    dims: Mapping[str, Sequence[str]] | None = None,
) -> xr.DataTree:
    """Add (or replace) the ``heldout_log_likelihood`` group of ``tree``, with draws of its
    own: e.g. one draw of a point estimate's held-out log-likelihood beside a posterior of
    many draws of the test data's alignments. Arrays as for :func:`to_datatree`.

    :returns: ``tree``, changed in place.
    """
    layout = _check_sample_dims(sample_dims)
    converted, reference = _convert_group("heldout_log_likelihood", values, layout, None)
    if reference is None:
        raise ValueError("values is empty; pass at least one variable, e.g. {'y': log_lik}")
    sample_shape = (1, *reference[1]) if len(layout) == 1 else reference[1]
    group = {"heldout_log_likelihood": converted}
    coords = _check_dims_and_coords(group, dims or {}, {}, sample_shape)
    attrs = {"sample_dims": list(TREE_SAMPLE_DIMS), "input_sample_dims": list(layout)}
    made = arviz_base.from_dict(
        group,
        sample_dims=list(TREE_SAMPLE_DIMS),
        dims={name: list(names) for name, names in (dims or {}).items()},
        coords=coords,
        attrs={"heldout_log_likelihood": attrs},
    )
    tree["heldout_log_likelihood"] = made["heldout_log_likelihood"]
    return tree


def _jsonable(value: object) -> object:
    """``value`` with numpy scalars/arrays and tuples turned into plain Python for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _encode_attrs(attrs: Mapping[Hashable, object], where: str) -> dict[Hashable, object]:
    """Store every non-string attr as JSON text (netCDF cannot hold bools, None, dicts, and
    h5netcdf reads a one-element list of strings back as a bare string)."""
    encoded: dict[Hashable, object] = {}
    json_keys = []
    for key, value in attrs.items():
        if key == _JSON_ATTRS_KEY:
            continue
        if isinstance(value, str):
            encoded[key] = value
            continue
        try:
            encoded[key] = json.dumps(_jsonable(value))
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"attribute {key!r} of {where} = {value!r} cannot be written to netCDF "
                f"({error}); store it as a string, number, boolean, None, or list/dict of those"
            ) from None
        json_keys.append(key)
    if json_keys:
        encoded[_JSON_ATTRS_KEY] = json.dumps(json_keys)
    return encoded


def _decode_attrs(attrs: Mapping[Hashable, object]) -> dict[Hashable, object]:
    decoded = dict(attrs)
    keys = decoded.pop(_JSON_ATTRS_KEY, None)
    if keys is None:
        return decoded
    for key in json.loads(str(keys)):
        if key in decoded:
            decoded[key] = json.loads(str(decoded[key]))
    return decoded


def save_datatree(dt: xr.DataTree, path: str | os.PathLike[str]) -> Path:
    """Write ``dt`` to a netCDF file (h5netcdf engine), atomically.

    The tree goes to a temporary file in the target's directory, which then replaces ``path``
    (``os.replace``), so readers never see a half-written file and an existing file is replaced
    whole. Parent directories are created. Attributes that are not strings (lists such as
    ``sample_dims``, numbers, booleans, None, dicts) are stored as JSON text and restored by
    :func:`load_datatree`; numpy arrays come back as lists.

    :param dt: the tree, e.g. from :func:`to_datatree`.
    :param path: the file to write, conventionally ``*.nc``.
    :returns: ``path`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(dt, xr.DataTree):
        raise TypeError(
            f"dt must be an xarray.DataTree, got {type(dt).__name__}; build one with to_datatree"
        )
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a directory; give a file name like 'x.nc'")
    tree = dt.copy(deep=False)
    for node in tree.subtree:
        node.attrs = _encode_attrs(node.attrs, f"group {node.path!r}")
    with atomic_path(path) as tmp:
        tree.to_netcdf(tmp, engine="h5netcdf")
    return path


def load_datatree(path: str | os.PathLike[str]) -> xr.DataTree:
    """Read a tree written by :func:`save_datatree`, fully into memory (the file is closed).

    :param path: a netCDF file.
    :returns: the tree, with the attributes :func:`save_datatree` encoded restored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no netCDF file at {str(path)!r}; write one with save_datatree")
    with xr.open_datatree(path, engine="h5netcdf") as opened:
        tree = opened.load()
    for node in tree.subtree:
        node.attrs = _decode_attrs(node.attrs)
    return tree
