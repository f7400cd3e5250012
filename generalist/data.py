"""Datasets as uint8 tensors from local folders, verified by checksum, and seeded batch streams over them."""

from __future__ import annotations

import difflib
import functools
import gzip
import hashlib
import json
import math
import os
import pickle
import sys
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from generalist.errors import ConfigError, DataError
from generalist.storage import give_umask_mode

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "TensorData",
    "TrainStream",
    "cache_dir",
    "check_training_data",
    "clear_memory_cache",
    "crop_flip",
    "dataset_info",
    "derive_seed",
    "eval_batches",
    "load_split",
    "random_crop_flip",
    "resolve_data_root",
    "split_indices",
    "split_train_val",
]


# --- what each dataset is ------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What models and recipes need to know about a dataset, without loading it."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, of x in [0, 1]; used by the model's Normalize layer
    std: tuple[float, ...]
    train_size: int
    test_size: int


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                           50_000, 10_000),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), 60_000, 10_000),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), 60_000, 10_000),
    # Random images and labels of CIFAR-10's shapes and sizes, for speed checks on a machine without the data
    # (a GPU box with no network): every kernel runs as on CIFAR-10; what a model learns from it means nothing.
    "synthetic-cifar10": DatasetInfo("synthetic-cifar10", 10, (3, 32, 32), (0.5, 0.5, 0.5), (0.2887,) * 3,
                                     50_000, 10_000),
}

_DISPLAY = {"cifar10": "CIFAR-10", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
            "synthetic-cifar10": "synthetic CIFAR-10-shaped data"}
# torchvision class names: also the folder names of torchvision's own layout (MNIST/raw, FashionMNIST/raw)
_TORCHVISION_CLASS = {"cifar10": "CIFAR10", "mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def dataset_info(name: str) -> DatasetInfo:
    """The facts about dataset `name` ("cifar10", "mnist", "fashion-mnist"); ConfigError with close names if unknown."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), DATASETS, n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown dataset {name!r}{hint}; choose one of {', '.join(DATASETS)}") from None


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """The data folder: `root` if given, else $GENERALIST_DATA, else DataError.

    The folder is not required to exist yet: with download=True torchvision creates it.
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get("GENERALIST_DATA", "")
    if env:
        return Path(env).expanduser()
    raise DataError("no data folder: pass --data-root DIR or set GENERALIST_DATA=DIR "
                    "(a folder holding cifar-10-batches-py/, MNIST/ ...)")


# --- seeds ---------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    # SplitMix64's output function (Steele, Lea & Flood 2014): a bijection on 64-bit ints with full avalanche.
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(*parts: int | str) -> int:
    """A seed in [0, 2**63) mixed from `parts`: ints in [0, 2**64) or strings (tags such as "augment").

    h = splitmix64(number of parts); then h = splitmix64(h ^ part) for each part in order, where a string
    counts as the first 8 bytes (big-endian) of its sha256. Each step is a bijection in `part`, so seeds that
    differ in one part never collide, and order matters: derive_seed(1, 2) != derive_seed(2, 1). The top bit
    is dropped so every consumer (torch, numpy, Python's random) accepts the result. Pure and stable across
    processes and machines (no use of Python's randomized hash()).
    """
    h = _splitmix64(len(parts))
    for part in parts:
        if isinstance(part, str):
            value = int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "big")
        elif isinstance(part, (int, np.integer)) and not isinstance(part, bool) and 0 <= int(part) <= _MASK64:
            value = int(part)
        else:
            raise ValueError(f"derive_seed takes ints in [0, 2**64) or strings, got {part!r}")
        h = _splitmix64(h ^ value)
    return h >> 1


def _generator(seed: int) -> torch.Generator:
    # A private CPU generator: nothing here reads or advances the global RNG.
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


# --- tensors -------------------------------------------------------------------------------------


