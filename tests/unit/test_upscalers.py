"""Tiled upscaling: an upscaler that looks only at the pixels around each one gives, tile by tile, what it gives
at once (away from the blended overlaps; everywhere for one that looks at its own pixel only)."""

import numpy as np
import pytest
from PIL import Image

from easel.upscalers import tiled


def noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def nearest(factor):
    return lambda im: im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)


@pytest.mark.parametrize("size, tile, overlap", [((130, 100), 32, 8), ((64, 64), 64, 8), ((97, 33), 40, 12)])
def test_tiles_give_the_untiled_result(size, tile, overlap):
    picture = noise(*size)
    assert np.array_equal(np.asarray(tiled(picture, 4, tile, overlap, nearest(4))),
                          np.asarray(nearest(4)(picture)))


def test_a_filter_with_a_reach_matches_away_from_the_overlaps():
    picture = noise(128, 128)

    def bicubic(im):  # looks 2 pixels around each one
        return im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC)

    whole = np.asarray(bicubic(picture), dtype=np.int16)
    parts = np.asarray(tiled(picture, 2, 64, 16, bicubic), dtype=np.int16)
    # tiles of 64 at 0, 32 and 64: pixels 0-29 and 98-127 lie in one tile, more than the filter's reach inside it
    alone = np.zeros(256, dtype=bool)
    alone[:2 * 30] = alone[2 * 98:] = True
    assert np.array_equal(parts[alone][:, alone], whole[alone][:, alone])
    assert np.abs(parts - whole).max() < 40  # and in the overlaps the blend stays close
