"""Make ``import torchvision`` work next to a CPU build of torch.

The torchvision wheel on PyPI may be built against CUDA torch; importing it beside CPU torch fails with
``RuntimeError: operator torchvision::nms does not exist`` (pytorch/vision#9085). Registering the two operator
schemas before torchvision is imported lets it load (transforms work; ``ops.nms`` does not, and cope never uses it).
The fix applies only when the operators are missing, so a matching torchvision build is left untouched.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

_LIBRARY = None  # kept alive for the life of the process: dropping it unregisters the schemas


def _has_op(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Define the missing ``torchvision::nms``/``qnms`` schemas if needed. Returns True when it patched."""
    global _LIBRARY
    if "torchvision" in sys.modules or _LIBRARY is not None:
        return False
    import torch

    if _has_op("nms"):
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    logger.debug("registered torchvision::nms/qnms schemas so torchvision imports beside CPU torch")
    return True