@dataclass
class TensorData:
    """A whole split in memory. x: (N, C, H, W) uint8 in [0, 255]; y: (N,) int64 class indices.

    load_split returns tensors shared with an in-process cache: treat them as read-only.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"TensorData.x must be (N, C, H, W) uint8, got {tuple(self.x.shape)} {self.x.dtype}")
        if self.y.dtype != torch.int64 or self.y.shape != self.x.shape[:1]:
            raise ValueError(f"TensorData.y must be ({len(self.x)},) int64, got {tuple(self.y.shape)} {self.y.dtype}")

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _take(data: TensorData, index: torch.Tensor) -> TensorData:
    return TensorData(data.x[index], data.y[index])


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (any shape) in [0, 255] -> float32 in [0, 1] by correctly rounded division, identical on every device."""
    x = x.to(torch.float32)
    if x.device.type == "cpu":
        return x.div_(255.0)
    # CUDA turns division by a Python number into multiplication by its reciprocal, which differs from true
    # division in the last bit for 126 of the 256 values; a divisor tensor on the device keeps true division.
    return x.div_(torch.full((), 255.0, device=x.device))


# --- loading -------------------------------------------------------------------------------------

# sha256 of the decoded CIFAR-10 arrays, copied from the offline dataset copies' README (shared/data/README.md) ("Use with torchvision"):
# data = (10000, 3072) uint8 in the official R|G|B plane layout (= the bytes of (10000, 3, 32, 32));
# labels = the label list as uint8. Per batch: (sha256 of data, sha256 of labels).
CIFAR10_SHA256: dict[str, tuple[str, str]] = {
    "data_batch_1": ("a50e8b48728e1667d682a807155c375279d5ae321fb12242c02e3104a6bc8b21",
                     "d829dbdf32167c9d7b3687cee66d92d80d46c441308b5aca0d11e8b69e27dac9"),
    "data_batch_2": ("0b825e5592c3b72ea18d6ec2ff5f5b19d33e41a75f5039054a9bb87be3cf69a0",
                     "5d18f7371ed35ea9ade77952fe958b0660a45cd6c8b8a8970030f21612cfd7e3"),
    "data_batch_3": ("c6ee1dd4601a69ec085d8ebf53ee6441775491a6839a0a9ae8fa198e88a3a429",
                     "32cf77b0ee2e790b1c4384d2d82e42dc1571b87e67f6da8f444b2725b2973f65"),
    "data_batch_4": ("1f6b6c799cff375a9f8fae2fac909d51ee09f38a6a60eebb9e8fec6f47ddc48f",
                     "d2815e3f8f656272864920fc0edde56b04ec9cf81bf397c0dd3069f4aea51aeb"),
    "data_batch_5": ("58e3bbf713e28357476a351d3a05d056372f94c681d04ca9d62a076fdf2a643b",
                     "2ddf3ab27d5d04409c94ce7b56849c243129c10de1058ae0bfe14c77e934800c"),
    "test_batch": ("177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
                   "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
}
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TFJS = "cifar-10-tfjs"  # offline layout: 6 PNGs (1024x10000 RGB, row i = image i) + 2 label JSONs
_CIFAR_PICKLES = "cifar-10-batches-py"  # torchvision's layout
_CACHE_FORMAT = "v1"  # bump when the cache file layout changes, so old files are never misread


def load_split(name: str, root: str | os.PathLike, *, train: bool, download: bool = False) -> TensorData:
    """The train or test split of dataset `name` from folder `root`, checksum-verified.

    Returns x: (N, C, H, W) uint8 in [0, 255] and y: (N,) int64 in [0, num_classes), in the official order.
    Looks under `root` for torchvision's layout (cifar-10-batches-py/, MNIST/raw/<idx files>), else the offline
    layout (cifar-10-tfjs/, MNIST/raw/*.gz), else downloads with torchvision when download=True, else raises
    DataError. Nothing is written into `root` unless download=True. Results are kept in an in-process cache
    (shared tensors: do not modify them in place); decoded CIFAR-10 PNGs are also cached on disk.
    """
    info = dataset_info(name)
    return _load_cached(info.name, str(Path(root).expanduser().absolute()), bool(train), bool(download))


def check_training_data(name: str, root: str | os.PathLike | None, *, download: bool, val_size: int) -> None:
    """Raise the DataError or ConfigError that training would, now: the training split of `name` in `root`
    (None: $GENERALIST_DATA) is missing, corrupt, or too small to hold out `val_size` validation points.

    For callers that must not write anything before the inputs are known good (a new run folder). The split
    is loaded and verified in full, and stays in this process's cache, so the load that follows is free."""
    split = load_split(name, resolve_data_root(root), train=True, download=download)
    split_train_val(split, val_size, seed=0)  # its val_size check, with its message


def clear_memory_cache() -> None:
    """Forget the splits load_split holds in this process (the on-disk cache is kept)."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str, train: bool, download: bool) -> TensorData:
    info = DATASETS[name]
    if name == "cifar10":
        x, y = _load_cifar10(Path(root), train, download)
    elif name == "synthetic-cifar10":
        x, y = _synthetic(info, train)
    else:
        x, y = _load_mnist_like(name, Path(root), train, download)
    expected = info.train_size if train else info.test_size
    if tuple(x.shape) != (expected, *info.shape) or tuple(y.shape) != (expected,):
        raise DataError(f"{_DISPLAY[name]} in {root} has images {tuple(x.shape)} and labels {tuple(y.shape)}, "
                        f"expected ({expected}, {', '.join(map(str, info.shape))}): it is not the official "
                        "dataset; delete it and copy or download it again")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise DataError(f"{_DISPLAY[name]} in {root} has labels outside [0, {info.num_classes}): it is corrupt; "
                        "delete it and copy or download it again")
    return TensorData(x.contiguous(), y.to(torch.int64).contiguous())


def _synthetic(info: DatasetInfo, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random uint8 images and labels, the same on every machine (a fixed seed per split)."""
    n = info.train_size if train else info.test_size
    generator = torch.Generator().manual_seed(0 if train else 1)
    return (torch.randint(0, 256, (n, *info.shape), dtype=torch.uint8, generator=generator),
            torch.randint(0, info.num_classes, (n,), generator=generator))


def _not_found(name: str, root: Path, looked_for: str) -> DataError:
    return DataError(f"{_DISPLAY[name]} not found in {root} (looked for {looked_for}): pass --data-root DIR or "
                     f"set GENERALIST_DATA=DIR to a folder that holds it, or set data.download=true "
                     f"to download it into {root}")


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"{path} is corrupt ({why}): delete it and copy or download it again")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def _torchvision_class(name: str):
    import torchvision.datasets  # deferred: importing torchvision costs ~1 s and most callers never need it

    return getattr(torchvision.datasets, _TORCHVISION_CLASS[name])


