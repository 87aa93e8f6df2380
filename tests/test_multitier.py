"""Property tests of the multi-tier convolutional monDEQ: W against a dense assembly of its pieces,
the stride-2 aliasing, the exact resolvent, norms, monotonicity under training, implicit
gradients, the classifier and its certificates."""
import functools

import pytest
import torch

from mondeq import MonDEQ, MonotoneMultiTier, MultiTierOperator, multitier_mondeq
from mondeq.robustness.attacks import pgd
from mondeq.robustness.certification import certify
from mondeq.operators.fft import rfft2_blocks
from mondeq.operators.multitier.norm import block_norm_bound
from mondeq.operators.multitier.aliasing import AliasMap
from splitting import (InvalidSettingError, ReLU, equilibrium, forward_backward, max_stable_alpha,
                       peaceman_rachford)
from splitting.state import flatten, unflatten
from tests.conftest import cuda_only


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


M = 0.3
# (channels per tier, first-tier grid): 2 and 3 tiers, odd and even last tiers, non-square grids
CONFIGS = [((2, 3), (6, 6)), ((2, 3), (4, 6)), ((2, 3, 2), (8, 8)), ((1, 2, 2), (12, 8)),
           ((2, 2, 3), (4, 4)), ((3, 2), (6, 10))]
IDS = [f"{'-'.join(map(str, c))}@{h}x{w}" for c, (h, w) in CONFIGS]


