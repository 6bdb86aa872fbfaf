"""Every dataset format read from small files this test writes; the clear errors; the splits."""
from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo.data as data
from tests.conftest import make_fake_idx_dataset, write_idx
from zoo.data import (CIFAR10_CLASSES, DEFAULT_IMAGE_SIZE, FASHION_MNIST_CLASSES,
                      IMAGENETTE_CLASSES, IMAGEWOOF_CLASSES, MNIST_CLASSES, DataError, DatasetInfo,
                      LOADERS, convert_image, load_dataset, load_image_as_input, prepare_data,
                      read_cifar_batch, split_by_seed)

# ---- writers of small on-disk datasets ------------------------------------------------------


def cifar_batch_dict(n: int, offset: int) -> dict:
    """A CIFAR-10 batch as the real files hold it: bytes keys, uint8 (n, 3072), list labels.

    Image i is constant ``offset + i`` in channel 0, 100 in channel 1, 200 in channel 2, and its
    label is ``(offset + i) % 10``; so pixel values tell where each image went.
    """
    x = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    x[:, 0] = (offset + np.arange(n))[:, None, None]
    x[:, 1], x[:, 2] = 100, 200
    return {b"batch_label": b"batch", b"labels": [int((offset + i) % 10) for i in range(n)],
            b"data": x.reshape(n, -1), b"filenames": [b"f%d.png" % i for i in range(n)]}


