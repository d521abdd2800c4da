"""The full-reference measure the severities are calibrated against.

SSIM sees structure (blur, noise, blocking) well but barely notices a global change of
brightness or colour: an image one stop too bright keeps SSIM near 0.9. The calibration
measure therefore multiplies SSIM on luma by a colour-fidelity term from the mean CIELAB
colour difference:

    fidelity = SSIM(luma) * max(0, 1 - mean(delta E_ab) / 100)

100 is the span of L* (black to white), so a frame turned from mid-grey to white or black
loses about half its fidelity from this term alone. Blur and noise barely move the mean
colour, so for them the measure is essentially SSIM.

Needs scikit-image (installed with ``iqa[dev]``); it is used by
scripts/calibrate_augment.py and the tests, never by training itself.
"""

from __future__ import annotations

import cv2
import numpy as np

DELTA_E_SPAN = 100.0


def _luma(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """SSIM on luma with the settings of Wang et al. (2004): Gaussian window, sigma 1.5."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the calibration measure needs scikit-image: pip install 'iqa[dev]'"
        ) from exc
    return float(
        structural_similarity(
            _luma(reference),
            _luma(distorted),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def mean_delta_e(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Mean CIE76 colour difference between two uint8 sRGB images.

    Computed at half resolution: the mean colour shift is a low-frequency quantity, and
    this keeps the measure fast enough for calibration sweeps.
    """
    h, w = reference.shape[:2]
    size = (max(1, w // 2), max(1, h // 2))

    def lab(image):
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)

    return float(np.sqrt(((lab(reference) - lab(distorted)) ** 2).sum(axis=2)).mean())


def colour_fidelity(reference: np.ndarray, distorted: np.ndarray) -> float:
    return max(0.0, 1.0 - mean_delta_e(reference, distorted) / DELTA_E_SPAN)


def fidelity(reference: np.ndarray, distorted: np.ndarray) -> float:
    """SSIM x colour fidelity, 1 for identical images, toward 0 for a destroyed one."""
    return ssim(reference, distorted) * colour_fidelity(reference, distorted)
