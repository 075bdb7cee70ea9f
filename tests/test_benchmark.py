"""The benchmark runner end to end on a tiny random model: units, resume after an interruption, the report."""

import json
import shutil

import pytest
import torch
import yaml
from helpers import REPO, shared_dataset

from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig, aggregate
from cllmfs_trainer.benchmark.config import changed_fields
from cllmfs_trainer.benchmark.report import table1_markdown
from cllmfs_trainer.data import get_dataset
from cllmfs_trainer.errors import UsageError


@pytest.fixture(scope="module")
def bench_script():
    from cllmfs_trainer.scripts import benchmark

    return benchmark


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A random 2-layer BERT and a WordPiece tokenizer, saved as a folder: the prototype baselines' encoder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "the", "##s", "@"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    return root


def tiny_config(tiny_run_inputs, out, **overrides):
    params = dict(
        output_dir=str(out),
        tasks=["intra:wnut17"],
        methods=["cllmfs", "lora", "zero_shot"],
        seeds=[0],
        ks=[1],
        query_size=20,
        recipe=str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"),
        model=str(tiny_run_inputs / "model"),
        batch_size=16,
        train_overrides={
            "max_steps": 1,
            "per_device_train_batch_size": 8,
            "lora_target_modules": ["q_proj", "v_proj"],
            "cl_layer": 2,
            "logging_steps": 1,
        },
    )
    return BenchmarkConfig(**{**params, **overrides})


class Interrupt(Exception):
    pass


def test_benchmark_runs_resumes_after_interruption_and_reports(bench_script, tiny_run_inputs, tmp_path):
    config = tiny_config(tiny_run_inputs, tmp_path / "bench")
    trained = []

    def failing_second_training(recipe, overrides, output_dir):
        if trained:
            raise Interrupt  # as if the machine stopped in the middle of the second training
        trained.append(overrides)
        bench_script.train_run(recipe, overrides, output_dir)

    with pytest.raises(Interrupt):
        Benchmark(config, train_fn=failing_second_training).run(progress=False)
    first = Benchmark(config).unit_path(Benchmark(config).units()[0])
    assert first.is_file() and not Benchmark(config).unit_path(Benchmark(config).units()[1]).is_file()
    assert "cl_weight" not in trained[0]  # the cllmfs run (the recipe as written) went first
    assert not list((tmp_path / "bench" / "runs").rglob("*.partial/cllmfs_run.json"))
    done_before = first.stat().st_mtime_ns

    calls = []

    def counting(recipe, overrides, output_dir):
        calls.append(overrides)
        bench_script.train_run(recipe, overrides, output_dir)

    records = Benchmark(config, train_fn=counting).run(progress=False)
    assert first.stat().st_mtime_ns == done_before  # the finished unit was not redone
    assert [c["cl_weight"] for c in calls] == [0.0]  # only the interrupted LoRA-only training ran again
    assert [r["method"] for r in records] == ["cllmfs", "lora", "zero_shot"]
    for record in records:
        assert record["query_size"] == 20 and 0.0 <= record["span"]["f1"] <= 1.0
        assert record["errors"]["n_pred"] == sum(
            record["errors"][k] for k in ("correct", "type", "boundary", "boundary_type", "spurious")
        )
        predictions = (
            tmp_path / "bench" / "units" / "intra-wnut17" / "k1" / "seed0" / f"{record['method']}.predictions.jsonl"
        )
        lines = predictions.read_text().splitlines()
        assert len(lines) == 20 and "tokens" not in json.loads(lines[0])  # ids and spans only, no text
    assert "support_fit" in records[0] and "support_fit" not in records[2]

    # The same query subset for every seed, and a support set that never overlaps it.
    bench = Benchmark(config)
    support = bench.support(bench.units()[0])
    assert not {tuple(s.tokens) for s in support.sentences} & {tuple(s.tokens) for s in bench.query("wnut17")}


def test_inter_targets_share_one_trained_model_and_baselines_use_target_support(
    bench_script, tiny_run_inputs, tiny_bert_dir, tmp_path
):
    shared_dataset("conll2003")
    config = tiny_config(
        tiny_run_inputs,
        tmp_path,
        tasks=["inter:conll2003", "inter:wnut17"],
        methods=["lora", "nnshot", "protobert"],
        encoder=str(tiny_bert_dir),
        query_size=10,
        data_dir=str(shared_dataset("ontonotes5").parent),
    )
    calls = []

    def counting(recipe, overrides, output_dir):
        calls.append(overrides)
        bench_script.train_run(recipe, overrides, output_dir)

    records = Benchmark(config, train_fn=counting).run(progress=False)
    assert len(calls) == 1 and calls[0]["dataset"] == "ontonotes5"  # one OntoNotes model for both targets
    assert [(r["dataset"], r["method"]) for r in records] == [
        ("conll2003", "lora"),
        ("wnut17", "lora"),
        ("conll2003", "nnshot"),
        ("wnut17", "nnshot"),
        ("conll2003", "protobert"),
        ("wnut17", "protobert"),
    ]
    assert "support_fit" in records[0] and "support_fit" not in records[1]  # measured once per trained model
    supports = sorted(p.relative_to(tmp_path / "support").parts[0] for p in (tmp_path / "support").rglob("*.txt"))
    assert supports == ["conll2003", "ontonotes5", "wnut17"]
    for record in records[2:]:
        assert record["span"]["tp"] + record["span"]["fp"] == record["errors"]["n_pred"]


