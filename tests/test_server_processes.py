"""`iqa serve --scoring-processes`: decoding and scoring in worker processes.

Real worker processes (spawned), the tiny ONNX model, in-process HTTP through TestClient.
No assertion depends on timing: scripts/benchmark_server.py measures what it buys.
"""

from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient
from http_fixtures import encode

from iqa.inference import QualityModel
from iqa.inference.server import processes
from iqa.inference.server.app import create_app
from iqa.inference.server.cli import add_arguments, build_settings
from iqa.inference.server.processes import ProcessScoring, WorkerModel, worker_pid
from iqa.inference.server.settings import ServerSettings

CHECK = "/1.0/check.json"


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return QualityModel(tiny_model_path, threads=1)


@pytest.fixture(scope="module")
def jpeg(photo) -> bytes:
    return encode(photo)


def check(client, jpeg: bytes):
    return client.post(CHECK, data={"models": "quality", "quality_details": "1"},
                       files={"media": ("photo.jpg", jpeg, "image/jpeg")})


def die(data: bytes, name: str):
    """Stands in for a decoder that crashes the process (a segfault, the OOM killer)."""
    os._exit(3)


def test_scores_come_from_worker_processes_and_match_in_thread_scoring(model, jpeg, photo):
    with TestClient(create_app(model, ServerSettings(scoring_processes=True))) as client:
        service = client.app.state.service
        pids = service.processes.warm_up()
        assert pids and os.getpid() not in pids
        bodies = [check(client, jpeg).json() for _ in range(3)]
    expected = model.score(jpeg).score
    for body in bodies:
        assert body["status"] == "success", body
        assert body["quality"]["score_exact"] == pytest.approx(expected, abs=1e-6)
    assert service.gate.in_flight == 0


def test_errors_raised_in_a_worker_keep_their_http_mapping(model, photo):
    with TestClient(create_app(model, ServerSettings(scoring_processes=True))) as client:
        text = check(client, b"not an image at all")
        tiny = check(client, encode(photo[:1, :1]))
    assert text.status_code == 415 and text.json()["error"]["type"] == "media_error"
    assert tiny.status_code == 400 and tiny.json()["error"]["type"] == "media_error"


def test_a_dying_worker_costs_its_request_only(model, jpeg, monkeypatch):
    with TestClient(create_app(model, ServerSettings(scoring_processes=True))) as client:
        service = client.app.state.service
        before = service.processes.warm_up()
        # Pickled by reference, so the worker runs this module's `die`.
        monkeypatch.setattr(processes, "score_in_worker", die)
        crashed = check(client, jpeg)
        monkeypatch.undo()
        after = check(client, jpeg)
        now = service.processes.warm_up()
    assert crashed.status_code == 500
    assert crashed.json()["error"]["type"] == "api_error"
    assert "worker process stopped" in crashed.json()["error"]["message"]
    assert after.status_code == 200, after.json()
    assert not set(now) & set(before)  # the broken pool's workers are gone
    assert service.gate.in_flight == 0


def test_the_pool_replaces_itself_once_per_break(tiny_model_path):
    scoring = ProcessScoring(WorkerModel.like(QualityModel(tiny_model_path)), workers=1)
    try:
        first = scoring.submit(worker_pid).result(timeout=60)
        broken = scoring.executor
        with pytest.raises(processes.BrokenProcessPool):
            scoring.submit(os._exit, 1).result(timeout=60)
        # The replacement runs in the job's done-callback, just after result() returns.
        deadline = time.monotonic() + 10
        while scoring.executor is broken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scoring.executor is not broken
        assert scoring.replace(broken) is scoring.executor  # a second report changes nothing
        assert scoring.submit(worker_pid).result(timeout=60) != first
    finally:
        scoring.shutdown()


def test_cli_flag_and_environment_choose_processes(monkeypatch):
    import argparse

    def settings(*argv):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return build_settings(parser.parse_args(list(argv)))

    assert settings().scoring_processes is False
    assert settings("--scoring-processes").scoring_processes is True
    monkeypatch.setenv("IQA_SCORING_PROCESSES", "1")
    assert settings().scoring_processes is True
