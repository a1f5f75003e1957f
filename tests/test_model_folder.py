"""Unit tier for model folders and the copies Bentos carry (``vllm_bento.model_folder``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.served import ROOT
from vllm_bento.model_folder import fingerprint, store_name


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_store_name_is_a_valid_tag_name() -> None:
    assert store_name(Path("/m/Llama-3.1 8B (ft)")) == "llama-3.1-8b-ft"
    assert store_name(Path("/m/___")) == "model-folder"
    assert len(store_name(Path("/m/" + "x" * 100))) == 63


def test_fingerprint_follows_the_files(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m")
    first = fingerprint(folder)
    assert fingerprint(folder) == first
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert fingerprint(folder) != first


def test_a_folder_is_copied_once_per_version_and_found_by_its_path(tmp_path: Path) -> None:
    """In a BentoML home of its own (a subprocess: BentoML fixes its store path per process)."""
    folder = model_folder(tmp_path / "My_Model")
    script = textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        from vllm_bento.model_folder import import_folder, imported, local_or_stored
        from vllm_bento.settings import load_settings
        folder = Path({str(folder)!r})
        first, again = import_folder(folder), import_folder(folder)
        (folder / "model.safetensors").write_bytes(b"fine-tuned further")
        second = import_folder(folder)
        here = str(local_or_stored(folder))
        os.rename(folder, folder.with_name("moved"))
        settings = load_settings(model_id=str(folder))
        print(json.dumps({{
            "tags": [str(first.tag), str(again.tag), str(second.tag)],
            "found": str(imported(folder).tag),
            "other": imported(folder.with_name("nope")),
            "copied": sorted(p.name for p in Path(second.path).iterdir()),
            "served_name": settings.served_name,
            "here": here,
            "elsewhere": str(local_or_stored(folder)),
            "nowhere": local_or_stored(folder.with_name("nope")),
        }}))
    """)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    first, again, second = out["tags"]
    assert first == again and second != first and first.startswith("my_model:")
    assert out["found"] == second, "the newest copy of that path"
    assert out["other"] is None
    assert out["copied"] == ["config.json", "model.safetensors", "model.yaml"]
    assert out["served_name"] == "My_Model"
    assert out["here"] == str(folder)
    assert out["elsewhere"] == str(tmp_path / "home" / "models" / second.replace(":", "/"))
    assert out["nowhere"] is None
