"""`seqgraph serve`: the real uvicorn server on loopback, asked by a real HTTP client. Its
answers equal `seqgraph.load(run).predict`; 8 concurrent clients x 200 requests see no
error; every bad request is a 4xx JSON error naming the fix, never a 500."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

pytest.importorskip("starlette", reason="seqgraph[serve] (starlette) is not installed")
pytest.importorskip("uvicorn", reason="seqgraph[serve] (uvicorn) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (the test client) is not installed")

import uvicorn  # noqa: E402

import seqgraph  # noqa: E402
from seqgraph import cli  # noqa: E402
from seqgraph.serve import Limits, create_app  # noqa: E402

POS = "good great fine lovely nice".split()
NEG = "bad awful poor terrible sad".split()
FILL = "the food was service and it".split()
LIMITS = Limits(max_inputs=16, max_body=4096, max_input_chars=200)
TEXTS = ["the food was great", "awful service", "it was nice and fine", "zzzz blorp", "bad"]


def _rows(n: int) -> str:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILL, 3) + [rng.choice(POS if label else NEG)]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{['neg', 'pos'][label]}\n")
    return "".join(lines)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "s.tsv").write_text(_rows(120))
    spec = {
        "name": "tiny_serve",
        "seed": 0,
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "gru", "hidden": 4}],
        },
        "data": {"source": "tsv", "path": str(tmp / "s.tsv"), "tokenizer": "word"},
        "train": {"steps": 20, "batch_size": 16, "lr": 0.01, "eval_every": 20},
    }
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert cli.main(["run", str(tmp / "spec.yaml"), "--out", str(tmp / "run")]) == 0
    return str(tmp / "run")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir):
    """The base URL of uvicorn serving the run on loopback in a background thread."""
    port = _free_port()
    config = uvicorn.Config(
        create_app(seqgraph.load(run_dir), LIMITS), host="127.0.0.1", port=port, log_level="error"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=20) as http:
        yield http


def test_health_and_info(client, run_dir):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info")
    assert info.status_code == 200
    assert info.json() == json.loads(json.dumps(seqgraph.load(run_dir).info()))
    assert info.json()["labels"] == ["neg", "pos"]


def test_predict_equals_the_predictor(client, run_dir):
    expected = seqgraph.load(run_dir).predict(TEXTS)
    answer = client.post("/predict", json={"inputs": TEXTS})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == json.loads(json.dumps(expected))
    assert answer.json()["unknown"] == 2  # zzzz, blorp
    one = client.post("/predict", json={"inputs": [TEXTS[0]], "seed": 3, "temperature": 0.5})
    # alone, not cut from the batch of five: OpenBLAS multiplies a one-row batch by another
    # kernel than a five-row one (float32 results differ in the last bit for most inputs)
    alone = seqgraph.load(run_dir).predict(TEXTS[:1])
    assert one.json()["outputs"] == json.loads(json.dumps(alone))
    for got, want in zip(alone[0]["probs"].values(), expected[0]["probs"].values(), strict=True):
        assert got == pytest.approx(want, rel=1e-6)


def test_ids_inputs_equal_the_predictor(client, run_dir):
    ids = [[1, 2, 3], [4]]
    expected = seqgraph.load(run_dir).predict(ids)
    assert client.post("/predict", json={"inputs": ids}).json()["outputs"] == json.loads(
        json.dumps(expected)
    )


def test_eight_concurrent_clients_200_requests_each(server, run_dir):
    predictor = seqgraph.load(run_dir)  # one input a request, as each client sends
    expected = [json.loads(json.dumps(predictor.predict([text])[0])) for text in TEXTS]

    def one_client(number: int) -> list:
        problems = []
        with httpx.Client(base_url=server, timeout=30) as http:
            for i in range(200):
                k = (number + i) % len(TEXTS)
                answer = http.post("/predict", json={"inputs": [TEXTS[k]]})
                if answer.status_code != 200 or answer.json()["outputs"] != [expected[k]]:
                    problems.append((number, i, answer.status_code, answer.text[:200]))
        return problems

    with ThreadPoolExecutor(8) as pool:
        problems = [p for found in pool.map(one_client, range(8)) for p in found]
    assert problems == []


BAD = [  # (what, request keyword arguments, status, words the error must hold)
    ("bad JSON", {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}},
     400, "not valid JSON"),
    ("not JSON", {"content": b"inputs=x", "headers": {"content-type": "text/plain"}}, 415,
     "Content-Type: application/json"),
    ("not an object", {"json": ["a"]}, 422, "JSON object"),
    ("no inputs", {"json": {"texts": ["a"]}}, 422, "unknown field 'texts'"),
    ("missing inputs", {"json": {}}, 422, 'missing "inputs"'),
    ("inputs not a list", {"json": {"inputs": "the food"}}, 422, "must be a list, not a string"),
    ("empty list", {"json": {"inputs": []}}, 422, "empty"),
    ("too many", {"json": {"inputs": ["a"] * 17}}, 422, "--max-inputs"),
    ("too long", {"json": {"inputs": ["a " * 101]}}, 422, "--max-input-chars"),
    ("wrong item type", {"json": {"inputs": [{"text": "a"}]}}, 422, "give a string"),
    ("number item", {"json": {"inputs": [3]}}, 422, "inputs[0] is a number"),
    ("id out of range", {"json": {"inputs": [[0, 10**6]]}}, 422, "list of ids"),
    ("mixed kinds", {"json": {"inputs": ["a", [1]]}}, 422, "not a mix"),
    ("bad sample", {"json": {"inputs": ["a"], "sample": "yes"}}, 422, '"sample"'),
    ("bad temperature", {"json": {"inputs": ["a"], "temperature": 0}}, 422, "above 0"),
    ("bad seed", {"json": {"inputs": ["a"], "seed": -1}}, 422, '"seed"'),
    ("empty item", {"json": {"inputs": [[]]}}, 422, "empty list"),
    ("lone surrogate", {"content": b'{"inputs": ["a \\ud800"]}'}, 422, "valid text"),
    ("deep JSON", {"content": b"[" * 2000 + b"]" * 2000}, 400, "nested too deeply"),
    ("bad bytes", {"content": b'{"inputs": ["\xff"]}'}, 400, "not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize("what, request_args, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_4xx_json_errors(client, what, request_args, status, words):
    answer = client.post("/predict", **request_args)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert words in error and "\n" not in error


def test_unknown_path_and_method_are_json(client):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and "/predict" in missing.json()["error"]
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and "GET" in wrong.json()["error"]


def test_body_cap_by_content_length_and_by_streamed_size(client, server):
    big = {"inputs": ["good " * 60] * 16}  # within the counts, over 4096 bytes
    answer = client.post("/predict", json=big)
    assert answer.status_code == 413 and "--max-body" in answer.json()["error"]

    def chunks():  # no Content-Length: the server counts what streams in
        yield b'{"inputs": ["'
        for _ in range(100):
            yield b"good " * 20
        yield b'"]}'

    streamed = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413 and "over 4096 bytes" in streamed.json()["error"]
    assert client.get("/health").json() == {"status": "ok"}  # and it keeps serving


def test_cli_without_the_extra_says_one_line(monkeypatch, capsys, run_dir):
    import sys

    monkeypatch.setitem(sys.modules, "starlette", None)  # its import fails, as if missing
    assert cli.main(["serve", run_dir]) == 2
    err = capsys.readouterr().err
    assert err == "seqgraph serve needs the serve extra: pip install 'seqgraph[serve]'\n"
