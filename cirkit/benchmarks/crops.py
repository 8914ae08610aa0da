"""Object-instance crops, as GeneCIS's attribute tasks take them from Visual Genome images."""

from __future__ import annotations

from cirkit.errors import CirkitError

Box = tuple[float, float, float, float]  # x, y, width, height in pixels
DILATION = 0.7  # genecis datasets/vaw_dataset.py: DILATION = 0.7, PAD_CROP = True


def expand_to_square(image, background=(0, 0, 0)):
    """Pad to a square, the image centred (genecis ``expand2square``)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background)
    result.paste(image, ((height - width) // 2, 0))
    return result


def crop_box(image_size: tuple[int, int], box: Box, dilate: float = DILATION) -> tuple[float, float, float, float]:
    """The crop rectangle (left, top, right, bottom) of GeneCIS's ``load_cropped_image``.

    As in the official code, the box is moved up-left by ``dilate`` times its size and the
    crop keeps ``(1 + dilate)`` times its size from there (so the right/bottom edge stays at the
    box's edge unless clipped), clipped to the image.
    """
    im_width, im_height = image_size
    x, y, width, height = box
    if dilate:
        left, top = max(0, x - dilate * width), max(0, y - dilate * height)
        right = min(im_width, left + (1 + dilate) * width)
        bottom = min(im_height, top + (1 + dilate) * height)
    else:
        left, top, right, bottom = x, y, x + width, y + height
    return left, top, right, bottom


def crop_instance(image, box: Box, dilate: float = DILATION, pad_square: bool = True):
    """Crop an object instance from a PIL image as GeneCIS's attribute tasks do.

    ``box`` is ``(x, y, width, height)`` in pixels (VAW ``instance_bbox``). The crop is
    :func:`crop_box`, then padded to a square with black (mode ``L`` with 0), centred.
    """
    rect = crop_box(image.size, box, dilate)
    try:
        cropped = image.crop(rect)
    except ValueError as e:
        size = f"{image.size[0]}x{image.size[1]}"
        raise CirkitError(f"instance box {list(box)} does not fit the {size} image: {e}") from None
    if pad_square:
        background = (0,) if cropped.mode == "L" else (0, 0, 0)
        cropped = expand_to_square(cropped, background)
    return cropped
