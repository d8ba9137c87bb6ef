"""Packed ArrayRecord shards: a folder OUT with data-XXXXX-of-YYYYY.array_record files and
meta.json (tasks, classes, records per shard). Each record is a packed raw record
(`records.pack_record`): the original encoded files by default, or decoded arrays."""
import json
from pathlib import Path

import grain

from multimae_jax.data.folder import folder_names
from multimae_jax.data.records import unpack_record

META = "meta.json"


def shard_name(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}.array_record"


def is_shard_dir(path) -> bool:
    return (Path(path) / META).is_file()


class ShardSource:
    """Random-access source over packed shards, yielding the same raw records as FolderSource."""

    def __init__(self, root, tasks=None):
        self.root = Path(root)
        meta_path = self.root / META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: missing; pack a dataset with "
                                    "`python -m multimae_jax.data.pack SRC OUT`")
        self.meta = json.loads(meta_path.read_text())
        missing = [t for t in folder_names(tasks or ()) if t not in self.meta["tasks"]]
        if missing:
            raise ValueError(f"{self.root}: shards hold tasks {self.meta['tasks']}, not {missing}")
        paths = [self.root / shard_name(i, self.meta["num_shards"])
                 for i in range(self.meta["num_shards"])]
        absent = [p.name for p in paths if not p.is_file()]
        if absent:
            raise ValueError(f"{self.root}: incomplete packing, missing shards {absent[:5]}; "
                             "re-run the pack command to finish it")
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return unpack_record(self._source[index], f"{self.root}[{index}]")

    def __repr__(self) -> str:
        return f"ShardSource({self.root}, {len(self)} records)"
