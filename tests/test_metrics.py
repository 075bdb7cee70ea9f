import ast
import random
import warnings
from pathlib import Path

import pytest
from helpers import shared_dataset
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as seqeval_prfs_default
from seqeval.metrics.v1 import precision_recall_fscore_support as seqeval_prfs_strict
from seqeval.scheme import IOB2

import cllmfs_trainer.evaluation.metrics as metrics_module
from cllmfs_trainer.data import Sentence, Span, read_conll
from cllmfs_trainer.data.registry import SHIPPED_DATA
from cllmfs_trainer.data.tags import tags_to_spans
from cllmfs_trainer.evaluation.metrics import bio_span_scores, error_breakdown, span_scores, string_scores

SPAN_F1_DIR = Path(metrics_module.__file__).parent / "span_f1"
SEQEVAL_MODES = {"default": {}, "strict-IOB2": {"mode": "strict", "scheme": IOB2}}


# --- span_scores: hand-made cases -------------------------------------------------------------------------------------


def test_perfect_prediction():
    gold = [[Span(0, 2, "PER"), Span(3, 4, "LOC")], [], [Span(1, 2, "ORG")]]
    scores = span_scores(gold, [list(s) for s in gold])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (1.0, 1.0, 1.0)
    assert (scores["tp"], scores["fp"], scores["fn"], scores["support"]) == (3, 0, 0, 3)
    assert scores["per_type"]["PER"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "tp": 1,
        "fp": 0,
        "fn": 0,
        "support": 1,
    }
    assert list(scores["per_type"]) == ["LOC", "ORG", "PER"]


def test_empty_gold_and_pred_is_zero_by_default_and_zero_division_otherwise():
    scores = span_scores([[], []], [[], []])
    assert (scores["precision"], scores["recall"], scores["f1"], scores["support"]) == (0.0, 0.0, 0.0, 0)
    assert scores["per_type"] == {}
    perfect = span_scores([[]], [[]], zero_division=1.0)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)
    assert span_scores([], [])["f1"] == 0.0


def test_empty_pred_or_empty_gold():
    no_pred = span_scores([[Span(0, 1, "PER")]], [[]], zero_division=1.0)
    # Precision is 0/0 (-> zero_division) but recall is a real 0/1; F1 follows from both.
    assert (no_pred["precision"], no_pred["recall"], no_pred["fn"]) == (1.0, 0.0, 1)
    assert no_pred["f1"] == 0.0
    no_gold = span_scores([[]], [[Span(0, 1, "PER")]])
    assert (no_gold["precision"], no_gold["recall"], no_gold["f1"], no_gold["fp"]) == (0.0, 0.0, 0.0, 1)
    # With zero_division=1 the empty gold gives recall 1, but both precision and recall 0 still give F1 0.
    assert span_scores([[Span(0, 1, "A")]], [[Span(1, 2, "A")]], zero_division=1.0)["f1"] == 0.0


def test_boundary_errors_are_both_false_positive_and_false_negative():
    gold = [[Span(0, 2, "PER"), Span(4, 6, "LOC")]]
    pred = [[Span(0, 1, "PER"), Span(4, 6, "LOC")]]  # "Andrew" instead of "Andrew Little"
    scores = span_scores(gold, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 1)
    assert scores["precision"] == scores["recall"] == scores["f1"] == 0.5
    assert scores["per_type"]["PER"]["f1"] == 0.0
    assert scores["per_type"]["LOC"]["f1"] == 1.0


