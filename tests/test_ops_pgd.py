"""Compiled pgd_step / pgd_step_ (CPU) against the pure-PyTorch reference in manifoldadv.ops.

Property tests draw the configuration with hypothesis (shape, norm, step, eps, box, degenerate
inputs) and fill tensors from a seeded generator, so each example is cheap and reproducible.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifoldadv import ops
from manifoldadv.ops.extension import use_kernel
from manifoldadv.errors import ExtensionError, UsageError

needs_ext = pytest.mark.skipif(not ops.extension_loaded(), reason=f"extension not built: {ops.EXTENSION_ERROR}")
INF = math.inf
PGD = torch.ops.manifoldadv.pgd_step.default if ops.extension_loaded() else None
PGD_ = torch.ops.manifoldadv.pgd_step_.default if ops.extension_loaded() else None

BOXES = [(0.0, 1.0), (-1.0, 1.0), (-INF, INF), (0.0, INF), (-INF, 1.0), (-0.5, 2.0)]
SETTINGS = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def make_case(seed, shape, box, *, delta_scale, degenerate):
    """x0 inside the box, x = x0 + a random delta (clamped to the box), random grad."""
    rng = np.random.default_rng(seed)
    lo, hi = box
    if math.isfinite(lo) and math.isfinite(hi):
        x0 = rng.uniform(lo, hi, size=shape)
    elif math.isfinite(lo):
        x0 = lo + rng.uniform(0.0, 3.0, size=shape)
    elif math.isfinite(hi):
        x0 = hi - rng.uniform(0.0, 3.0, size=shape)
    else:
        x0 = 3.0 * rng.normal(size=shape)
    x = np.clip(x0 + delta_scale * rng.normal(size=shape), lo, hi)
    g = rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 3)
    b = shape[0]
    flat = lambda a: a.reshape(b, -1)  # noqa: E731
    if "zero_grad" in degenerate:
        flat(g)[0] = 0.0
    if "zero_delta" in degenerate:
        flat(x)[-1] = flat(x0)[-1]
    if "sparse_grad" in degenerate:
        flat(g)[:, ::2] = 0.0
    if "ties" in degenerate:
        g = np.round(g * 2) / 2
    if "on_box" in degenerate and math.isfinite(hi):
        flat(x)[:, ::3] = hi
    if "nonfinite_grad" in degenerate:
        flat(g)[0, 0] = np.nan
        flat(g)[-1, -1] = np.inf
    if "nonfinite_x" in degenerate:
        flat(x)[0, -1] = np.inf
    if "nonfinite_x0" in degenerate:
        flat(x0)[-1, 0] = np.nan
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return t(x), t(x0), t(g)


shapes = st.one_of(
    st.tuples(st.integers(1, 5)),
    st.tuples(st.integers(1, 5), st.integers(1, 40)),
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    st.tuples(st.integers(1, 3), st.integers(100, 700)),
)
degenerates = st.sets(
    st.sampled_from(
        ["zero_grad", "zero_delta", "sparse_grad", "ties", "on_box", "nonfinite_grad", "nonfinite_x", "nonfinite_x0"]
    ),
    max_size=3,
)


def _tol(norm, *tensors):
    scale = max([1.0] + [float(t[torch.isfinite(t)].abs().max()) for t in tensors if torch.isfinite(t).any()])
    # linf: the same float32 operations in the same order -> identical. l2: the kernel's norms
    # come from float64 sums, the reference's from torch norms -> a few float32 ulps.
    # l1: same float32 step, float64 projection -> identical up to the last float32 rounding.
    return {"linf": 0.0, "l2": 4e-6 * scale, "l1": 1e-6 * scale}[norm]


@needs_ext
@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=shapes,
    norm=st.sampled_from(["linf", "l2", "l1"]),
    box=st.sampled_from(BOXES),
    step=st.sampled_from([0.0, 1e-3, 0.05, 0.5, 3.0]),
    eps=st.sampled_from([0.0, 1e-3, 0.03, 0.5, 4.0, INF]),
    delta_scale=st.sampled_from([0.0, 0.01, 0.3]),
    q=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    degenerate=degenerates,
)
def test_kernel_matches_reference(seed, shape, norm, box, step, eps, delta_scale, q, degenerate):
    x, x0, g = make_case(seed, shape, box, delta_scale=delta_scale, degenerate=degenerate)
    kw = dict(step=step, eps=eps, norm=norm, lo=box[0], hi=box[1], l1_quantile=q)
    ref = ops.pgd_step_reference(x, x0, g, **kw)
    out = ops.pgd_step(x, x0, g, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, rtol=0.0, atol=_tol(norm, x, x0), equal_nan=True)
    # in place gives the same result
    xi = x.clone()
    assert ops.pgd_step_(xi, x0, g, **kw) is xi
    torch.testing.assert_close(xi, out, rtol=0.0, atol=0.0, equal_nan=True)


@needs_ext
@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=shapes,
    norm=st.sampled_from(["linf", "l2", "l1"]),
    box=st.sampled_from(BOXES),
    step=st.sampled_from([0.0, 0.05, 0.5]),
    eps=st.sampled_from([0.0, 0.03, 0.5, 4.0, INF]),
)
def test_invariants(seed, shape, norm, box, step, eps):
    """Whatever the inputs: inside the box, inside the eps-ball (finite samples)."""
    x, x0, g = make_case(seed, shape, box, delta_scale=0.3, degenerate=set())
    lo, hi = box
    out = ops.pgd_step(x, x0, g, step=step, eps=eps, norm=norm, lo=lo, hi=hi)
    assert torch.isfinite(out).all()
    assert (out >= lo).all() and (out <= hi).all()
    d = (out.double() - x0.double()).reshape(x.shape[0], -1)
    size = {"linf": d.abs().amax(1), "l2": d.norm(dim=1), "l1": d.abs().sum(1)}[norm]
    # float32 rounding of x0 + d: a few ulps of |x0| per coordinate
    slack = 1e-6 * (1 + x0.abs().max().item()) * (d.shape[1] if norm == "l1" else math.sqrt(d.shape[1]))
    assert (size <= eps + slack).all()


@needs_ext
def test_cpu_backends_are_compiled():
    b = ops.backends(("cpu",))
    assert all(per["cpu"] == "compiled" for per in b.values()), b


@needs_ext
def test_degenerate_semantics():
    x0 = torch.full((3, 4), 0.5)
    x = x0.clone()
    g = torch.tensor([[0.0, 0, 0, 0], [1.0, -2, float("nan"), float("inf")], [1, 1, 1, 1]])
    # zero gradient: no move at all (linf, l2); finite x/x0
    for norm in ("linf", "l2", "l1"):
        out = ops.pgd_step(x, x0, g, step=0.1, eps=1.0, norm=norm)
        assert torch.equal(out[0], x0[0]), norm
    # non-finite grad entries count as zero
    out = ops.pgd_step(x, x0, g, step=0.1, eps=1.0, norm="linf")
    assert torch.allclose(out[1], torch.tensor([0.6, 0.4, 0.5, 0.5]))
    # NaN in x: that coordinate for linf, the whole sample for l2 and l1
    xn = x.clone()
    xn[2, 1] = float("nan")
    lin = ops.pgd_step(xn, x0, g, step=0.1, eps=1.0, norm="linf")
    assert torch.isnan(lin[2, 1]) and torch.isfinite(lin[2, [0, 2, 3]]).all() and torch.isfinite(lin[:2]).all()
    for norm in ("l2", "l1"):
        o = ops.pgd_step(xn, x0, g, step=0.1, eps=1.0, norm=norm)
        assert torch.isnan(o[2]).all() and torch.isfinite(o[:2]).all(), norm
    # FGSM: one linf step from x0 with step = eps lands on the box-clipped corner
    fg = ops.pgd_step(x0, x0, g, step=0.25, eps=0.25, norm="linf")
    assert torch.allclose(fg[2], torch.full((4,), 0.75))


@needs_ext
def test_l2_huge_gradient_still_moves():
    # ||g||^2 overflows float32 here; the step must still be step * g / ||g||.
    x = torch.zeros(1, 2)
    g = torch.tensor([[3e19, 4e19]])
    for fn in (ops.pgd_step, ops.pgd_step_reference):
        out = fn(x, x, g, step=0.1, eps=1.0, norm="l2", lo=-1.0, hi=1.0)
        torch.testing.assert_close(out, torch.tensor([[0.06, 0.08]]))


@needs_ext
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_empty_inputs(norm):
    for shape in [(0, 5), (3, 0), (0,)]:
        x = torch.zeros(shape)
        out = ops.pgd_step(x, x, x, step=0.1, eps=1.0, norm=norm)
        ref = ops.pgd_step_reference(x, x, x, step=0.1, eps=1.0, norm=norm)
        assert out.shape == ref.shape == x.shape


@needs_ext
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_are_upcast(norm, dtype):
    """The CPU kernel is float32-only; the public API upcasts, with the reference's semantics."""
    x, x0, g = make_case(3, (4, 50), (0.0, 1.0), delta_scale=0.01, degenerate=set())
    x, x0, g = x.to(dtype), x0.to(dtype), g.to(dtype)
    kw = dict(step=0.05, eps=0.5, norm=norm)
    out = ops.pgd_step(x, x0, g, **kw)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ops.pgd_step_reference(x, x0, g, **kw), atol=1e-5, rtol=0)
    xi = x.clone()
    ops.pgd_step_(xi, x0, g, **kw)
    torch.testing.assert_close(xi, out, atol=0, rtol=0)
    # mixed dtypes: everything runs in float32
    out2 = ops.pgd_step(x, x0.float(), g, **kw)
    torch.testing.assert_close(out2, ops.pgd_step_reference(x, x0.float(), g, **kw), atol=1e-5, rtol=0)


