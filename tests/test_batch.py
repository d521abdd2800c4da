"""`iqa batch`: Ray Data scoring into Parquet, on a local 2-CPU Ray started once here.

Everything stays on loopback: images on disk, an S3 server (moto's server mode) on
127.0.0.1, and an HTTP server on 127.0.0.1. Ray starts once for the module, because
starting it costs seconds; each test runs one or two small jobs on it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iqa.inference.batch import BatchInputError, list_inputs

ray = pytest.importorskip("ray", reason="iqa batch needs the distributed extra")
pq = pytest.importorskip("pyarrow.parquet")

from http_fixtures import LoopbackHTTPServer, Route  # noqa: E402

from iqa.inference import QualityModel  # noqa: E402
from iqa.inference import batch as batch_module  # noqa: E402
from iqa.inference.batch import job as batch_job  # noqa: E402
from iqa.inference.batch import score_batch  # noqa: E402
from iqa.inference.batch import sources as batch_sources  # noqa: E402
from iqa.inference.cli import main as cli_main  # noqa: E402

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # offline: no usage report
    "RAY_AUTH_MODE": "disabled",  # a throwaway loopback instance: no token in ~/.ray
    "AWS_EC2_METADATA_DISABLED": "true",  # pyarrow's S3 must not probe 169.254.169.254
}


@pytest.fixture(scope="module")
def ray_local():
    saved = {k: os.environ.get(k) for k in [*RAY_ENV, "RAY_ADDRESS"]}
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(RAY_ENV)
    # Ray's Unix socket paths must stay under ~107 characters: a short temp dir.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _photos(photo: np.ndarray, folder: Path, count: int) -> list[Path]:
    """Distinct small JPEGs cut from one real photo (different crops and qualities)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        crop = photo[i * 24 : i * 24 + 160, i * 16 : i * 16 + 200]
        path = folder / f"photo{i}.jpg"
        Image.fromarray(crop).save(path, quality=60 + 5 * i)
        paths.append(path)
    return paths


def _read(output) -> list[dict]:
    rows = pq.read_table(str(output)).to_pylist()
    return sorted(rows, key=lambda r: r["path"])


def _quiet(**kwargs) -> dict:
    return {"progress": False, "log": lambda message: None, **kwargs}


# --------------------------------------------------------------------- without Ray


