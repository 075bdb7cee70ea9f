"""The spaCy component `cllmfs_ner`: entities as doc.spans and doc.ents, batching, saving with the pipeline."""

import subprocess
import sys

import pytest

spacy = pytest.importorskip("spacy")

from cllmfs_trainer.errors import UserError  # noqa: E402
from cllmfs_trainer.inference.extract import Entity  # noqa: E402
from cllmfs_trainer.run_folder import RunFolderError  # noqa: E402

TEXTS = ["Ann Lee met Bo in Rome", "Zoë visited Reykjavík with Carl", "", "Eve"]


class FixedExtractor:
    """Answers every text with the entities listed for it: the mapping onto tokens is what is tested."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def extract(self, texts, types=None, threshold=None):
        self.calls.append(list(texts))
        return [self.answers.get(text, []) for text in texts]


@pytest.fixture
def nlp(run_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("cllmfs_ner", config={"run": str(run_dir)})  # found through the spacy_factories entry point
    return nlp


def test_entities_become_spans_with_scores_and_non_overlapping_ents(nlp):
    text = "Ann Lee met Bo in Rome"
    nlp.get_pipe("cllmfs_ner")._extractor = FixedExtractor(
        {
            text: [
                Entity(0, 7, "person", "Ann Lee", 0.9),
                Entity(4, 7, "location", "Lee", 0.2),  # overlaps the person: spans only
                Entity(19, 21, "location", "om", 0.7),  # inside a token: expanded to "Rome"
            ]
        }
    )
    doc = nlp(text)
    spans = [(s.text, s.label_, s._.cllmfs_score) for s in doc.spans["cllmfs"]]
    assert spans == [("Ann Lee", "person", 0.9), ("Lee", "location", 0.2), ("Rome", "location", 0.7)]
    assert [(e.text, e.label_) for e in doc.ents] == [("Ann Lee", "person"), ("Rome", "location")]


def test_punctuation_at_an_entitys_edges_stays_out_of_its_span(nlp):
    """The model answers whole words: "Auckland," or "(Bo)" come back with their punctuation."""
    text = "Andrew met (Bo) in Auckland, with the U.S. team."
    entities = [Entity(11, 15, "person", "(Bo)"), Entity(19, 28, "location", "Auckland,")]
    entities.append(Entity(38, 42, "location", "U.S."))
    nlp.get_pipe("cllmfs_ner")._extractor = FixedExtractor({text: entities})
    doc = nlp(text)
    assert [s.text for s in doc.spans["cllmfs"]] == ["Bo", "Auckland", "U.S."]


def test_pipe_sends_a_batch_of_docs_together(nlp):
    fixed = FixedExtractor({"Eve": [Entity(0, 3, "person", "Eve", None)]})
    nlp.get_pipe("cllmfs_ner")._extractor = fixed
    docs = list(nlp.pipe(TEXTS, batch_size=3))
    assert fixed.calls == [TEXTS[:3], TEXTS[3:]]
    assert [[e.text for e in doc.ents] for doc in docs] == [[], [], [], ["Eve"]]


def test_the_component_gives_what_extract_gives(nlp, run_dir):
    from cllmfs_trainer.inference.generate import EntityExtractor

    expected = EntityExtractor.from_run(run_dir, dtype="auto").extract(TEXTS)
    for doc, entities in zip(nlp.pipe(TEXTS), expected):
        assert [(s.start_char, s.end_char, s.label_) for s in doc.spans["cllmfs"]] == [
            (e.start, e.end, e.type) for e in entities
        ]


def test_a_saved_pipeline_carries_its_run_folder(nlp, run_dir, tmp_path):
    nlp.to_disk(tmp_path / "pipeline")
    assert (tmp_path / "pipeline" / "cllmfs_ner" / "run" / "cllmfs_run.json").is_file()
    loaded = spacy.load(tmp_path / "pipeline")
    component = loaded.get_pipe("cllmfs_ner")
    assert component.run == tmp_path / "pipeline" / "cllmfs_ner" / "run"
    fixed = FixedExtractor({"Eve": [Entity(0, 3, "person", "Eve", 0.5)]})
    component._extractor = fixed
    assert [(e.text, e._.cllmfs_score) for e in loaded("Eve").ents] == [("Eve", 0.5)]
    # A fresh process finds the factory through the entry point and the run in the saved pipeline.
    code = f"import spacy; print(spacy.load({str(tmp_path / 'pipeline')!r}).get_pipe('cllmfs_ner').run)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == str(component.run), done.stderr[-2000:]


def test_a_missing_or_wrong_run_is_one_line(tmp_path):
    nlp = spacy.blank("en")
    with pytest.raises(UserError, match='cllmfs_ner needs the run folder: nlp.add_pipe\\("cllmfs_ner", config='):
        nlp.add_pipe("cllmfs_ner")
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(RunFolderError, match="not_a_run is not a cllmfs run folder"):
        nlp.add_pipe("cllmfs_ner", config={"run": str(tmp_path / "not_a_run")})