def _torchvision_download(name: str, root: Path, train: bool):
    """Let torchvision download (or repair) the dataset into root; errors become one-line DataErrors."""
    cls = _torchvision_class(name)
    # Say where the data goes before the download starts: it can take minutes, and the folder is the user's.
    print(f"{_DISPLAY[name]} is not in {root}: downloading it there (torchvision)", file=sys.stderr, flush=True)
    try:
        dataset = cls(str(root), train=train, download=True)
        print(f"{_DISPLAY[name]} {'training' if train else 'test'} split ready in {root}", file=sys.stderr, flush=True)
        return dataset
    except Exception as e:  # noqa: BLE001 - network, disk and archive errors all mean the same to the user
        raise DataError(f"downloading {_DISPLAY[name]} into {root} failed ({_one_line(e)}): check the internet "
                        "connection, or pass --data-root DIR / set GENERALIST_DATA=DIR to a folder that "
                        "already holds it") from e


# MNIST and Fashion-MNIST


def _idx_header(blob: bytes, path: Path) -> tuple[list[int], int]:
    """Dims and data offset of an idx file (big-endian magic 0x0000 08 nd, then nd uint32 sizes)."""
    if len(blob) < 8 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08 or not 1 <= blob[3] <= 3:
        raise _corrupt(path, "not a uint8 idx file")
    nd = blob[3]
    if len(blob) < 4 + 4 * nd:
        raise _corrupt(path, "truncated header")
    dims = [int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    return dims, 4 + 4 * nd


def _parse_idx(blob: bytes, path: Path) -> torch.Tensor:
    dims, offset = _idx_header(blob, path)
    if len(blob) - offset != math.prod(dims):
        raise _corrupt(path, f"{len(blob) - offset} data bytes, the header says {math.prod(dims)}")
    return torch.from_numpy(np.frombuffer(blob, np.uint8, offset=offset).reshape(dims).copy())


def _check_idx_size(path: Path) -> None:
    # torchvision's reader fails on a short file with a bare assert or view error; name the file instead.
    with open(path, "rb") as f:
        head = f.read(16)
    dims, offset = _idx_header(head, path)
    size = path.stat().st_size
    if size != offset + math.prod(dims):
        raise _corrupt(path, f"{size} bytes, the header says {offset + math.prod(dims)}")


def _load_mnist_like(name: str, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cls = _torchvision_class(name)
    raw = root / cls.__name__ / "raw"
    prefix = "train" if train else "t10k"
    gz = [(raw / fname, md5) for fname, md5 in cls.resources if fname.startswith(prefix)]  # images, labels
    extracted = [raw / fname[: -len(".gz")] for fname, _ in cls.resources]

    if all(p.exists() for p in extracted):
        # (a) torchvision's layout. The extracted files have no official checksum (torchvision checks none);
        # a header-vs-size check and the shape/label checks in _load_cached stand in for one.
        for p in extracted:
            if p.name.startswith(prefix):
                _check_idx_size(p)
        try:
            ds = cls(str(root), train=train, download=download)
        except Exception as e:  # noqa: BLE001 - any failure to parse means the files are bad
            raise DataError(f"{_DISPLAY[name]} in {raw} cannot be read ({_one_line(e)}): the files are corrupt; "
                            "delete them and copy or download them again") from e
        return ds.data.unsqueeze(1), ds.targets

    if all(p.exists() for p, _ in gz):
        # (b) the official .gz files only (the offline copy): verify torchvision's md5, decompress in memory.
        from torchvision.datasets.utils import check_integrity

        tensors = []
        for path, md5 in gz:
            if not check_integrity(str(path), md5):
                raise _corrupt(path, f"md5 differs from torchvision's {md5}")
            try:
                blob = gzip.decompress(path.read_bytes())
            except Exception as e:  # noqa: BLE001 - unreachable once the md5 matched, but never a raw traceback
                raise _corrupt(path, _one_line(e)) from e
            tensors.append(_parse_idx(blob, path))
        x, y = tensors
        if x.ndim != 3 or y.ndim != 1:
            raise _corrupt(gz[0][0], f"images {tuple(x.shape)}, labels {tuple(y.shape)}")
        return x.unsqueeze(1), y.to(torch.int64)

    if download:
        ds = _torchvision_download(name, root, train)
        return ds.data.unsqueeze(1), ds.targets
    missing = [p.name for p, _ in gz if not p.exists()]
    raise _not_found(name, root, f"{cls.__name__}/raw/ with {', '.join(missing)} or its unpacked idx files")


# CIFAR-10


def _load_cifar10(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    batches = _CIFAR_TRAIN_BATCHES if train else ("test_batch",)
    if (root / _CIFAR_PICKLES).is_dir():
        return _load_cifar10_pickles(root, batches, train, download)
    if (root / _CIFAR_TFJS).is_dir():
        return _load_cifar10_tfjs(root / _CIFAR_TFJS, batches, train)
    if download:
        ds = _torchvision_download("cifar10", root, train)
        return _from_hwc(ds.data), torch.as_tensor(ds.targets, dtype=torch.int64)
    raise _not_found("cifar10", root, f"{_CIFAR_PICKLES}/ or {_CIFAR_TFJS}/")


def _from_hwc(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(data, np.uint8).transpose(0, 3, 1, 2)))


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _pickle_matches_recorded(path: Path, batch: str) -> bool:
    # Pickles rebuilt from the offline copy (shared README, prepare_cifar10) lack the 'filenames' list, so
    # their md5 cannot be the official one; their arrays can still be checked against the recorded sha256.
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], np.uint8)
        labels = np.asarray(entry["labels"], np.uint8)
    except Exception:  # noqa: BLE001 - unreadable means not matching
        return False
    return (_sha256(data), _sha256(labels)) == CIFAR10_SHA256[batch]


