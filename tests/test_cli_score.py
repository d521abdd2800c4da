"""`iqa score` and `iqa info`, run in-process through the real dispatcher."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from iqa.inference import FACTOR_NAMES, QualityModel
from iqa.inference.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo):
    """Three photos, one text file posing as a JPEG, a non-image and a nested photo."""
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(photo).save(root / "a.jpg", quality=90)
    Image.fromarray(photo[:300, :400]).save(root / "b.png")
    Image.fromarray(photo[::2, ::2]).save(root / "c.webp")
    (root / "broken.jpg").write_text("not a photo")
    (root / "notes.txt").write_text("ignored: not an image extension")
    (root / ".hidden.jpg").write_text("ignored: hidden")
    (root / "sub").mkdir()
    Image.fromarray(photo[100:, 100:]).save(root / "sub" / "d.jpg")
    return root


def score(capsys, *argv) -> tuple[int, str, str]:
    code = main(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_with_a_bad_file_reports_it_and_exits_1(capsys, folder, tiny_model_path):
    code, out, err = score(capsys, folder, "--model", tiny_model_path, "--format", "json")
    rows = json.loads(out)
    assert code == 1
    assert [r["path"].split("/")[-1] for r in rows] == ["a.jpg", "b.png", "broken.jpg", "c.webp"]
    bad = rows[2]
    assert bad["status"] == "error" and bad["error"]["type"] == "ImageDecodeError"
    assert "broken.jpg" in bad["error"]["message"]
    good = [r for r in rows if r["status"] == "ok"]
    assert len(good) == 3
    model = QualityModel(tiny_model_path)
    expected = model.score(folder / "a.jpg")
    assert good[0]["score"] == pytest.approx(expected.score, abs=1e-5)
    assert good[0]["bucket"] == expected.bucket
    assert "1 of 4" in err


def test_all_good_inputs_exit_0_and_recursive_walks_sub_folders(capsys, folder, tiny_model_path):
    code, out, _ = score(
        capsys, folder / "a.jpg", folder / "sub", "--model", tiny_model_path, "--format", "jsonl"
    )
    assert code == 0
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["ok", "ok"]
    code, out, _ = score(capsys, folder, "-r", "--model", tiny_model_path, "--format", "jsonl")
    paths = [json.loads(line)["path"] for line in out.splitlines()]
    assert len(paths) == 5 and paths[-1].endswith("sub/d.jpg")


def test_csv_format_with_factors(capsys, folder, tiny_model_path):
    code, out, _ = score(capsys, folder, "--model", tiny_model_path, "--format", "csv", "--factors")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1
    assert list(rows[0]) == [
        "path",
        "score",
        "bucket",
        *FACTOR_NAMES,
        "status",
        "error_type",
        "error",
    ]
    assert rows[0]["status"] == "ok" and 0 <= float(rows[0]["blur"]) <= 1
    assert rows[2]["status"] == "error" and rows[2]["score"] == "" and rows[2]["error"]


def test_table_format_is_aligned(capsys, folder, tiny_model_path):
    code, out, _ = score(capsys, folder, "--model", tiny_model_path)
    lines = out.splitlines()
    assert lines[0].split() == ["path", "score", "bucket", "status"]
    assert len(lines) == 5
    score_column_end = lines[0].index("score") + len("score")
    for line in lines[1:]:
        if "error" not in line:
            assert line[score_column_end - 5 : score_column_end].strip().startswith("0.")
    assert "error: looks like text" in lines[3]


def test_output_file_and_format_from_its_suffix(capsys, folder, tiny_model_path, tmp_path):
    target = tmp_path / "scores.csv"
    code, out, _ = score(capsys, folder / "b.png", "--model", tiny_model_path, "-o", target)
    assert code == 0 and out == ""
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 1 and rows[0]["path"].endswith("b.png")


def test_score_filters_keep_errors_visible(capsys, folder, tiny_model_path):
    _, out, _ = score(capsys, folder, "--model", tiny_model_path, "--format", "json")
    scores = sorted(r["score"] for r in json.loads(out) if r["status"] == "ok")
    middle = scores[1]
    _, out, _ = score(
        capsys, folder, "--model", tiny_model_path, "--format", "json", "--max-score", middle
    )
    rows = json.loads(out)
    assert sorted(r["score"] for r in rows if r["status"] == "ok") == scores[:2]
    assert sum(r["status"] == "error" for r in rows) == 1
    _, out, _ = score(
        capsys, folder, "--model", tiny_model_path, "--format", "json", "--min-score", middle
    )
    assert sorted(r["score"] for r in json.loads(out) if r["status"] == "ok") == scores[1:]


def test_batch_and_worker_options_do_not_change_scores(capsys, folder, tiny_model_path):
    runs = []
    for options in (["--batch-size", "1", "--workers", "0"], ["--batch-size", "8"]):
        _, out, _ = score(capsys, folder, "--model", tiny_model_path, "--format", "json", *options)
        runs.append([r.get("score") for r in json.loads(out)])
    assert runs[0] == pytest.approx(runs[1], abs=1e-5)


def test_progress_bar_goes_to_stderr_only(capsys, folder, tiny_model_path):
    code, out, err = score(
        capsys, folder, "--model", tiny_model_path, "--format", "jsonl", "--progress"
    )
    assert len([json.loads(line) for line in out.splitlines()]) == 4
    assert "img" in err


def test_missing_inputs_and_bad_models(capsys, tmp_path, tiny_model_path):
    code, out, _ = score(
        capsys, tmp_path / "nope.jpg", "--model", tiny_model_path, "--format", "json"
    )
    assert code == 1 and "nope.jpg" in json.loads(out)[0]["error"]["message"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = score(capsys, empty, "--model", tiny_model_path)
    assert code == 1 and "no images found" in err
    code, _, err = score(capsys, tmp_path / "x.jpg", "--model", tmp_path / "missing.onnx")
    assert code == 2 and "missing.onnx" in err


def test_model_without_factors_says_so(capsys, folder, tiny_model_no_factors_path):
    code, out, err = score(
        capsys,
        folder / "a.jpg",
        "--model",
        tiny_model_no_factors_path,
        "--factors",
        "--format",
        "json",
    )
    assert code == 0 and "factors" not in json.loads(out)[0]
    assert "no factor outputs" in err


def test_urls_are_fetched_with_the_private_address_guard(capsys, folder, tiny_model_path):
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/a.jpg"
    try:
        code, out, err = score(capsys, url, "--model", tiny_model_path, "--format", "json")
        row = json.loads(out)[0]
        assert code == 1 and row["status"] == "error" and row["path"] == url
        assert "--allow-private-urls" in err
        code, out, _ = score(
            capsys, url, "--model", tiny_model_path, "--format", "json", "--allow-private-urls"
        )
        row = json.loads(out)[0]
        assert code == 0 and row["status"] == "ok"
        expected = QualityModel(tiny_model_path).score(folder / "a.jpg").score
        assert row["score"] == pytest.approx(expected, abs=1e-5)
    finally:
        server.shutdown()


def test_info_text_and_json(capsys, tiny_model_path, tiny_model_no_factors_path):
    assert main(["info", "--model", str(tiny_model_path)]) == 0
    text = capsys.readouterr().out
    for expected in (
        "tiny-test",
        "shorter side 64 px",
        "blur, motion_blur",
        "CPUExecutionProvider",
    ):
        assert expected in text
    assert main(["info", "--model", str(tiny_model_no_factors_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["factor_names"] == [] and [o["name"] for o in info["outputs"]] == ["score"]
    assert {"JPEG", "PNG", "AVIF"} <= set(info["image_formats"])
    from iqa.inference.cli_info import format_info

    without_heif = format_info({**info, "image_formats": ["JPEG", "PNG"]})
    assert 'image formats       JPEG, PNG (HEIF: pip install "iqa[heif]")' in without_heif
    assert main(["info", "--model", "/nonexistent/model.onnx"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "message"), [
    (["--min-score", "nan"], "--min-score must be within [0, 1]"),
    (["--max-score", "1.5"], "--max-score must be within [0, 1]"),
    (["--min-score", "0.8", "--max-score", "0.2"], "is above --max-score"),
    (["--threads", "-2"], "--threads must be >= 1"),
    (["--max-pixels", "0"], "--max-pixels must be >= 1"),
    (["--max-pixels", "inf"], "--max-pixels must be a finite number, got inf"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
])
def test_options_that_could_only_print_nothing_are_refused(capsys, folder, tiny_model_path,
                                                           options, message):
    code, out, err = score(capsys, folder / "a.jpg", "--model", tiny_model_path, *options)
    assert code == 2 and out == "" and message in err


def test_urls_of_other_schemes_are_refused_by_name(capsys, tmp_path, tiny_model_path):
    code, out, _ = score(capsys, "ftp://example.com/a.jpg", "s3://bucket/b.jpg",
                         "--model", tiny_model_path, "--format", "jsonl")
    errors = [json.loads(line)["error"] for line in out.splitlines()]
    assert code == 1 and [e["type"] for e in errors] == ["InvalidURLError"] * 2
    assert "unsupported URL scheme 'ftp'" in errors[0]["message"]
    assert "unsupported URL scheme 's3'" in errors[1]["message"]


def test_an_empty_folder_among_inputs_is_named(capsys, folder, tmp_path, tiny_model_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code, out, err = score(capsys, folder / "a.jpg", empty, "--model", tiny_model_path)
    assert code == 0 and "a.jpg" in out
    assert f"{empty}: no images (-r also looks in sub-folders)" in err


def test_file_names_cannot_break_the_table_but_stay_exact_elsewhere(capsys, tmp_path, photo,
                                                                    tiny_model_path):
    odd = tmp_path / "esc\x1b[31mred\nline.png"
    Image.fromarray(photo[:64, :64]).save(odd)
    code, out, _ = score(capsys, odd, "--model", tiny_model_path)
    assert code == 0 and "\x1b" not in out and "esc\\x1b[31mred\\x0aline.png" in out
    assert len(out.splitlines()) == 2  # header and one row
    code, out, _ = score(capsys, odd, "--model", tiny_model_path, "--format", "jsonl")
    assert json.loads(out)["path"] == str(odd)


def test_dangling_links_are_skipped_with_or_without_recursion(capsys, tmp_path, photo,
                                                              tiny_model_path):
    Image.fromarray(photo[:64, :64]).save(tmp_path / "real.png")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    for recursive in ([], ["-r"]):
        code, out, _ = score(capsys, tmp_path, "--model", tiny_model_path, "--format", "jsonl",
                             *recursive)
        assert code == 0 and [Path(json.loads(x)["path"]).name for x in out.splitlines()] == [
            "real.png"]


def test_oversized_photos_are_refused_in_units_that_read(capsys, folder, tiny_model_path):
    code, out, _ = score(capsys, folder / "b.png", "--model", tiny_model_path,
                         "--max-pixels", "1e5", "--format", "jsonl")
    assert code == 1 and json.loads(out)["error"]["message"].endswith(
        "400x300 is 120,000 pixels, more than the limit of 100,000 pixels")


def test_info_summarises_calibration_and_survives_a_closed_pipe(capsys):
    assert main(["info"]) == 0  # the shipped v2 model: calibrated, trained on every image
    text = capsys.readouterr().out
    assert "knots, mos 0.000-1.000 -> score" in text and "knots_x" not in text
    assert "trained on every rated image; cross-validated figures: MODEL_CARD.md" in text
    done = _run_with_closed_stdout(["info"])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr


def _run_with_closed_stdout(argv: list[str]):
    """Run `iqa ARGV | (read nothing)`: the reader has gone before iqa writes."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run([sys.executable, "-c", "import sys; from iqa.inference.cli import "
                               f"main; sys.exit(main({argv!r}))"], stdout=writer,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(writer)


