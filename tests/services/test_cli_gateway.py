"""`kyb identify --gateway` asks a running gateway and prints the same JSON as the embedded command."""

from __future__ import annotations

import json

import pytest

from kyb.cli import main


def test_identify_through_the_gateway_matches_embedded(corpus, make_stack, tmp_path, capsys) -> None:
    stack, _ = make_stack(shards=1)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(corpus.photo([2, 4], seed=5))
    where = ["--index-dir", str(corpus.engine.config.index_dir), "--catalog", corpus.engine.config.catalog_url]
    assert main(["identify", str(photo), *where]) == 0
    embedded = json.loads(capsys.readouterr().out)
    drawn = tmp_path / "drawn.jpg"
    assert main(["identify", str(photo), "--gateway", f"127.0.0.1:{stack.gateway_port}", "--draw", str(drawn)]) == 0
    served = json.loads(capsys.readouterr().out)
    # Same objects; their order may differ where two objects have equal inlier counts.
    assert sorted(o["band"]["band_id"] for o in served["objects"]) == sorted(
        o["band"]["band_id"] for o in embedded["objects"]
    )
    assert len(served["objects"]) == 2
    assert drawn.stat().st_size > 0


def test_gateway_errors_are_one_line_with_an_exit_code(make_stack, tmp_path, capsys) -> None:
    stack, _ = make_stack(shards=1, ingest=False)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a photo")
    code = main(["identify", str(bad), "--gateway", f"127.0.0.1:{stack.gateway_port}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "error:" in err


@pytest.mark.timeout(60)
def test_gateway_down_is_unavailable(tmp_path, capsys) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    code = main(["identify", str(photo), "--gateway", "127.0.0.1:9", "--timeout", "2"])
    err = capsys.readouterr().err
    assert code == 6 and "gateway" in err and "connect" in err.lower()
