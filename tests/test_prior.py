"""The NER prior: its mix and sampler (absent types from the sentence's own corpus only), and starting a training
from a prior adapter (`init_adapter`)."""

import hashlib
import json
import shutil
from collections import Counter

import pytest
import torch
from helpers import REPO, SHARED_DATA
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from test_recipes import tiny_args

from cllmfs_trainer.data import Sentence, Span, make_task, write_bio
from cllmfs_trainer.data.prior import (
    EVALUATION_TARGETS,
    PRIOR_MIX,
    PriorCorpus,
    build_prior_samples,
    corpus_budgets,
    draw_prior,
    load_prior_corpora,
    prior_splits,
    prior_type_ids,
    prior_types,
)
from cllmfs_trainer.data.registry import EntityType, get_dataset
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.models.priors import SHIPPED_PRIOR, resolve_init_adapter
from cllmfs_trainer.run_folder import RunFolder
from cllmfs_trainer.training import prior_export
from cllmfs_trainer.training.prior_export import export_prior, prior_card, prior_record, prior_stages, rewrite_card


def _types(*labels):
    return [EntityType(label, label.lower(), f"names of {label.lower()} things") for label in labels]


def _corpus(key, labels, n=40):
    """Sentences holding 0-2 of the corpus' first two labels; the other labels never occur in them."""
    sentences = []
    for i in range(n):
        spans = [Span(0, 1, labels[0])] if i % 3 else []
        if i % 4 == 0:
            spans.append(Span(2, 4, labels[1]))
        sentences.append(Sentence(f"w{i} x {key} y z".split(), spans, id=f"{key}:{i}"))
    return PriorCorpus(key, sentences, _types(*labels))


A = _corpus("a", ["PER", "LOC", "ORG", "MISC"])
B = _corpus("b", ["PER", "disease", "drug"], n=200)


def test_absent_types_come_only_from_the_sentences_own_corpus():
    draws = draw_prior([A, B], 120, absent_ratio=1.0, seed=3)
    assert len(draws) == 120
    for draw in draws:
        own = {t.label for t in (A if draw.corpus == "a" else B).types}
        asked = [t.label for t in draw.types]
        present = sorted({s.type for s in draw.sentence.spans})
        assert set(asked) <= own and draw.sentence.id.startswith(f"{draw.corpus}:")
        assert asked[: len(present)] == present  # every present type is asked, first
        absent = asked[len(present) :]
        assert not set(absent) & set(present) and len(set(absent)) == len(absent)
        assert len(absent) == min(max(len(present), 1), len(own) - len(present))  # about 1:1, capped by the corpus


def test_the_absent_ratio_and_the_seed():
    none = draw_prior([A], 30, absent_ratio=0.0, seed=0)
    assert all(len(d.types) == len({s.type for s in d.sentence.spans}) for d in none)
    assert not [d for d in none if not d.sentence.spans]  # a sentence with nothing to ask is left out
    twice = draw_prior([A], 30, absent_ratio=2.0, seed=0)
    assert sum(len(d.types) for d in twice) > sum(len(d.types) for d in draw_prior([A], 30, 1.0, 0))
    same = [(d.sentence.id, [t.label for t in d.types]) for d in draw_prior([A, B], 50, 1.0, seed=7)]
    assert same == [(d.sentence.id, [t.label for t in d.types]) for d in draw_prior([A, B], 50, 1.0, seed=7)]
    with pytest.raises(ValueError, match="absent_ratio"):
        draw_prior([A], 5, absent_ratio=float("nan"))


def test_corpus_budgets_share_by_the_square_root_of_size_and_cap_at_the_size():
    assert corpus_budgets([10, 200], 120) == [10, 110]  # 10 is capped; the rest goes to the larger corpus
    budgets = corpus_budgets([100, 10000], 1000)
    assert sum(budgets) == 1000 and budgets[0] in (90, 91)  # sqrt share: 1000 * 10 / 110, plus a rounding leftover
    assert corpus_budgets([3, 4], 100) == [3, 4]  # never more than there is
    with pytest.raises(ValueError):
        corpus_budgets([3], 0)


