"""Property tests of the convolutional monDEQ: circular convolutions, FFT blocks and resolvent,
exact norms, monotonicity, implicit gradients, the single-conv classifier, devices."""
import functools

import pytest
import torch

from mondeq import ConvOperator, MonDEQ, MonotoneConv, lipschitz_bound, single_conv_mondeq
from mondeq.operators.conv import power_iteration_norm, weight_kernel
from mondeq.operators.fft import (adjoint_kernel, apply_blocks, circular_conv2d, compose_kernels, embed_kernel,
                        kernel_blocks, spectral_norm)
from splitting import (InvalidSettingError, ReLU, SoftThreshold, StateShapeError, equilibrium,
                       forward_backward, max_stable_alpha, peaceman_rachford)
from splitting.operator import LinearOperator
from tests.conftest import DEVICES, cuda_only

ALL_DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add synchronisation (MKL's FFT spends
    milliseconds per call waiting for its second thread on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
SHAPES = [(1, 5, 5, 3), (3, 5, 6, 3), (4, 6, 5, 3), (2, 6, 6, 5), (3, 5, 6, 5)]  # C, H, W, k
M = 0.3


def random_operator(c, h, w, k, *, m=M, scale=0.6, device="cpu", dtype=torch.float64):
    f = scale * torch.randn(c, c, k, k, device=device, dtype=dtype)
    g = scale * torch.randn(c, c, k, k, device=device, dtype=dtype)
    return ConvOperator(f, g, m, (h, w))


def rolled_conv(x, kernel):
    """Independent reference: (Kx)[i,j] = Σ K[:, :, a, b] x[i + a − p, j + b − p] (mod H, W), via roll."""
    k = kernel.shape[-1]
    p = k // 2
    out = 0
    for a in range(k):
        for b in range(k):
            shifted = torch.roll(x, shifts=(p - a, p - b), dims=(2, 3))  # shifted[i] = x[i + a − p]
            out = out + torch.einsum("oc,bchw->bohw", kernel[:, :, a, b], shifted)
    return out


def materialise(apply, in_shape):
    """Dense matrix of a linear map on flattened (C, H, W) images, built column by column."""
    n = 1
    for s in in_shape:
        n *= s
    basis = torch.eye(n, dtype=torch.get_default_dtype()).reshape(n, *in_shape)
    return apply(basis).reshape(n, -1).T


def sym_min_eig(a):
    return float(torch.linalg.eigvalsh(0.5 * (a + a.T)).min())


# ----------------------------------------------------------------------------- convolutions

@pytest.mark.parametrize("k", [1, 3, 5])
def test_circular_conv_matches_rolled_reference(k):
    x = torch.randn(2, 3, 5, 6)
    kernel = torch.randn(4, 3, k, k)
    torch.testing.assert_close(circular_conv2d(x, kernel), rolled_conv(x, kernel))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("hw", [(5, 5), (5, 6), (6, 5)])
def test_conv_adjoint_identity(k, hw):
    kernel = torch.randn(4, 3, k, k)
    u, v = torch.randn(3, 3, *hw), torch.randn(3, 4, *hw)
    lhs = (circular_conv2d(u, kernel) * v).sum(dim=(1, 2, 3))
    rhs = (u * circular_conv2d(v, adjoint_kernel(kernel))).sum(dim=(1, 2, 3))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    dense = materialise(lambda x: circular_conv2d(x, kernel), (3, *hw))
    dense_t = materialise(lambda x: circular_conv2d(x, adjoint_kernel(kernel)), (4, *hw))
    torch.testing.assert_close(dense_t, dense.T, rtol=0, atol=1e-12)


def test_compose_kernels_is_the_product():
    a, b = torch.randn(3, 4, 3, 3), torch.randn(4, 2, 5, 5)
    x = torch.randn(2, 2, 9, 8)
    torch.testing.assert_close(circular_conv2d(x, compose_kernels(a, b)),
                               circular_conv2d(circular_conv2d(x, b), a))


@pytest.mark.parametrize("hw", [(5, 5), (5, 6), (6, 5), (3, 2)])  # (3, 2): taps wrap around
def test_kernel_blocks_diagonalise_the_convolution(hw):
    kernel = torch.randn(4, 3, 5, 5)
    x = torch.randn(2, 3, *hw)
    blocks = kernel_blocks(kernel, hw)
    assert blocks.shape == (hw[0] * (hw[1] // 2 + 1), 4, 3)
    y_hat = torch.fft.rfft2(rolled_conv(x, kernel)).flatten(2).permute(2, 0, 1)
    x_hat = torch.fft.rfft2(x).flatten(2).permute(2, 0, 1)
    torch.testing.assert_close(y_hat, x_hat @ blocks.transpose(-2, -1))
    torch.testing.assert_close(kernel_blocks(adjoint_kernel(kernel), hw), blocks.mH)
    # the blocks are the rfft2 of the kernel embedded in the image with the circular shift
    embedded = torch.fft.rfft2(embed_kernel(kernel, hw)).flatten(2).permute(2, 0, 1)
    torch.testing.assert_close(blocks, embedded)


# ----------------------------------------------------------------------------- the operator

@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mv_rmv_match_dense(shape, device):
    c, h, w, k = shape
    op = random_operator(c, h, w, k, device=device)
    dense = op.as_matrix()
    assert dense.shape == (c * h * w,) * 2
    z = torch.randn(3, c, h, w, device=device)
    flat = z.reshape(3, -1)
    torch.testing.assert_close(op.mv((z,))[0].reshape(3, -1), flat @ dense.T)
    torch.testing.assert_close(op.rmv((z,))[0].reshape(3, -1), flat @ dense)
    torch.testing.assert_close(LinearOperator.as_matrix(op.transpose()), dense.T)
    # mv is the operator the three named pieces define, built from direct convolutions
    f, g = op.f_kernel, op.g_kernel
    pieces = ((1 - M) * z - circular_conv2d(circular_conv2d(z, f), adjoint_kernel(f))
              + circular_conv2d(z, adjoint_kernel(g)) - circular_conv2d(z, g))
    torch.testing.assert_close(op.mv((z,))[0], pieces)
    if min(h, w) >= 2 * k - 2:
        torch.testing.assert_close(circular_conv2d(z, weight_kernel(f, g, M)), pieces)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dense_w_has_the_three_pieces(shape):
    c, h, w, k = shape
    op = random_operator(c, h, w, k)
    f = materialise(lambda x: circular_conv2d(x, op.f_kernel), (c, h, w))
    g = materialise(lambda x: circular_conv2d(x, op.g_kernel), (c, h, w))
    eye = torch.eye(c * h * w)
    torch.testing.assert_close(op.as_matrix(), (1 - M) * eye - f.T @ f + g.T - g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_adjoint_identity(shape):
    c, h, w, k = shape
    op = random_operator(c, h, w, k, scale=1.5)
    u, v = torch.randn(4, c, h, w), torch.randn(4, c, h, w)
    lhs = (op.mv((u,))[0] * v).sum(dim=(1, 2, 3))
    rhs = (u * op.rmv((v,))[0]).sum(dim=(1, 2, 3))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("alpha", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("hw", [(5, 5), (5, 6), (6, 5), (6, 6), (4, 7)])
def test_resolvent_matches_dense_solve(hw, alpha, device):
    c, k = 3, 3
    op = random_operator(c, *hw, k, scale=0.8, device=device)
    dense = op.as_matrix()
    n = dense.shape[0]
    eye = torch.eye(n, device=device)
    r = torch.randn(4, c, *hw, device=device)
    res = op.resolvent(alpha)
    expected = torch.linalg.solve(eye + alpha * (eye - dense), r.reshape(4, -1).T).T
    expected_t = torch.linalg.solve(eye + alpha * (eye - dense.T), r.reshape(4, -1).T).T
    torch.testing.assert_close(res.solve((r,))[0].reshape(4, -1), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.solve_t((r,))[0].reshape(4, -1), expected_t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.transpose().solve((r,))[0].reshape(4, -1), expected_t,
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.transpose().resolvent(alpha).solve((r,))[0].reshape(4, -1), expected_t,
                               rtol=1e-10, atol=1e-12)


def test_resolvent_kernel_5_odd_even_mix():
    op = random_operator(2, 5, 6, 5, scale=0.5)
    dense = op.as_matrix()
    eye = torch.eye(dense.shape[0])
    r = torch.randn(3, 2, 5, 6)
    expected = torch.linalg.solve(eye + 0.7 * (eye - dense), r.reshape(3, -1).T).T
    torch.testing.assert_close(op.resolvent(0.7).solve((r,))[0].reshape(3, -1), expected,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("m", [0.01, 0.3, 1.0, 3.0])
@pytest.mark.parametrize("shape", [(3, 5, 6, 3), (2, 6, 5, 5)], ids=str)
def test_monotone_for_random_kernels(shape, m):
    op = random_operator(*shape, m=m, scale=3.0)
    eye = torch.eye(op.as_matrix().shape[0])
    assert sym_min_eig(eye - op.as_matrix()) >= m - 1e-8


def test_monotone_after_large_adam_steps():
    m = 0.2
    linear = MonotoneConv(2, 3, (4, 5), m=m)
    opt = torch.optim.Adam(linear.parameters(), lr=0.5)
    x = torch.randn(4, 2, 4, 5)
    eye = torch.eye(3 * 4 * 5)
    for _ in range(25):
        opt.zero_grad()
        op = linear.operator()
        wz = op.mv(linear.bias(x))[0]
        # a random loss pushing W anywhere, including towards non-monotone operators
        loss = (wz * torch.randn_like(wz)).sum() * 10 + (wz ** 2).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            assert sym_min_eig(eye - linear.operator().as_matrix()) >= m - 1e-8


# ----------------------------------------------------------------------------- exact norms

@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("hw", [(5, 5), (5, 6), (6, 5)])
def test_spectral_norm_is_exact(hw, k, device):
    kernel = torch.randn(4, 2, k, k, device=device)
    dense = materialise(lambda x: circular_conv2d(x.to(device), kernel), (2, *hw))
    expected = torch.linalg.matrix_norm(dense, ord=2)
    torch.testing.assert_close(spectral_norm(kernel, hw), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("padding", [0, 1])
def test_input_norm(padding):
    linear = MonotoneConv(2, 3, (4, 5), padding=padding, m=0.5).requires_grad_(False)
    h, w = linear.size
    u_circ = materialise(lambda x: linear.U(x) - linear.U.bias.view(1, -1, 1, 1), (2, h, w))
    torch.testing.assert_close(linear.input_norm(), torch.linalg.matrix_norm(u_circ, ord=2), rtol=1e-12, atol=0)
    assert lipschitz_bound(linear) == pytest.approx(float(linear.input_norm()) / 0.5, rel=1e-12)
    # on the unpadded input the bound holds (zero padding is an isometry)
    u_in = materialise(lambda x: linear.bias(x)[0] - linear.U.bias.view(1, -1, 1, 1), linear.input_shape)
    assert float(torch.linalg.matrix_norm(u_in, ord=2)) <= float(linear.input_norm()) * (1 + 1e-12)


def test_power_iteration_cross_check():
    kernel = torch.randn(3, 2, 3, 3)
    estimate = power_iteration_norm(lambda x: circular_conv2d(x, kernel),
                                    lambda y: circular_conv2d(y, adjoint_kernel(kernel)),
                                    torch.randn(1, 2, 6, 7), iterations=500)
    exact = float(spectral_norm(kernel, (6, 7)))
    assert estimate <= exact * (1 + 1e-10)
    assert estimate == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lipschitz_is_norm_of_i_minus_w(shape):
    op = random_operator(*shape, scale=1.2)
    eye = torch.eye(op.as_matrix().shape[0])
    expected = float(torch.linalg.matrix_norm(eye - op.as_matrix(), ord=2))
    assert op.lipschitz() == pytest.approx(expected, rel=1e-12)


def test_lipschitz_of_float32_kernels_is_not_below_the_norm():
    """An upper bound for the kernels as stored: float32 blocks rounded it up to 1e-7 below."""
    torch.manual_seed(0)
    for _ in range(8):
        op32 = random_operator(8, 12, 12, 3, scale=0.3, dtype=torch.float32)
        exact = ConvOperator(op32.f_kernel.double(), op32.g_kernel.double(), M, (12, 12)).lipschitz()
        assert exact <= op32.lipschitz() <= exact * (1 + 1e-12)


# ----------------------------------------------------------------------------- implicit gradients

def conv_equilibrium_fn(prox, solver, alpha, m, size):
    def fn(x, u, b, f, g):
        op = ConvOperator(f, g, m, size)
        # gradcheck back-propagates one-hot gradients; at an inactive unit the backward solution
        # is u = 0, which PR approaches geometrically while the *relative* step residual stays
        # put, so it runs to the cap (harmlessly: u is negligible by then). Keep the cap small.
        z, _ = equilibrium(op, prox, (circular_conv2d(x, u, b),), solver=solver, alpha=alpha,
                           tol=1e-13, max_iter=20_000, backward_max_iter=150)
        return z[0]
    return fn


@pytest.mark.filterwarnings("ignore::splitting.errors.ConvergenceWarning")
@pytest.mark.parametrize("solver_name", ["fb", "pr"])
@pytest.mark.parametrize("prox", [ReLU(), SoftThreshold(0.05)], ids=repr)
def test_gradcheck_conv_layer(solver_name, prox):
    m, size = 0.5, (3, 4)  # odd × even; small kernels keep FB's step (2m/L²) large
    params = (torch.randn(1, 1, *size, requires_grad=True),
              (0.5 * torch.randn(2, 1, 3, 3)).requires_grad_(),
              (0.3 * torch.randn(2)).requires_grad_(),
              (0.15 * torch.randn(2, 2, 3, 3)).requires_grad_(),
              (0.15 * torch.randn(2, 2, 3, 3)).requires_grad_())
    if solver_name == "pr":
        solver, alpha = peaceman_rachford, 0.8
    else:
        op = ConvOperator(params[3].detach(), params[4].detach(), m, size)
        solver = functools.partial(forward_backward, check_step="raise")
        alpha = 0.9 * max_stable_alpha(op)
    fn = conv_equilibrium_fn(prox, solver, alpha, m, size)
    # FB's small step makes every solve long: its check takes gradcheck's fast mode (random
    # projections uᵀJv of the same Jacobians, a fresh draw per input) instead of every column
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=solver_name == "fb")


def test_module_gradients_reach_all_parameters():
    linear = MonotoneConv(1, 3, (5, 6), m=0.5)
    layer = MonDEQ(linear, solver="pr", alpha=1.0, tol=1e-10, max_iter=500)
    z = layer(torch.randn(3, 1, 5, 6))
    z[0].sin().sum().backward()
    for name, p in linear.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


# ----------------------------------------------------------------------------- the classifier

def test_single_conv_defaults_match_the_paper_model():
    model = single_conv_mondeq()
    linear = model.layer.linear
    assert linear.size == (30, 30) and linear.channels == 54 and linear.m == 1.0
    assert sum(p.numel() for p in model.parameters()) == 79_498
    assert model.head.in_features == 54 * 7 * 7


def test_classifier_float32_smoke():
    torch.set_default_dtype(torch.float32)
    model = single_conv_mondeq(image_size=12, channels=6)
    x, y = torch.randn(5, 1, 12, 12), torch.randint(0, 10, (5,))
    logits, stats = model.forward_with_stats(x)
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    assert stats.forward.z[0].dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert stats.backward is not None and stats.backward.converged
    for p in model.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    op = model.layer.linear.operator()
    assert op.w_blocks().dtype == torch.complex64
    # the readout is linear: logits = H z + c with the effective head from head_matrix()
    head = model.head_matrix()
    z = stats.forward.z
    logits_again = model.logits_from_state(z)
    torch.testing.assert_close(logits_again - model.head.bias, z[0].reshape(5, -1) @ head.T,
                               rtol=1e-4, atol=1e-5)


def test_float32_resolvent_close_to_float64():
    op64 = random_operator(4, 8, 9, 3, scale=0.5)
    op32 = ConvOperator(op64.f_kernel.float(), op64.g_kernel.float(), M, (8, 9))
    r = torch.randn(3, 4, 8, 9)
    expected = op64.resolvent(1.0).solve((r,))[0]
    got = op32.resolvent(1.0).solve((r.float(),))[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- errors

def test_rejects_bad_settings():
    with pytest.raises(InvalidSettingError, match="odd"):
        MonotoneConv(1, 3, 8, kernel_size=4)
    with pytest.raises(InvalidSettingError, match="m must be > 0"):
        MonotoneConv(1, 3, 8, m=0.0)
    with pytest.raises(InvalidSettingError, match="shape"):
        ConvOperator(torch.randn(3, 2, 3, 3), torch.randn(3, 2, 3, 3), 1.0, (5, 5))
    with pytest.raises(InvalidSettingError, match="alpha must be > 0"):
        random_operator(2, 5, 5, 3).resolvent(-1.0)
    layer = MonDEQ(MonotoneConv(1, 3, (5, 6)))
    with pytest.raises(StateShapeError, match=r"expected \(batch, 1, 5, 6\)"):
        layer(torch.randn(2, 1, 6, 5))


# ----------------------------------------------------------------------------- devices

@pytest.mark.parametrize("device", ALL_DEVICES)
def test_everything_follows_the_device_and_dtype(device):
    for dtype, cdtype in ((torch.float32, torch.complex64), (torch.float64, torch.complex128)):
        linear = MonotoneConv(1, 3, (6, 5), dtype=dtype, device=device)
        op = linear.operator()
        assert op.w_blocks().dtype == cdtype and op.w_blocks().device.type == device
        x = torch.randn(2, 1, 6, 5, dtype=dtype, device=device)
        z = MonDEQ(linear, tol=1e-4, max_iter=200)(x)[0]
        assert z.dtype == dtype and z.device.type == device
        assert op.resolvent(1.0).solve_t((z,))[0].dtype == dtype
        assert linear.input_norm().device.type == device


@pytest.mark.parametrize("hw", [(5, 5), (5, 6), (6, 5), (4, 1)])
def test_inverse_transform_backends_agree(hw):
    from mondeq.operators.fft import _irfft2_scipy, _irfft2_torch, irfft2_blocks, rfft2_blocks
    x = torch.randn(3, 2, *hw)
    spectrum = rfft2_blocks(x)
    torch.testing.assert_close(irfft2_blocks(spectrum, hw), x)
    torch.testing.assert_close(_irfft2_torch(spectrum, hw), x)
    torch.testing.assert_close(_irfft2_scipy(spectrum, hw), x)
    assert _irfft2_scipy(spectrum.to(torch.complex64), hw).dtype == torch.float32
    assert _irfft2_torch(spectrum, hw).is_contiguous() and _irfft2_scipy(spectrum, hw).is_contiguous()


@pytest.mark.parametrize("hw", [(5, 6), (4, 1)])
def test_rfft2_blocks_is_the_frequency_major_spectrum(hw):
    """Block ω, row b, column c is rfft2(x)[b, c, ω_h, ω_w] (row-major ω), stored contiguously."""
    from mondeq.operators.fft import rfft2_blocks
    x = torch.randn(3, 2, *hw)
    blocks = rfft2_blocks(x)
    assert blocks.shape == (hw[0] * (hw[1] // 2 + 1), 3, 2) and blocks.is_contiguous()
    reference = torch.fft.rfft2(x)
    for f in range(blocks.shape[0]):
        torch.testing.assert_close(blocks[f], reference[:, :, f // (hw[1] // 2 + 1), f % (hw[1] // 2 + 1)])


def test_kernel_spectra_first_built_under_inference_mode_still_differentiate():
    """The cached phase tables are plain tensors even when first built under inference_mode, so a
    later differentiable spectrum can save them for backward."""
    from mondeq.operators.fft import _phase_table
    _phase_table.cache_clear()  # the first build happens here, whichever tests ran before
    hw = (7, 9)
    kernel = torch.randn(2, 2, 3, 3)
    with torch.inference_mode():
        first = kernel_blocks(kernel, hw)
    leaf = kernel.clone().requires_grad_()
    blocks = kernel_blocks(leaf, hw)
    torch.testing.assert_close(blocks.detach(), first)
    assert torch.autograd.gradcheck(lambda k: kernel_blocks(k, hw), (leaf,))


@pytest.mark.parametrize("hw", [(3, 4), (5, 5), (4, 5)])
def test_block_apply_gradients(hw):
    """The hand-written backward of the block application against finite differences."""
    nf = hw[0] * (hw[1] // 2 + 1)
    x = torch.randn(2, 2, *hw, requires_grad=True)
    blocks_t = torch.randn(nf, 2, 2, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(apply_blocks, (x, blocks_t))
    kernel = torch.randn(2, 2, 3, 3, requires_grad=True)  # through real kernels, as W uses it
    assert torch.autograd.gradcheck(
        lambda x, k: apply_blocks(x, kernel_blocks(k, hw).transpose(-2, -1).contiguous()), (x, kernel))


def test_repeated_application_is_reused_only_while_unchanged():
    op = random_operator(3, 5, 6, 3)
    f, g = op.f_kernel.requires_grad_(), op.g_kernel.requires_grad_()
    z = torch.randn(2, 3, 5, 6)
    with torch.no_grad():
        first = op.mv((z,))[0]
    again = op.mv((z,))[0]  # with a graph, reusing the first application
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    fresh = ConvOperator(f, g, M, (5, 6)).mv((z,))[0]
    weights = torch.randn_like(z)
    torch.testing.assert_close(torch.autograd.grad((again * weights).sum(), (f, g)),
                               torch.autograd.grad((fresh * weights).sum(), (f, g)))
    with torch.no_grad():
        result = op.mv((z,))[0]
        result.mul_(0)  # the caller owns its result: later calls are unaffected
        torch.testing.assert_close(op.mv((z,))[0], first)
        z.add_(1.0)  # a modified input is applied afresh
        direct = circular_conv2d(z, weight_kernel(op.f_kernel, op.g_kernel, M))
        torch.testing.assert_close(op.mv((z,))[0], direct)


def test_apply_blocks_identity_roundtrip():
    x = torch.randn(2, 3, 5, 6)
    eye = torch.eye(3, dtype=torch.complex128).expand(5 * 4, 3, 3).contiguous()
    torch.testing.assert_close(apply_blocks(x, eye), x)


assert DEVICES[0] == "cpu"  # the shared device list; CUDA cases above skip cleanly without a GPU