def _load_cifar10_pickles(root: Path, batches: tuple[str, ...], train: bool,
                          download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cls = _torchvision_class("cifar10")
    from torchvision.datasets.utils import check_integrity

    folder = root / cls.base_folder
    official = dict(cls.train_list + cls.test_list)
    problem = None
    for batch in batches:
        path = folder / batch
        if not path.exists():
            problem = DataError(f"{path} is missing: copy or download CIFAR-10 again, or set data.download=true")
        elif not check_integrity(str(path), official[batch]) and not _pickle_matches_recorded(path, batch):
            problem = _corrupt(path, f"md5 differs from torchvision's {official[batch]}")
        if problem:
            break
    meta = folder / cls.meta["filename"]
    if problem is None and not meta.exists():
        problem = DataError(f"{meta} is missing: copy or download CIFAR-10 again, or set data.download=true")
    elif problem is None and not check_integrity(str(meta), cls.meta["md5"]):
        problem = _corrupt(meta, f"md5 differs from torchvision's {cls.meta['md5']}")
    if problem is not None:
        if not download:
            raise problem
        ds = _torchvision_download("cifar10", root, train)  # torchvision re-downloads what fails its md5
    else:
        # Verified above file by file, for this split only; torchvision's own check wants all 6 batches with
        # their official md5s, which the rebuilt pickles cannot have.
        verified = type("VerifiedCIFAR10", (cls,), {"_check_integrity": lambda self: True})
        try:
            ds = verified(str(root), train=train, download=False)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"CIFAR-10 in {folder} cannot be read ({_one_line(e)}): the files are corrupt; "
                            "delete them and copy or download them again") from e
    return _from_hwc(ds.data), torch.as_tensor(ds.targets, dtype=torch.int64)


