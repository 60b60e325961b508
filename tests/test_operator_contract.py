"""One registry of every operator, looped through the same checks (``docs/conventions.md#operator-contract``):
shapes and dtype, independence of batch elements, per-sample misfit, adjointness / pseudo-inverse / SVD for linear
operators, and float64 gradcheck for differentiable ones. Each family lists small instances in
``tests/operators_<family>.py``."""
import pytest
import torch

from diffinv.operators import GaussianNoise, MatrixOperator

from operator_checks import check_operator
from operators_bh import SMALL_OPERATORS as BLACKHOLE
from operators_image import SMALL_OPERATORS as IMAGE
from operators_ns import SMALL_OPERATORS as NAVIER_STOKES

DENSE = [
    ("matrix_underdetermined", lambda: MatrixOperator.random(4, 8, torch.Generator().manual_seed(0), GaussianNoise(0.1))),
    ("matrix_overdetermined", lambda: MatrixOperator(torch.randn(12, 5, generator=torch.Generator().manual_seed(1)),
                                                      noise=GaussianNoise(0.1))),
    ("matrix_image_shaped", lambda: MatrixOperator(torch.randn(6, 16, generator=torch.Generator().manual_seed(2)),
                                                    input_shape=(1, 4, 4))),
]
REGISTRY = DENSE + IMAGE + NAVIER_STOKES + BLACKHOLE


def test_registry_names_are_unique():
    names = [name for name, _ in REGISTRY]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name,factory", REGISTRY, ids=[name for name, _ in REGISTRY])
def test_operator_contract(name, factory):
    check_operator(factory())


@pytest.mark.parametrize("name,factory", REGISTRY, ids=[name for name, _ in REGISTRY])
def test_bad_input_is_rejected(name, factory):
    op = factory()
    x = torch.zeros((2, *op.input_shape))
    with pytest.raises(ValueError):
        op(torch.zeros((2, *op.input_shape[:-1], op.input_shape[-1] + 1)))
    x[0].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="(?i)nan"):
        op(x)
