"""Compiled per-class covariance (CPU) against float64 numpy np.cov, class by class."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifoldadv import ops
from manifoldadv.errors import UsageError

needs_ext = pytest.mark.skipif(not ops.extension_loaded(), reason="extension not built")
UPDATE = torch.ops.manifoldadv.class_cov_update_.default if ops.extension_loaded() else None
FINALIZE = torch.ops.manifoldadv.class_cov_finalize.default if ops.extension_loaded() else None


def np_truth(X, y, C):
    X = X.astype(np.float64)
    counts = np.array([(y == c).sum() for c in range(C)])
    means = np.stack([X[y == c].mean(0) if counts[c] else np.zeros(X.shape[1]) for c in range(C)])
    covs = np.stack(
        [np.cov(X[y == c], rowvar=False).reshape(X.shape[1], X.shape[1]) if counts[c] >= 2
         else np.full((X.shape[1], X.shape[1]), np.nan) for c in range(C)]
    )
    return counts, means, covs


def assert_matches(result, truth, rtol):
    counts, means, covs = (t.numpy() if torch.is_tensor(t) else t for t in result)
    tc, tm, tv = truth
    np.testing.assert_array_equal(counts, tc)
    ok = tc > 0
    np.testing.assert_allclose(means[ok], tm[ok], rtol=0, atol=rtol * (1 + np.abs(tm[ok]).max()))
    for c in range(len(tc)):
        if tc[c] >= 2:
            scale = np.abs(tv[c]).max()
            np.testing.assert_allclose(covs[c], tv[c], rtol=0, atol=rtol * scale)
            np.testing.assert_array_equal(covs[c], covs[c].T)
        else:
            assert np.isnan(covs[c]).all()


def data(seed, n, d, C, offset=0.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    X = (offset + rng.normal(size=(n, d)) @ A * rng.uniform(0.1, 3.0, d)).astype(dtype)
    y = rng.integers(0, C, n)
    return X, y


@needs_ext
@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 700),
    d=st.sampled_from([1, 3, 17, 130, 300]),
    C=st.integers(1, 6),
    offset=st.sampled_from([0.0, 1e4]),
    batch=st.sampled_from([1, 7, 64, 10_000]),
    buffered=st.booleans(),
)
def test_matches_np_cov(seed, n, d, C, offset, batch, buffered):
    X, y = data(seed, n, d, C, offset)
    acc = ops.ClassCovariance(C, d, buffer_rows=8192 if buffered else 0)
    for i in range(0, n, batch):
        acc.update(torch.from_numpy(X[i:i + batch]), torch.from_numpy(y[i:i + batch]))
    assert_matches(acc.finalize(), np_truth(X, y, C), rtol=1e-9)


@needs_ext
def test_many_small_uneven_batches_with_large_offset():
    """The streaming case where a naive float64 sum of squares loses ~8 digits."""
    rng = np.random.default_rng(0)
    C, d, n = 5, 40, 20_000
    X = (1e4 + rng.normal(size=(n, d)) * rng.uniform(0.01, 1.0, d)).astype(np.float32)
    y = rng.integers(0, C, n)
    counts = torch.zeros(C, dtype=torch.int64)
    means = torch.zeros(C, d, dtype=torch.float64)
    m2 = torch.zeros(C, d, d, dtype=torch.float64)
    i = 0
    while i < n:  # the op directly: one Chan merge per batch of 1..97 rows
        b = int(rng.integers(1, 98))
        UPDATE(counts, means, m2, torch.from_numpy(X[i:i + b]), torch.from_numpy(y[i:i + b]))
        i += b
    cov = FINALIZE(counts, m2)
    truth = np_truth(X, y, C)
    assert_matches((counts, means, cov), truth, rtol=1e-9)
    # and it really is a hard case: the textbook one-pass formula is off by 100x the tolerance
    Xc = X[y == 0].astype(np.float64)
    naive = (Xc.T @ Xc - len(Xc) * np.outer(Xc.mean(0), Xc.mean(0))) / (len(Xc) - 1)
    assert np.abs(naive - truth[2][0]).max() > 1e-7 * np.abs(truth[2][0]).max()


@needs_ext
def test_float64_features_and_other_dtypes():
    X, y = data(1, 500, 20, 3, offset=3.0, dtype=np.float64)
    acc = ops.ClassCovariance(3, 20)
    acc.update(torch.from_numpy(X), torch.from_numpy(y))
    assert_matches(acc.finalize(), np_truth(X, y, 3), rtol=1e-11)
    Xh = torch.from_numpy(X).to(torch.bfloat16)
    acc = ops.ClassCovariance(3, 20).update(Xh, torch.from_numpy(y))
    assert_matches(acc.finalize(), np_truth(Xh.double().numpy(), y, 3), rtol=1e-9)


@needs_ext
def test_large_batch_is_split_into_chunks():
    # more rows of one class than one chunk (2^25 / d rows) holds
    d = 4096
    rng = np.random.default_rng(2)
    X = (5.0 + rng.normal(size=(9000, d))).astype(np.float32)
    y = np.zeros(9000, np.int64)
    y[::3] = 1
    acc = ops.ClassCovariance(2, d).update(torch.from_numpy(X), torch.from_numpy(y))
    counts, means, cov = acc.finalize()
    for c in range(2):
        Xc = X[y == c].astype(np.float64)
        np.testing.assert_allclose(means[c].numpy(), Xc.mean(0), rtol=0, atol=1e-12 * 5)
        # a corner of the matrix against np.cov on those columns (full np.cov of 4096^2 is slow)
        ref = np.cov(Xc[:, :64], rowvar=False)
        np.testing.assert_allclose(cov[c, :64, :64].numpy(), ref, rtol=0, atol=1e-10)
        ref = np.cov(Xc[:, -64:], rowvar=False)
        np.testing.assert_allclose(cov[c, -64:, -64:].numpy(), ref, rtol=0, atol=1e-10)
        assert torch.equal(cov[c], cov[c].T)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def scipy_has_openblas() -> bool:
    import scipy

    try:
        return scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"].startswith("scipy-openblas")
    except (KeyError, TypeError, AttributeError):
        return False


@pytest.fixture(params=["torch", "scipy"])
def cpu_blas(request):
    """Runs a test once with torch's BLAS and once with SciPy's OpenBLAS dsyrk."""
    if request.param == "scipy":
        used = ops.use_cpu_blas("auto")
        if not used.startswith("SciPy's OpenBLAS"):
            assert not scipy_has_openblas(), used  # SciPy's wheels have it: it must be taken
            pytest.skip(f"SciPy's dsyrk cannot be used here: {used}")
    else:
        assert ops.use_cpu_blas("torch").startswith("torch's")
    yield request.param
    ops.use_cpu_blas("auto")


@needs_ext
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "d, n, weights",
    [
        # several balanced classes: class-parallel with 2 threads (each class on one thread,
        # its products through BLAS); d = 1024 gives chunks of 1024 rows, so classes of ~1300
        # rows take two chunks and the second one carries Chan's correction column
        (96, 4000, [1, 1, 1, 1, 1]),
        (1024, 3900, [1, 1, 1]),
        # one class with most rows: one class at a time, threads inside gather and BLAS
        (96, 4000, [8, 1, 1]),
    ],
)
def test_class_parallel_and_serial_updates_match_np_cov(torch_threads, cpu_blas, threads, d, n, weights):
    torch_threads(threads)
    rng = np.random.default_rng(d + n)
    C = len(weights)
    y = rng.choice(C, size=n, p=np.array(weights) / sum(weights))
    X = (1e3 + rng.normal(size=(n, d)) * rng.uniform(0.1, 2.0, d)).astype(np.float32)
    acc = ops.ClassCovariance(C, d, buffer_rows=0)
    half = n // 2  # two updates: the second merges into existing state in every class
    acc.update(torch.from_numpy(X[:half]), torch.from_numpy(y[:half]))
    acc.update(torch.from_numpy(X[half:]), torch.from_numpy(y[half:]))
    assert_matches(acc.finalize(), np_truth(X, y, C), rtol=1e-9)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "d, weights",
    [
        (12, [1, 1, 1, 1]),  # products below the BLAS threshold: plain dot products
        (300, [1, 1, 1, 1]),  # class-parallel BLAS with 2 threads
        (300, [6, 1, 1, 1]),  # one class at a time, BLAS threads inside each product
    ],
)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_first_merge_of_a_class_does_not_read_its_m2_block(torch_threads, cpu_blas, threads, d, weights, impl):
    """ClassCovariance allocates m2 uninitialised: a class's first merge must overwrite its block
    (BLAS beta = 0), never add to it. NaN-filled state shows any read; class 3 first appears in
    the second update, after the others already hold state."""
    if impl == "kernel" and not ops.extension_loaded():
        pytest.skip("extension not built")
    torch_threads(threads)
    rng = np.random.default_rng(d)
    C, n = len(weights), 6000
    y = rng.choice(C, size=n, p=np.array(weights) / sum(weights))
    X = (50.0 + rng.normal(size=(n, d)) * rng.uniform(0.1, 2.0, d)).astype(np.float32)
    half = n // 2
    y[:half][y[:half] == 3] = 0
    counts = torch.zeros(C, dtype=torch.int64)
    means = torch.zeros(C, d, dtype=torch.float64)
    m2 = torch.full((C, d, d), float("nan"), dtype=torch.float64)
    update = UPDATE if impl == "kernel" else ops.class_cov_update_reference
    finalize = FINALIZE if impl == "kernel" else ops.class_cov_finalize_reference
    for sl in (slice(0, half), slice(half, n)):
        update(counts, means, m2, torch.from_numpy(X[sl]), torch.from_numpy(y[sl]))
    assert_matches((counts, means, finalize(counts, m2)), np_truth(X, y, C), rtol=1e-9)


@needs_ext
def test_update_under_inference_mode(torch_threads, cpu_blas):
    """The class-parallel workers run without the caller's thread-local state."""
    torch_threads(2)
    X, y = data(5, 3000, 128, 4, offset=2.0)
    with torch.inference_mode():
        acc = ops.ClassCovariance(4, 128, buffer_rows=0).update(torch.from_numpy(X), torch.from_numpy(y))
        result = acc.finalize()
    assert_matches(result, np_truth(X, y, 4), rtol=1e-9)


