"""The committed stubs in src/kyb/v1/ are exactly what scripts/gen_protos.sh makes from protos/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "src" / "kyb" / "v1"
GENERATED = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def _stubs(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for pattern in GENERATED for path in sorted(folder.glob(pattern))}


def test_committed_stubs_match_what_the_script_generates(tmp_path):
    assert list((ROOT / "protos" / "kyb" / "v1").glob("*.proto")), "no .proto files under protos/kyb/v1"
    script = ROOT / "scripts" / "gen_protos.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=False, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    fresh = _stubs(tmp_path / "kyb" / "v1")
    committed = _stubs(STUBS)
    assert fresh, "the script generated nothing"
    assert sorted(committed) == sorted(fresh), "stub files differ: run scripts/gen_protos.sh"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run scripts/gen_protos.sh and commit the result"


def test_every_field_and_message_is_commented():
    for proto in (ROOT / "protos" / "kyb" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            text = line.strip()
            is_field = text.endswith(";") and "=" in text and not text.startswith(("option", "syntax", "//"))
            is_declaration = text.startswith(("message ", "service ", "enum ", "rpc "))
            if is_field or is_declaration:
                previous = lines[number - 1].strip()
                assert previous.startswith("//"), f"{proto.name}:{number + 1} has no comment: {text}"
