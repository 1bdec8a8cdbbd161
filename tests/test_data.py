"""Dataset loading: real MNIST / Fashion-MNIST / EuroSAT / the offline sample, IDX parsing and
its failure modes, class folders, and batching with augmentation."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelzip.data import (
    DATASETS,
    ImageDataset,
    load_dataset,
    load_image_folder,
    read_idx,
    stratified_split,
)
from modelzip.errors import DataError

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake")


def _sha16(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def _idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as an IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


# ---------------------------------------------------------------------------- real data
@pytest.mark.parametrize(
    ("name", "split", "n", "sha", "first_labels"),
    [
        ("mnist", "train", 60000, "c8d7b3ac57a59fa4", [5, 0, 4, 1, 9, 2, 1, 3]),
        ("mnist", "test", 10000, "8a004a2f81a80f48", [7, 2, 1, 0, 4, 1, 4, 9]),
        ("fashion-mnist", "train", 60000, "9fd5e05238929f78", None),
        ("fashion-mnist", "test", 10000, "d8c9b85550f6c8fa", None),
    ],
)
def test_idx_datasets(data_root: Path, mnist_train: ImageDataset, mnist_test: ImageDataset,
                      name: str, split: str, n: int, sha: str, first_labels: list[int] | None
                      ) -> None:
    if name == "mnist":
        ds = mnist_train if split == "train" else mnist_test
    else:
        ds = load_dataset(name, split, data_root)
    assert len(ds) == n
    assert ds.images.shape == (n, 1, 28, 28)
    assert ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert ds.labels.shape == (n,)
    assert int(ds.labels.min()) == 0
    assert int(ds.labels.max()) == 9
    assert ds.input_shape == (1, 28, 28)
    assert ds.num_classes == 10
    assert ds.classes == tuple(str(i) for i in range(10))
    assert ds.name == name
    assert ds.split == split
    assert (ds.mean, ds.std) == (DATASETS[name].mean, DATASETS[name].std)
    # every class is present in a sensible amount (MNIST/Fashion have 5-7k per class in train)
    counts = torch.bincount(ds.labels, minlength=10)
    assert counts.sum() == n
    assert int(counts.min()) > n // 20
    if name == "fashion-mnist":  # Fashion-MNIST is exactly balanced
        assert counts.tolist() == [n // 10] * 10
    assert _sha16(ds.images[:100]) == sha
    if first_labels is not None:
        assert ds.labels[:8].tolist() == first_labels


def test_idx_dataset_found_from_env_without_root(monkeypatch: pytest.MonkeyPatch,
                                                 data_root: Path,
                                                 mnist_test: ImageDataset) -> None:
    monkeypatch.setenv("MODELZIP_DATA", str(data_root))
    ds = load_dataset("mnist", "test")
    assert torch.equal(ds.images, mnist_test.images)
    # the dataset folder itself also works as root
    ds2 = load_dataset("mnist", "test", data_root / "mnist")
    assert torch.equal(ds2.labels, mnist_test.labels)


@pytest.mark.parametrize(("split", "n", "sha"), [("train", 4000, "afa968e8256a89a6"),
                                                  ("test", 1000, "7490fec20283ad38")])
def test_mnist_sample(split: str, n: int, sha: str) -> None:
    ds = load_dataset("mnist-sample", split)
    assert len(ds) == n
    assert ds.images.shape == (n, 1, 28, 28)
    assert ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
    assert _sha16(ds.images[:100]) == sha
    assert ds.input_shape == DATASETS["mnist-sample"].input_shape


def test_mnist_sample_splits_disjoint() -> None:
    train, test = load_dataset("mnist-sample", "train"), load_dataset("mnist-sample", "test")
    train_rows = {bytes(r) for r in train.images.flatten(1).numpy()}
    test_rows = {bytes(r) for r in test.images.flatten(1).numpy()}
    # The 5,000 sample images are distinct (barring a handful of accidental duplicates).
    assert len(train_rows & test_rows) <= 5


def test_eurosat(eurosat_train: ImageDataset, eurosat_test: ImageDataset) -> None:
    for ds, n in ((eurosat_train, 21600), (eurosat_test, 5400)):
        assert len(ds) == n
        assert ds.images.shape == (n, 3, 64, 64)
        assert ds.images.dtype == torch.uint8
        assert ds.classes == EUROSAT_CLASSES
        assert ds.input_shape == DATASETS["eurosat"].input_shape
        assert ds.mean == DATASETS["eurosat"].mean
        assert ds.name == "eurosat"
    test_counts = [600, 600, 600, 500, 500, 400, 500, 600, 500, 600]
    assert torch.bincount(eurosat_test.labels, minlength=10).tolist() == test_counts
    assert torch.bincount(eurosat_train.labels, minlength=10).tolist() == [
        4 * c for c in test_counts]
    assert _sha16(eurosat_train.images[:50]) == "5120888d7aa1c545"
    assert _sha16(eurosat_test.images[:50]) == "c2c14dec382ef994"
    assert _sha16(eurosat_train.labels) == "e1cc2e7833624007"
    assert _sha16(eurosat_test.labels) == "d96c3e3202e17eda"


def test_eurosat_split_is_disjoint_complete_and_stratified(
        data_root: Path, eurosat_train: ImageDataset, eurosat_test: ImageDataset) -> None:
    folder = data_root / "eurosat" / "2750"
    on_disk = {f"{p.parent.name}/{p.name}" for p in folder.glob("*/*.jpg")}
    assert len(on_disk) == 27000
    assert eurosat_train.sources is not None
    assert eurosat_test.sources is not None
    train_src, test_src = set(eurosat_train.sources), set(eurosat_test.sources)
    assert len(train_src) == len(eurosat_train)
    assert len(test_src) == len(eurosat_test)
    assert not train_src & test_src
    assert train_src | test_src == on_disk
    for ds in (eurosat_train, eurosat_test):
        # each image's label is the class folder it came from
        assert [ds.classes[i] for i in ds.labels.tolist()] == [
            s.split("/")[0] for s in ds.sources]
    for cls in EUROSAT_CLASSES:
        n_test = sum(s.startswith(cls + "/") for s in test_src)
        n_all = sum(s.startswith(cls + "/") for s in on_disk)
        assert n_test * 5 == n_all  # exactly 20% of every class


# ---------------------------------------------------------------------------- IDX files
def test_gz_and_plain_idx_identical(tmp_path: Path, data_root: Path,
                                    mnist_test: ImageDataset) -> None:
    plain = tmp_path / "mnist"
    plain.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = data_root / "mnist" / (stem + ".gz")
        (plain / stem).write_bytes(gzip.decompress(src.read_bytes()))
        gz_arr, plain_arr = read_idx(src), read_idx(plain / stem)
        assert gz_arr.dtype == plain_arr.dtype == np.uint8
        assert gz_arr.shape == plain_arr.shape
        assert np.array_equal(gz_arr, plain_arr)
    assert read_idx(plain / "t10k-images-idx3-ubyte").shape == (10000, 28, 28)
    ds = load_dataset("mnist", "test", tmp_path)
    assert torch.equal(ds.images, mnist_test.images)
    assert torch.equal(ds.labels, mnist_test.labels)


def test_torchvision_style_idx_names(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    (tmp_path / "t10k-images.idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "t10k-labels.idx1-ubyte").write_bytes(_idx_bytes(labels))
    ds = load_dataset("mnist", "test", tmp_path)
    assert ds.images.shape == (3, 1, 28, 28)
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert ds.labels.tolist() == [3, 1, 4]


def test_read_idx_small_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz", expected_ndim=3), arr)


def _good_idx() -> bytes:
    return _idx_bytes(np.full((10, 28, 28), 7, dtype=np.uint8))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x08\x03\x00\x00" + b"\x00" * 100, "magic"),
        (b"", "magic"),
        (b"\x00\x00\x0d\x03" + _good_idx()[4:], "data type"),
        (_good_idx()[:-100], "truncated"),
        (_good_idx() + b"\x00", "declares"),
        (_good_idx()[:10], "truncated"),
        (gzip.compress(_good_idx())[:-30], "gzip"),
        (gzip.compress(_good_idx())[:-4], "gzip"),
        (gzip.compress(_good_idx())[:12], "gzip"),
    ],
    ids=["wrong-magic", "empty", "wrong-dtype", "truncated-payload", "extra-bytes",
         "truncated-header", "truncated-gzip", "gzip-missing-trailer", "gzip-header-only"],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=needle) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip_crc(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(_good_idx()))
    blob[-6] ^= 0xFF  # damage the stored CRC-32
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_read_idx_wrong_ndim_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(_idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(DataError, match="1 dimensions, expected 3"):
        read_idx(path, expected_ndim=3)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


def _write_split(folder: Path, n_images: int, n_labels: int, label_value: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte").write_bytes(
        _idx_bytes(np.zeros((n_images, 28, 28), dtype=np.uint8)))
    (folder / "train-labels-idx1-ubyte").write_bytes(
        _idx_bytes(np.full(n_labels, label_value, dtype=np.uint8)))


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", 5, 4)
    with pytest.raises(DataError, match="5 images but 4 labels") as info:
        load_dataset("mnist", "train", tmp_path)
    assert "train" in str(info.value)


def test_label_out_of_range(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", 3, 3, label_value=12)
    with pytest.raises(DataError, match="label 12 out of range"):
        load_dataset("mnist", "train", tmp_path)


def test_corrupt_file_in_dataset_folder_raises(tmp_path: Path, data_root: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    src = data_root / "mnist" / "t10k-images-idx3-ubyte.gz"
    (folder / src.name).write_bytes(src.read_bytes()[:200_000])
    os.symlink(data_root / "mnist" / "t10k-labels-idx1-ubyte.gz",
               folder / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("mnist", "test", tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_dataset_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 name: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MODELZIP_DATA", str(empty))
    monkeypatch.setenv("MODELZIP_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_dataset(name, "train")
    msg = str(info.value)
    assert f"{name} not found" in msg
    assert str(empty / name) in msg  # where it looked
    assert os.environ["MODELZIP_CACHE"] in msg
    for fname in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert fname in msg
    assert "\n" not in msg
    # nothing was created in the data folder
    assert list(empty.iterdir()) == []


def test_missing_eurosat_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELZIP_DATA", str(tmp_path))
    with pytest.raises(DataError, match="eurosat not found") as info:
        load_dataset("eurosat", "test")
    assert str(tmp_path / "eurosat") in str(info.value)
    assert "2750" in str(info.value)


def test_download_false_does_not_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setenv("MODELZIP_DATA", str(tmp_path))
    monkeypatch.delenv("MODELZIP_OFFLINE")
    with pytest.raises(DataError, match="downloading is off"):
        load_dataset("mnist", "test", download=False)


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar10'") as info:
        load_dataset("cifar10", "train")
    for known in ("mnist", "fashion-mnist", "eurosat", "mnist-sample", "folder:PATH"):
        assert known in str(info.value)
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("mnist", "val")


# ---------------------------------------------------------------------------- class folders
FOLDER_COUNTS = {"cat": 5, "dog": 10, "eel": 5}


def _make_class_folder(root: Path, counts: dict[str, int] = FOLDER_COUNTS,
                       size: tuple[int, int] = (8, 6), suffix: str = ".png") -> Path:
    """One folder per class; every image is a constant colour that encodes (class, index):
    R = 40 * class, G = 10 * index, B = 99."""
    for ci, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for j in range(1, n + 1):
            Image.new("RGB", size, (40 * ci, 10 * j, 99)).save(root / cls / f"{cls}_{j}{suffix}")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def _check_identity(ds: ImageDataset) -> None:
    """Each image's pixels, label and source name agree with each other."""
    assert ds.sources is not None
    for img, label, src in zip(ds.images, ds.labels.tolist(), ds.sources, strict=True):
        cls, fname = src.split("/")
        j = int(fname.split("_")[1].split(".")[0])
        assert ds.classes[label] == cls
        assert img[0].unique().tolist() == [40 * label]
        assert img[1].unique().tolist() == [10 * j]
        assert img[2].unique().tolist() == [99]


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MODELZIP_CACHE", str(cache))
    return cache