def test_list_inputs_folder_glob_and_manifests(tmp_path, photo):
    paths = _photos(photo, tmp_path / "a", 2)
    _photos(photo, tmp_path / "a" / "sub", 1)
    (tmp_path / "a" / ".hidden.jpg").write_bytes(paths[0].read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    top = [str(p) for p in paths]
    assert list_inputs(str(tmp_path / "a")) == top
    assert len(list_inputs(str(tmp_path / "a"), recursive=True)) == 3
    assert list_inputs(str(tmp_path / "a" / "*.jpg")) == top

    # Relative entries are relative to the manifest; duplicates go; '#' lines are comments.
    (tmp_path / "list.txt").write_text("# photos\na/photo0.jpg\n\na/photo0.jpg\n/abs/x.png\n")
    assert list_inputs(str(tmp_path / "list.txt")) == [top[0], "/abs/x.png"]

    import pyarrow as pa

    pq.write_table(pa.table({"path": ["a/photo1.jpg"], "mos": [3.5]}), tmp_path / "m.parquet")
    assert list_inputs(str(tmp_path / "m.parquet")) == [top[1]]
    (tmp_path / "m.csv").write_text("id,url,mos\n1,https://example.com/x.jpg,3\n")
    with pytest.raises(BatchInputError, match="--column"):
        list_inputs(str(tmp_path / "m.csv"))
    assert list_inputs(str(tmp_path / "m.csv"), column="url") == ["https://example.com/x.jpg"]
    with pytest.raises(BatchInputError, match="no such"):
        list_inputs(str(tmp_path / "nothing-here"))


def test_globs_match_like_a_shell_and_bracketed_names_are_literal(tmp_path, photo):
    top = _photos(photo, tmp_path / "gl", 1)
    deep = _photos(photo, tmp_path / "gl" / "sub" / "deeper", 1)
    Image.fromarray(photo[:40, :40]).save(tmp_path / "gl" / "SHOUT.JPG")
    # `**/` is zero folders too: the photo directly under gl/ used to be skipped.
    assert list_inputs(str(tmp_path / "gl" / "**" / "*.jpg")) == [str(top[0]), str(deep[0])]
    assert list_inputs(str(tmp_path / "gl" / "*.jpg")) == [str(top[0])]
    assert list_inputs(str(tmp_path / "gl" / "*.JPG")) == [str(tmp_path / "gl" / "SHOUT.JPG")]
    assert list_inputs(str(tmp_path / "gl" / "photo[0-9].jpg")) == [str(top[0])]
    assert list_inputs(str(tmp_path / "gl" / "photo[!0].jpg")) == []
    assert list_inputs(str(tmp_path / "gl" / "ph?to0.jpg")) == [str(top[0])]
    # A real folder named with brackets is that folder, not a character class.
    shoot = _photos(photo, tmp_path / "shoot[2024]", 2)
    assert list_inputs(str(tmp_path / "shoot[2024]")) == [str(p) for p in shoot]


def test_glob_regex_edges():
    regex = batch_module.glob_regex
    assert regex("a/**/b/**/c.jpg").fullmatch("a/b/x/c.jpg")
    assert regex("a/**/c.jpg").fullmatch("a/c.jpg") and regex("a/**/c.jpg").fullmatch("a/x/y/c.jpg")
    assert not regex("a/*.jpg").fullmatch("a/b.png")
    assert regex("a+b (1)/*.jpg").fullmatch("a+b (1)/x.jpg")  # regex characters are literal
    assert regex("[]x]").fullmatch("]") and regex("[]x]").fullmatch("x")


@pytest.mark.parametrize(("options", "message"), [
    ({"cpus_per_actor": 0}, "cpus_per_actor must be > 0"),
    ({"threads": -1}, "threads must be >= 1"),
    ({"gpus_per_actor": -0.5}, "gpus_per_actor must be >= 0"),
    ({"flush_seconds": 0}, "flush_seconds must be > 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
])
def test_bad_values_are_refused_before_ray_starts(tmp_path, tiny_model_path, options, message):
    with pytest.raises(ValueError, match=message):
        batch_module.score_batch(str(tmp_path), str(tmp_path / "out"), model=tiny_model_path,
                                 **_quiet(**options))
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.parametrize(("argv", "message"), [
    (["--cpus-per-actor", "0"], "--cpus-per-actor must be > 0"),
    (["--threads", "-1"], "--threads must be >= 1"),
    (["--actors", "2-x"], "--actors must be N or MIN-MAX"),
    (["--max-pixels", "inf"], "--max-pixels must be a finite number, got inf"),
])
def test_cli_names_the_bad_option(tmp_path, capsys, argv, message):
    from iqa.inference.cli import main

    assert main(["batch", str(tmp_path), str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_an_unreadable_scheme_is_a_clear_error_row():
    from iqa.inference.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError, match=r"cannot read ftp:// URIs.*s3://"):
        batch_sources.read_source("ftp://example.com/a.jpg", batch_sources.ReadOptions())


def test_no_image_to_score_and_foreign_parquet_are_refused(tmp_path, photo, tiny_model_path):
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "empty" / "*.png"):
        with pytest.raises(BatchInputError, match="no image to score"):
            batch_module.score_batch(str(source), str(tmp_path / "out"),
                                     model=tiny_model_path, **_quiet())
    import pyarrow as pa

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), foreign / "x.parquet")
    _photos(photo, tmp_path / "in", 1)
    with pytest.raises(BatchInputError, match="not `iqa batch` output"):
        batch_module.score_batch(str(tmp_path / "in"), str(foreign), model=tiny_model_path,
                                 **_quiet())
    assert [f.name for f in foreign.iterdir()] == ["x.parquet"]  # nothing written
    a_file = tmp_path / "scores.parquet"
    a_file.write_bytes(b"mine")
    with pytest.raises(BatchInputError, match="scores.parquet is a file; OUTPUT is the folder"):
        batch_module.score_batch(str(tmp_path / "in"), str(a_file), model=tiny_model_path,
                                 **_quiet())
    assert a_file.read_bytes() == b"mine"


