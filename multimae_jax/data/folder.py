"""The official on-disk layout ROOT/<modality>/<class>/<file>, paired by path, not by index.

The official loader lists each modality's files separately and pairs them by position, so one
missing file silently misaligns every later sample. Here a sample is the relative path without
extension ('<class>/<name>'); it exists only if every modality has exactly one file for it, and
anything else is reported by name.
"""
import dataclasses
import os
from pathlib import Path

from multimae_jax import modalities

_EXTENSIONS = modalities.IMAGE_EXTENSIONS + modalities.ARRAY_EXTENSIONS


@dataclasses.dataclass
class FolderScan:
    """What a scan found. files[task][sample] is the file's path relative to ROOT/<task>."""
    root: Path
    tasks: tuple[str, ...]
    samples: list[str]  # sorted '<class>/<name>' present in every task
    classes: list[str]  # sorted class folders
    files: dict[str, dict[str, str]]
    missing: dict[str, list[str]]  # task -> samples other tasks have but this one lacks
    duplicates: dict[str, list[str]]  # task -> samples with several files (e.g. a.png and a.jpg)

    def problems(self, limit: int = 5) -> list[str]:
        """One line per kind of problem, naming up to `limit` offenders."""
        out = []
        for task, items in self.missing.items():
            if items:
                out.append(f"{len(items)} sample(s) have no {task} file under "
                           f"{self.root / task}, e.g. {items[:limit]}")
        for task, items in self.duplicates.items():
            if items:
                out.append(f"{len(items)} sample(s) have several {task} files, e.g. {items[:limit]}")
        return out


def folder_names(modalities) -> tuple[str, ...]:
    """Folder names of Modality objects and/or plain names."""
    return tuple(m if isinstance(m, str) else m.name for m in modalities)


def scan_folder(root, tasks) -> FolderScan:
    """Lists ROOT/<task>/<class>/<file> for every task (modality names or Modality objects)
    and pairs the files by relative path."""
    root, tasks = Path(root), folder_names(tasks)
    for task in tasks:
        if not (root / task).is_dir():
            raise FileNotFoundError(f"{root / task}: missing; the layout is ROOT/<modality>/<class>/"
                                    f"<file> with one folder per modality {list(tasks)}")
    files, duplicates = {}, {}
    for task in tasks:
        found, dups = {}, []
        for dirpath, _, names in os.walk(root / task):
            rel_dir = os.path.relpath(dirpath, root / task)
            for name in names:
                stem, ext = os.path.splitext(name)
                if ext.lower() not in _EXTENSIONS or rel_dir == ".":
                    continue
                sample = f"{rel_dir}/{stem}".replace(os.sep, "/")
                if sample in found:
                    dups.append(sample)
                found[sample] = f"{rel_dir}/{name}".replace(os.sep, "/")
        files[task], duplicates[task] = found, sorted(set(dups))
    every = set().union(*(f.keys() for f in files.values()))
    common = set.intersection(*(set(f) for f in files.values()))
    missing = {t: sorted(every - set(files[t])) for t in tasks}
    samples = sorted(common - set().union(*map(set, duplicates.values())))
    classes = sorted({s.split("/", 1)[0] for s in samples})
    return FolderScan(root, tuple(tasks), samples, classes, files, missing, duplicates)


class FolderSource:
    """Random-access source over a paired folder (grain `RandomAccessDataSource`).

    Item i is {'key': '<class>/<name>', 'label': class index, <task>: file bytes,
    'paths': {task: file path}}; decoding
    happens later in the pipeline, where a corrupt file can be reported or skipped.
    Raises ValueError at construction, listing a few offenders, if any sample lacks a modality
    (unless `allow_incomplete`, which keeps only the complete samples).
    """

    def __init__(self, root, tasks, allow_incomplete: bool = False):
        self.scan = scan_folder(root, tasks)
        problems = self.scan.problems()
        if problems and not allow_incomplete:
            raise ValueError(f"dataset {root}:\n  " + "\n  ".join(problems) +
                             "\n(run `python -m multimae_jax.data.check ROOT` for the full list, or "
                             "set data.allow_incomplete to train on the complete samples only)")
        if not self.scan.samples:
            raise ValueError(f"dataset {root}: no complete sample for tasks "
                             f"{list(self.scan.tasks)}")
        self._class_index = {c: i for i, c in enumerate(self.scan.classes)}

    @property
    def classes(self) -> list[str]:
        return self.scan.classes

    def __len__(self) -> int:
        return len(self.scan.samples)

    def __getitem__(self, index: int) -> dict:
        key = self.scan.samples[index]
        record = {"key": key, "label": self._class_index[key.split("/", 1)[0]], "paths": {}}
        for task in self.scan.tasks:
            path = self.scan.root / task / self.scan.files[task][key]
            try:
                record[task] = path.read_bytes()
            except OSError as e:
                raise OSError(f"{path}: cannot read ({e})") from e
            record["paths"][task] = str(path)
        return record

    def __repr__(self) -> str:
        return f"FolderSource({self.scan.root}, tasks={list(self.scan.tasks)}, {len(self)} samples)"
