"""The student is trained on exactly the edge's input: parity with kernels.dispatch.preprocess."""
import numpy as np
import pytest
import torch

from distill.data import ImageSet
from distill.preprocess import PARITY_ATOL, preprocess_torch
from kernels import dispatch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("hw,size", [((97, 131), 64), ((300, 257), 128), ((480, 640), 256), ((64, 64), 64)])
def test_downscaling_is_bit_exact(hw, size):
    rng = np.random.default_rng(sum(hw))
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    import cv2

    from distill.preprocess import resize_uint8

    got = resize_uint8(torch.from_numpy(frame).permute(2, 0, 1)[None].contiguous(), size)[0].permute(1, 2, 0)
    np.testing.assert_array_equal(got.numpy(), cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_allclose(preprocess_torch(frame, size, MEAN, STD).numpy(),
                               dispatch.preprocess(frame, size, MEAN, STD), rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw,size", [((40, 33), 64), ((7, 5), 64), ((128, 128), 256)])
def test_torch_preprocess_matches_the_edge(hw, size):
    rng = np.random.default_rng(sum(hw))
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref = dispatch.preprocess(frame, size, MEAN, STD)
    got = preprocess_torch(frame, size, MEAN, STD).numpy()
    assert got.shape == ref.shape == (1, 3, size, size)
    diff = np.abs(got - ref)
    # upscaling: at most one grey level apart, on a few pixels
    assert diff.max() <= PARITY_ATOL
    assert (diff > 1e-3).mean() < 0.03


def test_training_inputs_are_bit_identical_to_the_edge():
    import cv2

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (90, 70, 3), dtype=np.uint8) for _ in range(3)]
    imgs = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_LINEAR) for f in frames])
    s = ImageSet([None] * 3, imgs, np.zeros(3, np.int64), np.zeros((3, 64, 64), bool))
    x = s.student_inputs(MEAN, STD).numpy()
    for i, f in enumerate(frames):
        np.testing.assert_allclose(x[i:i + 1], dispatch.preprocess(f, 64, MEAN, STD), rtol=0, atol=1e-6)
    np.testing.assert_allclose(s.teacher_inputs().numpy()[0],
                               dispatch.preprocess(frames[0], 64, (0, 0, 0), (1, 1, 1))[0], rtol=0, atol=1e-7)


def test_rejects_non_uint8_frames():
    with pytest.raises(TypeError):
        from distill.preprocess import resize_uint8

        resize_uint8(torch.zeros(1, 3, 8, 8), 4)