def test_a_part_file_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """A job killed while writing a part leaves no readable half-file behind."""
    import pyarrow as pa

    schema = batch_module.output_schema(["blur"])
    rows = pa.Table.from_pylist(
        [{"path": "/a.jpg", "score": 0.5, "bucket": "decent", "blur": 0.1, "status": "ok",
          "model_version": "v"}], schema=schema)
    writer = batch_module.PartWriter(str(tmp_path / "out"), schema, rows_per_file=10,
                                     flush_seconds=60)
    writer.add(rows)
    assert writer.files == []  # buffered: fewer rows than rows_per_file

    def killed_mid_write(table, stream, **kwargs):
        stream.write(b"PAR1 half a file")
        raise SystemExit("killed")

    monkeypatch.setattr(pq, "write_table", killed_mid_write)
    with pytest.raises(SystemExit):
        writer.flush()
    monkeypatch.undo()
    assert batch_module.read_done(str(tmp_path / "out")) == (set(), set())
    writer.add(rows)
    writer.flush()
    assert batch_module.read_done(str(tmp_path / "out")) == ({"/a.jpg"}, {"v"})


def test_base_install_imports_no_ray_and_batch_help_needs_no_ray(tmp_path):
    """`import iqa.inference` pulls neither Ray, pyarrow nor torch; the CLI says what to install."""
    child = r"""
import contextlib, io, json, sys
BLOCKED = {"ray", "pyarrow", "torch"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import iqa.inference
from iqa.inference.cli import main
report = {"heavy": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}
for key, argv in (("help", ["batch", "--help"]), ("run", ["batch", "in", "out"])):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    report[key] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(report))
"""
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["help"]["code"] == 0 and "--gpus-per-actor" in report["help"]["stdout"]
    assert report["run"]["code"] == 2
    assert 'pip install "iqa[distributed]"' in report["run"]["stderr"]


# ------------------------------------------------------------------------ with Ray


def test_folder_via_cli(ray_local, tmp_path, photo, tiny_model_path):
    images = _photos(photo, tmp_path / "photos", 5)
    (tmp_path / "photos" / "notes.txt").write_text("skipped: not an image extension")
    out = tmp_path / "scores"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(
            ["batch", str(tmp_path / "photos"), str(out), "--model", str(tiny_model_path),
             "--batch-size", "2", "--no-progress"]
        )
    assert code == 0, err.getvalue()
    assert "5 images scored (0 failed)" in err.getvalue()
    assert "images/s" in err.getvalue()

    rows = _read(out)
    assert [r["path"] for r in rows] == [str(p) for p in images]
    model = QualityModel(tiny_model_path)
    expected_columns = ["path", "score", "bucket", *model.factor_names,
                        "status", "error_type", "error", "model_version"]
    assert pq.read_table(str(out)).column_names == expected_columns
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        assert 0.0 <= row["score"] <= 1.0 and row["bucket"]
        assert row["model_version"] == "tiny-test"
        assert all(0.0 <= row[n] <= 1.0 for n in model.factor_names)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_manifest_with_broken_missing_and_refused_inputs(ray_local, tmp_path, photo,
                                                         tiny_model_path):
    good = _photos(photo, tmp_path / "img", 2)
    truncated = tmp_path / "img" / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    text = tmp_path / "img" / "text.jpg"
    text.write_text("this is not a JPEG")
    jpeg = good[1].read_bytes()
    with LoopbackHTTPServer({"/remote.jpg": Route(body=jpeg)}) as server:
        remote_ok = server.url("/remote.jpg")
        manifest = tmp_path / "manifest.csv"
        manifest.write_text(
            "mos,image\n"
            f"1,img/{good[0].name}\n"
            f"2,{good[1]}\n"
            "3,img/truncated.jpg\n"
            "4,img/text.jpg\n"
            "5,img/missing.jpg\n"
            f"6,{remote_ok}\n"
        )
        # URLs to private addresses are refused unless asked for, like `iqa score` does.
        refused = score_batch(str(manifest), str(tmp_path / "refused"), column="image",
                              model=tiny_model_path, batch_size=2, **_quiet())
        allowed = score_batch(str(manifest), str(tmp_path / "allowed"), column="image",
                              model=tiny_model_path, batch_size=2, allow_private_urls=True,
                              **_quiet())
    assert (refused.images, refused.failures) == (6, 4)
    assert (allowed.images, allowed.failures) == (6, 3)

    by_path = {r["path"]: r for r in _read(tmp_path / "refused")}
    assert by_path[str(good[0])]["status"] == by_path[str(good[1])]["status"] == "ok"
    for name in ("truncated.jpg", "text.jpg", "missing.jpg"):
        row = by_path[str(tmp_path / "img" / name)]
        assert row["status"] == "error" and row["score"] is None
        assert row["error_type"] in {"ImageDecodeError", "TruncatedImageError"}
        assert name in row["error"]
    assert by_path[remote_ok]["error_type"] == "ForbiddenAddressError"

    remote = {r["path"]: r for r in _read(tmp_path / "allowed")}[remote_ok]
    assert remote["status"] == "ok"
    assert remote["score"] == pytest.approx(by_path[str(good[1])]["score"], abs=1e-6)


