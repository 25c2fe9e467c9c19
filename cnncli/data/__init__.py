"""Image-folder datasets: indexing (scan), robust decoding to 8-bit grayscale and resizing (decode),
many files at once in worker processes (decodemany), the memory-mapped dataset cache (cache),
load_folder, the in-place split and streamed pixel statistics (dataset). A data folder holds one
subfolder per class (like torchvision ImageFolder); bad files are skipped with a reason, never crash
a load. This package does not batch or normalize (the trainer does).
"""

from .cache import CACHE_FORMAT_VERSION, cache_dir
from .cache import clear as clear_cache
from .cache import info as cache_info
from .dataset import (Dataset, PixelTally, fold_split, load_folder, pixel_mean_std, pixel_notes, split,
                      stratified_split)
from .decode import ALPHA_BACKGROUND, IMAGE_EXTENSIONS, MAX_PIXELS, PIL_FORMATS, RESIZE_MODES, load_image, resize_gray
from .decodemany import PROCESS_MIN_IMAGES, Jobs, decode_array, decode_many, default_workers, iter_decoded
from .names import printable
from .pathlist import PathList
from .scan import IGNORED_DIRS, list_images, list_images_and_bad

__all__ = ["ALPHA_BACKGROUND", "CACHE_FORMAT_VERSION", "IGNORED_DIRS", "IMAGE_EXTENSIONS", "Jobs", "MAX_PIXELS",
           "PIL_FORMATS", "PathList", "PROCESS_MIN_IMAGES", "RESIZE_MODES", "Dataset", "cache_dir", "cache_info",
           "clear_cache", "decode_array", "decode_many", "default_workers", "iter_decoded",
           "list_images", "list_images_and_bad", "load_folder", "load_image", "pixel_mean_std", "pixel_notes",
           "PixelTally", "printable", "resize_gray", "split", "stratified_split", "fold_split"]
