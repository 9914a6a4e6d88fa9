"""The shared argument check behind every transform's and prox map's hyperparameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax._util import check_real


@pytest.mark.parametrize("kwargs,value", [
    (dict(low=0.0), 0.0),
    (dict(low=0.0), np.array([0.0, 2.0])),
    (dict(low=0.0, low_open=True, high=1.0), 1.0),
    (dict(low=0.0, high=1.0, high_open=True), 0.0),
    (dict(high=2.0), -5),
    (dict(low=0.0), float("inf")),
    (dict(), np.float32(-3.0)),
])
def test_accepts_values_in_range(kwargs, value):
  check_real("x", value, **kwargs)


@pytest.mark.parametrize("kwargs,value,match", [
    (dict(low=0.0), -0.5, r"^x must be >= 0 \(and not NaN\), got -0.5$"),
    (dict(low=0.0, low_open=True), 0.0, r"^x must be > 0 \(and not NaN\), got 0.0$"),
    (dict(low=0.0, low_open=True, high=1.0), 1.5, r"^x must be in \(0, 1\] \(and not NaN\)"),
    (dict(low=0.0, high=1.0, high_open=True), 1.0, r"^x must be in \[0, 1\) "),
    (dict(high=2.0, high_open=True), 2.0, r"^x must be < 2 "),
    (dict(), float("nan"), r"^x must be a number \(and not NaN\), got nan$"),
    (dict(low=0.0, finite=True), float("inf"), r"^x must be >= 0 \(finite, not NaN\), got inf$"),
    (dict(low=0.0), np.array([0.5, -1.0]),
     r"got an array of shape \(2,\) with min -1.0 and max 0.5$"),
    (dict(low=0.0), np.array([0.5, np.nan]), r"got an array of shape \(2,\) with NaN entries$"),
])
def test_rejects_values_out_of_range(kwargs, value, match):
  with pytest.raises(ValueError, match=match):
    check_real("x", value, **kwargs)


@pytest.mark.parametrize("kwargs,value,match", [
    (dict(), None, "x must be a real number or array, got None"),
    (dict(), True, "x must be a real number or array, got True"),
    (dict(), "0.1", "x must be a real number or array, got '0.1'"),
    (dict(), np.array([1 + 2j]), "x must be a real number or array"),
    (dict(scalar=True), [1.0, 2.0], r"x must be a real scalar, got an array of shape \(2,\)"),
])
def test_rejects_wrong_types(kwargs, value, match):
  with pytest.raises(TypeError, match=match):
    check_real("x", value, **kwargs)


def test_traced_values_pass_but_their_shape_is_checked():
  out = jax.jit(lambda v: (check_real("x", v, low=0.0, scalar=True), v)[1])(jnp.float32(-1.0))
  assert float(out) == -1.0  # a traced value cannot be checked without a host sync
  with pytest.raises(TypeError, match=r"x must be a real scalar, got an array of shape \(3,\)"):
    jax.jit(lambda v: check_real("x", v, scalar=True))(jnp.ones(3))


def test_parse_list_checks_every_entry_up_front():
  from sparsejax._util import parse_list  # pylint: disable=import-outside-toplevel
  assert parse_list("--kinds", "l0, tl1,", allowed=("l0", "tl1")) == ["l0", "tl1"]
  assert parse_list("--fractions", "0,0.5", float, low=0.0, high=1.0, high_open=True) == [0.0, 0.5]
  assert parse_list("--kinds", "", allow_empty=True) == []
  with pytest.raises(ValueError, match=r"--kinds: unknown entry 'tll'; allowed: l0, tl1"):
    parse_list("--kinds", "l0,tll", allowed=("l0", "tl1"))
  with pytest.raises(ValueError, match=r"--widths: 'x' is not a valid int"):
    parse_list("--widths", "8,x", int)
  with pytest.raises(ValueError, match=r"--fractions: '1.0' is outside \[0.0, 1.0\)"):
    parse_list("--fractions", "0.5,1.0", float, low=0.0, high=1.0, high_open=True)
  with pytest.raises(ValueError, match=r"--repeats: '0' is outside \[1, inf\]"):
    parse_list("--repeats", "0", int, low=1)
  with pytest.raises(ValueError, match=r"--models: no entries in ','"):
    parse_list("--models", ",")