def cache_dir() -> Path:
    """Where decoded datasets are cached: $GENERALIST_CACHE, else ~/.cache/generalist/datasets."""
    env = os.environ.get("GENERALIST_CACHE", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "generalist" / "datasets"


def _cache_paths(batches: tuple[str, ...], split: str) -> tuple[Path, Path]:
    # Keyed by the recorded checksums: the cache holds exactly the verified arrays, whichever folder they came from.
    key = hashlib.sha256("".join([_CACHE_FORMAT, *(h for b in batches for h in CIFAR10_SHA256[b])]).encode())
    stem = f"cifar10-{split}-{key.hexdigest()[:16]}"
    return cache_dir() / f"{stem}.x.npy", cache_dir() / f"{stem}.y.npy"


def _verify_cifar(x: np.ndarray, y: np.ndarray, batches: tuple[str, ...]) -> bool:
    """x: (N, 3, 32, 32) uint8, y: (N,) labels; True when every 10000-block matches its recorded sha256."""
    n = 10_000 * len(batches)
    if x.shape != (n, 3, 32, 32) or x.dtype != np.uint8 or y.shape != (n,):
        return False
    return all((_sha256(x[k * 10_000:(k + 1) * 10_000]), _sha256(y[k * 10_000:(k + 1) * 10_000].astype(np.uint8)))
               == CIFAR10_SHA256[b] for k, b in enumerate(batches))


def _read_cache(x_path: Path, y_path: Path, batches: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        x, y = np.load(x_path, allow_pickle=False), np.load(y_path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    # The full sha256 costs ~0.1 s for 150 MB against ~1 s to decode, so re-verify everything, not just shapes.
    return (x, y) if y.dtype == np.int64 and _verify_cifar(x, y, batches) else None


def _write_atomic(path: Path, array: np.ndarray) -> None:
    # Write then rename, so a reader (or a concurrent learner process) never sees a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        give_umask_mode(fd)  # a shared cache stays readable by the others who share it
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _decode_cifar_png(path: Path) -> np.ndarray:
    """(10000, 3, 32, 32) uint8 from one 1024x10000 RGB PNG whose row i is image i in HWC order."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode != "RGB" or image.size != (1024, 10_000):
                raise _corrupt(path, f"a {image.mode} image of {image.size}, expected RGB 1024x10000")
            pixels = np.asarray(image)  # (10000, 1024, 3)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} is missing: copy the whole {_CIFAR_TFJS}/ folder again") from None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib.error ... on bad files
        raise _corrupt(path, _one_line(e)) from e
    # (10000, 1024, 3) -> (10000, 3, 1024): the official R|G|B plane layout, i.e. (10000, 3, 32, 32)
    return np.ascontiguousarray(pixels.transpose(0, 2, 1)).reshape(10_000, 3, 32, 32)


def _read_labels(path: Path, count: int) -> np.ndarray:
    try:
        labels = np.asarray(json.loads(path.read_text()), dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"{path} is missing: copy the whole {_CIFAR_TFJS}/ folder again") from None
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, _one_line(e)) from e
    if labels.shape != (count,):
        raise _corrupt(path, f"{labels.size} labels, expected {count}")
    return labels


def _load_cifar10_tfjs(folder: Path, batches: tuple[str, ...], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    split = "train" if train else "test"
    x_path, y_path = _cache_paths(batches, split)
    cached = _read_cache(x_path, y_path, batches)
    if cached is None:
        # upstream spells "lables"
        labels = _read_labels(folder / f"{split}_lables.json", 10_000 * len(batches))
        # PIL releases the GIL while inflating, so two threads decode about 1.3x faster than one.
        with ThreadPoolExecutor(max_workers=min(len(batches), os.cpu_count() or 1, 4)) as pool:
            blocks = list(pool.map(_decode_cifar_png, [folder / f"{b}.png" for b in batches]))
        for k, (batch, block) in enumerate(zip(batches, blocks)):
            block_labels = labels[k * 10_000:(k + 1) * 10_000].astype(np.uint8)
            if _sha256(block) != CIFAR10_SHA256[batch][0]:
                raise _corrupt(folder / f"{batch}.png", "decoded pixels differ from the recorded sha256")
            if _sha256(block_labels) != CIFAR10_SHA256[batch][1]:
                raise _corrupt(folder / f"{split}_lables.json", f"labels of {batch} differ from the recorded sha256")
        x = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        cached = (x, labels)
        try:
            x_path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(y_path, labels)
            _write_atomic(x_path, x)
        except OSError as e:
            warnings.warn(f"cannot cache decoded CIFAR-10 in {x_path.parent} ({_one_line(e)}); "
                          "set GENERALIST_CACHE=DIR to a writable folder to skip the decode next time", stacklevel=2)
    x, y = cached
    return torch.from_numpy(x), torch.from_numpy(y)


# --- splits and batches --------------------------------------------------------------------------


def split_train_val(data: TensorData, val_size: int, seed: int) -> tuple[TensorData, TensorData]:
    """A seeded, held-out validation split of a training set: (train, val) with len(val) == val_size.

    The same (data, val_size, seed) gives the same split in every process. Both parts keep the original
    order of `data` (sorted indices). val_size=0 gives an empty val; val_size >= len(data) is a ConfigError.
    """
    train_index, val_index = split_indices(len(data), val_size, seed)
    return _take(data, train_index), _take(data, val_index)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices split_train_val takes for a set of n examples: (train, val), each sorted."""
    if not 0 <= val_size < n:
        raise ConfigError(f"data.val_size={val_size} must be in [0, {n}) for a training set of {n} examples; "
                          "lower data.val_size")
    perm = torch.randperm(n, generator=_generator(derive_seed(seed, "split_train_val", n, val_size)))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              padding: int) -> torch.Tensor:
    """Per-image crop of the zero-padded batch, then an optional left-right mirror; no randomness.

    x: (B, C, H, W) any dtype. top, left: (B,) ints in [0, 2 * padding]: where the H x W window starts in the
    image padded by `padding` zeros on every side. flip: (B,) bool. Returns (B, C, H, W) of x's dtype, with
    out[b, :, i, j] = padded[b, :, top[b] + i, left[b] + (W - 1 - j if flip[b] else j)], which is
    torchvision's RandomCrop(H, padding) followed by RandomHorizontalFlip, with the randomness given.
    """
    b, c, h, w = x.shape
    p = padding
    device = x.device
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    rows = top[:, None] + torch.arange(h, device=device)  # (B, H) rows of the padded image
    cols = left[:, None] + torch.arange(w, device=device)  # (B, W) columns of the padded image
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
    # One gather over flattened (H + 2p) * (W + 2p) positions: no per-image Python loop.
    index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, index).reshape(b, c, h, w)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """RandomCrop(H, padding, zero fill) + RandomHorizontalFlip(0.5) per image, drawn from `generator` only.

    x: (B, C, H, W) any dtype; returns the same shape and dtype. The draws happen on the generator's device
    (CPU for TrainStream), so the result does not depend on the device x is on.
    """
    n = x.shape[0]
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return crop_flip(x, top, left, flip, padding)


class TrainStream:
    """Shuffled, augmented training batches as a pure function of (seed, epoch, step).

    Every process that builds a stream with the same data and arguments gets the same batch for the same
    (epoch, step), with no communication: this is how several learners train on the same augmented batch.
    The epoch's order is a permutation drawn from a generator seeded by derive_seed(seed, "permutation", epoch);
    the augmentation of step s draws from one seeded by derive_seed(seed, "augment", epoch, s).
    The global RNG is never read or advanced.
    """

    def __init__(self, data: TensorData, *, batch_size: int, seed: int, augment: bool, crop_padding: int = 4,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {crop_padding}")
        n = len(data)
        self.steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"data.batch_size={batch_size} with drop_last leaves no batch from {n} examples; "
                              "lower data.batch_size")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.crop_padding = crop_padding
        self.drop_last = drop_last
        self._perm_epoch: int | None = None
        self._perm = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def hold_on(self, device: torch.device | str) -> None:
        """Keep the training split on `device` from now on, so `batch` indexes it there instead of copying each
        batch from the host (CIFAR-10's 49,000 training images are 150 MB of uint8). Batches stay bit-identical:
        the order and the crop/flip draws still come from CPU generators. Idempotent, so learners sharing the
        stream on one device share one copy."""
        target = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", to compare with the data's device
        if self.data.x.device != target:
            self.data = TensorData(self.data.x.to(target), self.data.y.to(target))
            self._perm_epoch = None  # the cached order lives on the old device

    def permutation(self, epoch: int) -> torch.Tensor:
        """(N,) int64: the order in which epoch `epoch` visits the examples (cached for the current epoch)."""
        if epoch < 0:
            raise IndexError(f"epoch must be >= 0, got {epoch}")
        if self._perm_epoch != epoch:
            g = _generator(derive_seed(self.seed, "permutation", epoch))
            self._perm = torch.randperm(len(self.data), generator=g).to(self.data.x.device)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, epoch: int, step: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `step` of epoch `epoch`: x (B, C, H, W) float32 in [0, 1] and y (B,) int64, on `device`.

        B = batch_size except the last batch of an epoch without drop_last. 0 <= step < steps_per_epoch, else
        IndexError. Bit-identical on every device: the crop/flip draws come from a CPU generator and the
        uint8 -> float conversion is exact division.
        """
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} is outside [0, {self.steps_per_epoch}) for this stream")
        index = self.permutation(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        # Move uint8 (4x fewer bytes than float) and augment on the target device.
        x = self.data.x[index].to(device)
        y = self.data.y[index].to(device)
        if self.augment:
            x = random_crop_flip(x, _generator(derive_seed(self.seed, "augment", epoch, step)), self.crop_padding)
        return _to_unit(x), y


def eval_batches(data: TensorData, batch_size: int,
                 device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All of `data` in order, in batches of batch_size (the last may be smaller), without augmentation.

    Yields x (B, C, H, W) float32 in [0, 1] and y (B,) int64 on `device`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(data), batch_size):
        x = data.x[start:start + batch_size].to(device)
        yield _to_unit(x), data.y[start:start + batch_size].to(device)