@needs_ext
@pytest.mark.parametrize("threads", [1, 2])
def test_scipy_openblas_runs_single_threaded_during_updates_and_is_restored(torch_threads, threads):
    """Overlapping updates from two Python threads (the op releases the GIL): while either runs
    the shared OpenBLAS is single-threaded, after both it has its old thread count again, and
    both results are right."""
    if not ops.use_cpu_blas("auto").startswith("SciPy's OpenBLAS"):
        assert not scipy_has_openblas()
        pytest.skip("SciPy's dsyrk cannot be used here")
    import threading

    from manifoldadv import _C

    torch_threads(threads)
    before = _C.dsyrk_info()[1]
    jobs = [data(10 + i, 30000, 256, 4, offset=3.0) for i in range(2)]
    results = [None, None]

    def run(i):
        X, y = jobs[i]
        results[i] = ops.ClassCovariance(4, 256, buffer_rows=0).update(torch.from_numpy(X), torch.from_numpy(y)).finalize()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    seen = set()
    while any(w.is_alive() for w in workers):
        seen.add(_C.dsyrk_info()[1])
    for w in workers:
        w.join()
    assert _C.dsyrk_info()[1] == before
    assert seen <= {1, before} and 1 in seen
    for i in range(2):
        assert_matches(results[i], np_truth(*jobs[i], 4), rtol=1e-9)


