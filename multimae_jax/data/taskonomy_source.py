"""Taskonomy as a dense source (HOST side): the files
ROOT/<task>/<building>/point_<p>_view_<v>_domain_<task>.png of the rows of a split CSV, as
utils/taskonomy/taskonomy_dataset.py: TaskonomyDataset reads them; preprocessing is
`taskonomy_transforms`. We cannot ship the official split CSVs: their path is the config's."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from multimae_jax.data.codecs import CorruptFileError, open_image
from multimae_jax.data.folder import folder_names
from multimae_jax.data.records import check_same_size

#: Taskonomy folders whose files carry another domain's name (TaskonomyDataset.__getitem__:
#: the validity masks are mask_valid/<building>/point_<p>_view_<v>_domain_depth_zbuffer.png).
TASKONOMY_FILE_DOMAINS = {"mask_valid": "depth_zbuffer"}


def read_split_csv(path, max_images: int | None = None) -> list[tuple[str, str, str]]:
    """(building, point, view) of the first `max_images` rows (all when None) of a Taskonomy
    split CSV with those columns (utils/taskonomy/splits/*.csv; the official loader takes the
    first rows, `image_ids[:max_images]`)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"building", "point", "view"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: a Taskonomy split CSV needs the columns building, point, "
                             f"view; it has {reader.fieldnames}")
        rows = [(r["building"], r["point"], r["view"]) for r in reader]
    return rows[:max_images]


def _read_as_stored(path: Path) -> np.ndarray:
    """A PNG as the official loader's PIL image holds it: uint8 (H, W[, C]) for 8-bit files,
    uint16 (H, W) for 16-bit ones (PIL modes 'I;16' and 'I'); a 1-bit image as 0 / 255, the
    values torchvision's ToTensor gives it after / 255."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise OSError(f"{path}: cannot read ({e})") from e
    img = open_image(data, str(path))
    arr = np.asarray(img.convert("L") if img.mode == "1" else img)
    if arr.dtype.itemsize == 1:
        return arr.astype(np.uint8)
    if arr.ndim != 2 or arr.min() < 0 or arr.max() > 65535:
        raise CorruptFileError(f"{path}: expected an 8-bit image or a 16-bit single-channel one, "
                               f"got PIL mode {img.mode}, shape {arr.shape}")
    return arr.astype(np.uint16)


class TaskonomySource:
    """Taskonomy samples of a split CSV: for each row (building, point, view), the file
    root/<folder>/<building>/point_<p>_view_<v>_domain_<domain>.png of every task, decoded as
    stored (`_read_as_stored`), under the task's key. folder = folders.get(task, task) (e.g.
    the key 'depth' of the official rgb2depth head reads the folder depth_zbuffer); domain =
    file_domains.get(folder, folder). Every file is checked to exist at construction (the
    official loader fails at the first missing one, mid-run)."""

    def __init__(self, root, split_csv, tasks, max_images: int | None = None,
                 file_domains=None, folders=None):
        self.root, self.split_csv = Path(root), str(split_csv)
        self.tasks = folder_names(tasks)
        self.folders = {t: (folders or {}).get(t, t) for t in self.tasks}
        domains = TASKONOMY_FILE_DOMAINS if file_domains is None else file_domains
        self.domains = {t: domains.get(f, f) for t, f in self.folders.items()}
        self.ids = read_split_csv(split_csv, max_images)
        if not self.ids:
            raise ValueError(f"{split_csv}: no rows")
        missing = [p for i in range(len(self.ids)) for p in self.paths(i).values()
                   if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} Taskonomy file(s) of {split_csv} are missing, "
                                    f"e.g. {[str(p) for p in missing[:3]]}")

    def paths(self, index: int) -> dict[str, Path]:
        building, point, view = self.ids[index]
        return {t: self.root / self.folders[t] / building
                / f"point_{point}_view_{view}_domain_{self.domains[t]}.png" for t in self.tasks}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        building, point, view = self.ids[index]
        paths = self.paths(index)
        arrays = {t: _read_as_stored(p) for t, p in paths.items()}
        key = f"{building}/point_{point}_view_{view}"
        check_same_size(key, arrays, {t: str(p) for t, p in paths.items()})
        return {"key": key, "paths": {t: str(p) for t, p in paths.items()}, **arrays}

    def __repr__(self) -> str:
        return (f"Taskonomy({self.root}, {self.split_csv}, tasks={list(self.tasks)}, "
                f"{len(self)} samples)")