def test_zero_shot_predicts_a_dataset_once_for_every_seed_and_setting(tiny_run_inputs, tmp_path, monkeypatch):
    from cllmfs_trainer.inference.generate import EntityExtractor

    config = tiny_config(
        tiny_run_inputs,
        tmp_path,
        tasks=["intra:wnut17", "inter:wnut17"],
        methods=["zero_shot"],
        seeds=[0, 1],
        query_size=10,
        data_dir=str(shared_dataset("ontonotes5").parent),
    )
    predict, calls = EntityExtractor.predict, []

    def counting(self, sentences, progress=False):
        calls.append(len(sentences))
        return predict(self, sentences, progress)

    monkeypatch.setattr(EntityExtractor, "predict", counting)
    records = Benchmark(config).run(progress=False)
    assert calls == [10]  # no support set or source reaches the prompts: one prediction serves all four units
    assert sorted((r["setting"], r["seed"]) for r in records) == [(s, n) for s in ("inter", "intra") for n in (0, 1)]
    assert sum("reused_from" not in r for r in records) == 1
    assert len({json.dumps(r["span"], sort_keys=True) for r in records}) == 1
    bench = Benchmark(config)
    files = [bench.unit_path(u).with_suffix(".predictions.jsonl").read_text() for u in bench.units()]
    assert len(files) == 4 and len(set(files)) == 1
    inter = next(r for r in records if r["setting"] == "inter")
    intra = next(r for r in records if r["setting"] == "intra")
    assert inter["support_sentences"] != intra["support_sentences"]  # each unit names its own support set
    # A later run narrowed to another seed and one task (`--seeds`, `--tasks`) reuses the units already on disk.
    narrowed = tiny_config(
        tiny_run_inputs,
        tmp_path,
        tasks=["inter:wnut17"],
        methods=["zero_shot"],
        seeds=[2],
        query_size=10,
        data_dir=str(shared_dataset("ontonotes5").parent),
    )
    (later,) = Benchmark(narrowed).run(progress=False)
    assert calls == [10] and later["seed"] == 2 and later["reused_from"].startswith("units/")


def test_inter_units_train_with_the_inter_recipe_and_its_settings_are_compared_on_resume(tiny_run_inputs, tmp_path):
    shared_dataset("conll2003")
    inter_recipe = tmp_path / "inter.yaml"
    original = yaml.safe_load((REPO / "recipes" / "smollm2" / "wnut17_intra.yaml").read_text(encoding="utf-8"))
    inter_recipe.write_text(yaml.safe_dump({**original, "max_steps": 7}), encoding="utf-8")
    config = tiny_config(
        tiny_run_inputs,
        tmp_path / "bench",
        tasks=["intra:wnut17", "inter:conll2003"],
        methods=["lora"],
        inter_recipe=str(inter_recipe),
        data_dir=str(shared_dataset("ontonotes5").parent),
    )
    recipes = {}

    class Stop(Exception):
        pass

    def recording(recipe, overrides, output_dir):
        recipes[overrides["dataset"]] = recipe
        raise Stop  # which recipe was asked for is all this test needs

    bench = Benchmark(config, train_fn=recording)
    bench.prepare()
    for unit in bench.units():
        with pytest.raises(Stop):
            bench.support(unit)
            bench.train(unit, config.method(unit.method).overrides)
    assert recipes == {"wnut17": config.recipe, "ontonotes5": str(inter_recipe)}
    inter_recipe.write_text(yaml.safe_dump({**original, "max_steps": 9}), encoding="utf-8")
    with pytest.raises(ValueError, match="inter_recipe_settings"):
        Benchmark(config).prepare()


