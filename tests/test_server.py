"""`cllmfs serve`: the endpoints, one-line 4xx errors, the API key, and concurrent requests merged into one batch."""

import asyncio

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from cllmfs_trainer import cli  # noqa: E402
from cllmfs_trainer.data.registry import EntityType  # noqa: E402
from cllmfs_trainer.inference.extract import Entity  # noqa: E402
from cllmfs_trainer.integrations.server import Limits, create_app  # noqa: E402

PERSON = EntityType("person", "person", "names of people")
INFO = {"types": [vars(PERSON)], "base_model": "tiny"}


class FixedExtractor:
    """Finds "Ann" wherever it occurs (score 0.9) and "Bo" (score 0.3); records every call."""

    gives_scores = True

    def __init__(self):
        self.calls = []

    def known_types(self):
        return [PERSON]

    def extract(self, texts, types=None):
        self.calls.append((list(texts), [t.label for t in types]))
        found = []
        for text in texts:
            entities = [
                Entity(text.index(w), text.index(w) + len(w), types[0].label, w, s) for w, s in WORDS if w in text
            ]
            found.append(sorted(entities, key=lambda e: e.start))
        return found


WORDS = [("Ann", 0.9), ("Bo", 0.3)]


@pytest.fixture
def fixed():
    return FixedExtractor()


def test_extract_health_and_info(fixed):
    client = TestClient(create_app(fixed, INFO))
    response = client.post("/extract", json={"texts": ["Ann met Bo", "nobody"]})
    assert response.status_code == 200
    assert response.json() == {
        "entities": [
            [
                {"start": 0, "end": 3, "type": "person", "text": "Ann", "score": 0.9},
                {"start": 8, "end": 10, "type": "person", "text": "Bo", "score": 0.3},
            ],
            [],
        ]
    }
    assert client.post("/extract", json={"texts": ["Ann met Bo"], "threshold": 0.5}).json()["entities"] == [
        [{"start": 0, "end": 3, "type": "person", "text": "Ann", "score": 0.9}]
    ]
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["types"] == [vars(PERSON)] and info["model_calls"] == 2 and "transformers" in info["versions"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"texts": "Ann"}, 400, "texts: Input should be a valid list"),
        ({"texts": []}, 400, "texts: List should have at least 1 item"),
        ({"texts": ["Ann"], "threshold": 2}, 400, "threshold: Input should be less than or equal to 1"),
        ({"texts": ["Ann"], "types": ["drug"]}, 400, "types: "),
        ({"texts": ["a\x00b"]}, 400, "texts.0: contains the control character"),
        ({"texts": ["x"] * 5}, 413, "texts: 5 texts; at most 4 per request"),
        ({"texts": ["x" * 50]}, 413, "texts: 50 characters; at most 40 per request"),
    ],
)
def test_bad_requests_get_a_one_line_4xx_and_the_server_keeps_serving(fixed, body, status, words):
    client = TestClient(create_app(fixed, INFO, Limits(max_texts=4, max_chars=40)))
    response = client.post("/extract", json=body)
    assert response.status_code == status
    assert list(response.json()) == ["error"] and words in response.json()["error"]
    assert "\n" not in response.json()["error"]
    assert fixed.calls == []  # a bad request never reaches the model
    assert client.post("/extract", json={"texts": ["Ann"]}).status_code == 200


def test_new_types_with_descriptions_are_asked(fixed):
    client = TestClient(create_app(fixed, INFO))
    response = client.post("/extract", json={"texts": ["Ann"], "types": {"drug": "names of medicines"}})
    assert response.status_code == 200 and fixed.calls == [(["Ann"], ["drug"])]


def test_the_api_key_guards_every_endpoint(fixed):
    client = TestClient(create_app(fixed, INFO, api_key="s3cret"))
    assert client.get("/health").status_code == 401
    assert "Authorization: Bearer" in client.post("/extract", json={"texts": ["Ann"]}).json()["error"]
    assert client.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_concurrent_requests_share_one_model_call(fixed):
    app = create_app(fixed, INFO, Limits(max_batch_texts=64, max_wait_ms=200))

    async def clients():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            texts = [f"Ann number {i}" for i in range(8)]
            responses = await asyncio.gather(*(client.post("/extract", json={"texts": [t]}) for t in texts))
        return texts, responses

    texts, responses = asyncio.run(clients())
    assert len(fixed.calls) == 1 and sorted(fixed.calls[0][0]) == sorted(texts)
    for text, response in zip(texts, responses):  # each request gets the answer to its own text
        assert response.json()["entities"] == [[{"start": 0, "end": 3, "type": "person", "text": "Ann", "score": 0.9}]]
        assert text.startswith("Ann")


def test_the_server_gives_what_extract_gives(run_dir):
    from cllmfs_trainer.inference.generate import EntityExtractor

    texts = ["Ann Lee met Bo in Rome", "Zoë visited Reykjavík with Carl", "Eve"]
    extractor = EntityExtractor.from_run(run_dir)
    expected = [[e.as_dict() for e in entities] for entities in extractor.extract(texts)]
    client = TestClient(create_app(extractor, INFO))
    assert client.post("/extract", json={"texts": texts}).json()["entities"] == expected


def test_serve_refuses_a_wrong_run_in_one_line(tmp_path, capsys):
    assert cli.main(["serve", "--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cllmfs serve: error: ") and "no such run folder" in err and "\n" not in err