def test_image_folder_all(tmp_path: Path, private_cache: Path) -> None:
    root = _make_class_folder(tmp_path / "pets")
    ds = load_image_folder(root)
    assert ds.classes == ("cat", "dog", "eel")
    assert len(ds) == 20
    assert ds.images.shape == (20, 3, 6, 8)  # PIL size is (width, height)
    assert ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0] * 5 + [1] * 10 + [2] * 5
    assert ds.name == "pets"
    assert ds.split == "all"
    assert ds.mean == (0.5, 0.5, 0.5)
    # files in natural order: dog_2 before dog_10
    assert ds.sources is not None
    assert list(ds.sources[5:15]) == [f"dog/dog_{j}.png" for j in range(1, 11)]
    _check_identity(ds)
    # the decoded array was cached, and a second load gives the same result
    assert list((private_cache / "decoded").glob("*.npy"))
    again = load_image_folder(root)
    assert torch.equal(again.images, ds.images)


def test_image_folder_split(tmp_path: Path, private_cache: Path) -> None:
    root = _make_class_folder(tmp_path / "pets")
    train = load_image_folder(root, "train")
    test = load_image_folder(root, "test")
    assert torch.bincount(test.labels).tolist() == [1, 2, 1]
    assert torch.bincount(train.labels).tolist() == [4, 8, 4]
    assert train.split == "train"
    assert test.split == "test"
    assert train.sources is not None
    assert test.sources is not None
    assert not set(train.sources) & set(test.sources)
    everything = load_image_folder(root)
    assert everything.sources is not None
    assert set(train.sources) | set(test.sources) == set(everything.sources)
    _check_identity(train)
    _check_identity(test)
    # seeded: the same call gives the same split, another seed another one
    assert load_image_folder(root, "test").sources == test.sources
    assert load_image_folder(root, "test", seed=1).sources != test.sources
    # through load_dataset("folder:...")
    via_name = load_dataset(f"folder:{root}", "test")
    assert via_name.sources == test.sources
    assert torch.equal(via_name.images, test.images)


