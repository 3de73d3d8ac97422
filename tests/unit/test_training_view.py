"""The training view's data and pictures: history points from the trigger through jobwatch to
the head, the curves drawn from them, and the run note."""
import importlib.util
import json
from pathlib import Path

from slimeflow.ui import render, runs

NODE = Path(__file__).resolve().parents[2] / "include" / "node"


def _node(name):
    spec = importlib.util.spec_from_file_location("node_" + name, NODE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_jobwatch_appends_the_points_to_the_attempts_history_not_to_progress(tmp_path,
                                                                              monkeypatch):
    jobwatch, fsops = _node("jobwatch"), _node("fsops")
    monkeypatch.setattr(jobwatch.raystate, "read_job",
                        lambda job, address, **kw: {"status": "RUNNING", "text": "", "info": None})
    prog = tmp_path / "run" / "progress.json"
    prog.parent.mkdir()
    for batch in ([{"kind": "rollout", "rollout": 0, "reward": 0.1, "loss": 0.5}],
                  [{"kind": "rollout", "rollout": 1, "reward": 0.2, "loss": 0.4},
                   {"kind": "eval", "rollout": 1, "metrics": {"eval/aime": 0.3}}]):
        payload = {"attempt": "J", "rollout": batch[0]["rollout"] + 1, "points": batch}
        assert jobwatch.main(["--ray-job", "J", "--ray-address", "http://127.0.0.1:1",
                              "--progress", str(prog), "--offset", "0",
                              "--write-progress", json.dumps(payload)]) == 0
    assert "points" not in json.loads(prog.read_text())
    (tmp_path / "run" / "attempts.json").write_text(json.dumps({"attempts": [{"id": "J"}]}))
    got = fsops.cmd_read_run(type("A", (), {"dir": str(tmp_path / "run"), "save_dir": None,
                                            "points": 100})())
    assert [p["rollout"] for p in got["history"]["J"]] == [0, 1, 1]
    assert got["progress"]["rollout"] == 2


def test_curves_merge_attempts_and_draw_evals_as_dots():
    pts = {"J": [{"kind": "rollout", "rollout": 0, "reward": 0.1, "loss": 0.5},
                 {"kind": "rollout", "rollout": 1, "reward": 0.2, "loss": None}],
           "J-a2": [{"kind": "rollout", "rollout": 2, "reward": 0.3, "loss": 0.3},
                    {"kind": "eval", "rollout": 2, "metrics": {"eval/aime": 0.4,
                                                               "eval/aime-truncated_ratio": 0.01}}]}
    assert render.series(pts, "reward") == [(0, 0.1), (1, 0.2), (2, 0.3)]
    assert render.series(pts, "loss") == [(0, 0.5), (2, 0.3)]
    assert render.eval_series(pts) == {"eval/aime": [(2, 0.4)]}
    svg = render.svg_chart("reward", render.series(pts, "reward"), render.eval_series(pts))
    assert svg.count("<polyline") == 1 and svg.count('class="eval"') == 1
    assert "no points yet" in render.svg_chart("loss", [])


def _view(state, **prog):
    return {"dag_id": "slime_qwen3_4b", "run_id": "manual__1", "state": state, "head": "gpu0",
            "total": 300, "node_ips": {"10.0.0.2": "gpu1"}, "progress": prog,
            "checkpoint": {"iteration": 299, "path": "/b/x_slime/iter_0000299"}}


def test_the_note_tells_progress_then_the_cause_or_the_checkpoint():
    note = runs.note_for(_view("running", rollout=12, total=300, reward=0.41, eta_s=18720,
                               attempt="slimeflow-x-a2", start_iteration=9))
    assert note == ("slimeflow: rollout 12/300 (4.0%), reward 0.41, ETA 5h12m, attempt "
                    "slimeflow-x-a2 (resumed at rollout 10), head gpu0")
    assert "(fresh from rollout 0)" in runs.note_for(_view("running", rollout=1, total=300))
    failed = runs.note_for(_view("failed", rollout=40, total=300, status="FAILED",
                                 cause={"cause": "Ray actor died", "ip": "10.0.0.2",
                                        "fix": "look at the dead actor's log"}))
    assert failed == ("slimeflow: FAILED in train: Ray actor died on node gpu1; fix: look at "
                      "the dead actor's log")
    done = runs.note_for(_view("success", rollout=300, total=300))
    assert done == "slimeflow: done: rollout 300/300, checkpoint rollout 299 at /b/x_slime/iter_0000299"
    assert runs.note_for(_view("running")) is None  # nothing to say before the first rollout


def test_the_page_shows_progress_attempts_and_checkpoint():
    v = _view("running", rollout=12, total=300, reward=0.41, eta_s=60, attempt="a")
    v["record"] = {"attempts": [{"id": "a", "start_iteration": None, "submitted": True}]}
    v["points"] = {"a": [{"kind": "rollout", "rollout": i, "reward": i / 10, "loss": 1 - i / 10}
                         for i in range(12)]}
    page = render.training_page([v])
    assert "rollout 12/300 (4.0%)" in page and "<polyline" in page
    assert "<code>a</code>" in page and "iter_0000299" in page
    assert "<script" not in page  # no JavaScript: the page refreshes itself


def test_an_ended_run_is_read_from_its_head_once_not_every_round(monkeypatch):
    rows = [("slime_qwen3_4b", "r1", "failed", {}, "slimeflow: FAILED in train: x"),
            ("slime_qwen3_4b", "r2", "failed", {}, None)]
    reads = []
    monkeypatch.setattr(runs, "recent_runs", lambda limit=10: rows)
    monkeypatch.setattr(runs, "_SETTLED", set())
    monkeypatch.setattr(runs, "cached_view", lambda d, r, s, c: reads.append(r) or
                        {"state": s, "progress": {}})  # nothing to say: no DB write
    runs.update_notes()
    runs.update_notes()
    assert reads == ["r2"]  # r1's note is final; r2 was read once