def test_type_ids_keep_two_corpora_apart_and_follow_the_samples():
    ids = prior_type_ids([A, B])
    assert ids[("a", "PER")] != ids[("b", "PER")] and len(set(ids.values())) == len(ids) == 7
    draws = draw_prior([A, B], 60, seed=1)
    samples = build_prior_samples(draws, ids, answer_format="pointer")
    assert len(samples) == sum(len(d.types) for d in draws)
    for sample in samples:
        corpus = sample.sentence_id.split(":")[0]
        assert sample.type_id == ids[(corpus, sample.type_label)]
        own_present = {ids[(corpus, t.label)] for t in (A if corpus == "a" else B).types[:2]}
        assert {t for _, _, t in sample.gold_chars} <= own_present
        if not sample.entity_chars:
            assert sample.completion.endswith("entities are <im_end>")
    assert {t.label for t in prior_types([A, B])} >= {"a:PER", "b:PER"}


def test_evaluation_targets_never_enter_the_prior():
    for key in ("conll2003", "wnut17", "ontonotes5", "gum"):
        with pytest.raises(UserError, match="evaluation target"):
            prior_splits(get_dataset(key))
    assert prior_splits(get_dataset("fewnerd")) == ("train",)  # its test split holds the unseen types
    assert prior_splits(get_dataset("crossner_ai")) == ("train", "dev", "test")
    with pytest.raises(UserError, match="twice"):
        load_prior_corpora(["btc", "btc"])
    with pytest.raises(UserError, match="NER-prior data only"):
        make_task("intra", "crossner_ai")  # and a prior corpus is never a few-shot target


@pytest.mark.skipif(not (SHARED_DATA / "fewnerd_inter" / "test.txt").is_file(), reason="../shared/data is absent")
def test_the_real_mix_keeps_fewnerds_test_types_unseen():
    corpora = {c.key: c for c in load_prior_corpora(PRIOR_MIX, SHARED_DATA)}
    assert set(corpora) == set(PRIOR_MIX)
    fewnerd = corpora["fewnerd"]
    test_types = {s.type for sentence in get_dataset("fewnerd").load("test", SHARED_DATA) for s in sentence.spans}
    assert len(fewnerd.types) == 36 and len(test_types) == 17
    assert not test_types & {t.label for t in fewnerd.types}
    assert {t.label for t in corpora["btc"].types} == {"PER", "LOC", "ORG"}
    draws = draw_prior(list(corpora.values()), 400, seed=0)
    assert set(Counter(d.corpus for d in draws)) == set(PRIOR_MIX)  # every corpus contributes


def test_fewnerd_unseen_cuts_three_disjoint_parts_of_the_inter_test_split():
    """The benchmark's unseen types: the INTER test split, cut by position into a support pool, dev and test."""
    unseen = get_dataset("fewnerd_unseen")
    whole = get_dataset("fewnerd").load("test", SHARED_DATA).sentences
    parts = {split: unseen.load(split, SHARED_DATA).sentences for split in ("train", "dev", "test")}
    assert [len(parts[s]) for s in ("train", "dev", "test")] == [
        sum(i % 10 in (0, 1) for i in range(len(whole))),
        sum(i % 10 == 2 for i in range(len(whole))),
        sum(i % 10 >= 3 for i in range(len(whole))),
    ]
    assert parts["dev"][0].tokens == whole[2].tokens and parts["test"][0].tokens == whole[3].tokens
    labels = {t.label for t in unseen.types}
    assert len(labels) == 17 and labels == {s.type for sentence in whole for s in sentence.spans}
    with pytest.raises(UserError, match="fewnerd_unseen"):
        load_prior_corpora(["fewnerd_unseen"], SHARED_DATA)


# --- starting from a prior adapter -----------------------------------------------------------------------------------


def test_init_adapter_resolution_errors(tmp_path):
    with pytest.raises(UserError, match="NER prior of the default model"):
        resolve_init_adapter("prior", "meta-llama/Llama-2-7b-hf")
    with pytest.raises(UserError, match="holds no LoRA adapter"):
        resolve_init_adapter(tmp_path, None)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="not a LoRA adapter"):
        resolve_init_adapter(tmp_path, None)
    assert SHIPPED_PRIOR.name == "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def train_script():
    from cllmfs_trainer.scripts import train

    return train


