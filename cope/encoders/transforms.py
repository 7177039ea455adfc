"""Image preprocessing on uint8 tensors.

open_clip's and timm's eval transforms are torchvision ``Compose`` chains of Resize (Pillow, antialiased), CenterCrop,
ToTensor and Normalize: two float passes per image and Pillow's resize, several times slower than torch's uint8
antialiased kernel. :func:`uint8_twin` recognises such a chain and returns a :class:`Uint8Transform` doing the same
resize and crop on uint8 pixels (within one grey level of Pillow's); the encoder normalises whole batches once, on
its device (:func:`model_input`). Any other transform is kept as it is.

>>> t = Uint8Transform(size=224, crop=(224, 224), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
>>> from PIL import Image
>>> x = t(Image.new("RGB", (640, 480), (255, 0, 0)))
>>> x.dtype, tuple(x.shape), t.normalize(x[None])[0, :, 0, 0].tolist()
(torch.uint8, (3, 224, 224), [1.0, -1.0, -1.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cope._torchvision_fix import ensure_torchvision_importable

if TYPE_CHECKING:
    import torch
    from PIL import Image


def resized_size(height: int, width: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) after torchvision's ``Resize(size)``: an int sets the short side (the long one is truncated
    to keep the aspect ratio), a pair is the exact (height, width)."""
    if not isinstance(size, int):
        return size
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


@dataclass(frozen=True)
class Uint8Transform:
    """PIL image -> uint8 (3, H, W) tensor: RGB, antialiased resize, centre crop (picklable, thread-safe).

    ``size`` is torchvision's Resize size (int: the short side; (h, w): exact), ``crop`` the centre crop (h, w).
    :meth:`normalize` turns a batch of its output into model input.
    """

    size: int | tuple[int, int]
    crop: tuple[int, int]
    interpolation: Literal["bicubic", "bilinear"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch
        from torch.nn.functional import interpolate

        if image.mode != "RGB":
            image = image.convert("RGB")
        # (1, 3, H, W) viewed on the (H, W, 3) pixels: channels-last, the layout torch's uint8 resize kernel reads
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)
        height, width = x.shape[-2:]
        h, w = resized_size(height, width, self.size)
        if (h, w) != (height, width):
            x = interpolate(x, size=(h, w), mode=self.interpolation, align_corners=False, antialias=True)
        ch, cw = self.crop
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))  # as torchvision's center_crop
        return x[0, :, top : top + ch, left : left + cw].contiguous()

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 ``(pixels / 255 - mean) / std`` of a uint8 batch (N, 3, H, W), on the batch's device; a float
        batch (already model input) is returned as it is."""
        import torch

        if batch.dtype != torch.uint8:
            return batch
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1)
        return batch.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)


def uint8_twin(transform: Any) -> Uint8Transform | None:
    """The :class:`Uint8Transform` equivalent to a torchvision eval ``Compose`` of Resize, CenterCrop, an optional
    RGB conversion, ToTensor and Normalize (open_clip's and timm's); None for any other transform."""
    ensure_torchvision_importable()
    from torchvision import transforms as T

    steps = [s for s in getattr(transform, "transforms", [])
             if not (type(s).__name__ == "MaybeConvertMode" and getattr(s, "mode", None) == "RGB")]
    if len(steps) != 4:
        return None
    resize, crop, to_tensor, normalize = steps
    if not (isinstance(resize, T.Resize) and isinstance(crop, T.CenterCrop) and isinstance(to_tensor, T.ToTensor)
            and isinstance(normalize, T.Normalize)):
        return None
    modes = {T.InterpolationMode.BICUBIC: "bicubic", T.InterpolationMode.BILINEAR: "bilinear"}
    if resize.interpolation not in modes or resize.max_size is not None or resize.antialias is False:
        return None
    size = resize.size
    if not isinstance(size, int):
        size = int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
    crop_size = (int(crop.size[0]), int(crop.size[1]))
    smallest = (size, size) if isinstance(size, int) else size
    if crop_size[0] > smallest[0] or crop_size[1] > smallest[1]:  # torchvision would pad: not handled here
        return None
    mean = tuple(float(v) for v in np.asarray(normalize.mean, dtype=np.float64).reshape(-1))
    std = tuple(float(v) for v in np.asarray(normalize.std, dtype=np.float64).reshape(-1))
    if len(mean) != 3 or len(std) != 3:
        return None
    return Uint8Transform(size, crop_size, modes[resize.interpolation], mean, std)  # type: ignore[arg-type]


def model_input(batch: torch.Tensor, transform: Any, device: torch.device | str) -> torch.Tensor:
    """A stacked batch of ``transform``'s output on ``device``, normalised there when it is uint8 pixels (the
    transfer to an accelerator then moves a quarter of the bytes)."""
    batch = batch.to(device)
    return transform.normalize(batch) if isinstance(transform, Uint8Transform) else batch
