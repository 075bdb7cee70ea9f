import pytest
from helpers import SHARED_DATA

from cllmfs_trainer.data import DataFormatError, get_dataset, load_types_file, read_conll
from cllmfs_trainer.data.format import instruction
from cllmfs_trainer.data.registry import dataset_keys

EXPECTED_TYPE_COUNTS = {"wnut17": 6, "conll2003": 4, "ontonotes5": 18, "gum": 11, "i2b2_2014": 23, "fewnerd": 66}
EXPECTED_TYPE_COUNTS["fewnerd_unseen"] = 17  # Few-NERD's INTER test types
# The NER prior's general-NER corpora (../shared/data/README.md)
EXPECTED_TYPE_COUNTS.update(
    wikigold=4,
    btc=3,
    crossner_politics=9,
    crossner_science=17,
    crossner_music=13,
    crossner_literature=12,
    crossner_ai=14,
    sec_filings=4,
    ncbi_disease=1,
    anem=11,
    uner_en_ewt=3,
    uner_en_pud=3,
)
PRIOR_CORPORA = [key for key, count in EXPECTED_TYPE_COUNTS.items() if get_dataset(key).prior_only]


@pytest.mark.parametrize("key", dataset_keys())
def test_every_entry_has_named_described_types(key):
    info = get_dataset(key)
    assert len(info.types) == EXPECTED_TYPE_COUNTS[key]
    assert len({t.name for t in info.types}) == len(info.types)
    for entity_type in info.types:
        assert entity_type.description and not entity_type.description.endswith(".")
        text = instruction(entity_type)
        assert text.startswith(f"Please extract the entity of {entity_type.name} in the input sentence given below")
        assert text.endswith(".") and ".." not in text


@pytest.mark.parametrize("key", ["wnut17", "conll2003", "ontonotes5", "gum", "fewnerd", *PRIOR_CORPORA])
def test_registry_covers_every_label_in_the_real_files(key):
    info = get_dataset(key)
    folder = SHARED_DATA / (info.folder or key)
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the dataset is not shipped)")
    labels = {t.label for t in info.types}
    for split in info.splits:
        assert set(read_conll(folder / f"{split}.txt").types()) <= labels


def test_aliases_and_unknown_names():
    assert get_dataset("wnut_17") is get_dataset("wnut17")
    assert get_dataset("fewnerd_inter").key == "fewnerd"
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        get_dataset("nope")


def test_types_file_overrides_and_extends(tmp_path):
    path = tmp_path / "types.yaml"
    path.write_text(
        "types:\n"
        "  - label: person\n    name: human\n    description: any named human being.\n"
        "  - label: drug\n    name: drug\n    description: names of medicines\n",
        encoding="utf-8",
    )
    info = get_dataset("wnut17", types_file=path)
    assert info.type("person").name == "human"
    assert info.type("person").description == "any named human being"  # final period dropped: the template adds it
    assert [t.label for t in info.types][-1] == "drug"
    assert len(info.types) == 7
    assert get_dataset("wnut17").type("person").name == "person"  # the registry itself is untouched


def test_short_types_form(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text('types:\n  drug: "names of medicines"\n  dose: {name: dosage, description: "amounts taken"}\n')
    types = load_types_file(path)
    assert [(t.label, t.name, t.description) for t in types] == [
        ("drug", "drug", "names of medicines"),
        ("dose", "dosage", "amounts taken"),
    ]


@pytest.mark.parametrize(
    "content, words",
    [
        ("types: [\n", r"t.yaml:\d+: not valid YAML"),
        ("labels: {}\n", "expected a mapping with a 'types' field"),
        ("types:\n  - label: drug\n", r"'types\[0\]'.description is missing for type 'drug'"),
        ("types:\n  - name: x\n    description: y\n", r"'types\[0\]'.label must be"),
        ("types:\n  a: x\n  b: {name: a, description: y}\n", "appears twice"),
    ],
)
def test_bad_types_files_name_file_and_field(tmp_path, content, words):
    path = tmp_path / "t.yaml"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=words):
        load_types_file(path)


def test_unknown_label_in_data_points_to_types_file(tmp_path):
    (tmp_path / "wnut17").mkdir()
    (tmp_path / "wnut17" / "train.txt").write_text("a\tB-spaceship\n")
    with pytest.raises(DataFormatError, match=r"types \['spaceship'\] are not in the 'wnut17' registry entry"):
        get_dataset("wnut17").load("train", data_dir=tmp_path)
