"""mbpo.files: results are written whole or not at all, and an old file survives a failed write."""

import json
import os
import stat

import pytest

from mbpo.files import csv_text, finish_report, write_atomically, write_json, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"kept": True})

    def half_then_fail(file):
        file.write(b'{"half":')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(path, half_then_fail)
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_writes_create_folders_and_readable_files(tmp_path):
    path = tmp_path / "a" / "b" / "notes.md"
    write_text(path, "# results\n")
    assert path.read_text() == "# results\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_csv_header_is_the_union_of_keys_in_first_seen_order():
    rows = [{"env": "lqr", "n": 1}, {"env": "lqr", "return": -3.5, "n": 2}]
    assert csv_text(rows).splitlines() == ["env,n,return", "lqr,1,", "lqr,2,-3.5"]


def test_finish_report_adds_the_wall_time_prints_and_writes(tmp_path, capsys):
    out = tmp_path / "report.json"
    report = {"rows": [1, 2]}
    finish_report(report, start=0.0, out=out, format_table=lambda r: f"{len(r['rows'])} rows")
    written = json.loads(out.read_text())
    assert written["rows"] == [1, 2] and written["wall_s"] > 0
    assert "load_average_1min_at_end" in written
    assert "2 rows" in capsys.readouterr().out


def test_full_folder_refusal_names_what_a_folder_holds_and_the_way_on(tmp_path):
    from mbpo.files import full_folder_refusal

    assert full_folder_refusal(tmp_path / "none") is None  # not there yet
    assert full_folder_refusal(tmp_path) is None  # empty: nothing to lose
    (tmp_path / "curves.csv").write_text("kept")
    assert "already holds curves.csv" in full_folder_refusal(tmp_path)
    assert "--resume" not in full_folder_refusal(tmp_path)  # the caller has none
    assert "pass --resume" in full_folder_refusal(tmp_path, resume=False)
    assert full_folder_refusal(tmp_path, resume=True) is None
    assert (tmp_path / "curves.csv").read_text() == "kept"
