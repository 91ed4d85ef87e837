"""The cs231n NumPy layers that normdrop's API comes from, kept as a speed
baseline for ``python -m normdrop bench`` and ``python -m normdrop demo``.
Not part of the library.

The functions are the assignment's code as it is commonly written (dropout,
batchnorm with the staged backward, and the transpose-and-reshape spatial
batchnorm), unchanged apart from comments; layernorm and spatial groupnorm
in the same style (the simplified backward the notebook derives), with
layernorm over the last axis so that (B, T, D) inputs run too.  They run on any module with
NumPy's names: :func:`on` rebinds ``np`` (for CuPy).
"""
import types

import numpy as np


def dropout_forward(x, dropout_param):
    p, mode = dropout_param['p'], dropout_param['mode']
    if 'seed' in dropout_param:
        np.random.seed(dropout_param['seed'])

    mask = None
    out = None

    if mode == 'train':  # dropout on in training
        mask = (np.random.rand(*x.shape) < p) / p
        out = x * mask
    elif mode == 'test':  # and off at test time
        out = x

    cache = (dropout_param, mask)
    out = out.astype(x.dtype, copy=False)

    return out, cache


def dropout_backward(dout, cache):
    dropout_param, mask = cache
    mode = dropout_param['mode']

    dx = None
    if mode == 'train':
        dx = dout * mask
    elif mode == 'test':
        dx = dout
    return dx


def batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param['mode']
    eps = bn_param.get('eps', 1e-5)
    momentum = bn_param.get('momentum', 0.9)

    N, D = x.shape
    running_mean = bn_param.get('running_mean', np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get('running_var', np.zeros(D, dtype=x.dtype))

    out, cache = None, None
    if mode == 'train':
        sample_mean = np.mean(x, axis=0, keepdims=True)  # [1,D]
        sample_var = np.var(x, axis=0, keepdims=True)  # [1,D]
        x_normalized = (x - sample_mean) / np.sqrt(sample_var + eps)  # [N,D]
        out = gamma * x_normalized + beta
        cache = (x_normalized, gamma, beta, sample_mean, sample_var, x, eps)
        running_mean = momentum * running_mean + (1 - momentum) * sample_mean
        running_var = momentum * running_var + (1 - momentum) * sample_var
    elif mode == 'test':
        x_normalized = (x - running_mean) / np.sqrt(running_var + eps)
        out = gamma * x_normalized + beta
    else:
        raise ValueError('Invalid forward batchnorm mode "%s"' % mode)

    # Store the updated running means back into bn_param
    bn_param['running_mean'] = running_mean
    bn_param['running_var'] = running_var

    return out, cache


def batchnorm_backward(dout, cache):
    dx, dgamma, dbeta = None, None, None
    x_normalized, gamma, beta, sample_mean, sample_var, x, eps = cache
    N, D = x.shape
    dx_normalized = dout * gamma  # [N,D]
    x_mu = x - sample_mean  # [N,D]
    sample_std_inv = 1.0 / np.sqrt(sample_var + eps)  # [1,D]
    dsample_var = -0.5 * np.sum(dx_normalized * x_mu, axis=0, keepdims=True) * sample_std_inv**3
    dsample_mean = -1.0 * np.sum(dx_normalized * sample_std_inv, axis=0, keepdims=True) - \
        2.0 * dsample_var * np.mean(x_mu, axis=0, keepdims=True)
    dx1 = dx_normalized * sample_std_inv
    dx2 = 2.0 / N * dsample_var * x_mu
    dx = dx1 + dx2 + 1.0 / N * dsample_mean
    dgamma = np.sum(dout * x_normalized, axis=0, keepdims=True)
    dbeta = np.sum(dout, axis=0, keepdims=True)

    return dx, dgamma, dbeta


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    N, C, H, W = x.shape
    x_new = x.transpose(0, 2, 3, 1).reshape(N * H * W, C)
    out, cache = batchnorm_forward(x_new, gamma, beta, bn_param)
    out = out.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return out, cache


def spatial_batchnorm_backward(dout, cache):
    N, C, H, W = dout.shape
    dout_new = dout.transpose(0, 2, 3, 1).reshape(N * H * W, C)
    dx, dgamma, dbeta = batchnorm_backward(dout_new, cache)
    dx = dx.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get('eps', 1e-5)
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.var(x, axis=-1, keepdims=True)
    std = np.sqrt(var + eps)
    x_hat = (x - mu) / std
    out = gamma * x_hat + beta
    cache = (x_hat, std, gamma)
    return out, cache


def layernorm_backward(dout, cache):
    x_hat, std, gamma = cache
    D = x_hat.shape[-1]
    axes = tuple(range(dout.ndim - 1))
    dgamma = np.sum(dout * x_hat, axis=axes)
    dbeta = np.sum(dout, axis=axes)
    dx_hat = dout * gamma
    dx = (1.0 / D) / std * (D * dx_hat - np.sum(dx_hat, axis=-1, keepdims=True)
                            - x_hat * np.sum(dx_hat * x_hat, axis=-1, keepdims=True))
    return dx, dgamma, dbeta


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    eps = gn_param.get('eps', 1e-5)
    N, C, H, W = x.shape
    gamma, beta = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)
    xg = x.reshape(N, G, C // G, H, W)
    mu = np.mean(xg, axis=(2, 3, 4), keepdims=True)
    var = np.var(xg, axis=(2, 3, 4), keepdims=True)
    std = np.sqrt(var + eps)
    x_hat = ((xg - mu) / std).reshape(N, C, H, W)
    out = gamma * x_hat + beta
    cache = (G, x_hat, std, gamma)
    return out, cache


def spatial_groupnorm_backward(dout, cache):
    G, x_hat, std, gamma = cache
    N, C, H, W = dout.shape
    dgamma = np.sum(dout * x_hat, axis=(0, 2, 3), keepdims=True)
    dbeta = np.sum(dout, axis=(0, 2, 3), keepdims=True)
    M = C // G * H * W
    dxg_hat = (dout * gamma).reshape(N, G, C // G, H, W)
    xg_hat = x_hat.reshape(N, G, C // G, H, W)
    dx = (1.0 / M) / std * (M * dxg_hat - np.sum(dxg_hat, axis=(2, 3, 4), keepdims=True)
                            - xg_hat * np.sum(dxg_hat * xg_hat, axis=(2, 3, 4), keepdims=True))
    return dx.reshape(N, C, H, W), dgamma, dbeta


OPS = ("dropout_forward", "dropout_backward", "batchnorm_forward", "batchnorm_backward",
       "spatial_batchnorm_forward", "spatial_batchnorm_backward", "layernorm_forward",
       "layernorm_backward", "spatial_groupnorm_forward", "spatial_groupnorm_backward")


def on(xp):
    """The functions above with ``np`` bound to the module ``xp``, as a
    namespace (``on(cupy).batchnorm_forward(...)``)."""
    if xp is np:
        return types.SimpleNamespace(**{name: globals()[name] for name in OPS})
    scope = dict(globals(), np=xp)
    for name in OPS:
        f = globals()[name]
        scope[name] = types.FunctionType(f.__code__, scope, f.__name__, f.__defaults__,
                                         f.__closure__)
    return types.SimpleNamespace(**{name: scope[name] for name in OPS})
