r"""LPIPS distance between two images, like the reference's two-image script.

    python -m maginet_jax.tools.lpips IMG0 IMG1 [--net alex|vgg]

Both images are read as RGB by `image_io.decode`, as prediction reads its inputs (16-bit at full precision, EXIF
orientation applied, alpha multiplied in, grey repeated), and mapped from [0, largest code] to [-1, 1]: x/127.5 - 1
for 8-bit images, as the reference does. The distance is printed as the last line. Unreadable files, non-images
and images of different sizes give one error line and exit status 1.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import UnidentifiedImageError

from maginet_jax import cli, image_io
from maginet_jax.errors import UserError, first_line
from maginet_jax.perceptual.lpips import LPIPS, MIN_SIZE


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) float32 in [-1, 1], decoded as everywhere else (`image_io.decode`). UserError if unreadable."""
    try:
        with open(path, "rb") as f:
            codes = image_io.decode(f.read())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not an image") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow's UnidentifiedImageError names the in-memory buffer decode reads from, not the file
        reason = "not a format Pillow knows" if isinstance(e, UnidentifiedImageError) else first_line(e)
        raise UserError(f"{path}: not a readable image ({reason})") from None
    rgb = codes.astype(np.float32) / (np.iinfo(codes.dtype).max / 2.0) - 1.0  # /127.5 for 8-bit, as the reference
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def distance(path0: str, path1: str, net: str = "alex") -> float:
    """The LPIPS distance between two image files."""
    x0, x1 = read_rgb(path0), read_rgb(path1)
    if x0.shape != x1.shape:
        raise UserError(f"images differ in size: {path0} is {x0.shape[1]}x{x0.shape[0]}, "
                        f"{path1} is {x1.shape[1]}x{x1.shape[0]}")
    if min(x0.shape[:2]) < MIN_SIZE[net]:
        raise UserError(f"images must be at least {MIN_SIZE[net]}x{MIN_SIZE[net]} for --net {net}, "
                        f"got {x0.shape[1]}x{x0.shape[0]}")
    return float(LPIPS(net)(x0[None], x1[None])[0])


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser("maginet_jax.tools.lpips", description=__doc__.split("\n")[0])
    parser.add_argument("img0")
    parser.add_argument("img1")
    parser.add_argument("--net", choices=("alex", "vgg"), default="alex")
    args = parser.parse_args(argv)
    try:
        d = distance(args.img0, args.img1, args.net)
    except UserError as e:
        sys.exit(f"maginet_jax.tools.lpips: error: {e}")
    print(f"LPIPS ({args.net}, v0.1): {args.img0} vs {args.img1}")
    print(f"{d:.6f}")


if __name__ == "__main__":
    main()
