"""Ways in and out of gpubp: PyTorch modules and state dicts, ONNX files, scikit-learn
estimators, and DLPack arrays.

Each optional library (torch, onnx, scikit-learn) is imported only by the function that
needs it, so ``import gpubp.interop`` needs NumPy alone.

- :func:`to_torch`, :func:`from_torch`, :func:`from_torch_state_dict` (gpubp.interop.torch)
- :func:`to_onnx` (gpubp.interop.onnx)
- :func:`mlp_from_sklearn`, :func:`mlp_to_sklearn` (gpubp.interop.sklearn)
- :func:`as_array` (gpubp.interop.dlpack): the zero-copy reading every X and y goes through
"""

from gpubp.interop.dlpack import as_array
from gpubp.interop.onnx import to_onnx
from gpubp.interop.sklearn import mlp_from_sklearn, mlp_to_sklearn
from gpubp.interop.torch import from_torch, from_torch_state_dict, to_torch

__all__ = ["to_torch", "from_torch", "from_torch_state_dict", "to_onnx",
           "mlp_from_sklearn", "mlp_to_sklearn", "as_array"]