def test_oversized_photos_past_the_decoders_own_limit_name_that_limit(
        capsys, folder, tiny_model_path, monkeypatch):
    # A --max-pixels above Pillow's limit cannot lift it; the message names the limit that
    # refused the photo, not the one the user asked for.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    code, out, _ = score(capsys, folder / "b.png", "--model", tiny_model_path,
                         "--max-pixels", "1e9", "--format", "jsonl")
    assert code == 1 and json.loads(out)["error"]["message"].endswith(
        "120,000 pixels, more than the decoder's limit of 100,000 pixels")


def test_an_output_that_is_an_input_or_a_folder_is_refused(capsys, tmp_path, photo,
                                                           tiny_model_path):
    shot = tmp_path / "x.jpg"
    Image.fromarray(photo).save(shot)
    before = shot.read_bytes()
    for argv in ([shot, "-o", shot], [tmp_path, "-o", shot, "--format", "csv"]):
        code, out, err = score(capsys, *argv, "--model", tiny_model_path)
        assert code == 2 and "is the input" in err, err
    assert shot.read_bytes() == before
    code, _, err = score(capsys, shot, "--model", tiny_model_path, "-o", tmp_path)
    assert code == 2 and "is a folder: give the file to write" in err
    if os.path.exists("/dev/null"):  # a device is written in place, never renamed over
        assert score(capsys, shot, "--model", tiny_model_path, "-o", "/dev/null")[0] == 0
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    if os.path.isdir("/proc/self"):  # root may write anywhere but /proc takes no files
        code, _, err = score(capsys, shot, "--model", tiny_model_path, "-o", "/proc/s.csv")
        assert code == 2 and "cannot write in /proc" in err, err


