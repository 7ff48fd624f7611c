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


# ---------------------------------------------------------------------------------------------- Megatron
# Transcribed from Megatron's src/megatron/video_dataloader.py and preprocessing.py (commit 403ba0b), and
# from transformers 4.44.2 pipelines/depth_estimation.py, the pipeline Megatron calls.


def megatron_video_crops(
    frames: list[np.ndarray], rects: list[list[tuple[int, int, int, int]]], total_frame: int, num_frame: int
) -> list[np.ndarray] | None:
    """VideoDataset.__getitem__ (video_dataloader.py:119-131) with extract_frames_and_faces (:164-175) and
    face_extraction (:187-198): the first dlib rectangle (left, top, right, bottom) of each frame from
    frame 0, cut `frame[y:y+h, x:x+w]` with dlib's inclusive width()/height(); the first frame without one
    ends the run; fewer than num_frame faces (or frames in the container) and the video is dropped (None).
    An empty cut (a negative top/left) makes its depth step raise, caught at :143-145: dropped too."""
    length = min(total_frame, num_frame)
    if length < num_frame:
        return None
    crops = []
    for frame, frame_rects in list(zip(frames, rects, strict=True))[:length]:
        face = None
        for left, top, right, bottom in frame_rects:
            x, y, w, h = left, top, right - left + 1, bottom - top + 1
            face = frame[y : y + h, x : x + w]
            break
        if face is None:
            break
        crops.append(face)
    if len(crops) < num_frame or any(c.size == 0 for c in crops):
        return None
    return crops


def megatron_label(video_path: str) -> int:
    """`label = "original" in video_path` (video_dataloader.py:113), as int in its collate (:352)."""
    return int("original" in video_path)


def megatron_positional_encoding(d_model: int, max_len: int) -> torch.Tensor:
    """PositionalEncoding.__init__ (preprocessing.py:26-34), added to each sequence in its collate (:343)."""
    pe = torch.zeros(max_len, d_model)
    pos = torch.arange(0, max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-torch.log(torch.tensor(10000.0)) / d_model))
    pe[:, 0::2] = torch.sin(pos * div_term)
    pe[:, 1::2] = torch.cos(pos * div_term)
    return pe


def megatron_repvit(model: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """RepVit.forward (preprocessing.py:81-84): uint8 CHW frames / 255, no mean/std, pooled pre-logits."""
    img = frames.float() / 255.0
    return model.forward_head(model.forward_features(img), pre_logits=True)


def transformers_444_depth(predicted_depth: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
    """DepthEstimationPipeline.postprocess of transformers 4.44.2 (pipelines/depth_estimation.py:102-109):
    bicubic to the image's (width, height) reversed, then `(output * 255 / np.max(output)).astype("uint8")`."""
    prediction = F.interpolate(
        predicted_depth.unsqueeze(1), size=image_size[::-1], mode="bicubic", align_corners=False
    )
    output = prediction.squeeze().cpu().numpy()
    return (output * 255 / np.max(output)).astype("uint8")
