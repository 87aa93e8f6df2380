"""PGD attacks: they work on an undefended model, and stay inside the ε-ball and the pixel range."""
import pytest
import torch

from mondeq import fc_mondeq, pgd, robust_accuracy, solver_settings
from mondeq.robustness.attacks import margins
from mondeq.data import MNIST_MEAN, MNIST_STD, load_mnist
from mondeq.training import train_epoch


@pytest.fixture(scope="module")
def mnist_model():
    """A small undefended monDEQ trained for a few seconds on 2000 MNIST images (pixel inputs; the
    model owns MNIST's normalisation)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    pixels, labels = load_mnist(train=True)
    pixels, labels = pixels[:2000].reshape(2000, -1).double(), labels[:2000]
    model = fc_mondeq(784, 32, 10, tol=1e-3, max_iter=100, mean=MNIST_MEAN, std=MNIST_STD)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = [(pixels[i:i + 100], labels[i:i + 100]) for i in range(0, 2000, 100)]
    for _ in range(4):
        train_epoch(model, optimizer, batches, steps=len(batches), desc="test")
    torch.set_default_dtype(previous)
    test_pixels, test_labels = load_mnist(train=False)
    return model.eval(), test_pixels[:100].reshape(100, -1).double(), test_labels[:100]


ATTACK = dict(bounds=(0.0, 1.0))


@pytest.mark.parametrize("norm, eps", [("l2", 3.0), ("linf", 0.3)])
def test_pgd_breaks_an_undefended_model_at_large_eps(mnist_model, norm, eps):
    model, x, y = mnist_model
    clean = model(x).argmax(1) == y
    assert float(clean.double().mean()) > 0.8
    with solver_settings(model.layer, tol=1e-10, max_iter=1_000):  # batch-independent solves
        result = pgd(model, x, y, eps, norm=norm, steps=20, **ATTACK)
        with torch.no_grad():
            logits = model(result.x_adv)
    assert float(result.success.double().mean()) > 0.9
    # success means what it says: the model misclassifies the returned point
    torch.testing.assert_close(margins(logits, y), result.margin, atol=1e-7, rtol=1e-7)
    assert bool(((logits.argmax(1) != y) == result.success).all())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_respects_the_ball_and_the_pixel_range(mnist_model, norm):
    model, x, y = mnist_model
    x, y = x[:30], y[:30]
    eps = torch.linspace(0.05, 2.0 if norm == "l2" else 0.2, 30)  # a radius per example
    result = pgd(model, x, y, eps, norm=norm, steps=10, restarts=2,
                 generator=torch.Generator().manual_seed(0), **ATTACK)
    delta = (result.x_adv - x).reshape(30, -1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert bool((size <= eps * (1 + 1e-9)).all())
    torch.testing.assert_close(result.distance, size)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert float(size.max()) > 0.5 * float(eps.max())  # it did move


def test_pgd_without_budget_returns_the_input(mnist_model):
    model, x, y = mnist_model
    result = pgd(model, x[:10], y[:10], 0.0, steps=3, restarts=2, **ATTACK)
    torch.testing.assert_close(result.x_adv, x[:10])


def test_robust_accuracy_decreases_with_eps(mnist_model):
    model, x, y = mnist_model
    acc = robust_accuracy(model, x[:50], y[:50], [0.0, 0.5, 1.5, 3.0], steps=10, **ATTACK)
    values = [acc[e] for e in sorted(acc)]
    clean = float((model(x[:50]).argmax(1) == y[:50]).double().mean())
    assert values[0] == pytest.approx(clean)
    assert values == sorted(values, reverse=True) and values[-1] < 0.2


def test_bad_options_are_named(mnist_model):
    model, x, y = mnist_model
    with pytest.raises(ValueError, match="norm must be one of"):
        pgd(model, x[:2], y[:2], 1.0, norm="l1")
    with pytest.raises(ValueError, match="loss must be one of"):
        pgd(model, x[:2], y[:2], 1.0, loss="hinge")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        pgd(model, x[:2], y[:2], -1.0)


@pytest.mark.parametrize("norm, eps", [("l2", 2.0), ("linf", 0.2)])
def test_random_restarts_come_from_the_generator_and_stay_in_the_ball(mnist_model, norm, eps):
    """With no gradient steps the result is the best of x and the random starts: reproducible from
    the generator's seed, different for another seed, inside the ε-ball and the pixel box."""
    model, x, y = mnist_model
    x, y = x[:8], y[:8]

    def attack(seed):
        return pgd(model, x, y, eps, norm=norm, steps=0, restarts=4,
                   generator=torch.Generator(device=x.device).manual_seed(seed), **ATTACK)

    first, again, other = attack(1), attack(1), attack(2)
    torch.testing.assert_close(again.x_adv, first.x_adv, rtol=0, atol=0)
    assert not torch.equal(other.x_adv, first.x_adv)
    assert bool((first.distance <= eps * (1 + 1e-12)).all())
    assert float(first.x_adv.min()) >= 0.0 and float(first.x_adv.max()) <= 1.0
    assert bool((first.distance > 0).any())  # some random start beat x itself
