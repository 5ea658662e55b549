"""The command line end to end: demo, ingest, identify, eval, exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kyb.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kyb import synth

    folder = tmp_path_factory.mktemp("demo")
    synth.write_demo_set(folder, n_bands=4, n_photos=3, seed=3)
    return folder


def test_demo_runs_the_main_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "demo", "--dir", str(tmp_path / "demo"), "--bands", "4", "--photos", "3")
    assert code == 0
    assert "expected:" in out and "top-1" in out and "false accepts" in out
    shirt = out.split("photos/shirt_000.jpg: ")[1].splitlines()[0]
    assert "(logo) printed inverted" in shirt  # a logo printed in the opposite polarity is found
    top1 = float(next(line.split()[-1] for line in out.splitlines() if line.startswith("top-1")))
    assert top1 >= 0.5  # drawn photos of drawn references: most are found


def test_ingest_identify_draw_eval(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--index-dir", str(tmp_path / "index"), "--catalog", str(tmp_path / "catalog.db")]
    (tmp_path / "refs").mkdir()
    code, out, _ = _run(capsys, "ingest", str(demo_dir / "catalog.json"), *where)
    assert code == 0 and "added" in out

    gt = json.loads((demo_dir / "gt.json").read_text())
    photo = demo_dir / gt["queries"][0]["query"]
    drawn = tmp_path / "drawn.jpg"
    code, out, _ = _run(capsys, "identify", str(photo), "--draw", str(drawn), *where)
    answer = json.loads(out)
    assert code == 0 and drawn.stat().st_size > 0
    assert answer["objects"] and answer["objects"][0]["band"]["name"]
    assert len(answer["objects"][0]["outline"]) == 4

    code, out, _ = _run(capsys, "eval", str(demo_dir), "--cache", str(tmp_path / "cache"), "--json")
    report = json.loads(out)
    assert code == 0 and report["queries"] == len(gt["queries"]) and 0 <= report["top1"] <= 1
    # Drawn references are all different pictures: no look-alikes, so the two top-1 figures agree.
    assert report["lookalike_pairs"] == 0 and report["top1_up_to_lookalikes"] == report["top1"]
    assert len(list((tmp_path / "cache").glob("*/lookalikes.json"))) == 1

    code, out, _ = _run(capsys, "eval", str(demo_dir), "--cache", str(tmp_path / "cache"), "--json", "--split", "test")
    tested = json.loads(out)
    assert code == 0 and tested["split"] == "test" and 0 < tested["queries"] < len(gt["queries"])


def test_exit_codes_and_one_line_errors(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--index-dir", str(tmp_path / "index"), "--catalog", str(tmp_path / "catalog.db")]
    photo = str(next((demo_dir / "photos").glob("*.jpg")))
    code, _, err = _run(capsys, "identify", photo, *where)
    assert code == 5 and "ingest references first" in err  # no index yet

    folder = tmp_path / "refs" / "Some Band"
    folder.mkdir(parents=True)
    for i, ref in enumerate(sorted((demo_dir / "references").glob("album_*.jpg"))[:3]):
        (folder / f"album {i}.jpg").write_bytes(ref.read_bytes())
    (folder / "broken.jpg").write_bytes(b"this is not a picture")
    code, out, err = _run(capsys, "ingest", str(tmp_path / "refs"), *where)
    assert code == 1 and "3 added, 1 failed" in out  # a bad file is reported and the rest goes in
    assert "broken.jpg: not an image" in err

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, _, err = _run(capsys, "identify", str(bad), *where)
    assert code == 3 and err.count("\n") == 1 and "error:" in err

    code, _, err = _run(capsys, "identify", str(tmp_path / "missing.jpg"), *where)
    assert code == 2 and "No such file" in err

    code, _, err = _run(capsys, "eval", str(tmp_path / "nowhere"))
    assert code == 2 and "gt.json" in err


def test_duplicates_command(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kyb duplicates`: none among the demo's drawn references; a copy of one (other bytes) is one pair;
    no index is one clear line and a non-zero code."""
    import cv2

    where = ["--index-dir", str(tmp_path / "index"), "--catalog", str(tmp_path / "catalog.db")]
    code, _, err = _run(capsys, "duplicates", *where)
    assert code != 0 and "no index" in err and len(err.strip().splitlines()) == 1
    assert _run(capsys, "ingest", str(demo_dir / "catalog.json"), *where)[0] == 0
    code, out, _ = _run(capsys, "duplicates", "--json", *where)
    assert code == 0 and json.loads(out) == []
    source = sorted((demo_dir / "references").glob("album_*.jpg"))[0]
    copy = tmp_path / "copy.png"
    cv2.imwrite(str(copy), cv2.resize(cv2.imread(str(source)), None, fx=0.8, fy=0.8))
    assert _run(capsys, "ingest", str(copy), *where)[0] == 0
    code, out, _ = _run(capsys, "duplicates", "--json", *where)
    pairs = json.loads(out)
    assert code == 0 and len(pairs) == 1 and pairs[0]["share"] >= 0.25
    assert {pairs[0]["first"]["source"], pairs[0]["second"]["source"]} >= {str(copy)}
    with pytest.raises(SystemExit) as usage:
        main(["duplicates", "--min-share", "1.5", *where])
    assert usage.value.code == 2 and "must be in (0, 1]" in capsys.readouterr().err
