import pytest
import torch

from manifoldadv import models


def _conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def test_lenet5_shape_and_parameter_count():
    m = models.create("lenet5", in_shape=(1, 28, 28), num_classes=10)
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    expected = _conv(1, 6, 5) + _conv(6, 16, 5) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert models.num_parameters(m) == expected == 61706


def test_resnet32_shape_and_parameter_count():
    m = models.create("resnet32", in_shape=(3, 32, 32), num_classes=10)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    bn = lambda c: 2 * c  # noqa: E731  (weight and bias; running stats are buffers)
    total = _conv(3, 16, 3, False) + bn(16)
    cin = 16
    for w in (16, 32, 64):
        for _ in range(5):
            total += _conv(cin, w, 3, False) + bn(w) + _conv(w, w, 3, False) + bn(w)
            cin = w
    total += 64 * 10 + 10
    assert models.num_parameters(m) == total
    assert 0.45e6 < total < 0.47e6  # "about 0.46M" (He et al., option-A shortcuts)


def test_mlp_and_registry():
    m = models.create("mlp", in_shape=(1, 28, 28), num_classes=10)
    assert m(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert {"lenet5", "resnet32", "mlp"} <= set(models.available("classifier"))
    assert {"cvae-mlp", "cvae-cnn"} <= set(models.available("cvae"))
    from manifoldadv.config import DEFAULTS
    from manifoldadv.data import DATASETS

    # the data sets' defaults are one table: every data set has one, naming registered models
    assert set(DEFAULTS) == set(DATASETS)
    assert DEFAULTS["mnist"].model == "lenet5" and DEFAULTS["cifar10"].model == "resnet32"
    for d in DEFAULTS.values():
        assert models.spec(d.model).kind == "classifier" and models.spec(d.cvae.model).kind == "cvae"
    with pytest.raises(Exception, match="unknown model"):
        models.create("vgg99", in_shape=(1, 28, 28), num_classes=10)


def test_normalisation_lives_inside_the_model():
    torch.manual_seed(0)
    m = models.create("mlp", in_shape=(1, 28, 28), num_classes=10, mean=(0.5,), std=(0.25,))
    x = torch.rand(5, 1, 28, 28)
    assert torch.allclose(m(x), m.net((x - 0.5) / 0.25), atol=1e-6)
    assert "normalize.mean" in m.state_dict()


@pytest.mark.parametrize("name,shape,latent", [("cvae-mlp", (1, 28, 28), 10), ("cvae-cnn", (3, 32, 32), 128)])
def test_cvae_shapes_and_elbo(name, shape, latent):
    m = models.create(name, in_shape=shape, num_classes=10, latent=latent)
    x, y = torch.rand(4, *shape), torch.arange(4)
    mu, logvar = m.encode(x, y)
    assert mu.shape == logvar.shape == (4, latent)
    xr = m.decode_mean(mu, y).detach()
    assert xr.shape == (4, *shape) and 0 <= float(xr.min()) and float(xr.max()) <= 1
    nelbo, sq = m.negative_elbo(x, y)
    assert nelbo.shape == sq.shape == (4,) and torch.isfinite(nelbo).all()
    # the label conditions the decoder
    assert not torch.allclose(m.decode_mean(mu, y), m.decode_mean(mu, (y + 1) % 10))