def test_resume_after_an_interrupted_job(ray_local, tmp_path, photo, tiny_model_path,
                                         monkeypatch):
    images = _photos(photo, tmp_path / "photos", 8)
    out = tmp_path / "scores"
    received = []

    class InterruptedWriter(batch_module.PartWriter):
        """Ctrl-C arrives after the driver has received two blocks of results."""

        def add(self, table):
            super().add(table)
            received.append(table.num_rows)
            if len(received) == 2:
                raise KeyboardInterrupt

    # score_batch looks PartWriter up in its own module.
    monkeypatch.setattr(batch_job, "PartWriter", InterruptedWriter)
    with pytest.raises(KeyboardInterrupt):
        score_batch(str(tmp_path / "photos"), str(out), model=tiny_model_path, batch_size=2,
                    rows_per_file=100, **_quiet())
    monkeypatch.undo()
    # The rows received before the interrupt are saved; nothing half-written is left.
    first = _read(out)
    assert len(first) == sum(received) < len(images)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    resumed = score_batch(str(tmp_path / "photos"), str(out), model=tiny_model_path,
                          batch_size=2, **_quiet())
    assert resumed.skipped == len(first)
    assert resumed.images == len(images) - len(first)
    rows = _read(out)
    assert [r["path"] for r in rows] == [str(p) for p in images]  # each input once

    again = score_batch(str(tmp_path / "photos"), str(out), model=tiny_model_path, **_quiet())
    assert (again.images, again.skipped) == (0, len(images))


def test_same_scores_as_iqa_score(ray_local, tmp_path, photo):
    """The shipped model, scored by `iqa batch` and by `iqa score`, agrees to 1e-6."""
    from skimage import data

    images = _photos(photo, tmp_path / "photos", 3)
    coffee = tmp_path / "photos" / "zcoffee.png"
    Image.fromarray(data.coffee()[::3, ::3]).save(coffee)
    images.append(coffee)
    summary = score_batch(str(tmp_path / "photos"), str(tmp_path / "out"), batch_size=2,
                          **_quiet())
    assert (summary.images, summary.failures) == (4, 0)
    rows = {r["path"]: r for r in _read(tmp_path / "out")}

    model = QualityModel()
    assert {r["model_version"] for r in rows.values()} == {model.info()["version"]}
    for path, result in zip(images, model.score_many([str(p) for p in images]), strict=True):
        row = rows[str(path)]
        assert abs(row["score"] - result.score) <= 1e-6
        assert row["bucket"] == result.bucket
        for name, value in (result.factors or {}).items():
            assert abs(row[name] - value) <= 1e-6

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["score", str(tmp_path / "photos"), "--format", "json", "--factors"]) == 0
    for scored in json.loads(out.getvalue()):
        row = rows[scored["path"]]
        # `iqa score` rounds to 6 decimals: half a unit of the last place apart at most.
        assert abs(row["score"] - scored["score"]) <= 1e-6
        for name, value in scored.get("factors", {}).items():
            assert abs(row[name] - value) <= 1e-6


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1:<free port>, and pyarrow S3FileSystem options for it."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer
    from pyarrow import fs as pafs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "endpoint_override": f"{host}:{port}",
        "scheme": "http",
        "access_key": "testing",
        "secret_key": "testing",
        "region": "us-east-1",
        "allow_bucket_creation": True,
    }
    yield pafs.S3FileSystem(**options), options
    server.stop()


