"""The quality score (umbra.anonymization.quality): held-out real faces score 1, blur scores low."""

import io

import numpy as np
import torch
from PIL import Image, ImageFilter

from umbra.anonymization.quality import at, realism
from umbra.dataset.synthetic import generate


def images(count: int, seed: int) -> list[Image.Image]:
    return [Image.open(io.BytesIO(face.png)).convert("RGB") for face in generate(count, size=64, seed=seed)]


def tensor(faces: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(face).transpose(2, 0, 1) for face in faces]))


def test_held_out_faces_score_one_and_blurred_ones_far_less():
    faces = images(400, 1)
    reference, held_out = tensor(faces[:200]), tensor(faces[200:])
    assert realism(held_out, held_out, reference) == 1.0
    blurred = realism(tensor([face.filter(ImageFilter.GaussianBlur(3.0)) for face in faces[200:]]), held_out,
                      reference)
    assert blurred < 0.5, blurred


def test_images_are_reduced_by_area_averaging():
    images = torch.arange(4 * 4, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    assert at(images, 2)[0, 0].tolist() == [[2, 4], [10, 12]]  # the mean of each 2×2 block, rounded half to even
    assert at(images, 4) is images