@needs_ext
def test_op_rejects_bad_arguments_with_clear_messages():
    x = torch.rand(2, 3)
    good = (0.1, 0.5, "l2", 0.0, 1.0, 0.99)
    with pytest.raises(RuntimeError, match="float32"):
        PGD(x.double(), x.double(), x.double(), *good)
    with pytest.raises(RuntimeError, match="one shape"):
        PGD(x, x[:1], x, *good)
    with pytest.raises(RuntimeError, match="norm must be one of"):
        PGD(x, x, x, 0.1, 0.5, "l3", 0.0, 1.0, 0.99)
    with pytest.raises(RuntimeError, match="step must be finite"):
        PGD(x, x, x, float("inf"), 0.5, "l2", 0.0, 1.0, 0.99)
    with pytest.raises(RuntimeError, match="eps must be >= 0"):
        PGD(x, x, x, 0.1, -1.0, "l2", 0.0, 1.0, 0.99)
    with pytest.raises(RuntimeError, match="lo <= hi"):
        PGD(x, x, x, 0.1, 0.5, "l2", 1.0, 0.0, 0.99)
    with pytest.raises(RuntimeError, match="l1_quantile"):
        PGD(x, x, x, 0.1, 0.5, "l1", 0.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="batch dimension"):
        PGD(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0), *good)
    with pytest.raises(RuntimeError, match="memory location|overlap"):
        y = torch.rand(4, 3)
        PGD_(y[:2], y[1:3], y[:2].clone(), *good)
    # the public API raises UsageError before reaching the op
    with pytest.raises(UsageError):
        ops.pgd_step(x, x, x, step=float("inf"), eps=0.5, norm="l2")
    with pytest.raises(UsageError):
        ops.pgd_step(x, x, x, step=0.1, eps=0.5, norm="l0")


