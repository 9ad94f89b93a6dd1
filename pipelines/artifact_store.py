"""Finished stage artifacts published to a URI (``run.artifact_root``) and restored from it.

Why: ``<work_dir>/artifacts`` is the cache a run reads and writes by path. On one machine
or a cluster with a shared filesystem that is all it needs. But a new cluster (fresh pods,
an empty volume), a second cluster, or a node without the shared mount would redo every
finished stage. With ``run.artifact_root`` set to a bucket (``s3://bucket/prefix``,
``gs://bucket/prefix``) or any path, each stage directory is copied there when it finishes
and copied back when a run needs it and the local cache lacks it; the key is the same, so
"cached" means the same thing everywhere.

Through ``pyarrow.fs`` (S3, GCS, HDFS, Azure, local): the library the data stages already
read Parquet with, which takes credentials from the environment the usual way. The manifest
is copied last, and a directory counts as published only when its manifest is there: an
upload cut short is never taken for a finished stage.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


class ArtifactStore:
    """``<uri>/<stage>/<key>/`` directories on a pyarrow filesystem."""

    def __init__(self, uri: str, manifest: str):
        from pyarrow import fs as pafs

        self.uri = uri
        self.manifest = manifest
        if "://" not in uri:  # a plain path: absolute, so every process means the same one
            uri = Path(uri).expanduser().resolve().as_uri()
        try:
            self._fs, root = pafs.FileSystem.from_uri(uri)
        except Exception as err:
            raise ValueError(f"run.artifact_root {self.uri!r} cannot be opened with pyarrow.fs "
                             f"({err}): use a path, file://, s3://<bucket>/<prefix> or "
                             f"gs://<bucket>/<prefix>") from err
        self._root = root.rstrip("/")
        self._local = pafs.LocalFileSystem()

    def _dir(self, stage: str, key: str) -> str:
        return f"{self._root}/{stage}/{key}"

    def has(self, stage: str, key: str) -> bool:
        """Whether a finished artifact (its manifest) is in the store."""
        from pyarrow import fs as pafs

        info = self._fs.get_file_info(f"{self._dir(stage, key)}/{self.manifest}")
        return info.type == pafs.FileType.File

    def publish(self, local: Path, stage: str, key: str, replace: bool = False) -> None:
        """Copy a finished stage directory up, its manifest last; ``replace`` (a forced
        rerun) first deletes what the store holds under that key."""
        from pyarrow import fs as pafs

        dest = self._dir(stage, key)
        if replace and self._fs.get_file_info(dest).type == pafs.FileType.Directory:
            self._fs.delete_dir(dest)
        self._fs.create_dir(dest, recursive=True)
        selector = pafs.FileSelector(str(local), recursive=True)
        for info in self._local.get_file_info(selector):
            rel = Path(info.path).relative_to(local).as_posix()
            if info.type == pafs.FileType.Directory:
                self._fs.create_dir(f"{dest}/{rel}", recursive=True)
            elif rel != self.manifest:
                pafs.copy_files(info.path, f"{dest}/{rel}", source_filesystem=self._local,
                                destination_filesystem=self._fs)
        pafs.copy_files(str(local / self.manifest), f"{dest}/{self.manifest}",
                        source_filesystem=self._local, destination_filesystem=self._fs)

    def restore(self, stage: str, key: str, local: Path) -> bool:
        """Copy a published artifact down to ``local`` (atomically: a temporary directory
        renamed into place). False when the store does not have it."""
        from pyarrow import fs as pafs

        if local.exists():
            return True
        if not self.has(stage, key):
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f"{key}.restore-{uuid.uuid4().hex[:8]}"
        try:
            pafs.copy_files(self._dir(stage, key), str(tmp), source_filesystem=self._fs,
                            destination_filesystem=self._local)
            try:
                os.replace(tmp, local)
            except OSError:  # another process restored it first
                if not (local / self.manifest).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True