def test_type_errors_count_against_both_types():
    gold = [[Span(0, 1, "ORG"), Span(2, 3, "ORG"), Span(5, 7, "PER")]]
    pred = [[Span(0, 1, "LOC"), Span(2, 3, "ORG"), Span(5, 7, "PER")]]
    scores = span_scores(gold, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
    assert scores["precision"] == pytest.approx(2 / 3, abs=1e-15)
    per_type = scores["per_type"]
    assert (per_type["ORG"]["tp"], per_type["ORG"]["fn"], per_type["ORG"]["support"]) == (1, 1, 2)
    assert per_type["ORG"]["recall"] == 0.5 and per_type["ORG"]["precision"] == 1.0
    assert (per_type["LOC"]["fp"], per_type["LOC"]["support"], per_type["LOC"]["precision"]) == (1, 0, 0.0)


def test_spans_match_only_within_their_sentence():
    scores = span_scores([[Span(0, 1, "PER")], []], [[], [Span(0, 1, "PER")]])
    assert (scores["tp"], scores["fp"], scores["fn"]) == (0, 1, 1)


def test_duplicated_predictions_count_once():
    scores = span_scores([[Span(0, 1, "PER")]], [[Span(0, 1, "PER"), Span(0, 1, "PER"), (0, 1, "PER")]])
    assert (scores["tp"], scores["fp"], scores["precision"]) == (1, 0, 1.0)


def test_sentences_and_plain_tuples_are_accepted():
    gold = [Sentence(["Andrew", "Little", "spoke"], [Span(0, 2, "PER")])]
    assert span_scores(gold, [[(0, 2, "PER")]])["f1"] == 1.0
    assert span_scores(gold, [Sentence(["Andrew", "Little", "spoke"], [Span(0, 1, "PER")])])["f1"] == 0.0


def test_mismatched_lengths_name_both():
    with pytest.raises(ValueError, match=r"gold has 3 sentences but pred has 2"):
        span_scores([[], [], []], [[], []])
    with pytest.raises(ValueError, match=r"gold has 1 sentences but pred has 0"):
        error_breakdown([[]], [])


@pytest.mark.parametrize("bad", [(2, 2, "PER"), (-1, 1, "PER"), (0, 1), (0.0, 1, "PER")])
def test_malformed_spans_are_rejected(bad):
    with pytest.raises(ValueError, match="pred sentence 0"):
        span_scores([[]], [[bad]])


def test_bio_span_scores_decodes_tags_and_checks_lengths():
    scores = bio_span_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]])
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 1)
    with pytest.raises(ValueError, match="sentence 0: 2 reference tags but 1 predicted tags"):
        bio_span_scores([["O", "O"]], [["O"]])
    bioes = bio_span_scores([["S-PER", "B-LOC", "E-LOC"]], [["S-PER", "S-LOC", "O"]], scheme="bioes")
    assert (bioes["tp"], bioes["fp"], bioes["fn"]) == (1, 1, 1)


# --- agreement with seqeval on real data ------------------------------------------------------------------------------


def perturb(sentences: list[Sentence], types: list[str], seed: int) -> list[list[Span]]:
    """Seeded noisy predictions: dropped spans, shifted boundaries, changed types and spurious spans, kept flat."""
    rng = random.Random(seed)
    predictions = []
    for sentence in sentences:
        n, out = len(sentence.tokens), []
        for start, end, etype in sentence.spans:
            r = rng.random()
            if r < 0.1:
                continue  # missed
            if r < 0.3:  # boundary shift (falls back to the gold boundaries when the shift is impossible)
                new_start, new_end = start + rng.choice((-1, 0, 1)), end + rng.choice((-1, 1))
                if 0 <= new_start < new_end <= n:
                    start, end = new_start, new_end
            if 0.2 < r < 0.4:
                etype = rng.choice([t for t in types if t != etype])
            out.append(Span(start, end, etype))
        if n and rng.random() < 0.15:
            start = rng.randrange(n)
            out.append(Span(start, min(n, start + rng.randint(1, 3)), rng.choice(types)))
        flat: list[Span] = []
        for span in sorted(out):  # BIO cannot hold overlapping spans: keep the first of any overlapping ones
            if not flat or span.start >= flat[-1].end:
                flat.append(span)
        predictions.append(flat)
    return predictions


def real_test_file(name: str) -> Path:
    return SHIPPED_DATA / "wnut17" / "test.txt" if name == "wnut17-shipped" else shared_dataset(name) / "test.txt"


