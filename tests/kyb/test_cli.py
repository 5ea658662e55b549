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


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_identify_writes_one_json_line_per_photo(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--index-dir", str(tmp_path / "index"), "--catalog", str(tmp_path / "catalog.db")]
    code, out, _ = _run(capsys, "ingest", str(demo_dir / "catalog.json"), "--json", *where)
    report = json.loads(out)
    assert code == 0 and report["added"] == report["items"] > 0 and report["failures"] == []

    gt = json.loads((demo_dir / "gt.json").read_text())
    first, second = (str(demo_dir / q["query"]) for q in gt["queries"][:2])
    missing = str(tmp_path / "missing.jpg")
    code, out, err = _run(capsys, "identify", first, missing, second, *where)
    lines = _lines(out)
    assert code == 1  # one photo failed, the others were answered
    assert [line["photo"] for line in lines] == [first, missing, second]
    assert lines[0]["objects"] and lines[2]["objects"] and "error" not in lines[0]
    assert lines[1]["error"]["code"] == "INVALID_ARGUMENT" and "No such file" in lines[1]["error"]["message"]
    assert err.count("\n") == 1 and err.startswith("error: ")

    code, out, _ = _run(capsys, "identify", first, second, "--json-array", *where)
    array = json.loads(out)
    assert code == 0 and [a["photo"] for a in array] == [first, second]
    assert [a["objects"] for a in array] == [lines[0]["objects"], lines[2]["objects"]]

    # Drawing fails after the answer was computed: the answer is still printed, the error is one line.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = _run(capsys, "identify", first, "--draw", str(blocker / "drawn.jpg"), *where)
    assert code == 2 and _lines(out)[0]["objects"] == lines[0]["objects"]
    assert err.count("\n") == 1 and "cannot write" in err


def test_usage_and_internal_errors_are_one_line_with_their_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["identify", "photo.jpg", "--draw", str(tmp_path / "out")])  # no suffix: no image writer
    err = capsys.readouterr().err
    assert usage.value.code == 2 and err.count("\n") == 1 and "needs an image suffix" in err

    not_a_folder = tmp_path / "index-file"
    not_a_folder.write_text("x")
    code, _, err = _run(capsys, "stats", "--index-dir", str(not_a_folder), "--catalog", str(tmp_path / "c.db"))
    assert code == 10 and err.count("\n") == 1 and err.startswith("error: internal error: NotADirectoryError")


def test_exit_codes_are_one_table_in_help_readme_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from kyb.errors import EXIT_CODE_MEANINGS, EXIT_CODES, exit_codes_text

    assert set(EXIT_CODES.values()) < set(EXIT_CODE_MEANINGS)
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for code, meaning in EXIT_CODE_MEANINGS.items():
        assert f"{code:>3}  {meaning}" in help_text
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    assert exit_codes_text() in readme


def test_reporting_commands_print_json(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--index-dir", str(tmp_path / "index"), "--catalog", str(tmp_path / "catalog.db")]
    code, out, _ = _run(capsys, "db", "migrate", "--json", *where)
    assert code == 0 and json.loads(out)["schema_version"] >= 1
    code, out, _ = _run(capsys, "catalog", "import", str(demo_dir / "catalog.json"), "--json", *where)
    imported = json.loads(out)
    assert code == 0 and imported["bands"] == 4 and imported["bad_rows"] == [] and imported["references_to_ingest"]
    assert _run(capsys, "ingest", str(demo_dir / "catalog.json"), *where)[0] == 0

    code, out, _ = _run(capsys, "codebook", "train", str(demo_dir / "catalog.json"), "--json", *where)
    trained = json.loads(out)
    assert code == 0 and trained["codebook_version"] and trained["params"]
    code, out, _ = _run(capsys, "reindex", "--json", *where)
    reindexed = json.loads(out)
    assert code == 0 and reindexed["rebuilt"] == reindexed["references"] > 0 and reindexed["failed"] == 0
    code, out, _ = _run(capsys, "stats", "--json", *where)
    stats = json.loads(out)
    assert code == 0 and len(out.splitlines()) == 1 and stats["references"] == reindexed["references"]

    some_id = _first_reference(tmp_path)
    code, out, err = _run(capsys, "delete", some_id, "no-such-reference", "--json", *where)
    deleted = json.loads(out)["results"]
    assert code == 1 and [r["deleted"] for r in deleted] == [True, False]
    assert deleted[1]["error"]["code"] == "NOT_FOUND" and err.count("\n") == 1


def _first_reference(root: Path) -> str:
    from kyb.catalog import open_catalog

    with open_catalog(str(root / "catalog.db")) as catalog:
        return catalog.list_references(limit=1)[0].reference_id


def test_codebook_training_reports_progress_per_stage(demo_dir: Path, tmp_path: Path) -> None:
    """Every stage reports up to its total; images already indexed are learned from too."""
    from kyb.cli import _collect
    from kyb.config import load_config
    from kyb.engine import Engine

    engine = Engine(load_config(overrides={"index_dir": str(tmp_path / "i"), "catalog_url": str(tmp_path / "c.db")}))
    items, _ = _collect(engine, [demo_dir / "catalog.json"], None)
    engine.ingest(items)
    seen: dict[str, list[tuple[int, int]]] = {}
    engine.retrain_codebook(items, progress=lambda stage, done, total: seen.setdefault(stage, []).append((done, total)))
    engine.close()
    assert next(iter(seen)) == "read images" and list(seen)[-1] == "re-encode index"
    assert {"fine words", "VLAD words"} <= set(seen)
    for steps in seen.values():
        assert steps[-1][0] == steps[-1][1]  # every stage reaches its total
