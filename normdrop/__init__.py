"""normdrop: fast, exact batchnorm and dropout layers (forward and backward)
for NumPy, CuPy and array-API arrays, with the cs231n functional API."""
from ._version import __version__
from ._api import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)
from ._dispatch import force_reference
from ._info import show_config

__all__ = [
    "__version__",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "batchnorm_forward",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "force_reference",
    "show_config",
    "spatial_batchnorm_backward",
    "spatial_batchnorm_forward",
]
