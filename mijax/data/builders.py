"""TensorFlow-free tfds builders for the datasets of the model-inversion papers.

Each builder is a `tfds.core.GeneratorBasedBuilder` that writes `array_record` files (read back with
`tfds.data_source`, random access, no TensorFlow) with features `image` (uint8
`[height, width, channels]`) and `label` (`ClassLabel`). Records keep the official order
(`disable_shuffling`), so that slices such as `test[:90%]` and "first image of each class" mean
what they mean in the papers, which use the PyTorch loaders' order.

Where the official files come from, in this order:
  1. a manual directory laid out like `../shared/data` (`<root>/mnist/train-images-idx3-ubyte.gz`,
     `<root>/cifar10/cifar-10-batches-py.tar.xz` or `cifar-10-python.tar.gz`,
     `<root>/olivetti/olivettifaces.mat`): `manual_root=` or the env variable `MIJAX_DATA_DIR`;
  2. the official download URL, through the tfds download manager;
  3. otherwise `FileNotFoundError` naming the file, the folder searched and the fix.
Every file is checked against its official md5 first (a mismatch is a `ValueError`); nothing ever
falls back to fake data. `digits` (scikit-learn's bundled 8×8 digits) needs no file at all.

Prepared datasets are cached under `MIJAX_TFDS_DIR` (default `~/.cache/mijax/tensorflow_datasets`)
and prepared only once. The tfds names carry a `mijax_` prefix (`mijax_mnist`, ...) because tfds
registers its own, TensorFlow-based `mnist` and `cifar10`:

    >>> builder = get_builder("mnist", manual_root="../shared/data")
    >>> builder.download_and_prepare()
    >>> source = builder.as_data_source(split="test")   # or tfds.data_source("mijax_mnist", ...)
    >>> source[0]["image"].shape, source[0]["label"]
    ((28, 28, 1), 7)
"""

from __future__ import annotations

import abc
import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import socket
import tarfile
import urllib.parse
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

MANUAL_DIR_ENV = "MIJAX_DATA_DIR"
CACHE_DIR_ENV = "MIJAX_TFDS_DIR"
DEFAULT_CACHE_DIR = "~/.cache/mijax/tensorflow_datasets"

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
OLIVETTI_TRAIN_PER_IDENTITY = 8

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


def cache_dir() -> str:
    """Where prepared datasets live: `$MIJAX_TFDS_DIR` or `~/.cache/mijax/tensorflow_datasets`."""
    return os.path.expanduser(os.environ.get(CACHE_DIR_ENV, DEFAULT_CACHE_DIR))


@dataclasses.dataclass(frozen=True)
class OfficialFile:
    """One official file: where it sits in the manual directory, its checksums, where to get it.

    Attributes:
        folder: sub-folder of the manual directory (`mnist`, `cifar10`, `olivetti`).
        name: file name.
        digests: accepted hex digests (md5, or sha256 for the copy the URL serves when it differs).
        urls: official download URLs, tried in order.
    """

    folder: str
    name: str
    digests: tuple[str, ...]
    urls: tuple[str, ...] = ()


_MNIST_URLS = ("https://storage.googleapis.com/cvdf-datasets/mnist/",
               "https://ossci-datasets.s3.amazonaws.com/mnist/")
MNIST_FILES = {
    name: OfficialFile("mnist", name, (md5,), tuple(url + name for url in _MNIST_URLS))
    for name, md5 in [("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                      ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                      ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                      ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")]}