def test_a_training_continues_the_adapter_and_names_it_in_the_run_record(train_script, tiny_run_inputs, tmp_path):
    prior = tmp_path / "prior"
    train_script.main(*train_script.parse_args(tiny_args(tiny_run_inputs, prior)))
    # One step at a tiny learning rate moves each weight by about 1e-8: the result stays the adapter it started from
    # (a fresh LoRA would start its B matrices at zero, far from the prior's).
    args = tiny_args(tiny_run_inputs, tmp_path / "next")
    args += ["--init_adapter", str(prior), "--learning_rate", "1e-8", "--max_steps", "1", "--lora_r", "4"]
    trainer = train_script.main(*train_script.parse_args(args))
    assert trainer.model.peft_config["default"].r == 16  # the adapter's own rank, not the recipe's lora_r
    before = load_file(prior / "adapter_model.safetensors")
    after = load_file(tmp_path / "next" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-6) for k in before)
    assert max(before[k].abs().max() for k in before if "lora_B" in k) > 1e-4  # the prior's B is far from zero
    record = json.loads((tmp_path / "next" / "cllmfs_run.json").read_text())["init_adapter"]
    assert record["path"] == str(prior) and record["shipped_prior"] is False and len(record["sha256"]) == 64


def test_a_prior_training_writes_a_prior_run(train_script, tiny_run_inputs, tmp_path, monkeypatch):
    data = tmp_path / "data"
    for folder, labels, splits in (
        ("fewnerd_inter", ["person-actor", "location-GPE"], ["train"]),
        ("btc", ["PER"], ["train", "dev", "test"]),
    ):
        for split in splits:
            sentences = [
                Sentence(f"we met {n} in town".split(), [Span(2, 3, labels[i % len(labels)])])
                for i, n in enumerate(["Ann", "Bo", "Cy", "Di"])
            ]
            (data / folder).mkdir(parents=True, exist_ok=True)
            write_bio(data / folder / f"{split}.txt", sentences)
    args = tiny_args(tiny_run_inputs, tmp_path / "run")
    args += ["--setting", "prior", "--prior_corpora", "fewnerd", "btc", "--data_dir", str(data)]
    args += ["--prior_sentences", "6"]  # tiny_args' n_types and support_set belong to the 5-shot stage: unused here
    train_script.main(*train_script.parse_args(args))
    run = json.loads((tmp_path / "run" / "cllmfs_run.json").read_text())
    assert (run["setting"], run["dataset"], run["k"]) == ("prior", "ner_prior", 0)
    assert {t["label"] for t in run["train_types"]} == {"fewnerd:person-actor", "fewnerd:location-GPE", "btc:PER"}
    assert run["prior"]["sentences"] == 6 and set(run["prior"]["corpora"]) == {"fewnerd", "btc"}
    assert not (tmp_path / "run" / "support.txt").exists()
    # Its model card: Hub metadata that huggingface_hub reads back, and each corpus with its license.
    card = ModelCard(prior_card(prior_record(RunFolder.load(tmp_path / "run"))))
    assert card.data.library_name == "peft" and card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "| Few-NERD (INTER) | INTER train split only | " in card.text and "CC BY-SA 4.0 |" in card.text
    with pytest.raises(UserError, match="not a NER-prior adapter run of the default model"):
        export_prior(tmp_path / "run", tmp_path / "shipped")  # a tiny random base model: nothing to ship
    with pytest.raises(UserError, match="evaluation target"):
        train_script.main(*train_script.parse_args(args + ["--prior_corpora", "conll2003"]))
    # A second stage continues the first on another draw; the card and the retrain commands name both stages.
    second = (
        args[: args.index("--output_dir")]
        + ["--output_dir", str(tmp_path / "run2")]
        + args[args.index("--output_dir") + 2 :]
    )
    train_script.main(*train_script.parse_args(second + ["--init_adapter", str(tmp_path / "run"), "--seed", "7"]))
    stages = prior_stages(RunFolder.load(tmp_path / "run2"))
    assert [s["seed"] for s in stages] == [0, 7] and [s["start"] for s in stages] == [None, "continue"]
    assert [s["sentences"] for s in stages] == [6, 6]
    card = prior_card(prior_record(RunFolder.load(tmp_path / "run2")))
    assert "12 sentences drawn in 2 stages with seeds 0, 7" in card
    assert (
        "--output_dir runs/smollm2-ner-prior-2 --init_adapter runs/smollm2-ner-prior --seed 7 --prior_sentences 6"
        in card
    )
    # Where the first stage's folder now holds other weights, its run must be named, and must be the right one.
    shutil.copytree(tmp_path / "run", tmp_path / "run_copy")
    (tmp_path / "run" / "adapter_model.safetensors").write_bytes(b"other weights")
    with pytest.raises(UserError, match="no longer holds those weights"):
        prior_stages(RunFolder.load(tmp_path / "run2"))
    assert len(prior_stages(RunFolder.load(tmp_path / "run2"), previous=tmp_path / "run_copy")) == 2
    with pytest.raises(UserError, match="not the adapter"):
        prior_stages(RunFolder.load(tmp_path / "run2"), previous=tmp_path / "run2")
    # Exported (its tiny base standing in for the default model), with the stages beside the adapter; a card quotes
    # only a benchmark report that scored these very weights.
    monkeypatch.setattr(prior_export, "PRIOR_BASES", (*prior_export.PRIOR_BASES, str(tiny_run_inputs / "model")))
    report = tmp_path / "results.json"
    report.write_text(json.dumps({"fingerprint": {"init_adapters": {"prior": "0" * 64}}, "units": []}))
    with pytest.raises(UserError, match="started from other weights"):
        export_prior(tmp_path / "run2", tmp_path / "shipped", [report], previous=tmp_path / "run_copy")
    sha = hashlib.sha256(prior_export.adapter_bytes(RunFolder.load(tmp_path / "run2"))).hexdigest()
    report.write_text(json.dumps({"fingerprint": {"init_adapters": {"prior": sha}}, "units": []}))
    export_prior(tmp_path / "run2", tmp_path / "shipped", [report], previous=tmp_path / "run_copy")
    assert hashlib.sha256((tmp_path / "shipped" / "adapter_model.safetensors").read_bytes()).hexdigest() == sha
    assert len(json.loads((tmp_path / "shipped" / "prior_stages.json").read_text())["stages"]) == 2
    # Its card alone is rewritten from the shipped folder, with no run folder, under the same check.
    (tmp_path / "shipped" / "README.md").unlink()
    rewrite_card(tmp_path / "shipped", [report])
    assert "12 sentences drawn in 2 stages" in (tmp_path / "shipped" / "README.md").read_text()
    report.write_text(json.dumps({"fingerprint": {"init_adapters": {"prior": "0" * 64}}, "units": []}))
    with pytest.raises(UserError, match="started from other weights"):
        rewrite_card(tmp_path / "shipped", [report])