@pytest.mark.parametrize("dataset", ["wnut17-shipped", "conll2003"])
def test_span_scores_equal_seqeval_default_and_strict_on_well_formed_bio(dataset):
    corpus = read_conll(real_test_file(dataset))
    gold = [s.spans for s in corpus]
    pred = perturb(corpus.sentences, corpus.types(), seed=17)
    gold_bio = [s.to_bio() for s in corpus]
    pred_bio = [Sentence(s.tokens, spans).to_bio() for s, spans in zip(corpus, pred)]
    # The perturbation must produce every kind of error, or the agreement below would prove little.
    kinds = error_breakdown(gold, pred)
    assert min(kinds[k] for k in ("type", "boundary", "boundary_type", "spurious", "missed")) > 0, kinds

    ours = span_scores(gold, pred)
    assert 0.5 < ours["f1"] < 0.95
    for mode, kwargs in SEQEVAL_MODES.items():
        for key, seqeval_fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
            assert ours[key] == pytest.approx(seqeval_fn(gold_bio, pred_bio, **kwargs), abs=1e-12), (mode, key)

    types = sorted(ours["per_type"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division warnings for types that are never predicted
        per_type_runs = {
            "default": seqeval_prfs_default(gold_bio, pred_bio, average=None, zero_division=0),
            "strict-IOB2": seqeval_prfs_strict(gold_bio, pred_bio, average=None, zero_division=0, scheme=IOB2),
        }
    for mode, (precision, recall, f1, support) in per_type_runs.items():
        assert len(precision) == len(types), mode
        for i, etype in enumerate(types):
            row = ours["per_type"][etype]
            assert row["support"] == support[i], (mode, etype)
            for key, value in (("precision", precision[i]), ("recall", recall[i]), ("f1", f1[i])):
                assert row[key] == pytest.approx(value, abs=1e-12), (mode, etype, key)


def test_ill_formed_bio_agrees_with_seqeval_default_mode_only():
    corpus = read_conll(real_test_file("wnut17-shipped"))
    gold_bio = [s.to_bio() for s in corpus]
    labels = ["O"] + [f"{prefix}-{t}" for t in corpus.types() for prefix in "BI"]
    rng = random.Random(5)
    # Random tag noise yields I- tags after O or after another type, which tags_to_spans reads as entity starts.
    pred_bio = [[rng.choice(labels) if rng.random() < 0.1 else tag for tag in tags] for tags in gold_bio]
    assert sum(len(tags_to_spans(tags)[1]) for tags in pred_bio) > 100

    ours = bio_span_scores(gold_bio, pred_bio)
    assert ours["precision"] == pytest.approx(precision_score(gold_bio, pred_bio), abs=1e-12)
    assert ours["recall"] == pytest.approx(recall_score(gold_bio, pred_bio), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1_score(gold_bio, pred_bio), abs=1e-12)
    # Strict IOB2 discards entities that start with I-, so it sees fewer predictions and a higher precision.
    strict_precision = precision_score(gold_bio, pred_bio, mode="strict", scheme=IOB2)
    assert strict_precision > ours["precision"] + 0.05


# --- string-level scores ----------------------------------------------------------------------------------------------


def test_string_scores_are_case_and_whitespace_insensitive():
    gold = [Sentence(["I", "love", "New", "York"], [Span(2, 4, "LOC")])]
    scores = string_scores(gold, [[("new   YORK ", "LOC")]])
    assert (scores["string_precision"], scores["string_recall"], scores["string_f1"]) == (1.0, 1.0, 1.0)
    assert all(key.startswith("string_") for key in scores)
    assert all(key.startswith("string_") for key in scores["string_per_type"]["LOC"])
    # Right string, wrong type.
    wrong = string_scores(gold, [[("New York", "ORG")]])
    assert (wrong["string_tp"], wrong["string_fp"], wrong["string_fn"]) == (0, 1, 1)


def test_string_scores_ignore_positions_but_count_repeats_as_a_multiset():
    tokens = ["Paris", "is", "not", "paris", "Texas"]
    gold = [Sentence(tokens, [Span(0, 1, "LOC"), Span(3, 4, "LOC")])]
    one = string_scores(gold, [[Span(3, 4, "LOC")]])
    assert (one["string_tp"], one["string_fp"], one["string_fn"]) == (1, 0, 1)
    assert one["string_recall"] == 0.5
    # A mention at the wrong position still matches the gold string, where span_scores calls it wrong.
    first_only = [Sentence(tokens, [Span(0, 1, "LOC")])]
    assert string_scores(first_only, [[Span(3, 4, "LOC")]])["string_tp"] == 1
    assert span_scores(first_only, [[Span(3, 4, "LOC")]])["tp"] == 0
    # Listing the string three times: two match the two gold mentions, the third is a false positive.
    three = string_scores(gold, [[("Paris", "LOC")] * 3])
    assert (three["string_tp"], three["string_fp"], three["string_fn"]) == (2, 1, 0)
    # The same span twice is one prediction (set semantics on spans), as in span_scores.
    same_span = string_scores(gold, [[Span(0, 1, "LOC"), Span(0, 1, "LOC")]])
    assert (same_span["string_tp"], same_span["string_fp"]) == (1, 0)


def test_string_scores_match_per_sentence_and_check_inputs():
    gold = [Sentence(["Paris"], [Span(0, 1, "LOC")]), Sentence(["Rome"], [])]
    scores = string_scores(gold, [[], [("Paris", "LOC")]])
    assert (scores["string_tp"], scores["string_fp"], scores["string_fn"]) == (0, 1, 1)
    assert string_scores(gold, [Sentence(["PARIS"], [Span(0, 1, "LOC")]), Sentence(["Rome"])])["string_f1"] == 1.0
    with pytest.raises(ValueError, match="ends past its 1 tokens"):
        string_scores(gold, [[Span(0, 2, "LOC")], []])
    with pytest.raises(ValueError, match="gold has 2 sentences but pred has 1"):
        string_scores(gold, [[]])
    with pytest.raises(ValueError, match="needs Sentence objects"):
        string_scores([[Span(0, 1, "LOC")]], [[]])


# --- error breakdown --------------------------------------------------------------------------------------------------


def test_error_breakdown_assigns_each_span_one_category():
    gold = [[Span(0, 2, "PER"), Span(3, 4, "LOC"), Span(5, 7, "ORG"), Span(8, 10, "PER"), Span(12, 13, "LOC")]]
    pred = [
        [
            Span(0, 2, "PER"),  # correct
            Span(3, 4, "ORG"),  # type: same boundaries
            Span(5, 6, "ORG"),  # boundary: overlaps the ORG, too short
            Span(9, 11, "LOC"),  # boundary_type: overlaps the PER, other type, other boundaries
            Span(14, 15, "PER"),  # spurious
            Span(14, 15, "PER"),  # duplicate: counted once
        ]
    ]  # the LOC at 12 is missed
    counts = error_breakdown(gold, pred)
    assert counts == {
        "correct": 1,
        "type": 1,
        "boundary": 1,
        "boundary_type": 1,
        "spurious": 1,
        "missed": 1,
        "n_pred": 5,
        "n_gold": 5,
    }
    scores = span_scores(gold, pred)
    assert counts["correct"] == scores["tp"] and counts["missed"] <= scores["fn"]


def test_error_breakdown_precedence_with_overlapping_gold():
    # Nested gold (not flat) is the only way one prediction can qualify for several categories.
    gold = [[Span(0, 3, "ORG"), Span(1, 2, "LOC")]]
    assert error_breakdown(gold, [[Span(1, 2, "PER")]])["type"] == 1  # exact boundaries beat plain overlap
    assert error_breakdown(gold, [[Span(1, 3, "LOC")]])["boundary"] == 1  # same-type overlap beats other-type one
    assert error_breakdown(gold, [[Span(1, 2, "LOC")]])["correct"] == 1
    counts = error_breakdown(gold, [[Span(1, 2, "ORG")]])  # exact match of the LOC's boundaries: a type error
    assert (counts["type"], counts["boundary"], counts["missed"]) == (1, 0, 0)


def test_error_breakdown_empty_and_adjacent_spans():
    assert error_breakdown([[]], [[]]) == dict.fromkeys(metrics_module.ERROR_CATEGORIES + ("n_pred", "n_gold"), 0)
    # Touching but not sharing a token is no overlap: spurious plus missed.
    counts = error_breakdown([[Span(0, 2, "PER")]], [[Span(2, 3, "PER")]])
    assert (counts["spurious"], counts["missed"], counts["boundary"]) == (1, 1, 0)


def test_error_breakdown_is_consistent_with_span_scores_on_real_data():
    corpus = read_conll(real_test_file("wnut17-shipped"))
    gold = [s.spans for s in corpus]
    pred = perturb(corpus.sentences, corpus.types(), seed=3)
    counts, scores = error_breakdown(gold, pred), span_scores(gold, pred)
    assert counts["correct"] == scores["tp"]
    assert sum(counts[k] for k in ("correct", "type", "boundary", "boundary_type", "spurious")) == counts["n_pred"]
    assert counts["n_pred"] == scores["tp"] + scores["fp"] and counts["n_gold"] == scores["support"]
    assert 0 < counts["missed"] < scores["fn"]


# --- the local `evaluate` metric -------------------------------------------------------------------------------------


def test_metrics_module_does_not_import_evaluate():
    tree = ast.parse(Path(metrics_module.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "evaluate" not in imported and "cllmfs_trainer" in imported


@pytest.mark.parametrize("target", ["folder", "script"])
def test_evaluate_module_loads_offline_by_path_and_matches_span_scores(monkeypatch, tmp_path, target):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    evaluate = pytest.importorskip("evaluate", reason="the `evaluate` extra is not installed")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)  # in case evaluate was imported earlier
    path = SPAN_F1_DIR if target == "folder" else SPAN_F1_DIR / "span_f1.py"
    metric = evaluate.load(str(path), cache_dir=str(tmp_path), keep_in_memory=True)

    corpus = read_conll(real_test_file("wnut17-shipped"))
    sentences = corpus.sentences[:300]
    pred = perturb(sentences, corpus.types(), seed=11)
    references = [s.to_bio() for s in sentences]
    predictions = [Sentence(s.tokens, spans).to_bio() for s, spans in zip(sentences, pred)]
    result = metric.compute(predictions=predictions, references=references)
    expected = span_scores([s.spans for s in sentences], pred)
    assert result == expected
    assert 0 < result["f1"] < 1
    assert metric.compute(predictions=[["B-PER", "O"]], references=[["B-PER", "O"]], zero_division=1.0)["f1"] == 1.0