def test_image_folder_grayscale_and_resize(tmp_path: Path, private_cache: Path) -> None:
    root = _make_class_folder(tmp_path / "pets")
    gray = load_image_folder(root, mode="L")
    assert gray.images.shape == (20, 1, 6, 8)
    assert gray.mean == (0.5,)
    resized = load_image_folder(root, image_size=(4, 5))
    assert resized.images.shape == (20, 3, 4, 5)


def test_image_folder_mismatched_sizes(tmp_path: Path, private_cache: Path) -> None:
    root = _make_class_folder(tmp_path / "pets")
    Image.new("RGB", (9, 9), (1, 2, 3)).save(root / "dog" / "dog_11.png")
    with pytest.raises(DataError, match=r"dog_11\.png") as info:
        load_image_folder(root)
    assert "9x9" in str(info.value)
    assert "8x6" in str(info.value)
    assert "image_size" in str(info.value)
    ds = load_image_folder(root, image_size=(6, 8))
    assert ds.images.shape == (21, 3, 6, 8)


def test_image_folder_errors(tmp_path: Path, private_cache: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_image_folder(tmp_path / "empty")
    root = _make_class_folder(tmp_path / "pets")
    with pytest.raises(DataError, match="unknown split"):
        load_image_folder(root, "validation")
    (root / "cat" / "cat_6.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="cannot decode"):
        load_image_folder(root)


def test_image_folder_cache_tells_folders_apart(tmp_path: Path, private_cache: Path) -> None:
    """Two folders with the same class and file names and file sizes but other pixels (BMP
    files of one size always have the same byte size) must not share a decoded cache entry."""
    for name, value in (("a", 10), ("b", 200)):
        for cls in ("x", "y"):
            (tmp_path / name / cls).mkdir(parents=True)
            for j in range(3):
                Image.new("RGB", (8, 8), (value,) * 3).save(tmp_path / name / cls / f"{j}.bmp")
    a = load_image_folder(tmp_path / "a")
    b = load_image_folder(tmp_path / "b")
    assert a.images.unique().tolist() == [10]
    assert b.images.unique().tolist() == [200]


def test_stratified_split() -> None:
    labels = np.array([0] * 10 + [1] * 20 + [2] * 5)
    train, test = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[test]).tolist() == [2, 4, 1]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(35))
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[0], train)
    assert np.array_equal(again[1], test)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(DataError, match="test_fraction"):
            stratified_split(labels, bad, seed=0)


