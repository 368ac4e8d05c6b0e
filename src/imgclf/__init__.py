"""imgclf: image classification with convolutional networks, from a folder of images to a served model.

    import imgclf
    run = imgclf.train(imgclf.load_config("mnist-fast"))
"""

from importlib.metadata import PackageNotFoundError, version

from imgclf.errors import DataError, ImgclfError

try:
    __version__ = version("imgclf")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["DataError", "ImgclfError", "__version__", "load_config", "train"]


def __getattr__(name: str):
    """imgclf.train and imgclf.load_config, imported on first use (torch takes seconds to import)."""
    if name == "train":
        from imgclf.training import train

        return train
    if name == "load_config":
        from imgclf.config import load_config

        return load_config
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