@needs_ext
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_noncontiguous_and_aliased_inputs(norm):
    x, x0, g = make_case(7, (6, 3, 8), (0.0, 1.0), delta_scale=0.05, degenerate=set())
    kw = dict(step=0.05, eps=0.4, norm=norm)
    xt, x0t, gt = (t.transpose(1, 2) for t in (x, x0, g))
    ref = ops.pgd_step_reference(xt, x0t, gt, **kw)
    torch.testing.assert_close(ops.pgd_step(xt, x0t, gt, **kw), ref, atol=_tol(norm, x), rtol=0)
    xi = x.clone().transpose(1, 2)
    ops.pgd_step_(xi, x0t, gt, **kw)
    torch.testing.assert_close(xi, ref, atol=_tol(norm, x), rtol=0)
    # FGSM-style aliasing: x0 is x itself, in place
    xa = x0.clone()
    ops.pgd_step_(xa, xa, g, **kw)
    torch.testing.assert_close(xa, ops.pgd_step_reference(x0, x0, g, **kw), atol=_tol(norm, x), rtol=0)


@needs_ext
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_long_samples_and_threads(norm):
    """Few long samples take the chunked l2 path, and an output this large (> 4 MiB) is written
    with streaming stores; results do not depend on either, nor on the thread count."""
    x, x0, g = make_case(11, (2, 600_001), (0.0, 1.0), delta_scale=0.01, degenerate=set())
    kw = dict(step=0.5, eps=20.0 if norm != "linf" else 0.03, norm=norm)
    ref = ops.pgd_step_reference(x, x0, g, **kw)
    out = ops.pgd_step(x, x0, g, **kw)
    torch.testing.assert_close(out, ref, atol=_tol(norm, x), rtol=0)
    xi = x.clone()
    ops.pgd_step_(xi, x0, g, **kw)
    torch.testing.assert_close(xi, out, atol=0, rtol=0)
    # unaligned start: a view one element into its storage
    xs, x0s, gs = (torch.cat([t.new_zeros(1), t.flatten()])[1:].view(t.shape) for t in (x, x0, g))
    torch.testing.assert_close(ops.pgd_step(xs, x0s, gs, **kw), out, atol=0, rtol=0)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.pgd_step(x, x0, g, **kw)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(one, out, atol=_tol(norm, x), rtol=0)


