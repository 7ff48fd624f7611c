"""Independent re-implementations of what the original pipelines computed, written as their code reads
(MINTIME's preprocessing/extract_crops.py and transforms/albu.py + deepfakes_dataset.py val transform,
Megatron's src/megatron/video_dataloader.py), used as test oracles. Never imported by the package."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def mintime_crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """MINTIME's extract_video() crop of one box (boxes already in frame pixels: no `* 2`)."""
    xmin, ymin, xmax, ymax = (int(b) for b in box)
    w, h = xmax - xmin, ymax - ymin
    p_h, p_w = h // 3, w // 3
    crop_h = (ymax + p_h) - max(ymin - p_h, 0)
    crop_w = (xmax + p_w) - max(xmin - p_w, 0)
    if crop_h > crop_w:
        p_h -= int((crop_h - crop_w) / 2)
    else:
        p_w -= int((crop_w - crop_h) / 2)
    crop = frame[max(ymin - p_h, 0) : ymax + p_h, max(xmin - p_w, 0) : xmax + p_w]
    h, w = crop.shape[:2]
    if h > w:
        diff = int((h - w) / 2)
        crop = crop[diff:-diff, :] if diff > 0 else crop[1:, :]
    elif h < w:
        diff = int((w - h) / 2)
        crop = crop[:, diff:-diff] if diff > 0 else crop[:, :-1]
    return crop


def mintime_val_transform(img: np.ndarray, size: int) -> np.ndarray:
    """MINTIME's validation transform: isotropically_resize_image (int() truncation, AREA down, CUBIC up),
    then albumentations' PadIfNeeded with zeros (top/left get int(pad / 2)); its Resize(size, size) is a
    no-op on the padded square."""
    h, w = img.shape[:2]
    if max(w, h) != size:
        if w > h:
            scale = size / w
            h, w = h * scale, size
        else:
            scale = size / h
            w, h = w * scale, size
        interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
        img = cv2.resize(img.astype("uint8"), (int(w), int(h)), interpolation=interpolation)
    h, w = img.shape[:2]
    top, left = int((size - h) / 2.0), int((size - w) / 2.0)
    return cv2.copyMakeBorder(img, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT, value=0)


def megatron_pad_frames(crops: list[np.ndarray]) -> list[np.ndarray]:
    """Megatron's VideoDataset.pad_frames: CHW tensors zero-padded centred to the largest height and width
    of the video's crops (F.pad, left/top = diff // 2), back to HWC uint8 for comparison."""
    frames = [torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1) for c in crops]
    max_height = max(f.size(1) for f in frames)
    max_width = max(f.size(2) for f in frames)
    padded = []
    for f in frames:
        if f.size(1) != max_height or f.size(2) != max_width:
            left = (max_width - f.size(2)) // 2
            top = (max_height - f.size(1)) // 2
            f = F.pad(
                f,
                (left, max_width - f.size(2) - left, top, max_height - f.size(1) - top),
                mode="constant",
                value=0,
            )
        padded.append(f.permute(1, 2, 0).numpy())
    return padded
