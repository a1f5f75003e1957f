"""A model or adapter folder on disk (``LLM_MODEL_ID=/path``, ``LLM_LORA_MODULES``), and the
copy of it a Bento carries.

``bentoml serve service:VLLM`` serves the folder where it is: nothing is copied. ``bentoml
build`` imports it into the BentoML model store (a copy, named after the folder, versioned by a
fingerprint of its files, with the folder's path in its metadata) and the Bento references that
stored model, so ``bentoml export``/``import`` carry it and the Bento serves where the folder
does not exist: there the stored copy imported from that path is served.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import attrs
import bentoml
from _bentoml_sdk.models.base import BentoModel  # BentoML's own model reference class

SOURCE_KEY = "source_folder"
"""Metadata key of a stored copy: the absolute path of the folder it was imported from."""


def store_name(folder: Path) -> str:
    """The stored copy's name: the folder's name as a BentoML tag name allows it (lowercase
    letters, digits, ``-``, ``_`` and ``.``, at most 63 characters)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.name.lower()).strip("-._")[:63]
    return name or "model-folder"


def fingerprint(folder: Path) -> str:
    """A version for the folder as it is now: a hash of every file's relative path, size and
    modification time (the files are not read, so a 16 GB folder costs a directory walk)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def version_tag(folder: Path) -> str:
    """The tag of a copy of ``folder`` as it is now."""
    return f"{store_name(folder)}:{fingerprint(folder)}"


def imported(folder: Path) -> bentoml.Model | None:
    """The most recent stored copy of ``folder`` (by its absolute path), or None."""
    try:
        stored = bentoml.models.list(store_name(folder))
    except bentoml.exceptions.NotFound:
        return None
    copies = [m for m in stored if m.info.metadata.get(SOURCE_KEY) == str(folder)]
    return max(copies, key=lambda m: m.info.creation_time, default=None)


def local_or_stored(folder: Path) -> Path | None:
    """Where ``folder``'s files are here: the folder itself, else its stored copy (a Bento
    built from it, served elsewhere), else None."""
    if folder.is_dir():
        return folder
    copy = imported(folder)
    return None if copy is None else Path(copy.path)


def import_folder(folder: Path) -> bentoml.Model:
    """Copy ``folder`` into the model store, unless a copy of it as it is now is there."""
    tag = version_tag(folder)
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        pass
    with bentoml.models.create(tag, metadata={SOURCE_KEY: str(folder)},
                               labels={"source": "model-folder"}) as model:
        shutil.copytree(folder, model.path, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".cache"))
    return model


@attrs.frozen
class FolderModel(BentoModel):
    """The service's model when ``model_id`` is a folder: served from the folder while it
    exists, recorded in a Bento as its stored copy (made when the Bento is built), and served
    from that copy where the folder does not exist.

    ``resolve`` (what ``self.model`` gives the service) returns the folder or the stored copy;
    either way the service serves ``getattr(model, "path", model)``.
    """

    folder: Path = attrs.field(default=Path(), converter=Path)

    @classmethod
    def of(cls, folder: Path) -> FolderModel:
        """The reference for ``folder`` (absolute), whether or not it exists here."""
        if folder.is_dir():
            tag = version_tag(folder)
        elif (copy := imported(folder)) is not None:
            tag = str(copy.tag)
        else:
            tag = f"{store_name(folder)}:latest"  # settings refuse this case before we get here
        return cls(tag=tag, folder=folder)  # type: ignore[call-arg]  # attrs subclass

    def to_info(self, alias: str | None = None) -> Any:
        """Called by ``bentoml build`` only: import the folder, then record its copy."""
        if self.folder.is_dir():
            import_folder(self.folder)
        return super().to_info(alias)

    def resolve(self, base_path: Any = None, *args: Any, **kwargs: Any) -> Any:
        if self.folder.is_dir() and base_path is None:
            return self.folder
        return super().resolve(base_path, *args, **kwargs)