@needs_ext
def test_only_a_dsyrk_capsule_is_installed():
    from scipy.linalg import cython_blas

    from manifoldadv import _C

    try:
        why = _C.use_dsyrk(cython_blas.__pyx_capi__["dgemm"])
        assert "not a Fortran dsyrk" in why
        with pytest.raises(TypeError):
            _C.use_dsyrk(42)
        assert _C.use_dsyrk(None) == ""
        assert _C.dsyrk_info() == (None, -1)
    finally:
        ops.use_cpu_blas("auto")
    with pytest.raises(UsageError, match="CPU BLAS must be one of"):
        ops.use_cpu_blas("mkl")


@needs_ext
def test_finalize_reads_only_the_upper_triangle():
    rng = np.random.default_rng(3)
    S = rng.normal(size=(2, 6, 6))
    S = S @ S.transpose(0, 2, 1)
    junk = np.tril(rng.normal(size=(2, 6, 6)) * 1e3, -1)
    m2 = torch.from_numpy(np.triu(S) + junk)
    counts = torch.tensor([11, 4])
    want = S / np.array([10.0, 3.0])[:, None, None]
    for fn in (FINALIZE, ops.class_cov_finalize_reference):
        np.testing.assert_allclose(fn(counts, m2).numpy(), want, rtol=1e-15, atol=0)


