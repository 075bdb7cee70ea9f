"""`cllmfs export vllm`: the serve command names the run's adapter and a rank vLLM accepts, and the printed client,
run against a stand-in `openai` module, sends our prompts with each sentence's regex and parses the replies."""

import re
import shlex
import sys
import types

from cllmfs_trainer.cli import main as cli_main
from cllmfs_trainer.data.format import build_completion
from cllmfs_trainer.inference.answer_regex import answer_regex
from cllmfs_trainer.inference.vllm_serving import VLLM_LORA_RANKS, adapter_rank
from cllmfs_trainer.run_folder import RunFolder

WORDS = "Andrew Little met the press in Auckland".split()


def _exported(run_dir, capsys, *extra):
    assert cli_main(["export", "vllm", "--run", str(run_dir), *extra]) == 0
    out = capsys.readouterr().out
    command = next(line for line in out.splitlines() if line.startswith("vllm serve"))
    return shlex.split(command), out[out.index("from openai") :]


def test_serve_command_names_the_adapter_and_its_rank(run_dir, capsys):
    argv, _ = _exported(run_dir, capsys, "--name", "ner")
    run = RunFolder.load(run_dir)
    assert argv[:3] == ["vllm", "serve", run.base_model]
    assert "--enable-lora" in argv
    assert argv[argv.index("--lora-modules") + 1] == f"ner={run_dir.resolve()}"
    rank = int(argv[argv.index("--max-lora-rank") + 1])
    assert rank in VLLM_LORA_RANKS and rank >= adapter_rank(run_dir)


def test_the_printed_client_sends_our_prompts_and_regex(run_dir, capsys, monkeypatch):
    _, client = _exported(run_dir, capsys)
    run = RunFolder.load(run_dir)
    requests = []

    def create(**request):
        requests.append(request)
        reply = build_completion(["Andrew Little"], run.answer_format)  # what a server constrained by the regex writes
        return types.SimpleNamespace(choices=[types.SimpleNamespace(text=reply)])

    openai = types.ModuleType("openai")
    openai.OpenAI = lambda **_: types.SimpleNamespace(completions=types.SimpleNamespace(create=create))
    monkeypatch.setitem(sys.modules, "openai", openai)
    exec(compile(client, "client", "exec"), {})
    assert [r["prompt"] for r in requests] == [run.format.prompt(" ".join(WORDS), t) for t in run.test_types]
    for request in requests:
        assert request["model"] == run_dir.resolve().name and request["temperature"] == 0
        regex = request["extra_body"]["structured_outputs"]["regex"]
        assert regex == answer_regex(WORDS, run.answer_format)
        assert re.fullmatch(regex, build_completion(["Andrew Little"], run.answer_format))
    assert capsys.readouterr().out.splitlines() == [f"{t.label} ['Andrew Little']" for t in run.test_types]


def test_export_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert cli_main(["export", "vllm", "--run", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_export_knows_only_vllm(run_dir, capsys):
    assert cli_main(["export", "tgi", "--run", str(run_dir)]) == 2
    assert "vllm" in capsys.readouterr().err
