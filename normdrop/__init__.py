"""normdrop: fast, exact normalization (batchnorm, layernorm, groupnorm) and
dropout layers, forward and backward, for NumPy, CuPy and array-API arrays,
with the cs231n functional API, and layer objects over it in
:mod:`normdrop.layers`."""
from ._version import __version__
from ._api import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    layernorm_backward,
    layernorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)
from ._dispatch import force_reference
from ._distributed import RankError
from ._interop import AccumulationWarning
from ._info import show_config
from ._memory import cache_info, empty_cache, set_cache_limit
from . import layers  # the layer objects over the functions above

__all__ = [
    "__version__",
    "AccumulationWarning",
    "RankError",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "batchnorm_forward",
    "cache_info",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "empty_cache",
    "force_reference",
    "layernorm_backward",
    "layernorm_forward",
    "set_cache_limit",
    "show_config",
    "spatial_batchnorm_backward",
    "spatial_batchnorm_forward",
    "spatial_groupnorm_backward",
    "spatial_groupnorm_forward",
]
