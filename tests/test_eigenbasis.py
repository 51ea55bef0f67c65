"""The class eigenbasis against numpy in float64, its projections, its cache and its refusals."""

import numpy as np
import pytest
import torch

from manifoldadv.data import Split, load_dataset, split_digest
from manifoldadv.errors import UsageError
from manifoldadv.evaluation import eigenbasis as E


@pytest.fixture(scope="module")
def train():
    return load_dataset("synthetic", limit=1200).train


@pytest.fixture(scope="module")
def basis(train):
    return E.compute(train, 10, 6, dataset="synthetic")


@pytest.mark.parametrize("gram", [None, True, False], ids=["auto", "gram", "covariance"])
def test_basis_is_numpys_eigh_of_the_float64_class_covariance(train, basis, gram):
    if gram is not None:
        basis = E.compute(train, 10, 6, dataset="synthetic", gram=gram)
    x = train.x.reshape(len(train), -1).double().numpy()
    y = train.y.numpy()
    for c in range(10):
        cov = np.cov(x[y == c], rowvar=False, ddof=1)
        w, v = np.linalg.eigh(cov)
        ref_values, ref = w[::-1][:6], v[:, ::-1][:, :6]
        u = basis.vectors[c].numpy()
        assert np.allclose(basis.values[c].numpy(), ref_values, rtol=1e-8, atol=1e-12)
        # equal up to the sign of each column: |<u_i, ref_i>| = 1
        assert np.allclose(np.abs(np.sum(u * ref, axis=0)), 1.0, atol=1e-6), c
        assert np.allclose(u.T @ u, np.eye(6), atol=1e-10)


def test_projections_lie_in_the_span_and_orthogonal_to_it(basis):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(12, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(12) % 10
    on, off = basis.project(v, y), basis.orthogonal(v, y)
    for i in range(12):
        u = basis.vectors[int(y[i])].numpy()
        flat = v[i].reshape(-1).numpy()
        ref = u @ np.linalg.lstsq(u, flat, rcond=None)[0]  # numpy's projection onto span(U_y)
        assert np.linalg.norm(on[i].reshape(-1).numpy() - ref) <= 1e-10 * np.linalg.norm(flat)
        assert np.abs(u.T @ off[i].reshape(-1).numpy()).max() <= 1e-10 * np.linalg.norm(flat)
    assert torch.allclose(on + off, v)


def test_the_basis_is_cached_by_split_and_k(tmp_path, train, basis):
    first = E.obtain(train, 10, 6, dataset="synthetic", cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and split_digest(train) in files[0].name
    again = E.obtain(train, 10, 6, dataset="synthetic", cache_dir=tmp_path)
    assert torch.equal(again.vectors, first.vectors) and torch.equal(again.values, basis.values)
    other = Split(train.x[:-1], train.y[:-1])
    assert split_digest(other) != split_digest(train)
    # a file named by the user: k None takes the file's; the explained shares come back with it
    named = E.obtain(train, 10, 4, dataset="synthetic", path=tmp_path / "mine.safetensors")
    back = E.obtain(train, 10, None, dataset="synthetic", path=tmp_path / "mine.safetensors")
    assert back.k == named.k == 4 and torch.equal(back.totals, named.totals)
    x = train.x.reshape(len(train), -1).double().numpy()
    trace = np.trace(np.cov(x[train.y.numpy() == 0], rowvar=False, ddof=1))
    assert float(back.explained[0]) == pytest.approx(float(basis.values[0, :4].sum()) / trace, rel=1e-9)


def test_bad_requests_are_one_line(tmp_path, train, basis):
    with pytest.raises(UsageError, match="from 1 to the dimension 784"):
        E.compute(train, 10, 785, dataset="synthetic")
    few = Split(train.x[:40], train.y[:40])
    with pytest.raises(UsageError, match=r"class \d has \d+ training examples"):
        E.compute(few, 10, 6, dataset="synthetic")
    path = tmp_path / "b.safetensors"
    E.save(path, basis)
    with pytest.raises(UsageError, match="not of mnist"):
        E.load(path, dataset="mnist", digest=basis.digest, k=6)
    with pytest.raises(UsageError, match="k 6"):
        E.load(path, dataset="synthetic", digest=basis.digest, k=5)
