"""The rooms of appliance/ and who may import whom (../shared/STYLE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "appliance"
HEAVY = {
    "numpy",
    "soxr",
    "webrtcvad",
    "faster_whisper",
    "ctranslate2",
    "llama_cpp",
    "piper",
    "onnxruntime",
    "sounddevice",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_only_the_standard_library() -> None:
    for path in (PACKAGE / "core").glob("*.py"):
        for name in imports_of(path):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or name.startswith("appliance.core"), (
                f"{path.name} imports {name}"
            )


def test_heavy_libraries_are_imported_only_by_engines_audio_io_and_testing() -> None:
    # telephony: the numpy G.711 codec; redteam and bench drive whole pipelines, like the CLI;
    # knowledge: numpy for the index's vectors, never a model library (the embedder is a port).
    allowed = {"engines", "audio_io", "testing", "telephony", "redteam", "bench"}
    for path in PACKAGE.rglob("*.py"):
        room = path.relative_to(PACKAGE).parts[0]
        heavy = {n.split(".")[0] for n in imports_of(path)} & HEAVY
        if room == "knowledge":
            heavy -= {"numpy"}
        if heavy and room not in allowed:
            raise AssertionError(f"{path.relative_to(PACKAGE)} imports {sorted(heavy)}")


def test_import_contracts_hold() -> None:
    linter = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(linter)], cwd=PACKAGE.parent, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