def test_an_interrupted_run_leaves_the_earlier_output_whole(capsys, folder, tmp_path,
                                                            tiny_model_path, monkeypatch):
    target = tmp_path / "scores.jsonl"
    assert score(capsys, folder / "a.jpg", "--model", tiny_model_path, "-o", target)[0] == 0
    earlier = target.read_text()
    real = QualityModel.iter_scores

    def one_then_ctrl_c(self, *args, **kwargs):
        for n, item in enumerate(real(self, *args, **kwargs)):
            if n == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(QualityModel, "iter_scores", one_then_ctrl_c)
    code, _, err = score(capsys, folder, "--model", tiny_model_path, "-o", target)
    assert code == 130 and "interrupted" in err
    assert target.read_text() == earlier
    partial = tmp_path / "scores.jsonl.partial"
    assert f"{target} is unchanged; the rows written so far are in {partial}" in err
    assert [json.loads(line)["path"] for line in partial.read_text().splitlines()] == [
        str(folder / "a.jpg")]
    monkeypatch.setattr(QualityModel, "iter_scores", real)
    # The next complete run replaces the file and leaves no partial one behind.
    assert score(capsys, folder / "b.png", "--model", tiny_model_path, "-o", target)[0] == 0
    assert "b.png" in target.read_text() and not partial.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv, redirect", [
    (["score", "A", "-o", "/dev/full"], False),
    (["score", "A"], True),
    (["info"], True),
], ids=["score -o", "score > full", "info > full"])
def test_a_full_disk_is_one_clear_line(folder, tiny_model_path, argv, redirect):
    argv = [str(folder / "a.jpg") if a == "A" else a for a in argv] + ["--model",
                                                                         str(tiny_model_path)]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from iqa.inference.cli import main; "
             f"sys.exit(main({argv!r}))"],
            stdout=full if redirect else subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "No space left on device" in done.stderr
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")  # still a device


def test_an_output_through_a_link_writes_the_file_it_names(capsys, folder, tmp_path,
                                                           tiny_model_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    assert score(capsys, folder / "b.png", "--model", tiny_model_path, "-o", link)[0] == 0
    assert link.is_symlink() and "b.png" in real.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real.csv"]
    code, _, err = score(capsys, folder / "b.png", "--model", tiny_model_path,
                         "-o", tmp_path / "missing" / "x.csv")
    assert code == 2 and f"cannot write {tmp_path / 'missing' / 'x.csv'}" in err