# ---------------------------------------------------------------------------- batches
@pytest.fixture(scope="module")
def small_mnist(mnist_train: ImageDataset) -> ImageDataset:
    return mnist_train.subset(range(300))


@pytest.mark.parametrize("augment", ["none", "flips", "shift"])
def test_batches_reproducible_with_seeded_generator(small_mnist: ImageDataset,
                                                    augment: str) -> None:
    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return list(small_mnist.batches(64, shuffle=True, generator=gen, augment=augment))

    a, b, c = run(1), run(1), run(2)
    assert [x.shape[0] for x, _ in a] == [64, 64, 64, 64, 44]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c, strict=True))
    # shuffling visits every image exactly once
    labels = torch.cat([y for _, y in a])
    assert torch.equal(labels.sort().values, small_mnist.labels.sort().values)
    assert all(x.dtype == torch.float32 for x, _ in a)


def test_batches_without_shuffle_keep_order(small_mnist: ImageDataset) -> None:
    xs, ys = zip(*small_mnist.batches(100), strict=True)
    assert torch.equal(torch.cat(ys), small_mnist.labels)
    assert torch.allclose(torch.cat(xs), small_mnist.normalize(small_mnist.images))


def test_flips_keep_pixels(small_mnist: ImageDataset) -> None:
    gen = torch.Generator().manual_seed(0)
    x_aug = torch.cat([x for x, _ in small_mnist.batches(100, generator=gen, augment="flips")])
    x_orig = small_mnist.normalize(small_mnist.images)
    assert x_aug.shape == x_orig.shape
    changed = 0
    for a, o in zip(x_aug, x_orig, strict=True):
        assert torch.equal(a.flatten().sort().values, o.flatten().sort().values)
        variants = (o, o.flip(-1), o.flip(-2), o.flip(-1).flip(-2))
        assert any(torch.equal(a, v) for v in variants)
        changed += not torch.equal(a, o)
    # with probability 3/4 an image is flipped at least one way
    assert 0.6 * len(small_mnist) < changed < 0.9 * len(small_mnist)