@needs_ext
def test_rejects_bad_inputs():
    C, d = 3, 4
    counts = torch.zeros(C, dtype=torch.int64)
    means = torch.zeros(C, d, dtype=torch.float64)
    m2 = torch.zeros(C, d, d, dtype=torch.float64)
    X = torch.randn(5, d)
    with pytest.raises(RuntimeError, match=r"labels must be in \[0, 3\)"):
        UPDATE(counts, means, m2, X, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        UPDATE(counts, means, m2, X.half(), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="features must be"):
        UPDATE(counts, means, m2, torch.randn(5, d + 1), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="m2 must be"):
        UPDATE(counts, means, m2.float(), X, torch.zeros(5, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="int64"):
        UPDATE(counts, means, m2, X, torch.zeros(5, dtype=torch.int32))
    assert int(counts.sum()) == 0  # nothing was merged by the failed calls
    acc = ops.ClassCovariance(C, d)
    with pytest.raises(UsageError):
        acc.update(X, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(UsageError):
        acc.update(X.int(), torch.zeros(5, dtype=torch.int64))


@needs_ext
def test_opcheck_cov_ops():
    C, d = 3, 5
    X, y = data(4, 40, d, C)
    y[:3] = [0, 1, 2]
    args = (torch.zeros(C, dtype=torch.int64), torch.zeros(C, d, dtype=torch.float64),
            torch.zeros(C, d, d, dtype=torch.float64), torch.from_numpy(X), torch.from_numpy(y))
    torch.library.opcheck(UPDATE, args)
    counts, m2 = args[0].clone(), args[2].clone()
    UPDATE(counts, args[1].clone(), m2, args[3], args[4])
    # counts >= 2 everywhere: opcheck compares outputs without equal_nan
    torch.library.opcheck(FINALIZE, (counts, m2))


def test_reference_update_matches_np_cov():
    X, y = data(5, 400, 9, 4, offset=1e4)
    acc = ops.ClassCovariance(4, 9, buffer_rows=0)
    counts, means, m2 = acc._counts, acc._means, acc._m2
    for i in range(0, 400, 13):
        ops.class_cov_update_reference(counts, means, m2, torch.from_numpy(X[i:i + 13]), torch.from_numpy(y[i:i + 13]))
    cov = ops.class_cov_finalize_reference(counts, m2)
    assert_matches((counts, means, cov), np_truth(X, y, 4), rtol=1e-9)


def test_finalize_honours_the_require_extension_flag(monkeypatch):
    """finalize must not fall back to the reference silently where the update may not."""
    from manifoldadv.errors import ExtensionError
    from manifoldadv.ops import extension

    acc = ops.ClassCovariance(2, 3)
    acc.update(torch.rand(6, 3), torch.tensor([0, 1, 0, 1, 0, 1]))
    acc.flush()
    monkeypatch.setenv(ops.REQUIRE_EXT_ENV, "1")
    monkeypatch.setattr(extension, "has_kernel", lambda op, device_type: False)
    with pytest.raises(ExtensionError, match="class_cov_finalize"):
        acc.finalize()
