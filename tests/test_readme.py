"""README.md is the front door (and the PyPI long description): short, and every snippet in it runs.

Each Python block of the README is run here with a check of what it shows; `test_every_python_block_is_run` fails
when a block is added that no test runs. The quickstart's `cllmfs prepare` excerpt is compared with the real
summary, and its description of `cllmfs predict` output with a real prediction. Links, paths and names in the
README are checked by tests/test_docs.py.
"""

import json
import re

import pytest
from helpers import REPO

README = REPO / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


def readme_snippet(heading: str) -> str:
    """The first Python block of the section whose `## ` heading starts with `heading`."""
    text = README.read_text(encoding="utf-8")
    section = re.split(rf"^## {re.escape(heading)}.*\n", text, maxsplit=1, flags=re.M)[1].split("\n## ", 1)[0]
    return re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)


RUN_HERE = ("Quickstart", "Few-shot data", "The trainer")


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"


def test_every_python_block_is_run():
    assert sorted(python_blocks()) == sorted(readme_snippet(heading) for heading in RUN_HERE)


@pytest.mark.slow
def test_few_shot_data_snippet_runs(smollm2_tokenizer, capsys):
    exec(compile(readme_snippet("Few-shot data"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    counts = eval(out.splitlines()[0])
    assert set(counts) == {"corporation", "creative-work", "group", "location", "person", "product"}
    assert min(counts.values()) >= 5
    assert out.splitlines()[1].startswith("<im_start> I can extract entities for you, the extracted entities are")


@pytest.mark.slow
def test_trainer_snippet_runs(smollm2_path, tmp_path, monkeypatch):
    snippet = readme_snippet("The trainer")
    for setting in ("max_steps=60,", "per_device_train_batch_size=8,"):
        assert setting in snippet
    # One step of two samples: the wiring is what is tested here (tests/test_trainer*.py test the training).
    snippet = snippet.replace("max_steps=60,", "max_steps=1,").replace("batch_size=8,", "batch_size=2,")
    monkeypatch.chdir(tmp_path)  # it writes runs/mine
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    assert trainer.cl_layer == 24  # cl_layer=0.8125 of SmolLM2's 30 blocks, as docs/method.md says


@pytest.mark.slow
def test_prepare_excerpt_is_the_real_summary(smollm2_tokenizer, tmp_path):
    """The quickstart's `cllmfs prepare` lines are what the command prints."""
    import argparse

    from cllmfs_trainer.cli.prepare import prepare

    text = README.read_text(encoding="utf-8")
    command = re.search(r"^cllmfs prepare (.*)$", text, re.M).group(1).split()
    assert command[:4] == ["--dataset", "wnut17", "--k", "5"] and "--model" in command
    excerpt = re.search(r"prints a JSON summary.*?\n```\n(.*?)```", text, re.S).group(1)
    shown = json.loads("{" + excerpt.strip().rstrip(",") + "}")
    args = argparse.Namespace(
        dataset="wnut17",
        setting="intra",
        k=5,
        seed=0,
        support_set=None,
        types_file=None,
        data_dir=None,
        query_size=None,
        output=str(tmp_path),
    )
    summary = prepare(args, smollm2_tokenizer)
    assert {key: summary[key] for key in shown} == shown


@pytest.fixture(scope="module")
def tiny_run(tiny_run_inputs, tmp_path_factory):
    """A real run folder from the training script: one step on the tiny random model."""
    from cllmfs_trainer.scripts import train

    out = tmp_path_factory.mktemp("readme_run")
    args = [
        str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"),
        *("--model_name_or_path", str(tiny_run_inputs / "model")),
        *("--support_set", str(tiny_run_inputs / "support.txt")),
        *("--n_types", "person", "--k", "1", "--max_steps", "1", "--cl_layer", "2"),
        *("--lora_target_modules", "q_proj", "v_proj", "--per_device_train_batch_size", "4"),
        *("--output_dir", str(out), "--report_to", "none"),
    ]
    train.main(*train.parse_args(args))
    return out


def test_quickstart_python_snippet_runs(tiny_run, capsys):
    snippet = readme_snippet("Quickstart")
    assert '"runs/smollm2-wnut17-intra"' in snippet
    namespace: dict = {}
    exec(compile(snippet.replace('"runs/smollm2-wnut17-intra"', repr(str(tiny_run))), "README.md", "exec"), namespace)
    text = "Andrew Little met the press in Auckland. He flew home."
    assert all(0 <= e.start < e.end <= len(text) and text[e.start : e.end] == e.text for e in namespace["entities"])
    assert all(0 <= e.score <= 1 for e in namespace["entities"])
    assert capsys.readouterr().out.startswith("[")  # the printed list of entities


def test_quickstart_describes_the_real_predict_output(tiny_run, tmp_path, capsys):
    from cllmfs_trainer.cli import main

    text = README.read_text(encoding="utf-8")
    command = re.search(r"^cllmfs predict (--run \S+ --text .*)$", text, re.M).group(1)
    sentence = re.search(r'--text "([^"]+)"', command).group(1)
    assert main(["predict", "--run", str(tiny_run), "--text", sentence, "--output", str(tmp_path / "p.jsonl")]) == 0
    (line,) = (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert set(record) == {"text", "entities"} and record["text"] == sentence
    assert all(set(entity) == {"start", "end", "type", "text"} for entity in record["entities"])
    stats = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{key}`" in quickstart for key in stats), f"README's statistics keys differ from {sorted(stats)}"