# The official archive, and the same folder re-packed as .tar.xz (what ../shared/data holds).
CIFAR10_ARCHIVES = (
    OfficialFile("cifar10", "cifar-10-python.tar.gz", ("c58f30108f718f92721af3b95e74349a",),
                 ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),
    OfficialFile("cifar10", "cifar-10-batches-py.tar.xz", ("a5a2dda36a5444a9fa6b421f49440edb",)),
)
CIFAR10_MEMBER_MD5 = {
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# md5 of the .mat in ../shared/data; sha256 of scikit-learn's figshare copy (fetch_olivetti_faces).
OLIVETTI_FILE = OfficialFile(
    "olivetti", "olivettifaces.mat",
    ("7be4afc20ba95152afb4c6b4b5d45c5b",
     "b612fb967f2dc77c9c62d3e1266e0c73d5fca46a4b8906c18e454d41af987794"),
    ("https://ndownloader.figshare.com/files/5976027",))


def _download(dl_manager: tfds.download.DownloadManager, url: str) -> pathlib.Path:
    """Downloads `url` with the tfds download manager; tests replace this function.

    A 5-second connection probe comes first: offline, the download manager retries for minutes.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    socket.create_connection((parts.hostname, port), timeout=5).close()
    return pathlib.Path(dl_manager.download(url))


def _hexdigest(data_or_path: bytes | pathlib.Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    if isinstance(data_or_path, bytes):
        digest.update(data_or_path)
    else:
        with open(data_or_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def verify(data_or_path: bytes | pathlib.Path, digests: Sequence[str], *, name: str) -> None:
    """Raises `ValueError` unless the bytes (or the file) match one of the official `digests`."""
    actual = {}
    for expected in digests:
        algorithm = "md5" if len(expected) == 32 else "sha256"
        if algorithm not in actual:
            actual[algorithm] = _hexdigest(data_or_path, algorithm)
        if actual[algorithm] == expected:
            return
    raise ValueError(
        f"{name} is corrupt or not the official file: expected md5 {digests[0]}, got "
        f"{actual['md5'] if 'md5' in actual else _hexdigest(data_or_path, 'md5')}. "
        "Replace it with the official file.")


def resolve(candidates: Sequence[OfficialFile], manual_root: str | os.PathLike | None,
            dl_manager: tfds.download.DownloadManager | None) -> pathlib.Path:
    """Finds one of `candidates` (verified): in the manual directory first, then by download.

    Raises:
        FileNotFoundError: no candidate in the manual directory and every download failed.
        ValueError: the file found does not match its official checksum.
    """
    folder = pathlib.Path(manual_root).expanduser() / candidates[0].folder if manual_root else None
    for file in candidates:
        if folder is not None and (folder / file.name).is_file():
            verify(folder / file.name, file.digests, name=str(folder / file.name))
            return folder / file.name
    errors = []
    for file in candidates:
        for url in file.urls if dl_manager is not None else ():
            try:
                path = _download(dl_manager, url)
            except Exception as e:  # noqa: BLE001 -- any failure means "not downloadable here"
                errors.append(f"{url}: {type(e).__name__}: {e}")
                continue
            verify(path, file.digests, name=f"{path} (downloaded from {url})")
            return path
    names = " or ".join(f.name for f in candidates)
    urls = ", ".join(url for f in candidates for url in f.urls)
    where = (f"in {folder}" if folder else
             f"(no manual directory: {MANUAL_DIR_ENV} unset and no data_dir given)")
    raise FileNotFoundError(
        f"{names} not found {where}, and downloading it failed ({'; '.join(errors) or 'no URL'}). "
        f"Fix: put the official file at <root>/{candidates[0].folder}/{candidates[0].name} and set "
        f"{MANUAL_DIR_ENV}=<root> or pass data_dir=<root> to mijax.data.load; official URL: {urls}")


# ----------------------------------------------------------------------------- readers (NumPy)

def _read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX array from a gzip file (magic: 0, 0, dtype code 0x08 = uint8, ndim)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX uint8 file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8×8 digits, 0..16 scaled to uint8, split 80/20 stratified with seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    train, test = train_test_split(np.arange(len(images)), test_size=DIGITS_TEST_FRACTION,
                                   stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
    return {split: (images[np.sort(i)], digits.target[np.sort(i)]) for split, i in
            [("train", train), ("test", test)]}


def read_mnist(find: Callable[[str], pathlib.Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST from the four IDX files; `find(name)` gives the verified path of one file."""
    return {split: (_read_idx(find(f"{prefix}-images-idx3-ubyte.gz"))[..., None],
                    _read_idx(find(f"{prefix}-labels-idx1-ubyte.gz")))
            for split, prefix in [("train", "train"), ("test", "t10k")]}


def read_cifar10(path: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 from the python-pickle archive (`.tar.gz` or `.tar.xz`), images CHW -> HWC.

    Every member is checked against its official md5 before it is unpickled.
    """
    batches = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = pathlib.PurePosixPath(member.name).name
                if member.isfile() and name in CIFAR10_MEMBER_MD5:
                    data = tar.extractfile(member).read()
                    verify(data, (CIFAR10_MEMBER_MD5[name],), name=f"{path}:{member.name}")
                    batches[name] = pickle.load(io.BytesIO(data), encoding="bytes")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{path} is corrupt or truncated: {type(e).__name__}: {e}") from e
    missing = sorted(set(CIFAR10_MEMBER_MD5) - set(batches) - {"batches.meta"})
    if missing:
        raise ValueError(f"{path} lacks the official members {missing}")

    def stack(names):
        images = np.concatenate([batches[n][b"data"] for n in names])
        labels = np.concatenate([batches[n][b"labels"] for n in names])
        return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    return {"train": stack([f"data_batch_{i}" for i in range(1, 6)]), "test": stack(["test_batch"])}


def read_olivetti(path: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Olivetti faces: columns of `faces` are column-major 64×64 images, identity = column // 10.

    Split per identity: images 0..7 train (320), images 8..9 test (80).
    """
    import scipy.io
    faces = scipy.io.loadmat(path)["faces"]
    if faces.shape != (4096, 400):
        raise ValueError(f"{path}: expected faces of shape (4096, 400), got {faces.shape}")
    images = faces.T.reshape(400, 64, 64).transpose(0, 2, 1)[..., None].astype(np.uint8)
    labels = np.arange(400) // 10
    train = np.arange(400) % 10 < OLIVETTI_TRAIN_PER_IDENTITY
    return {"train": (images[train], labels[train]), "test": (images[~train], labels[~train])}


# ----------------------------------------------------------------------------- builders

class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common part: uint8 image + class label, official order, array_record, mijax cache dir."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First mijax release (TensorFlow-free)."}
    SHAPE: tuple[int, int, int]
    CLASSES: int | tuple[str, ...]
    SPLITS = ("train", "test")
    HOMEPAGE = ""
    CITATION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds's own lookup needs the `importlib_resources` backport for package modules.
        return epath.Path(__file__)

    def __init__(self, *, manual_root: str | os.PathLike | None = None, **kwargs):
        kwargs["data_dir"] = kwargs.get("data_dir") or cache_dir()  # tfds.builder passes None
        kwargs["file_format"] = kwargs.get("file_format") or "array_record"
        super().__init__(**kwargs)
        self.manual_root = manual_root or os.environ.get(MANUAL_DIR_ENV)

    def _info(self) -> tfds.core.DatasetInfo:
        label = (tfds.features.ClassLabel(num_classes=self.CLASSES) if isinstance(self.CLASSES, int)
                 else tfds.features.ClassLabel(names=self.CLASSES))
        return tfds.core.DatasetInfo(
            builder=self, description=(self.__doc__ or "").strip(),
            features=tfds.features.FeaturesDict({
                # raw bytes: 3x smaller and faster to decode than tfds's default int64 list
                "image": tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8, encoding="bytes"),
                "label": label}),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # official order: slices and "first of each class" rely on it
            homepage=self.HOMEPAGE, citation=self.CITATION)

    def _split_generators(self, dl_manager):
        arrays = self._read(lambda *files: resolve(files, self.manual_root, dl_manager))
        for split, (images, labels) in arrays.items():
            if images.shape[1:] != self.SHAPE or len(images) != len(labels):
                raise ValueError(f"{self.name} {split}: expected images [N, {self.SHAPE}] and "
                                 f"labels [N], got {images.shape} and {labels.shape}")
        return {split: self._generate_examples(*arrays[split]) for split in self.SPLITS}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray) -> Iterator:
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}

    @abc.abstractmethod
    def _read(self, find: Callable[..., pathlib.Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each dataset's reader: `{split: (images, labels)}` from the official files `find` locates."""


class MijaxDigits(_Builder):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes, values 0..16 scaled
    to 0..255). No file, no network. Stratified split with seed 0: train 1,437 / test 360."""

    name = "mijax_digits"
    SHAPE, CLASSES = (8, 8, 1), 10
    HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"

    def _read(self, find):
        return read_digits()


class MijaxMnist(_Builder):
    """MNIST from the four official IDX files: train 60,000 / test 10,000, 28×28 grey."""

    name = "mijax_mnist"
    SHAPE, CLASSES = (28, 28, 1), 10
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    CITATION = ("Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to "
                "document recognition. Proc. IEEE 86(11), 1998. Data: CC BY-SA 3.0.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the four IDX .gz files in <root>/mnist/."

    def _read(self, find):
        return read_mnist(lambda name: find(MNIST_FILES[name]))


class MijaxCifar10(_Builder):
    """CIFAR-10 from the official python archive: train 50,000 / test 10,000, 32×32 RGB."""

    name = "mijax_cifar10"
    SHAPE, CLASSES = (32, 32, 3), CIFAR10_CLASSES
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    CITATION = ("A. Krizhevsky. Learning Multiple Layers of Features from Tiny Images. "
                "Tech. report, University of Toronto, 2009.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place cifar-10-python.tar.gz (or .tar.xz) in <root>/cifar10/."

    def _read(self, find):
        return read_cifar10(find(*CIFAR10_ARCHIVES))


class MijaxOlivettiFaces(_Builder):
    """Olivetti (AT&T/ORL) faces, 40 identities × 10, 64×64 grey. Per identity, images 0..7 are
    train (320) and images 8..9 test (80). Credit: Olivetti Research Laboratory, Cambridge."""

    name = "mijax_olivetti_faces"
    SHAPE, CLASSES = (64, 64, 1), 40
    HOMEPAGE = "https://cam-orl.co.uk/facedatabase.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place olivettifaces.mat in <root>/olivetti/."

    def _read(self, find):
        return read_olivetti(find(OLIVETTI_FILE))


BUILDERS: dict[str, type[_Builder]] = {
    "digits": MijaxDigits, "mnist": MijaxMnist, "cifar10": MijaxCifar10,
    "olivetti_faces": MijaxOlivettiFaces}


def get_builder(name: str, *, manual_root: str | os.PathLike | None = None,
                data_dir: str | os.PathLike | None = None) -> _Builder:
    """The builder of dataset `name` (see `BUILDERS`), caching under `data_dir` or `cache_dir()`.

    Raises:
        ValueError: unknown `name`.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(BUILDERS)}")
    return BUILDERS[name](manual_root=manual_root, data_dir=data_dir)