def test_the_prior_recipe_trains_on_the_whole_mix_and_no_evaluation_target(train_script):
    script_args, _, training_args, _ = train_script.parse_args([str(REPO / "recipes" / "smollm2" / "ner_prior.yaml")])
    assert script_args.setting == "prior" and script_args.prior_corpora is None  # None: all of PRIOR_MIX
    assert not set(PRIOR_MIX) & set(EVALUATION_TARGETS)
    assert training_args.save_strategy == "steps"  # resumable: checkpoints along the way


def test_the_shipped_prior_is_a_small_bfloat16_lora_of_the_default_model_with_its_card():
    folder = resolve_init_adapter("prior", "default")
    assert folder == SHIPPED_PRIOR
    weights = folder / "adapter_model.safetensors"
    assert weights.stat().st_size <= 40 * 2**20
    tensors = load_file(weights)
    assert tensors and all(t.dtype == torch.bfloat16 and torch.isfinite(t).all() for t in tensors.values())
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config["peft_type"] == "LORA" and not config.get("modules_to_save")
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "cc-by-sa-4.0" and card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "none of Few-NERD's 17 INTER test types" in card.text


@pytest.mark.slow
def test_the_shipped_prior_loads_onto_the_default_model(smollm2_path):
    from peft import PeftModel

    from cllmfs_trainer.models import load_model

    model = PeftModel.from_pretrained(load_model("default", dtype="float32"), resolve_init_adapter("prior", None))
    shipped = load_file(SHIPPED_PRIOR / "adapter_model.safetensors")
    loaded = {name: p for name, p in model.named_parameters() if "lora_B" in name}
    assert len(loaded) == sum("lora_B" in k for k in shipped) > 0
    assert all(p.abs().max() > 0 for p in loaded.values())  # the prior's weights, not a fresh LoRA's zero B