@needs_ext
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_opcheck_pgd_step(norm):
    x, x0, g = make_case(5, (3, 2, 7), (0.0, 1.0), delta_scale=0.05, degenerate=set())
    args = (0.05, 0.5, norm, 0.0, 1.0, 0.9)
    torch.library.opcheck(PGD, (x, x0, g, *args))
    torch.library.opcheck(PGD_, (x.clone(), x0, g, *args))


@needs_ext
def test_default_isa_kernels_match(tmp_path):
    """The baseline-ISA kernel table (ATEN_CPU_CAPABILITY=default) agrees with the reference."""
    script = tmp_path / "check.py"
    script.write_text(
        "import torch\n"
        "from manifoldadv import ops\n"
        "assert ops.cpu_kernel_isa() == 'default', ops.cpu_kernel_isa()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for norm, eps in (('linf', 0.03), ('l2', 0.5), ('l1', 3.0)):\n"
        "    for shape in ((5, 37), (3, 3, 11, 13), (2, 200003)):\n"
        "        x0 = torch.rand(shape, generator=g)\n"
        "        x = (x0 + 0.02 * torch.randn(shape, generator=g)).clamp(0, 1)\n"
        "        gr = torch.randn(shape, generator=g)\n"
        "        out = ops.pgd_step(x, x0, gr, step=0.1, eps=eps, norm=norm)\n"
        "        ref = ops.pgd_step_reference(x, x0, gr, step=0.1, eps=eps, norm=norm)\n"
        "        torch.testing.assert_close(out, ref, atol=4e-6, rtol=0)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


@needs_ext
def test_best_isa_is_used_when_available():
    isa = ops.cpu_kernel_isa()
    cap = torch.backends.cpu.get_cpu_capability()
    assert isa == ("avx2" if cap in ("AVX2", "AVX512") else "default"), (isa, cap)


def test_require_ext_makes_missing_kernel_an_error(monkeypatch):
    monkeypatch.setenv(ops.REQUIRE_EXT_ENV, "1")
    # "xla" never has a manifoldadv kernel
    with pytest.raises(ExtensionError):
        use_kernel("pgd_step", "xla")
    monkeypatch.setenv(ops.REQUIRE_EXT_ENV, "0")
    assert use_kernel("pgd_step", "xla") is False


def test_cpu_kernels_present_when_required():
    if ops.require_extension():
        assert ops.extension_loaded(), ops.EXTENSION_ERROR
        assert all(per["cpu"] == "compiled" for per in ops.backends(("cpu",)).values())
    else:
        pytest.skip(f"{ops.REQUIRE_EXT_ENV} not set")