def test_shift_translates(small_mnist: ImageDataset) -> None:
    gen = torch.Generator().manual_seed(0)
    sub = small_mnist.subset(range(40))
    x_aug = torch.cat([x for x, _ in sub.batches(40, generator=gen, augment="shift")])
    assert x_aug.shape == (40, 1, 28, 28)
    images = sub.images
    aug_u8 = torch.round((x_aug * sub.std[0] + sub.mean[0]) * 255).to(torch.uint8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    changed = 0
    for a, p, o in zip(aug_u8, padded, images, strict=True):
        crops = [p[:, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(a, c) for c in crops)
        changed += not torch.equal(a, o)
    assert changed > 20


def test_unknown_augmentation(small_mnist: ImageDataset) -> None:
    with pytest.raises(DataError, match="unknown augmentation 'rotate'"):
        next(small_mnist.batches(10, augment="rotate"))


def test_normalisation_mnist(mnist_train: ImageDataset) -> None:
    sub = mnist_train.subset(range(10000))
    x = torch.cat([x for x, _ in sub.batches(2000)])
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 1.0) < 0.05


def test_image_dataset_validation() -> None:
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2), name="t", split="train",
                     classes=["a"], mean=[0.5], std=[0.5])
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3), name="t",
                     split="train", classes=["a"], mean=[0.5], std=[0.5])
    ds = ImageDataset(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
                      name="t", split="train", classes=["a", "b"], mean=[0.5], std=[0.5],
                      sources=["a/1", "b/1", "a/2", "b/2"])
    sub = ds.subset([3, 0], split="test")
    assert sub.labels.tolist() == [1, 0]
    assert sub.sources == ("b/2", "a/1")
    assert sub.split == "test"
    assert len(sub) == 2
