import pytest
from helpers import shared_dataset

from cllmfs_trainer.data import (
    DataFormatError,
    Sentence,
    Span,
    SupportSet,
    get_dataset,
    make_task,
    read_conll,
    sample_support_set,
)


@pytest.fixture(scope="module")
def wnut_train():
    return get_dataset("wnut17").load("train").sentences


def assert_k_shot(support: SupportSet, k: int):
    counts = support.mention_counts()
    assert set(counts) == set(support.types)
    assert all(count >= k for count in counts.values()), counts
    assert all(span.type in support.types for s in support.sentences for span in s.spans)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_every_type_gets_k_mentions(wnut_train, k):
    support = sample_support_set(wnut_train, k, seed=3)
    assert_k_shot(support, k)
    assert len(support.types) == 6


def test_same_seed_same_set_and_other_seed_other_set(wnut_train):
    ids = lambda seed: [s.id for s in sample_support_set(wnut_train, 5, seed=seed).sentences]  # noqa: E731
    assert ids(0) == ids(0)
    assert ids(0) != ids(1)


def test_greedy_is_not_wasteful(wnut_train):
    """Every sentence was added for a type that still lacked mentions at that moment."""
    support = sample_support_set(wnut_train, 5, seed=0)
    assert len({s.id for s in support.sentences}) == len(support.sentences)
    assert len(support.sentences) <= 5 * len(support.types)


def test_at_most_2k_rule(wnut_train):
    for seed in range(5):
        support = sample_support_set(wnut_train, 5, seed=seed, max_2k=True)
        assert_k_shot(support, 5)
        assert max(support.mention_counts().values()) <= 10


def test_n_way_subset_relabels_other_types_as_o(wnut_train):
    support = sample_support_set(wnut_train, 2, types=["person", "location"], seed=0)
    assert support.types == ["person", "location"]
    assert {span.type for s in support.sentences for span in s.spans} <= {"person", "location"}


def test_excluded_sentences_are_never_picked():
    pool = [Sentence(["a", str(i)], [Span(0, 1, "X")], id=str(i)) for i in range(20)]
    banned = pool[:15]
    for seed in range(10):
        support = sample_support_set(pool, 3, seed=seed, exclude=banned)
        assert all(int(s.id) >= 15 for s in support.sentences)
    with pytest.raises(ValueError, match="type 'X' reaches only 5 of 6 mentions"):
        sample_support_set(pool, 6, exclude=banned)


def test_intra_task_has_no_query_sentence_in_support():
    task = make_task("intra", "wnut17", k=5, seed=0)
    query = {tuple(s.tokens) for s in task.query}
    assert not any(tuple(s.tokens) in query for s in task.support.sentences)
    assert len(task.query) == 1287 and task.notes["query_size"] == 1287
    assert [t.label for t in task.test_types] == [t.label for t in task.train_types]


def test_query_subsample_is_seeded_and_ordered():
    a = make_task("intra", "wnut17", k=1, seed=4, query_size=50)
    b = make_task("intra", "wnut17", k=1, seed=4, query_size=50)
    assert [s.id for s in a.query] == [s.id for s in b.query]
    assert len(a.query) == 50 and a.notes == {"query_size": 50, "query_split_size": 1287}
    lines = [int(s.id.split(":")[1]) for s in a.query]
    assert lines == sorted(lines)


def test_support_set_save_load_round_trip(tmp_path, wnut_train):
    support = sample_support_set(wnut_train, 5, seed=2, source="wnut17/train")
    support.save(tmp_path / "support.txt")
    loaded = SupportSet.load(tmp_path / "support.txt")
    assert [s.tokens for s in loaded.sentences] == [s.tokens for s in support.sentences]
    assert [s.spans for s in loaded.sentences] == [s.spans for s in support.sentences]
    assert (loaded.k, loaded.seed, loaded.types, loaded.source) == (5, 2, support.types, "wnut17/train")


def test_published_support_sets_load(tmp_path):
    folder = get_dataset("wnut17").split_path("train").parent / "support_sets"
    for index in range(5):
        support = SupportSet.load(folder / f"5shot_{index}.txt")
        assert_k_shot(support, 5)
        assert support.seed is None


def test_inter_task_samples_ontonotes_and_queries_target_types(monkeypatch):
    shared = shared_dataset("ontonotes5").parent
    shared_dataset("conll2003")
    monkeypatch.setenv("CLLMFS_DATA_DIR", str(shared))
    task = make_task("inter", "conll2003", k=5, seed=1, query_size=100)
    assert len(task.support.types) == 18
    assert_k_shot(task.support, 5)
    assert [t.label for t in task.test_types] == ["PER", "LOC", "ORG", "MISC"] or sorted(
        t.label for t in task.test_types
    ) == ["LOC", "MISC", "ORG", "PER"]
    assert len(task.query) == 100
    onto_train = {tuple(s.tokens) for s in read_conll(shared / "ontonotes5" / "train.txt")}
    assert all(tuple(s.tokens) in onto_train for s in task.support.sentences)


def test_missing_non_shipped_dataset_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("CLLMFS_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="not shipped.*CLLMFS_DATA_DIR.*load_hf_dataset\\('conll2003'"):
        make_task("intra", "conll2003")
    with pytest.raises(FileNotFoundError, match="not shipped"):
        get_dataset("ontonotes5").split_path("train", tmp_path)


def test_task_with_a_given_support_set(tmp_path):
    folder = get_dataset("wnut17").split_path("train").parent / "support_sets"
    task = make_task("intra", "wnut17", k=5, support_set=folder / "5shot_0.txt")
    assert len(task.support.sentences) == 23 and len(task.train_types) == 6
    (tmp_path / "odd.txt").write_text("Bo\tB-spaceship\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"odd.txt: types \['spaceship'\] are not among the 'wnut17' types"):
        make_task("intra", "wnut17", support_set=tmp_path / "odd.txt")
