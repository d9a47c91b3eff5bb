"""The layers hold at run time too: importing a low layer loads nothing above it.

(``pyro_attention.infer`` is the user-facing package of the upper layers: its ``__init__``
re-exports ``fit``, ``compare`` and the methods, so any of its modules loads them all.)"""

import subprocess
import sys

import pytest

#: the comparison layer and everything above the guides
ABOVE_GUIDES = (
    "pyro_attention.models",
    "pyro_attention.infer",
    "pyro_attention.experiments",
    "pyro_attention.cli",
)


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("pyro_attention.guides", ABOVE_GUIDES),
        ("pyro_attention.handlers", ("pyro_attention.guides", *ABOVE_GUIDES)),
        ("pyro_attention.models", ABOVE_GUIDES[1:]),
    ],
)
def test_importing_a_layer_loads_nothing_above_it(module, forbidden):
    code = (
        f"import sys, {module}\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('pyro_attention')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    above = [m for m in loaded if m.startswith(forbidden)]
    assert not above, f"import {module} loaded {above}"