def py2_style_pickle(obj) -> bytes:
    """Protocol 2 naming ``numpy.core.multiarray``, as the real (Python 2 era) files do."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def write_cifar(root: Path, per_batch: int = 4, n_test: int = 3) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        (d / f"data_batch_{b + 1}").write_bytes(
            py2_style_pickle(cifar_batch_dict(per_batch, b * per_batch)))
    (d / "test_batch").write_bytes(py2_style_pickle(cifar_batch_dict(n_test, 100)))
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f, protocol=2)
    return d


COLOURS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (255, 0, 0)}


def save_picture(path: Path, colour: tuple[int, int, int], size: tuple[int, int],
                 fmt: str = "PNG", mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)


def write_tree(root: Path, per_class: int, sizes=((40, 30), (20, 20)), classes=COLOURS,
               fmt: str = "PNG") -> Path:
    """``root/<class>/<i>.png``: constant pictures of the class colour, of mixed sizes."""
    ext = ".png" if fmt == "PNG" else ".jpg"
    for c in classes:
        for i in range(per_class):
            save_picture(root / c / f"{i:03d}{ext}", COLOURS[c], sizes[i % len(sizes)], fmt)
    return root


def write_pet(root: Path) -> Path:
    """Tiny Oxford-IIIT Pet layout: species column 1 = cat (grey pictures), 2 = dog (white)."""
    base = root / "oxford-iiit-pet"
    rows = {"trainval": [("Abyssinian_1", 1, 1, 1), ("beagle_1", 3, 2, 1),
                         ("Bengal_2", 6, 1, 2), ("pug_3", 25, 2, 13), ("boxer_4", 4, 2, 2)],
            "test": [("Persian_5", 24, 1, 7), ("havanese_6", 14, 2, 8)]}
    for split, lines in rows.items():
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        text = "#Image CLASS-ID SPECIES BREED ID\n" + "".join(
            f"{i} {c} {s} {b}\n" for i, c, s, b in lines)
        (base / "annotations" / f"{split}.txt").write_text(text)
        for image_id, _, species, _ in lines:
            colour = (128, 128, 128) if species == 1 else (255, 255, 255)
            save_picture(base / "images" / f"{image_id}.jpg", colour, (50, 40), "JPEG")
    return base


def forbid_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise AssertionError("a download was attempted with download=False")
    monkeypatch.setattr(data.fetch, "torchvision_download", boom)      # CIFAR, folders, Pet
    monkeypatch.setattr(data.idx, "_torchvision_download_idx", boom)   # Fashion-MNIST, MNIST


# ---- IDX: MNIST, Fashion-MNIST -----------------------------------------------------------------


def test_mnist_and_fmnist_from_data_dir_layouts(tmp_path):
    flat = make_fake_idx_dataset(tmp_path / "flat", n_train=50, n_test=20)
    tr, te, info = load_dataset("mnist", flat, download=False)
    assert tr.images.shape == (50, 1, 28, 28) and te.images.shape == (20, 1, 28, 28)
    assert tr.images.dtype == torch.uint8 and tr.labels.dtype == torch.int64
    assert info.classes == MNIST_CLASSES and info.in_channels == 1 and info.input_size == 28
    # torchvision's own layout DIR/FashionMNIST/raw/ holds the same files
    make_fake_idx_dataset(tmp_path / "tv" / "FashionMNIST" / "raw", n_train=50, n_test=20)
    tr2, _, info2 = load_dataset("fashion-mnist", tmp_path / "tv", download=False)
    assert torch.equal(tr2.images, tr.images) and torch.equal(tr2.labels, tr.labels)
    assert info2.classes == FASHION_MNIST_CLASSES and info2.source.endswith("raw")
    # mean/std are those of the train images, worked out directly
    x = tr.images.float() / 255
    assert info.mean[0] == pytest.approx(x.mean().item(), abs=1e-4)
    # resized on request, with the same steps as an upload
    tr3, _, info3 = load_dataset("mnist", flat, download=False, image_size=32)
    assert tr3.images.shape == (50, 1, 32, 32) and info3.input_size == 32


def test_idx_truncated_and_missing(tmp_path, monkeypatch):
    forbid_downloads(monkeypatch)
    d = make_fake_idx_dataset(tmp_path / "d", n_train=20, n_test=10)
    raw = (d / "train-images-idx3-ubyte.gz").read_bytes()
    (d / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])  # cut the gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", d, download=False)
    # a complete gzip whose IDX payload is short: the header promises 20 images, 5 are there
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((20, 28, 28), np.uint8))
    with gzip.open(d / "train-images-idx3-ubyte.gz", "rb") as f:
        payload = f.read()
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(payload[: 16 + 5 * 28 * 28])
    with pytest.raises(DataError, match="truncated: header says \\[20, 28, 28\\]"):
        load_dataset("mnist", d, download=False)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere") in str(e.value) and "--data-dir" in str(e.value)


@pytest.mark.skipif(not (data.DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_package():
    tr, te, info = load_dataset("fashion-mnist", None, download=False)
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(te.labels).tolist() == [1000] * 10  # the test set is balanced
    assert info.source == str(data.DEBIAN_FASHION_MNIST)


# ---- CIFAR-10 ------------------------------------------------------------------------------------


def test_cifar10_batches(tmp_path):
    write_cifar(tmp_path, per_batch=4, n_test=3)
    tr, te, info = load_dataset("cifar10", tmp_path, download=False)
    assert tr.images.shape == (20, 3, 32, 32) and te.images.shape == (3, 3, 32, 32)
    assert b"numpy.core.multiarray" in (tmp_path / "cifar-10-batches-py" / "test_batch"
                                        ).read_bytes()
    # batch order kept: image i of the train set is constant i in channel 0, label i % 10
    assert tr.images[:, 0, 5, 7].tolist() == list(range(20))
    assert tr.labels.tolist() == [i % 10 for i in range(20)]
    assert te.labels.tolist() == [0, 1, 2] and te.images[:, 0, 0, 0].tolist() == [100, 101, 102]
    assert (tr.images[:, 1] == 100).all() and (tr.images[:, 2] == 200).all()
    assert info.classes == CIFAR10_CLASSES and info.in_channels == 3 and info.input_size == 32
    assert info.mean[1] == pytest.approx(100 / 255, abs=1e-4)
    # the folder itself works as --data-dir too, and resizing keeps constant pictures constant
    tr16, _, info16 = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", download=False,
                                   image_size=16)
    assert tr16.images.shape == (20, 3, 16, 16) and info16.input_size == 16
    assert tr16.images[:, 0, 3, 3].tolist() == list(range(20))


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but not a numpy array: must be refused


def test_cifar_restricted_unpickler_and_corrupt(tmp_path, monkeypatch):
    forbid_downloads(monkeypatch)
    d = write_cifar(tmp_path)
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load posix.getcwd|refusing to load os.getcwd"):
        read_cifar_batch(d / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, download=False)
    write_cifar(tmp_path)
    raw = (d / "test_batch").read_bytes()
    (d / "test_batch").write_bytes(raw[:100])
    with pytest.raises(DataError, match="test_batch.*corrupt or truncated"):
        load_dataset("cifar10", tmp_path, download=False)
    (d / "test_batch").unlink()
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path, download=False)


def test_cifar_download_path_uses_torchvision(tmp_path, monkeypatch):
    """download=True goes through torchvision.datasets.CIFAR10 (faked here: no network)."""
    import torchvision.datasets as tvd
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_cifar(Path(root))

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    tr, te, _ = load_dataset("cifar10", tmp_path / "dl", download=True)
    assert len(tr) == 20 and len(te) == 3
    assert calls == [(str(tmp_path / "dl"), True, True), (str(tmp_path / "dl"), False, True)]


# ---- one picture: the conversion the web page uses ---------------------------------------------


def test_convert_image_hand_worked(tmp_path):
    # 60 wide x 20 high: green 0..17, red 18..29, blue 30..41, green 42..59. Shorter side
    # 20 -> 10 gives 30 x 10; the centred 10 x 10 crop keeps resized columns 10..19, i.e.
    # source 20..39 (each output column blends source 2j-1..2j+2): red at the left edge, blue
    # at the right edge, no green (squashing instead of cropping would show green there).
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :] = (0, 200, 0)
    arr[:, 18:30] = (255, 0, 0)
    arr[:, 30:42] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "half.png")
    out = convert_image(tmp_path / "half.png", 3, 10)
    assert out.shape == (3, 10, 10) and out.dtype == np.uint8
    assert out[:, :, 0].T.tolist() == [[255, 0, 0]] * 10
    assert out[:, :, -1].T.tolist() == [[0, 0, 255]] * 10
    # grayscale: ITU-R 601-2 luma, red 255 -> 255 * 299 / 1000 = 76.2 -> 76
    gray = convert_image(tmp_path / "half.png", 1, 10)
    assert gray.shape == (1, 10, 10) and gray[0, 0, 0] == 76 and gray[0, 0, -1] == 29
    # transparent pixels are laid over white
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert (convert_image(buf.getvalue(), 3, 8) == 255).all()
    # 16-bit grayscale is scaled, not clipped: 65535 -> 255, 257 * 100 -> 100
    Image.fromarray(np.full((6, 6), 25700, np.uint16)).save(tmp_path / "g16.png")
    assert (convert_image(tmp_path / "g16.png", 1, 6) == 100).all()


def test_load_image_as_input_matches_dataset_and_rejects_garbage(tmp_path):
    root = write_tree(tmp_path / "tree", per_class=3)
    tr, te, info = load_dataset("imagefolder", root, download=False, image_size=12, seed=1)
    files = sorted((root / "green").glob("*.png"))
    from_path = load_image_as_input(files[0], info)
    from_bytes = load_image_as_input(files[0].read_bytes(), info)
    assert from_path.shape == (3, 12, 12) and from_path.dtype == torch.uint8
    assert torch.equal(from_path, from_bytes)
    assert (from_path.permute(1, 2, 0) == torch.tensor(COLOURS["green"], dtype=torch.uint8)).all()
    gray_info = DatasetInfo("x", 2, 1, 7, ["a", "b"], [0.5], [0.5])
    assert load_image_as_input(files[0], gray_info).shape == (1, 7, 7)
    with pytest.raises(DataError, match="uploaded bytes.*not a readable image"):
        load_image_as_input(b"this is not a picture", info)


# ---- ImageFolder -----------------------------------------------------------------------------


def test_imagefolder_train_test_tree(tmp_path):
    write_tree(tmp_path / "d" / "train", per_class=4)
    write_tree(tmp_path / "d" / "test", per_class=2, classes=["blue", "red"])  # green absent
    tr, te, info = load_dataset("imagefolder", tmp_path / "d", download=False)
    assert info.classes == ["blue", "green", "red"] and info.num_classes == 3
    assert info.input_size == DEFAULT_IMAGE_SIZE  # mixed picture sizes -> the default
    assert tr.images.shape == (12, 3, 64, 64) and te.images.shape == (4, 3, 64, 64)
    assert tr.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert te.labels.tolist() == [0, 0, 2, 2]
    for k, c in enumerate(info.classes):  # every picture decoded into its class colour
        want = torch.tensor(COLOURS[c], dtype=torch.uint8).view(3, 1, 1)
        assert (tr.images[tr.labels == k] == want).all()


def test_imagefolder_native_size_grayscale_and_jpeg(tmp_path):
    root = tmp_path / "g"
    for c, v in (("dark", 30), ("light", 220)):
        for i in range(3):
            save_picture(root / "train" / c / f"{i}.png", (v, v, v), (24, 24), mode="L")
            save_picture(root / "test" / c / f"{i}.jpg", (v, v, v), (24, 24), "JPEG", mode="L")
    tr, te, info = load_dataset("imagefolder", root, download=False)
    assert info.in_channels == 1 and info.input_size == 24  # all grayscale, one square size
    assert tr.images.shape == (6, 1, 24, 24) and te.images.shape == (6, 1, 24, 24)
    assert (tr.images[:3] == 30).all()
    assert (te.images[3:].float() - 220).abs().max() <= 3  # JPEG is lossy


def test_imagefolder_one_tree_split_by_seed(tmp_path):
    root = write_tree(tmp_path / "one", per_class=10)
    tr, te, info = load_dataset("imagefolder", root, download=False, image_size=8, seed=0)
    assert len(tr) == 24 and len(te) == 6  # round(10 * 0.2) = 2 test pictures per class
    assert torch.bincount(te.labels).tolist() == [2, 2, 2]
    assert "split by seed 0" in info.source
    a_tr, a_te = split_by_seed(np.repeat([0, 1, 2], 10), seed=0)
    b_tr, b_te = split_by_seed(np.repeat([0, 1, 2], 10), seed=0)
    c_tr, c_te = split_by_seed(np.repeat([0, 1, 2], 10), seed=1)
    assert np.array_equal(a_te, b_te) and not np.array_equal(a_te, c_te)
    assert sorted(np.concatenate([a_tr, a_te]).tolist()) == list(range(30))
    # a class of one picture stays in train; of two, one goes to test
    s_tr, s_te = split_by_seed([0, 1, 1], seed=0)
    assert s_tr.tolist()[0] == 0 and len(s_te) == 1


def test_imagefolder_errors(tmp_path, monkeypatch):
    forbid_downloads(monkeypatch)
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("imagefolder", None, download=False)
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        load_dataset("imagefolder", tmp_path / "missing", download=False)
    root = write_tree(tmp_path / "e", per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=f"class folder {root / 'empty'} holds no images"):
        load_dataset("imagefolder", root, download=False, image_size=8)
    (root / "empty").rmdir()
    bad = root / "red" / "zz.jpg"
    save_picture(bad, (255, 0, 0), (64, 64), "JPEG")
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match="zz.jpg.*corrupt or truncated"):
        load_dataset("imagefolder", root, download=False, image_size=8)
    t = tmp_path / "t"
    write_tree(t / "train", per_class=1, classes=["red"])
    write_tree(t / "test", per_class=1, classes=["red", "blue"])
    with pytest.raises(DataError, match="class folders \\['blue'\\] that the training tree lacks"):
        load_dataset("imagefolder", t, download=False, image_size=8)
    write_tree(tmp_path / "notrain" / "test", per_class=1, classes=["red"])
    with pytest.raises(DataError, match="test/ but no train/"):
        load_dataset("imagefolder", tmp_path / "notrain", download=False)


# ---- ImageNette, ImageWoof, Oxford-IIIT Pet ----------------------------------------------------


def test_imagenette_and_imagewoof_trees(tmp_path, monkeypatch):
    forbid_downloads(monkeypatch)
    for name, wnids in (("imagenette", IMAGENETTE_CLASSES), ("imagewoof", IMAGEWOOF_CLASSES)):
        base = tmp_path / name / f"{name}2-320"
        two = sorted(wnids)[:2]
        for split, n in (("train", 3), ("val", 1)):
            for k, wnid in enumerate(two):
                for i in range(n):
                    mode = "L" if i == 0 else "RGB"  # a few real ones are grayscale
                    save_picture(base / split / wnid / f"{wnid}_{i}.JPEG", (40 + 100 * k,) * 3,
                                 (48, 36), "JPEG", mode=mode)
        tr, te, info = load_dataset(name, tmp_path / name, download=False, image_size=16)
        assert info.classes == [wnids[w] for w in two] and info.in_channels == 3
        assert tr.images.shape == (6, 3, 16, 16) and te.images.shape == (2, 3, 16, 16)
        assert tr.labels.tolist() == [0, 0, 0, 1, 1, 1] and te.labels.tolist() == [0, 1]
        assert info.source == str(base)
    _, _, info = load_dataset("imagenette", tmp_path / "imagenette", download=False)
    assert info.input_size == DEFAULT_IMAGE_SIZE
    with pytest.raises(DataError, match="imagewoof2-160.tgz"):
        load_dataset("imagewoof", tmp_path / "empty", download=False)


def test_imagenette_download_path_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    calls = []

    class FakeImagenette:
        def __init__(self, root, split, size, download):
            calls.append((split, size, download))
            for s in ("train", "val"):
                save_picture(Path(root) / "imagenette2-160" / s / "n01440764" / "a.JPEG",
                             (9, 9, 9), (20, 20), "JPEG")

    monkeypatch.setattr(tvd, "Imagenette", FakeImagenette)
    tr, te, info = load_dataset("imagenette", tmp_path, download=True, image_size=8)
    assert calls == [("train", "160px", True)] and info.classes == ["tench"]
    assert len(tr) == len(te) == 1


def test_oxford_pet_cat_vs_dog(tmp_path, monkeypatch):
    forbid_downloads(monkeypatch)
    write_pet(tmp_path)
    tr, te, info = load_dataset("oxford-pet", tmp_path, download=False, image_size=16)
    assert info.classes == ["cat", "dog"] and info.num_classes == 2 and info.in_channels == 3
    assert tr.labels.tolist() == [0, 1, 0, 1, 1] and te.labels.tolist() == [0, 1]
    assert tr.images.shape == (5, 3, 16, 16)
    # cats were written grey (128), dogs white: labels and pictures stay paired
    assert (tr.images[tr.labels == 0].float() - 128).abs().max() <= 3
    assert (tr.images[tr.labels == 1] >= 250).all()
    (tmp_path / "oxford-iiit-pet" / "images" / "pug_3.jpg").unlink()
    with pytest.raises(DataError, match="pug_3.jpg"):
        load_dataset("oxford-pet", tmp_path, download=False, image_size=16)
    ann = tmp_path / "oxford-iiit-pet" / "annotations" / "test.txt"
    ann.write_text("Persian_5 24 7\n")
    with pytest.raises(DataError, match="test.txt:1"):
        data.read_pet_annotations(ann)
    with pytest.raises(DataError, match="robots.ox.ac.uk"):
        load_dataset("oxford-pet", tmp_path / "none", download=False)


# ---- the shared interface -------------------------------------------------------------------


def test_unknown_dataset_and_every_loader_refuses_without_data(tmp_path, monkeypatch):
    forbid_downloads(monkeypatch)
    with pytest.raises(DataError, match="unknown dataset 'cifar11'.*cifar10"):
        load_dataset("cifar11")
    for name in LOADERS:
        with pytest.raises(DataError):
            load_dataset(name, tmp_path / "empty", download=False)


def test_prepare_data_splits_fixed_per_seed_and_limits(tmp_path):
    write_cifar(tmp_path / "c", per_batch=8, n_test=5)  # 40 train pool, 5 test
    run = tmp_path / "run"
    b = prepare_data(run, dataset="cifar10", data_dir=tmp_path / "c", seed=2, download=False)
    assert len(b.train) == 36 and len(b.val) == 4 and len(b.test) == 5
    assert (run / "splits" / "cifar10-seed2.json").exists()
    # train and val partition the pool; pixel channel 0 of pool image i is i
    got = sorted(b.train.images[:, 0, 0, 0].tolist() + b.val.images[:, 0, 0, 0].tolist())
    assert got == list(range(40))
    again = prepare_data(run, dataset="cifar10", data_dir=tmp_path / "c", seed=2, download=False)
    assert again.splits.fingerprint == b.splits.fingerprint
    other = prepare_data(run, dataset="cifar10", data_dir=tmp_path / "c", seed=3, download=False)
    assert other.splits.fingerprint != b.splits.fingerprint
    lim = prepare_data(run, dataset="cifar10", data_dir=tmp_path / "c", seed=2, download=False,
                       limit_train=5, limit_eval=2)
    assert torch.equal(lim.train.ids, b.train.ids[:5]) and torch.equal(lim.val.ids, b.val.ids[:2])
    assert lim.test.ids.tolist() == [0, 1]
    assert lim.splits.meta["full_fingerprint"] == b.splits.fingerprint