def test_an_interrupted_training_resumes_from_its_last_checkpoint(bench_script, tiny_run_inputs, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from cllmfs_trainer.training.trainer import ContrastiveSFTTrainer

    # The dropout RNG is pinned: `auto` times both generators, and two runs may time them apart on a busy machine.
    overrides = {
        "max_steps": 4,
        "lora_target_modules": ["q_proj", "v_proj"],
        "cl_layer": 2,
        "cl_weight": 0.5,
        "lora_dropout_rng": "numpy",
    }
    config = tiny_config(
        tiny_run_inputs, tmp_path / "cut", methods=["cllmfs"], checkpoint_steps=2, train_overrides=overrides
    )
    uninterrupted = tiny_config(
        tiny_run_inputs, tmp_path / "whole", methods=["cllmfs"], checkpoint_steps=0, train_overrides=overrides
    )
    Benchmark(uninterrupted, train_fn=bench_script.train_run).run(progress=False)

    step = ContrastiveSFTTrainer.training_step
    calls = []

    def cut_at_step_3(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupt  # after the checkpoint of step 2 was saved
        return step(self, *args, **kwargs)

    def counting(self, *args, **kwargs):
        calls.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveSFTTrainer, "training_step", cut_at_step_3)
    with pytest.raises(Interrupt):
        Benchmark(config, train_fn=bench_script.train_run).run(progress=False)
    partial = tmp_path / "cut" / "runs" / "wnut17" / "k1" / "seed0" / "cllmfs.partial"
    assert sorted(p.name for p in partial.glob("checkpoint-*")) == ["checkpoint-2"]
    calls.clear()
    monkeypatch.setattr(ContrastiveSFTTrainer, "training_step", counting)

    [record] = Benchmark(config, train_fn=bench_script.train_run).run(progress=False)
    assert len(calls) == 2  # steps 3 and 4 only
    run_dir = partial.with_name("cllmfs")
    run = json.loads((run_dir / "cllmfs_run.json").read_text())
    assert run["resumed_from_step"] == 2 and not list(run_dir.glob("checkpoint-*"))
    # RNG (dropout, noise), data order, optimizer and schedule all resume: the same adapter as without the cut.
    resumed = load_file(run_dir / "adapter_model.safetensors")
    whole = load_file(tmp_path / "whole" / "runs" / "wnut17" / "k1" / "seed0" / "cllmfs" / "adapter_model.safetensors")
    assert resumed.keys() == whole.keys()
    assert any(t.abs().max() > 0 for name, t in whole.items() if "lora_B" in name)  # it trained (B starts at 0)
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    baseline = json.loads(Benchmark(uninterrupted).unit_path(Benchmark(uninterrupted).units()[0]).read_text())
    assert record["span"] == baseline["span"]


def test_pointer_setting_trains_and_predicts_in_its_answer_format(bench_script, tiny_run_inputs, tmp_path, monkeypatch):
    from cllmfs_trainer.inference import answers

    formats = []

    def spy(text, answer_format):
        formats.append(answer_format)
        return parse_output(text, answer_format)

    parse_output = answers.parse_output
    monkeypatch.setattr(answers, "parse_output", spy)
    settings = {"pointer": {"answer_format": "pointer"}}
    config = tiny_config(tiny_run_inputs, tmp_path, methods=["pointer"], settings=settings, fit_on_support=False)
    [record] = Benchmark(config, train_fn=bench_script.train_run).run(progress=False)
    run = json.loads((tmp_path / "runs" / "wnut17" / "k1" / "seed0" / "pointer" / "cllmfs_run.json").read_text())
    assert run["format"]["answer_format"] == "pointer" and record["method"] == "pointer"
    assert formats and set(formats) == {"pointer"} and record["parse_stats"]["outputs"] == len(formats)
    # the probe's precision of the machine it trained on, kept per unit: a resumed report can mix machines
    choices = json.loads((tmp_path / "runs" / "wnut17" / "k1" / "seed0" / "pointer" / "auto_choices.json").read_text())
    assert record["train_dtype"] == choices["dtype"] in ("float32", "bfloat16")


def test_format2_method_trains_and_predicts_with_the_sentence_first(
    bench_script, tiny_run_inputs, tmp_path, monkeypatch
):
    from cllmfs_trainer.inference import generate

    formats = []

    def spy(text, entity_type, prompt_format, *rest):
        formats.append(prompt_format)
        return build_prompt(text, entity_type, prompt_format, *rest)

    build_prompt = generate.build_prompt
    monkeypatch.setattr(generate, "build_prompt", spy)
    config = tiny_config(tiny_run_inputs, tmp_path, methods=["cllmfs_format2"], fit_on_support=False)
    [record] = Benchmark(config, train_fn=bench_script.train_run).run(progress=False)
    run = json.loads((tmp_path / "runs" / "wnut17" / "k1" / "seed0" / "cllmfs_format2" / "cllmfs_run.json").read_text())
    assert run["format"]["prompt_format"] == 2 and record["method"] == "cllmfs_format2"
    assert formats and set(formats) == {2} and record["parse_stats"]["outputs"] == len(formats)


def test_resume_refuses_a_run_with_other_settings(tiny_run_inputs, tmp_path):
    benchmark = Benchmark(tiny_config(tiny_run_inputs, tmp_path / "b", methods=["zero_shot"]))
    assert not (tmp_path / "b").exists()  # constructing a benchmark writes nothing; prepare() claims the folder
    benchmark.prepare()
    assert (tmp_path / "b" / "benchmark.json").is_file()
    tmp_path = tmp_path / "b"
    Benchmark(tiny_config(tiny_run_inputs, tmp_path, methods=["zero_shot"], seeds=[0, 1])).prepare()  # more seeds: fine
    with pytest.raises(ValueError, match="query_size"):
        Benchmark(tiny_config(tiny_run_inputs, tmp_path, methods=["zero_shot"], query_size=10)).prepare()


def test_overwrite_removes_only_what_the_benchmark_wrote(tiny_run_inputs, tmp_path):
    out = tmp_path / "b"
    Benchmark(tiny_config(tiny_run_inputs, out, methods=["zero_shot"])).prepare()
    (out / "runs" / "wnut17").mkdir(parents=True)
    (out / "runs" / "wnut17" / "old.txt").write_text("a unit of the old settings")
    (out / "my_notes.md").write_text("the user's own file")
    (out / "data").mkdir()
    (out / "data" / "keep.txt").write_text("and the user's own folder")
    Benchmark(tiny_config(tiny_run_inputs, out, methods=["zero_shot"], query_size=10), overwrite=True).prepare()
    assert not (out / "runs").exists()  # the old run's units are gone ...
    assert (out / "my_notes.md").read_text() == "the user's own file"  # ... what the benchmark never wrote is not
    assert (out / "data" / "keep.txt").is_file()
    assert json.loads((out / "benchmark.json").read_text())["config"]["query_size"] == 10


def test_resume_accepts_new_settings_but_not_a_changed_one(tiny_run_inputs, tmp_path):
    out = tmp_path / "b"
    first = {"fast": {"max_steps": 2}}
    Benchmark(tiny_config(tiny_run_inputs, out, methods=["zero_shot"], settings=first)).prepare()
    grown = {"fast": {"max_steps": 2}, "slow": {"max_steps": 4}}
    Benchmark(tiny_config(tiny_run_inputs, out, methods=["zero_shot"], settings=grown)).prepare()  # a sweep grows
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["fingerprint"]["settings"] == grown
    # Leaving a setting out keeps its definition on record, so redefining it later is still caught.
    Benchmark(tiny_config(tiny_run_inputs, out, methods=["zero_shot"], settings=first)).prepare()
    assert json.loads((out / "benchmark.json").read_text())["fingerprint"]["settings"] == grown
    changed = {"slow": {"max_steps": 8}}
    with pytest.raises(ValueError, match="settings"):
        Benchmark(tiny_config(tiny_run_inputs, out, methods=["zero_shot"], settings=changed)).prepare()


def test_predict_dtype_reaches_the_extractor_and_the_fingerprint(tiny_run_inputs, tmp_path):
    from cllmfs_trainer.data.registry import get_dataset

    out = tmp_path / "b"
    plain = tiny_config(tiny_run_inputs, out, methods=["zero_shot"])
    assert "predict_dtype" not in plain.fingerprint()  # reports written before the field still match
    bf16 = tiny_config(tiny_run_inputs, out, methods=["zero_shot"], predict_dtype="bfloat16")
    assert bf16.fingerprint()["predict_dtype"] == "bfloat16"
    extractor = Benchmark(bf16).extractor(None, get_dataset("wnut17").types)
    assert next(extractor.model.parameters()).dtype == torch.bfloat16
    Benchmark(bf16).prepare()
    with pytest.raises(ValueError, match="predict_dtype"):  # a finished bfloat16 run is not resumed in float32
        Benchmark(plain).prepare()
    with pytest.raises(ValueError, match="predict_dtype must be one of"):
        tiny_config(tiny_run_inputs, out, predict_dtype="float8")


def test_an_emulated_bfloat16_is_refused_before_any_unit_runs(tiny_run_inputs, tmp_path, monkeypatch):
    from cllmfs_trainer.errors import UserError
    from cllmfs_trainer.models import precision

    config = tiny_config(tiny_run_inputs, tmp_path / "b", methods=["zero_shot"], predict_dtype="bfloat16")
    monkeypatch.setattr(precision, "cpu_matmul_speedup_bf16", lambda: 0.01)  # an AVX2-only CPU's measured ratio
    with pytest.raises(UserError, match=r"predict_dtype: bfloat16 matmuls run at 0.01x .* about 100x longer"):
        Benchmark(config).run(progress=False)
    benchmark = Benchmark(config)
    assert not [unit for unit in benchmark.units() if benchmark.unit_path(unit).exists()]
    monkeypatch.setattr(precision, "cpu_matmul_speedup_bf16", lambda: 1.8)
    precision.check_bf16_not_emulated("predict_dtype")  # native bfloat16 passes


def test_resume_compares_recipe_settings_not_comments(tiny_run_inputs, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    original = (REPO / "recipes" / "smollm2" / "wnut17_intra.yaml").read_text(encoding="utf-8")
    recipe.write_text(original, encoding="utf-8")
    out = tmp_path / "bench"
    Benchmark(tiny_config(tiny_run_inputs, out, recipe=str(recipe))).prepare()
    recipe.write_text("# a new comment\n" + original, encoding="utf-8")
    Benchmark(tiny_config(tiny_run_inputs, out, recipe=str(recipe))).prepare()  # same settings: resumes
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(original, encoding="utf-8")
    Benchmark(tiny_config(tiny_run_inputs, out, recipe=str(pinned))).prepare()  # a pinned copy: resumes too
    # A run folder from before settings were compared (it stored the raw text) resumes too.
    saved = json.loads((out / "benchmark.json").read_text())
    saved["fingerprint"]["recipe_text"] = original
    saved["fingerprint"]["recipe"] = "an/older/path.yaml"
    del saved["fingerprint"]["recipe_settings"]
    (out / "benchmark.json").write_text(json.dumps(saved))
    Benchmark(tiny_config(tiny_run_inputs, out, recipe=str(recipe))).prepare()
    recipe.write_text(original.replace("learning_rate: 1.0e-3", "learning_rate: 5.0e-4"), encoding="utf-8")
    with pytest.raises(ValueError, match="recipe_settings"):
        Benchmark(tiny_config(tiny_run_inputs, out, recipe=str(recipe))).prepare()


def test_restore_from_a_report_marks_its_units_done_on_a_fresh_output_dir(
    bench_script, tiny_run_inputs, tmp_path, caplog
):
    from cllmfs_trainer.benchmark import Unit, write_report

    def record(method, seed, f1):
        errors = dict.fromkeys(["correct", "boundary", "type", "boundary_type", "spurious", "missed"], 0)
        return {
            "setting": "intra",
            "dataset": "wnut17",
            "k": 1,
            "seed": seed,
            "method": method,
            "query_size": 20,
            "span": {"precision": f1, "recall": f1, "f1": f1},
            "string": {"f1": f1},
            "errors": errors,
        }

    old = tiny_config(tiny_run_inputs, tmp_path / "old", methods=["cllmfs", "zero_shot", "nnshot"], seeds=[0, 1])
    records = [
        record("cllmfs", 0, 0.2),
        record("zero_shot", 0, 0.0),
        record("cllmfs", 1, 0.4),
        record("zero_shot", 1, 0.0),
        record("nnshot", 0, 0.1),
    ]
    report = (
        write_report(records, tmp_path / "report", old.model, old.query_note(), fingerprint=old.fingerprint())
        / "results.json"
    )

    fresh = tiny_config(tiny_run_inputs, tmp_path / "fresh", methods=["cllmfs", "zero_shot"], seeds=[0, 1, 2])
    bench = Benchmark(fresh)
    finished = bench.unit_path(Unit("intra", "wnut17", 1, 1, "cllmfs"))
    finished.parent.mkdir(parents=True)
    finished.write_text(json.dumps(record("cllmfs", 1, 0.9)))  # measured here: a restore must not replace it
    assert bench.restore_from(report) == 3  # cllmfs seed 0, zero_shot seeds 0-1; nnshot is not in this benchmark
    assert json.loads(finished.read_text())["span"]["f1"] == 0.9
    restored = json.loads(bench.unit_path(Unit("intra", "wnut17", 1, 0, "cllmfs")).read_text())
    assert restored["span"]["f1"] == 0.2 and restored["restored_from"] == str(report)
    assert not bench.unit_path(Unit("intra", "wnut17", 1, 0, "nnshot")).exists()
    # Restored units have no predictions, so zero-shot prompting of seed 2 cannot reuse them.
    assert bench._same_dataset_unit(Unit("intra", "wnut17", 1, 2, "zero_shot")) is None
    assert bench.restore_from(report) == 0  # idempotent

    # A report of other settings is refused, naming what differs.
    with pytest.raises(ValueError, match="query"):
        Benchmark(tiny_config(tiny_run_inputs, tmp_path / "q", query_size=10)).restore_from(report)
    with pytest.raises(ValueError, match="train_overrides"):
        Benchmark(tiny_config(tiny_run_inputs, tmp_path / "o", train_overrides={"max_steps": 2})).restore_from(report)
    # An older report without a fingerprint restores, with a warning that says what was not checked.
    legacy = json.loads(report.read_text())
    del legacy["fingerprint"]
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    with caplog.at_level("WARNING"):
        assert Benchmark(tiny_config(tiny_run_inputs, tmp_path / "l")).restore_from(tmp_path / "legacy.json") == 2
    assert "no fingerprint" in caplog.text

    # Through the script: everything restored, nothing to train, and the new report carries the fingerprint.
    config = tiny_config(tiny_run_inputs, tmp_path / "cli", methods=["cllmfs", "zero_shot"], seeds=[0, 1])
    out = bench_script.main(bench_script.BenchmarkArguments(config, tmp_path / "cli_report", restore_from=report))
    written = json.loads((out / "results.json").read_text())
    assert written["fingerprint"] == json.loads(json.dumps(config.fingerprint()))
    assert len(written["units"]) == 4 and all("restored_from" in u for u in written["units"])


def test_config_errors_name_the_field(tiny_run_inputs, tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        tiny_config(tiny_run_inputs, tmp_path, methods=["bert"])
    with pytest.raises(ValueError, match="intra:<dataset>"):
        tiny_config(tiny_run_inputs, tmp_path, tasks=["wnut17"])
    with pytest.raises(ValueError, match="recipe"):
        tiny_config(tiny_run_inputs, tmp_path, recipe=None)


def test_report_tables_and_chart(bench_script, tmp_path):
    def record(method, seed, f1, dataset="wnut17", setting="intra"):
        errors = {"correct": 1, "boundary": 2, "type": 0, "boundary_type": 0, "spurious": 3, "missed": 4}
        return {
            "setting": setting,
            "dataset": dataset,
            "k": 5,
            "seed": seed,
            "method": method,
            "query_size": 20,
            "span": {"precision": f1, "recall": f1, "f1": f1},
            "string": {"f1": f1},
            "errors": errors,
        }

    records = [
        record("cllmfs", 0, 0.2),
        record("cllmfs", 1, 0.4),
        record("nnshot", 0, 0.1),
        record("lora", 0, 0.3, "conll2003", "inter"),
    ]
    summaries = aggregate(records)
    cllmfs = next(s for s in summaries if s["method"] == "cllmfs")
    assert cllmfs["span_f1"]["mean"] == pytest.approx(0.3) and cllmfs["span_f1"]["std"] == pytest.approx(0.1414, 1e-3)
    assert cllmfs["errors"]["spurious"] == 6
    table = table1_markdown(summaries, 5, "tiny", "20 sentences")
    assert "0.3000 ± 0.1414" in table and "*0.5250*" in table and "paper" in table
    assert table.index("| INTRA |") < table.index("| INTER |") and "overrides" not in table
    assert "in INTER they use the target's K-shot support set" not in table  # no INTER baseline rows here
    inter_nnshot = aggregate([*records, record("nnshot", 0, 0.1, "conll2003", "inter")])
    caption = table1_markdown(inter_nnshot, 5, "tiny", "20")
    assert "NNShot cannot label types they have no examples of, so in INTER they use the target's K-shot" in caption
    assert "NNShot with their frozen encoder" in caption and "OntoNotes" not in caption
    both = aggregate([*records, *(record(m, 0, 0.1, "conll2003", "inter") for m in ("nnshot", "container", "proml"))])
    caption = table1_markdown(both, 5, "tiny", "20")
    assert "NNShot, CONTaiNER and ProML cannot label types" in caption
    assert "; CONTaiNER and ProML after training their encoder on OntoNotes." in caption
    # A run whose trained methods changed the recipe says so in the caption.
    assert "recipe overrides: prompt_format=2." in table1_markdown(summaries, 5, "tiny", "20", "prompt_format=2")
    from cllmfs_trainer.benchmark import write_report

    out = write_report(records, tmp_path / "report", "tiny", "20 sentences")
    assert {p.name for p in out.iterdir()} == {"results.json", "table1.md", "details.md", "paired.md", "f1_k5.png"}
    assert (out / "f1_k5.png").read_bytes()[:4] == b"\x89PNG"


def test_paired_report_compares_methods_seed_by_seed():
    from cllmfs_trainer.benchmark.report import paired_markdown

    def record(method, seed, f1, boundary, correct, setting="intra"):
        errors = {"correct": correct, "boundary": boundary, "type": 1, "boundary_type": 1, "spurious": 0, "missed": 0}
        return {
            "setting": setting,
            "dataset": "conll2003",
            "k": 5,
            "seed": seed,
            "method": method,
            "span": {"f1": f1},
            "errors": errors,
        }

    records = [
        record("cllmfs", 0, 0.30, 0, 8),
        record("cllmfs", 1, 0.20, 2, 6),
        record("cllmfs", 2, 0.25, 0, 4),
        record("lora", 0, 0.10, 3, 5),
        record("lora", 1, 0.30, 3, 5),  # seed 2 unfinished: not paired
        record("lora", 0, 0.5, 0, 1, setting="inter"),
    ]  # no CLLMFS unit to pair with
    table = paired_markdown(records)
    rows = [line for line in table.splitlines() if line.startswith("| INTRA")]
    # Seeds 0-1: F1 differences +0.20 and -0.10. Boundary errors (boundary + boundary_type) over predictions that
    # overlap gold (those + correct + type): CLLMFS (1 + 3) / (10 + 10), LoRA (4 + 4) / (10 + 10).
    assert rows == ["| INTRA | CoNLL'03 | 5 | LoRA only | 2 | +0.0500 ± 0.2121 | 1/2 | 4/20 (0.20) | 8/20 (0.40) |"]
    assert "| INTER" not in table and paired_markdown(records[3:]) == ""


def test_report_kshot_curve(tmp_path):
    def record(k, seed, f1):
        errors = dict.fromkeys(["correct", "boundary", "type", "boundary_type", "spurious", "missed"], 0)
        return {
            "setting": "intra",
            "dataset": "wnut17",
            "k": k,
            "seed": seed,
            "method": "cllmfs",
            "query_size": 20,
            "span": {"precision": f1, "recall": f1, "f1": f1},
            "string": {"f1": f1},
            "errors": errors,
        }

    from cllmfs_trainer.benchmark import write_report

    records = [record(5, 0, 0.1), record(5, 1, 0.3), record(10, 0, 0.4), record(20, 0, 0.5)]
    out = write_report(records, tmp_path / "report", "tiny", "20 sentences")
    assert {"kshot.md", "f1_by_k.png", "f1_k10.png"} <= {p.name for p in out.iterdir()}
    row = next(line for line in (out / "kshot.md").read_text().splitlines() if "CLLMFS" in line)
    assert row.split(" | ")[3:] == ["0.2000 ± 0.1414", "0.4000 (1 seed)", "0.5000 (1 seed) |"]
    # With K=5 on 3 seeds and K=10 on 2, the unfinished cell says so instead of passing for a 3-seed mean.
    out = write_report([*records, record(5, 2, 0.2), record(10, 1, 0.6)], tmp_path / "report3", "tiny", "20")
    row = next(line for line in (out / "kshot.md").read_text().splitlines() if "CLLMFS" in line)
    assert row.split(" | ")[3:5] == ["0.2000 ± 0.1000", "0.5000 ± 0.1414 (2 seeds)"]
    assert (out / "f1_by_k.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_overrides_and_unknown_keys(bench_script, tmp_path):
    yaml_file = tmp_path / "b.yaml"
    yaml_file.write_text(f"output_dir: {tmp_path / 'out'}\ntasks: [intra:wnut17]\nmethods: [zero_shot]\n")
    args = bench_script.parse_args([str(yaml_file), "--seeds", "[3, 4]", "--query_size", "7"])
    assert (args.config.seeds, args.config.query_size, args.report_dir) == ([3, 4], 7, tmp_path / "out" / "report")
    with pytest.raises(UsageError, match="sedes: unknown key; did you mean 'seeds'"):
        bench_script.parse_args([str(yaml_file), "--sedes", "[1]"])


def test_a_subset_run_reports_every_finished_unit(bench_script, tiny_run_inputs, tmp_path, monkeypatch):
    yaml_file = tmp_path / "b.yaml"
    yaml_file.write_text(
        f"output_dir: {tmp_path / 'out'}\nreport_dir: {tmp_path / 'report'}\ntasks: [intra:wnut17]\n"
        f"methods: [zero_shot]\nseeds: [0, 1]\nks: [1]\nquery_size: 3\nmodel: {tiny_run_inputs / 'model'}\n"
    )
    reported = []  # the seeds each report written covered
    write_report = bench_script.write_report

    def recording(records, *args, **kwargs):
        reported.append(sorted(r["seed"] for r in records))
        return write_report(records, *args, **kwargs)

    monkeypatch.setattr(bench_script, "write_report", recording)
    for seeds in ("[1]", "[0]"):
        args = bench_script.parse_args([str(yaml_file), "--seeds", seeds])
        assert args.config.seeds == json.loads(seeds) and args.report_config.seeds == [0, 1]
        report = bench_script.main(args)
        units = json.loads((report / "results.json").read_text())["units"]
        assert sorted(u["seed"] for u in units) == ([1] if seeds == "[1]" else [0, 1])  # seed 1 stays in the report
    # Rewritten as each unit finished (a run cut off later keeps it), then once more at the end.
    assert reported == [[1], [1], [0, 1], [0, 1]]
    widened = bench_script.parse_args([str(yaml_file), "--seeds", "[5]"]).report_config
    assert widened.seeds == [0, 1, 5]  # a seed outside the file's list is reported too
    assert bench_script.parse_args([str(yaml_file)]).report_config is None


def test_a_subset_run_on_a_fresh_output_dir_keeps_the_reports_other_units(bench_script, tiny_run_inputs, tmp_path):
    yaml_file = tmp_path / "b.yaml"
    yaml_file.write_text(
        f"output_dir: {tmp_path / 'out'}\nreport_dir: {tmp_path / 'report'}\ntasks: [intra:wnut17]\n"
        f"methods: [zero_shot]\nseeds: [0, 1]\nks: [1]\nquery_size: 3\nmodel: {tiny_run_inputs / 'model'}\n"
    )
    report = bench_script.main(bench_script.parse_args([str(yaml_file), "--seeds", "[0]"])) / "results.json"
    committed = report.read_text()
    shutil.rmtree(tmp_path / "out")  # a fresh clone: the committed report, no run folders
    # Without --restore-from the seed-1 run would rewrite the report with seed 1 only: refused, the report untouched.
    with pytest.raises(UsageError, match=r"holds 1 finished units .*--restore-from"):
        bench_script.main(bench_script.parse_args([str(yaml_file), "--seeds", "[1]"]))
    assert report.read_text() == committed
    # With it, the subset run restores seed 0 although it runs seed 1 alone, and the report keeps both.
    args = bench_script.parse_args([str(yaml_file), "--seeds", "[1]", "--restore-from", str(report)])
    units = json.loads((bench_script.main(args) / "results.json").read_text())["units"]
    assert sorted((u["seed"], "restored_from" in u) for u in units) == [(0, True), (1, False)]


def test_a_subset_run_reports_against_the_files_reference(bench_script, tiny_run_inputs, tmp_path):
    yaml_file = tmp_path / "b.yaml"
    yaml_file.write_text(
        f"output_dir: {tmp_path / 'out'}\ntasks: [intra:wnut17]\nmethods: [zero_shot, protobert]\nseeds: [0]\n"
        f"ks: [1]\nquery_size: 3\nmodel: {tiny_run_inputs / 'model'}\nreference: zero_shot\n"
    )
    args = bench_script.parse_args([str(yaml_file), "--methods", "[protobert]"])
    # The subset alone cannot compare with zero_shot, but its report covers both methods and keeps the file's choice.
    assert args.config.reference == "protobert" and args.report_config.reference == "zero_shot"
    yaml_file.write_text(yaml_file.read_text().replace("reference: zero_shot\n", ""))
    args = bench_script.parse_args([str(yaml_file), "--methods", "[protobert]"])
    assert args.report_config.methods == ["zero_shot", "protobert"] and args.report_config.reference == "zero_shot"


@pytest.mark.parametrize(
    "path",
    sorted([*(REPO / "recipes").rglob("*benchmark*.yaml"), *(REPO / "bench" / "configs").glob("*benchmark*.yaml")]),
    ids=lambda p: p.name,
)
def test_shipped_benchmark_configs_parse(bench_script, path):
    args = bench_script.parse_args([str(path)])
    config, report_dir = args.config, args.report_dir
    assert path.read_text().startswith("#") and "Hardware target" in path.read_text().split("\n\n")[0]
    assert (REPO / config.recipe).is_file() and str(report_dir).startswith("bench/results/")
    assert config.inter_recipe is None or (REPO / config.inter_recipe).is_file()


def test_kshot_benchmark_shares_the_main_benchmarks_units(bench_script):
    """The K-shot curve reuses the 100-sentence benchmark's K=5 CoNLL'03 units: same output_dir, same fingerprint."""
    main_args = bench_script.parse_args([str(REPO / "bench/configs/smollm2_benchmark_100.yaml")])
    kshot_args = bench_script.parse_args([str(REPO / "bench/configs/smollm2_benchmark_kshot_100.yaml")])
    main, main_report = main_args.config, main_args.report_dir
    kshot, kshot_report = kshot_args.config, kshot_args.report_dir
    assert kshot.output_dir == main.output_dir and kshot_report != main_report
    assert changed_fields(main.fingerprint(), kshot.fingerprint()) == []  # methods and their definitions may differ
    assert set(kshot.tasks) <= set(main.tasks) and set(kshot.ks) & set(main.ks) == {5}
    assert "cllmfs" in set(kshot.methods) & set(main.methods)


def test_a_sweep_is_a_benchmark_of_settings_on_the_dev_split(bench_script, tiny_run_inputs, tmp_path):
    settings = {"lr_low": {"learning_rate": 1.0e-5}, "no_cl": {"cl_weight": 0.0}}
    config = tiny_config(
        tiny_run_inputs,
        tmp_path / "sweep",
        methods=["lr_low", "no_cl"],
        settings=settings,
        query_split="dev",
        query_size=4,
        reference="no_cl",
    )
    assert config.query_note() == "4 random dev sentences (query_seed 0) per dataset"
    assert config.fingerprint()["query_split"] == "dev" and config.fingerprint()["settings"] == settings
    assert "query_split" not in tiny_config(tiny_run_inputs, tmp_path / "b").fingerprint()  # old reports still match
    records = Benchmark(config, train_fn=bench_script.train_run).run(progress=False)
    assert sorted(r["method"] for r in records) == ["lr_low", "no_cl"]
    dev_ids = {s.id for s in get_dataset("wnut17").load("dev").sentences}
    predicted = (tmp_path / "sweep/units/intra-wnut17/k1/seed0/lr_low.predictions.jsonl").read_text().splitlines()
    assert len(predicted) == 4 and all(json.loads(line)["id"] in dev_ids for line in predicted)
    out = bench_script.main(bench_script.BenchmarkArguments(config, tmp_path / "report", report_only=True))
    assert "no_cl" in (out / "paired.md").read_text().splitlines()[2] and "lr_low" in (out / "paired.md").read_text()
    with pytest.raises(ValueError, match="name of a method"):
        tiny_config(tiny_run_inputs, tmp_path / "c", settings={"nnshot": {"learning_rate": 1.0}})


def test_a_benchmark_training_sets_its_overrides_on_the_parsed_recipe(bench_script):
    from cllmfs_trainer.scripts import train

    recipe = str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml")
    # YAML reads `1e-3` as a string; the command line's type reads it as the float it means.
    overrides = {
        "learning_rate": "1e-3",
        "k": 1,
        "lora_target_modules": ["q_proj", "v_proj"],
        "output_dir": "/tmp/unit",
    }
    script_args, _, training_args, model_args = bench_script.recipe_arguments(train, recipe, overrides)
    assert training_args.learning_rate == 1e-3 and training_args.output_dir == "/tmp/unit"
    assert script_args.k == 1 and model_args.lora_target_modules == ["q_proj", "v_proj"]
    with pytest.raises(UsageError, match="cl_wieght: unknown recipe key"):
        bench_script.recipe_arguments(train, recipe, {"cl_wieght": 0.1})
    with pytest.raises(UsageError, match="cl_weight must be >= 0"):
        bench_script.recipe_arguments(train, recipe, {"cl_weight": -1.0})