def random_operator(channels, size, *, m=M, scale=0.8, k=3):
    sizes = [(size[0] // 2 ** i, size[1] // 2 ** i) for i in range(len(channels))]
    a = [scale * torch.randn(c, c, k, k) for c in channels]
    g = [scale * torch.randn(c, c, k, k) for c in channels]
    s = [scale * torch.randn(c1, c0, k, k) for c0, c1 in zip(channels[:-1], channels[1:])]
    return MultiTierOperator(a, g, s, m, sizes)


def rolled_conv_matrix(kernel, size):
    """Dense matrix of the circular correlation (Kx)[i,j] = Σ K[:,:,a,b] x[i+a−p, j+b−p], via roll."""
    c_out, c_in, k, _ = kernel.shape
    p = k // 2
    n = c_in * size[0] * size[1]
    x = torch.eye(n).reshape(n, c_in, *size)
    out = 0
    for a in range(k):
        for b in range(k):
            shifted = torch.roll(x, shifts=(p - a, p - b), dims=(2, 3))
            out = out + torch.einsum("oc,bchw->bohw", kernel[:, :, a, b], shifted)
    return out.reshape(n, -1).T


def dense_w(op):
    """W = (1 − m)I − FᵀF + Gᵀ − G assembled from dense matrices of every piece (independent of mv)."""
    sizes, tiers = op.sizes, op.tiers
    dims = [a.shape[0] * h * w for a, (h, w) in zip(op.a_kernels, sizes)]
    offsets = [sum(dims[:i]) for i in range(tiers + 1)]
    n = offsets[-1]
    F, G = torch.zeros(n, n), torch.zeros(n, n)
    for i in range(tiers):
        blk = slice(offsets[i], offsets[i + 1])
        F[blk, blk] = rolled_conv_matrix(op.a_kernels[i], sizes[i])
        G[blk, blk] = rolled_conv_matrix(op.g_kernels[i], sizes[i])
        if i + 1 < tiers:
            c_next = op.s_kernels[i].shape[0]
            conv = rolled_conv_matrix(op.s_kernels[i], sizes[i]).reshape(c_next, *sizes[i], -1)
            F[offsets[i + 1]:offsets[i + 2], blk] = conv[:, ::2, ::2].reshape(dims[i + 1], -1)
    return (1 - op.m) * torch.eye(n) - F.T @ F + G.T - G


# ----------------------------------------------------------------------------- the operator

@pytest.mark.parametrize("channels,size", CONFIGS, ids=IDS)
def test_mv_rmv_match_dense_assembly_of_f_and_g(channels, size):
    op = random_operator(channels, size)
    reference = dense_w(op)
    torch.testing.assert_close(op.as_matrix(), reference, rtol=1e-12, atol=1e-12)
    n = reference.shape[0]
    rows = flatten(op.rmv(unflatten(torch.eye(n), op.zeros(n))))
    torch.testing.assert_close(rows.T, reference.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels,size", CONFIGS[:3], ids=IDS[:3])
def test_adjoint_identity(channels, size):
    op = random_operator(channels, size)
    u, v = op.zeros(4), op.zeros(4)
    u = tuple(torch.randn_like(t) for t in u)
    v = tuple(torch.randn_like(t) for t in v)
    lhs = (flatten(op.mv(u)) * flatten(v)).sum(1)
    rhs = (flatten(u) * flatten(op.rmv(v))).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_mv_derivatives_in_every_autograd_mode():
    """W z through the FFT path: reverse, forward and second-order derivatives in z and every
    kernel against finite differences."""
    sizes = [(4, 6), (2, 3)]
    inputs = (torch.randn(2, 2, 4, 6, requires_grad=True), torch.randn(2, 3, 2, 3, requires_grad=True),
              torch.randn(2, 2, 3, 3, requires_grad=True), torch.randn(3, 3, 3, 3, requires_grad=True),
              torch.randn(2, 2, 3, 3, requires_grad=True), torch.randn(3, 3, 3, 3, requires_grad=True),
              torch.randn(3, 2, 3, 3, requires_grad=True))

    def fn(z0, z1, a0, a1, g0, g1, s0):
        op = MultiTierOperator([a0, a1], [g0, g1], [s0], M, sizes)
        return op.mv((z0, z1)) + op.rmv((z0, z1))

    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("transpose", [False, True])
def test_kernel_gradients_of_w_at_a_fixed_state(transpose):
    """The implicit layer's path (state without gradient, kernel gradients from the bilinear form)
    against finite differences, for W and Wᵀ, with a memoised forward in between."""
    sizes = [(4, 6), (2, 3)]
    z = (torch.randn(2, 2, 4, 6), torch.randn(2, 3, 2, 3))
    kernels = (torch.randn(2, 2, 3, 3, requires_grad=True), torch.randn(3, 3, 3, 3, requires_grad=True),
               torch.randn(2, 2, 3, 3, requires_grad=True), torch.randn(3, 3, 3, 3, requires_grad=True),
               torch.randn(3, 2, 3, 3, requires_grad=True))

    def fn(a0, a1, g0, g1, s0):
        op = MultiTierOperator([a0, a1], [g0, g1], [s0], M, sizes)
        with torch.no_grad():
            op.rmv(z) if transpose else op.mv(z)  # what the solver's residual does first
        return op.rmv(z) if transpose else op.mv(z)

    assert torch.autograd.gradcheck(fn, kernels)


def test_memoised_application_is_not_reused_after_the_state_changes():
    op = random_operator((2, 3), (4, 6))
    z = tuple(torch.randn(2, *s) for s in op.state_shape)
    first = [t.clone() for t in op.mv(z)]
    z[0].mul_(2.0)
    torch.testing.assert_close(flatten(op.mv(z)), flatten(tuple(z)) @ op.as_matrix().T)
    assert not torch.allclose(op.mv(z)[0], first[0])
    out = op.mv(z)
    out[1].zero_()  # a caller modifying the result must not poison the next call
    torch.testing.assert_close(flatten(op.mv(z)), flatten(tuple(z)) @ op.as_matrix().T)


@pytest.mark.parametrize("size", [(4, 4), (6, 6), (4, 6), (6, 10), (8, 12)])
def test_stride_two_aliasing_in_the_half_spectrum(size):
    """DFT of even samples = ½ Σ of the 4 aliases; DFT of zero-inserted = ½ · the coarse value."""
    maps = AliasMap(size)
    x = torch.randn(3, 2, *size)
    spectrum = functools.partial(rfft2_blocks, norm="ortho")
    torch.testing.assert_close(spectrum(x[..., ::2, ::2]), 0.5 * maps.fold_sum(spectrum(x)))
    y = torch.randn(3, 2, size[0] // 2, size[1] // 2)
    up = torch.zeros(3, 2, *size)
    up[..., ::2, ::2] = y
    torch.testing.assert_close(spectrum(up), 0.5 * maps.unfold(spectrum(y)))


@pytest.mark.parametrize("alpha", [1.0, 0.125])
@pytest.mark.parametrize("channels,size", CONFIGS, ids=IDS)
def test_resolvent_solve_and_solve_t_match_dense_solve(channels, size, alpha):
    op = random_operator(channels, size, scale=1.5)
    w = dense_w(op)
    n = w.shape[0]
    system = (1 + alpha) * torch.eye(n) - alpha * w
    r = torch.randn(5, n)
    resolvent = op.resolvent(alpha)
    for solve, matrix in ((resolvent.solve, system), (resolvent.solve_t, system.T)):
        x = flatten(solve(unflatten(r, op.zeros(5))))
        expected = torch.linalg.solve(matrix, r.T).T
        assert float((x - expected).norm() / expected.norm()) < 1e-12
    # the transposed operator's resolvent is the same factorisation, transposed
    x = flatten(op.transpose().resolvent(alpha).solve(unflatten(r, op.zeros(5))))
    torch.testing.assert_close(x, torch.linalg.solve(system.T, r.T).T)


@pytest.mark.parametrize("channels,size", CONFIGS, ids=IDS)
def test_lipschitz_is_the_norm_of_i_minus_w_and_the_block_bound_is_above_it(channels, size):
    op = random_operator(channels, size, scale=1.5)
    exact = float(torch.linalg.matrix_norm(torch.eye(op.as_matrix().shape[0]) - op.as_matrix(), ord=2))
    assert exact <= op.lipschitz() <= exact * (1 + 1e-8)
    assert exact <= block_norm_bound(op) <= 1.5 * exact


def test_lipschitz_of_float32_kernels_is_not_below_the_norm():
    """Both norms bound the kernels as stored: float32 spectra left the exact one up to 3e-8 below."""
    torch.manual_seed(0)
    for _ in range(6):
        op = random_operator((4, 6, 8), (16, 16), scale=0.4)
        kernels = [[k.float() for k in ks] for ks in (op.a_kernels, op.g_kernels, op.s_kernels)]
        op32 = MultiTierOperator(*kernels, M, op.sizes)
        op64 = MultiTierOperator(*[[k.double() for k in ks] for ks in kernels], M, op.sizes)  # the same W
        assert op64.lipschitz() / (1 + 1e-9) <= op32.lipschitz()
        assert block_norm_bound(op64) / (1 + 1e-9) <= block_norm_bound(op32)


def test_lipschitz_is_exact_for_one_tier():
    op = random_operator((3,), (5, 6))
    exact = float(torch.linalg.matrix_norm(torch.eye(90) - op.as_matrix(), ord=2))
    assert exact <= block_norm_bound(op) <= exact * (1 + 1e-8)


@pytest.mark.parametrize("padding", [0, 1])
def test_input_norm_is_the_norm_of_u(padding):
    linear = MonotoneMultiTier(2, (3, 2), (6, 6), padding=padding, m=M) if padding == 0 else \
        MonotoneMultiTier(2, (3, 2), (4, 4), padding=1, m=M)
    n = 2 * 36 if padding == 0 else 2 * 16
    basis = torch.eye(n).reshape(n, *linear.input_shape)
    with torch.no_grad():
        u = (linear.bias(basis)[0] - linear.bias(torch.zeros_like(basis))[0]).reshape(n, -1).T
    exact = float(torch.linalg.matrix_norm(u, ord=2))
    with torch.no_grad():
        norm = float(linear.input_norm())
    if padding == 0:
        assert norm == pytest.approx(exact, rel=1e-10)
    else:  # zero padding then a circular U on the padded grid: a sound bound
        assert norm >= exact * (1 - 1e-12)


def test_monotone_after_large_optimizer_steps():
    linear = MonotoneMultiTier(1, (2, 3, 2), (8, 8), m=M)
    opt = torch.optim.Adam(linear.parameters(), lr=0.5)
    z = tuple(torch.randn(2, *s) for s in linear.operator().state_shape)
    for _ in range(5):
        loss = -flatten(linear.operator().mv(z)).norm() - linear.input_norm()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = linear.operator().as_matrix().detach()
    i_minus_w = torch.eye(w.shape[0]) - w
    assert float(torch.linalg.eigvalsh(0.5 * (i_minus_w + i_minus_w.T)).min()) >= M - 1e-8
    assert float(torch.linalg.matrix_norm(w, ord=2)) > 20  # the steps did change W a lot


def test_odd_grid_before_a_stride_two_map_is_refused():
    with pytest.raises(InvalidSettingError, match="divisible"):
        MonotoneMultiTier(1, (2, 2, 2), (30, 30))
    with pytest.raises(InvalidSettingError, match="even grid"):
        random_operator((2, 2), (5, 6))


@pytest.mark.parametrize("kernel_size", [0, 2, 1.5])
def test_even_or_non_integer_kernel_size_is_refused(kernel_size):
    with pytest.raises(InvalidSettingError, match="kernel_size must be a positive odd integer"):
        MonotoneMultiTier(1, (2, 2), 8, kernel_size=kernel_size)


# ----------------------------------------------------------------------------- implicit gradients

def multitier_fn(solver, alpha, size, m):
    sizes = [size, (size[0] // 2, size[1] // 2)]

    def fn(x, u, a0, a1, g0, g1, s0, b1):
        op = MultiTierOperator([a0, a1], [g0, g1], [s0], m, sizes)
        bias = (torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), u),
                b1.view(1, -1, 1, 1).expand(x.shape[0], -1, *sizes[1]))
        z, _ = equilibrium(op, ReLU(), bias, solver=solver, alpha=alpha, tol=1e-13, max_iter=5000,
                           backward_max_iter=300)
        return z
    return fn


@pytest.mark.filterwarnings("ignore::splitting.errors.ConvergenceWarning")
@pytest.mark.parametrize("solver_name", ["fb", "pr"])
def test_gradcheck_multitier_layer(solver_name):
    """Implicit gradients of (x, U, A_0, A_1, G_0, G_1, C_0, b_1) against finite differences
    (gradcheck's fast mode: random directions on both sides)."""
    size, m = (4, 6), 0.5
    params = (torch.randn(1, 1, *size, requires_grad=True),
              (0.5 * torch.randn(1, 1, 3, 3)).requires_grad_(),
              (0.15 * torch.randn(1, 1, 3, 3)).requires_grad_(),
              (0.15 * torch.randn(2, 2, 3, 3)).requires_grad_(),
              (0.15 * torch.randn(1, 1, 3, 3)).requires_grad_(),
              (0.15 * torch.randn(2, 2, 3, 3)).requires_grad_(),
              (0.15 * torch.randn(2, 1, 3, 3)).requires_grad_(),
              (0.3 * torch.randn(2)).requires_grad_())
    if solver_name == "pr":
        solver, alpha = peaceman_rachford, 0.8
    else:
        op = MultiTierOperator([params[2].detach(), params[3].detach()],
                               [params[4].detach(), params[5].detach()], [params[6].detach()], m,
                               [size, (2, 3)])
        solver = functools.partial(forward_backward, check_step="raise")
        alpha = 0.9 * max_stable_alpha(op)
    assert torch.autograd.gradcheck(multitier_fn(solver, alpha, size, m), params, eps=1e-6, atol=1e-6,
                                    rtol=1e-5, fast_mode=True)


def test_module_gradients_reach_all_parameters():
    linear = MonotoneMultiTier(1, (2, 3, 2), (8, 8), m=0.5)
    layer = MonDEQ(linear, solver="pr", alpha=1.0, tol=1e-10, max_iter=500)
    z = layer(torch.randn(3, 1, 8, 8))
    sum(t.sin().sum() for t in z).backward()
    for name, p in linear.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


# ----------------------------------------------------------------------------- the classifier

@pytest.mark.parametrize("in_channels,image_size,pool_all", [(1, 28, False), (3, 32, True)])
def test_builder_serves_mnist_and_cifar_shapes(in_channels, image_size, pool_all):
    torch.set_default_dtype(torch.float32)
    model = multitier_mondeq(in_channels, image_size, (4, 8, 8), num_classes=10,
                                  pool_all_tiers=pool_all, pool_size=1, tol=1e-3)
    linear = model.layer.linear
    assert linear.sizes == [(image_size, image_size), (image_size // 2,) * 2, (image_size // 4,) * 2]
    assert model.head.in_features == (20 if pool_all else 8)
    logits = model(torch.randn(3, in_channels, image_size, image_size))
    assert logits.shape == (3, 10) and bool(torch.isfinite(logits).all())
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_default_readout_pools_the_last_tier_to_four_by_four():
    model = multitier_mondeq(1, 28)
    assert model.head.in_features == 32 * 16
    assert sum(p.numel() for p in model.parameters()) == 16 * 9 + 16 + 9 * (2 * (16 * 16 + 2 * 32 * 32)
                                                                             + 16 * 32 + 32 * 32) + 64 + 5130


def test_readout_is_a_parameter_free_linear_map():
    model = multitier_mondeq(1, 8, (2, 3), num_classes=4, pool_all_tiers=True, pool_size=2)
    assert model.readout.affine is True and not list(model.readout.parameters())
    z = tuple(torch.randn(2, *s) for s in model.layer.linear.operator().state_shape)
    w = tuple(torch.randn_like(t) for t in z)
    combo = model.readout(tuple(1.7 * a - 0.4 * b for a, b in zip(z, w)))
    torch.testing.assert_close(combo, 1.7 * model.readout(z) - 0.4 * model.readout(w))


def test_certified_radii_hold_against_pgd():
    torch.manual_seed(3)
    model = multitier_mondeq(1, 8, (2, 3), num_classes=3, m=1.0, tol=1e-10, max_iter=500)
    x = torch.rand(6, 1, 8, 8)
    cert = certify(model, x, tol=1e-10)
    assert bool((cert.radius > 0).any())
    # the margins' Lipschitz bound holds between random pairs (what the radius rests on)
    with torch.no_grad():
        logits = model(x)
        x2 = x + 0.3 * torch.randn_like(x)
        logits2 = model(x2)
    from mondeq.robustness.lipschitz import lipschitz_bound, margin_lipschitz
    lip = margin_lipschitz(model.head_matrix(), lipschitz_bound(model.layer))
    dist = (x2 - x).flatten(1).norm(dim=1)
    for i in range(3):
        for j in range(3):
            change = ((logits2[:, i] - logits2[:, j]) - (logits[:, i] - logits[:, j])).abs()
            assert bool((change <= lip[i, j] * dist * (1 + 1e-9) + 1e-12).all())
    attack = pgd(model, x, cert.label, 0.999 * cert.radius, steps=30, bounds=None,
                 generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        flipped = model(attack.x_adv).argmax(1) != cert.label
    assert not bool(flipped[cert.radius > 0].any())


@cuda_only
def test_cuda_matches_cpu():
    op = random_operator((2, 3, 2), (8, 8))
    cuda = MultiTierOperator([k.cuda() for k in op.a_kernels], [k.cuda() for k in op.g_kernels],
                             [k.cuda() for k in op.s_kernels], op.m, op.sizes)
    z = tuple(torch.randn(3, *s) for s in op.state_shape)
    for got, want in ((cuda.mv(tuple(t.cuda() for t in z)), op.mv(z)),
                      (cuda.resolvent(0.5).solve_t(tuple(t.cuda() for t in z)), op.resolvent(0.5).solve_t(z))):
        torch.testing.assert_close(flatten(tuple(t.cpu() for t in got)), flatten(want))
    assert cuda.lipschitz() == pytest.approx(op.lipschitz(), rel=1e-9)
