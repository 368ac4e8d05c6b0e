"""imgclf: image classification with convolutional networks, from a folder of images to a served model."""

from importlib.metadata import PackageNotFoundError, version

from imgclf.errors import DataError, ImgclfError

try:
    __version__ = version("imgclf")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["DataError", "ImgclfError", "__version__"]