def test_s3_folder_and_manifest_with_resume(ray_local, s3_server, tmp_path, photo,
                                            tiny_model_path):
    from pyarrow import fs as pafs

    fs, options = s3_server
    images = _photos(photo, tmp_path / "photos", 3)
    fs.create_dir("shots")  # the bucket
    for path in images:
        with fs.open_output_stream(f"shots/2024/{path.name}") as stream:
            stream.write(path.read_bytes())
    with fs.open_output_stream("shots/2024/broken.jpg") as stream:
        stream.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    with fs.open_output_stream("shots/manifest.txt") as stream:
        stream.write(b"2024/photo0.jpg\n2024/gone.jpg\ns3://shots/2024/photo2.jpg\n")

    common = {"model": tiny_model_path, "batch_size": 2, "s3_options": options, **_quiet()}
    first = score_batch("s3://shots/2024/", "s3://shots/scores", **common)
    assert (first.images, first.failures, first.skipped) == (4, 1, 0)
    # The manifest names two images scored already and one missing object.
    second = score_batch("s3://shots/manifest.txt", "s3://shots/scores", **common)
    assert (second.images, second.failures, second.skipped) == (1, 1, 2)
    # An existing object as OUTPUT is refused, as a local file is (no parts under it).
    with pytest.raises(BatchInputError, match="is a file"):
        score_batch("s3://shots/2024/", "s3://shots/manifest.txt", **common)
    assert [i.path for i in fs.get_file_info(pafs.FileSelector("shots/manifest.txt/",
                                                               allow_not_found=True))] == []

    import pyarrow.dataset as pads

    table = pads.dataset("shots/scores", filesystem=fs, format="parquet").to_table()
    rows = {r["path"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == 5
    assert rows["s3://shots/2024/gone.jpg"]["error_type"] == "ImageDecodeError"
    assert rows["s3://shots/2024/broken.jpg"]["status"] == "error"
    model = QualityModel(tiny_model_path)
    for path in images:
        row = rows[f"s3://shots/2024/{path.name}"]
        assert row["status"] == "ok"
        assert abs(row["score"] - model.score(str(path)).score) <= 1e-6


@pytest.mark.parametrize("resources, gpus, expected", [
    ({"CPU": 2.0}, 0.0, (2, 2)),  # one one-thread actor per CPU
    ({"CPU": 16.0}, 0.0, (16, 16)),
    ({"CPU": 16.0, "GPU": 4.0}, 0.5, (8, 8)),  # two actors share each GPU
])
def test_default_pool_is_one_actor_per_cpu_or_per_gpu_share(monkeypatch, resources, gpus,
                                                             expected):
    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    cpus = batch_module.DEFAULT_CPUS_PER_ACTOR
    assert batch_job._default_actors(gpus, cpus) == expected
    batch_job._check_pool(expected, cpus)  # leaves CPUs for the decode tasks


def test_a_pool_that_holds_every_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ValueError, match="no CPU"):
        batch_job._check_pool((3, 3), batch_module.DEFAULT_CPUS_PER_ACTOR)


def test_the_cli_defaults_are_the_library_defaults():
    import argparse

    from iqa.inference.cli_batch import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["in", "out"])
    assert args.cpus_per_actor == batch_module.DEFAULT_CPUS_PER_ACTOR
    assert args.threads is None  # the library derives one thread per half CPU
    # The CLI checks its options through the library's ranges, by argument name.
    assert set(batch_module.VALUE_RANGES) <= set(vars(args))


def test_the_startup_timeline_finds_the_jobs_actors_and_tasks(ray_local, tmp_path, photo,
                                                               tiny_model_path):
    # scripts/batch_startup_timeline.py reads Ray's own trace; this checks its reading
    # on a real job's trace, not on a hand-made one.
    import time

    from script_loader import load_script

    timeline = load_script("batch_startup_timeline")

    _photos(photo, tmp_path / "photos", 3)
    since = time.time()
    summary = score_batch(str(tmp_path / "photos"), str(tmp_path / "out"),
                          model=tiny_model_path, **_quiet())
    assert summary.images == 3
    events = timeline.job_events(since, tmp_path)
    names = [e["what"] for e in events]
    assert any("prepare_block" in n for n in names), names
    assert any("ScoreActor" in n and n.endswith("__init__") for n in names), names
    starts = [e["start_s"] for e in events]
    assert starts == sorted(starts) and starts[0] >= 0
    assert len(names) == len(set(names))  # the first run of each, once


def test_a_job_smaller_than_the_pool_starts_no_idle_actors(ray_local, tmp_path, photo,
                                                            tiny_model_path):
    import warnings

    _photos(photo, tmp_path / "photos", 3)  # one block of 3 < batch size 8, pool of 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = score_batch(str(tmp_path / "photos"), str(tmp_path / "out"),
                              model=tiny_model_path, actors=2, **_quiet())
    assert summary.images == 3 and summary.failures == 0
    idle = [w for w in caught if "concurrent actors" in str(w.message)]
    assert not idle, [str(w.message) for w in idle]