def test_the_benchmarks_prior_methods(run_dir, tiny_run_inputs, tmp_path, monkeypatch):
    """`cllmfs_prior` and `lora_prior` continue the shipped prior; `prior_zero_shot` prompts the base with an adapter
    merged and the recipe's decoding, and predicts as a run folder of that adapter does."""
    from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig
    from cllmfs_trainer.benchmark.methods import METHODS, ZeroShotMethod, get_method
    from cllmfs_trainer.inference.generate import EntityExtractor

    assert get_method("cllmfs_prior").overrides == {
        "init_adapter": "prior",
        "init_adapter_merge": True,
        "lora_dropout": 0.0,
        "end_penalty": 1.0,
    }
    assert get_method("lora_prior").overrides == {**get_method("cllmfs_prior").overrides, "cl_weight": 0.0}
    assert get_method("prior_zero_shot").decoding == {"end_penalty": 1.0}
    assert get_method("prior_zero_shot").adapter == "prior" and get_method("prior_zero_shot").same_for_every_seed
    # The shipped prior belongs to the default model: here the tiny run folder stands in for it.
    monkeypatch.setitem(METHODS, "tiny_prior_zero_shot", ZeroShotMethod("tiny_prior_zero_shot", "t", str(run_dir)))
    config = BenchmarkConfig(
        output_dir=str(tmp_path / "b"),
        tasks=["intra:wnut17"],
        methods=["tiny_prior_zero_shot"],
        seeds=[0, 1],
        ks=[1],
        query_size=6,
        recipe=str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"),
        model=str(tiny_run_inputs / "model"),
    )
    benchmark = Benchmark(config)
    records = benchmark.run(progress=False)
    assert [r["seed"] for r in records] == [0, 1] and "reused_from" in records[1]  # one prediction serves every seed
    types = get_dataset("wnut17").types
    merged = benchmark.extractor(None, types, adapter=str(run_dir))
    run = EntityExtractor.from_run(run_dir, types=types)
    assert (merged.answer_format, merged.end_penalty) == (run.answer_format, run.end_penalty) == ("pointer", 3.0)
    query = benchmark.query("wnut17")
    assert [p.spans for p in merged.predict(query)] == [p.spans for p in run.predict(query)]
    # A zero-shot method's own decoding keys replace the recipe's; other keys are refused when it is defined.
    assert benchmark.extractor(None, types, adapter=str(run_dir), decoding={"end_penalty": 0.5}).end_penalty == 0.5
    with pytest.raises(ValueError, match="not prediction keys"):
        ZeroShotMethod("x", "x", decoding={"learning_rate": 1.0})


def test_the_unseen_types_report_leaves_out_the_types_a_prior_corpus_labels(tmp_path):
    from cllmfs_trainer.benchmark.type_subsets import PRIOR_LABELLED, subset_f1, unseen_types_markdown

    def unit(seed, music_tp):
        per_type = {
            "art-music": {"tp": music_tp, "fp": 0, "fn": 0},  # a type CrossNER music labels: left out below
            "person-actor": {"tp": 1, "fp": 1, "fn": 2},
        }
        f1 = 2 * (music_tp + 1) / (2 * (music_tp + 1) + 1 + 2)
        span = {"f1": f1, "per_type": per_type}
        return {
            "dataset": "fewnerd_unseen",
            "setting": "intra",
            "k": 5,
            "method": "cllmfs_prior",
            "seed": seed,
            "span": span,
        }

    assert "art-music" in PRIOR_LABELLED["fewnerd_unseen"]
    assert subset_f1(unit(0, 5), PRIOR_LABELLED["fewnerd_unseen"]) == pytest.approx(2 / 5)  # person-actor alone
    table = unseen_types_markdown([unit(0, 5), unit(1, 1)])
    assert "| intra | 5 | cllmfs_prior | 2 |" in table and "0.4000 ± 0.0000 |" in table
    assert unseen_types_markdown([{**unit(0, 1), "dataset": "wnut17"}]) == ""


def test_the_prior_card_quotes_benchmark_reports(tmp_path):
    from cllmfs_trainer.training.prior_export import benchmark_rows

    def unit(method, seed, f1, **extra):
        return {"setting": "intra", "dataset": "wnut17", "method": method, "seed": seed, "query_size": 1000,
                "span": {"f1": f1}, **extra}  # fmt: skip

    units = [unit("cllmfs_prior", 0, 0.3), unit("cllmfs_prior", 1, 0.4), unit("protobert", 0, 0.1)]
    units += [unit("prior_zero_shot", 0, 0.25), unit("prior_zero_shot", 1, 0.25, reused_from="units/x.json")]
    (tmp_path / "test.json").write_text(json.dumps({"fingerprint": {}, "units": units}))
    dev = {"fingerprint": {"query_split": "dev"}, "units": [unit("lora", 0, 0.2)]}
    (tmp_path / "dev.json").write_text(json.dumps(dev))
    assert benchmark_rows([tmp_path / "test.json", tmp_path / "dev.json"]) == [
        "| wnut17 | 5-shot from the plain base, LoRA only | dev | 1,000 | 1 | 0.200 |",
        "| wnut17 | the prior alone, zero-shot | test | 1,000 | 1 | 0.250 |",
        "| wnut17 | 5-shot from the prior (CLLMFS) | test | 1,000 | 2 | 0.350 ± 0.071 |",
    ]
