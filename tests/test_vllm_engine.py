"""The vLLM engine up to vLLM's inputs and outputs (vLLM itself is never installed here): a stand-in `vllm` module
answers each prompt with the answer our own constrained loop gave it, so the engine's prompts, sampling parameters,
regexes and LoRA request are checked, and its entities must equal our loop's. Also: the one-line error without vLLM,
and the run folder's adapter staying loadable by vLLM (no `modules_to_save`, no added tokens)."""

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cllmfs_trainer.cli import main as cli_main
from cllmfs_trainer.data.format import IM_END
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.generate import EntityExtractor
from cllmfs_trainer.inference.vllm_engine import VLLMEntityExtractor
from cllmfs_trainer.inference.vllm_serving import adapter_rank, vllm_max_lora_rank
from cllmfs_trainer.models.loading import load_tokenizer
from cllmfs_trainer.run_folder import RunFolder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["Ann Lee met Bo in Rome", "nothing to see here", "Zoë ( 42 ) visited U.S. C++ $ and Zoë again"]
MAX_NEW_TOKENS = 48
FAVOUR_END = {"end_penalty": -1.0}


class _Record:
    """vLLM's parameter classes, reduced to what they were given."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.__dict__.update(kwargs)


class _FakeLLM:
    """`vllm.LLM` that answers from a table of prompts and records every call."""

    answers: dict[str, str] = {}
    made: list[dict] = []

    def __init__(self, **kwargs):
        _FakeLLM.made.append(kwargs)
        self.calls = []

    def generate(self, prompts, sampling_params, use_tqdm=True, lora_request=None):
        self.calls.append((prompts, sampling_params, lora_request))
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=self.answers[prompt])]) for prompt in prompts]


@pytest.fixture
def fake_vllm(monkeypatch):
    """A `vllm` package with `LLM`, `SamplingParams`, `LoRARequest` and `StructuredOutputsParams` stand-ins."""
    modules = {
        name: types.ModuleType(name) for name in ("vllm", "vllm.lora", "vllm.lora.request", "vllm.sampling_params")
    }
    modules["vllm"].LLM, modules["vllm"].SamplingParams = _FakeLLM, _Record
    modules["vllm.lora.request"].LoRARequest = _Record
    modules["vllm.sampling_params"].StructuredOutputsParams = _Record
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    _FakeLLM.made.clear()
    return modules


@pytest.fixture(scope="module")
def reference(run_dir):
    """Our own loop's entities on TEXTS, and its answer to every prompt (the tiny random model ends some answers
    only when ending is favoured)."""
    extractor = EntityExtractor.from_run(run_dir, max_new_tokens=MAX_NEW_TOKENS, one_type_per_span=False, **FAVOUR_END)
    answers = {}
    generate = extractor.generate

    def recording(jobs, progress=False):
        texts = generate(jobs, progress)
        answers.update(zip((job.prompt for job in jobs), texts))
        return texts

    extractor.generate = recording
    return extractor.extract(TEXTS, split_sentences=False), answers


def _plain(found):
    return [[(e.start, e.end, e.type, e.text) for e in entities] for entities in found]


def test_vllm_engine_gives_our_loops_entities_from_the_same_prompts(run_dir, fake_vllm, reference):
    expected, answers = reference
    _FakeLLM.answers = answers
    extractor = EntityExtractor.from_run(run_dir, engine="vllm", max_new_tokens=MAX_NEW_TOKENS, one_type_per_span=False)
    assert isinstance(extractor, VLLMEntityExtractor) and not extractor.gives_scores
    found = extractor.extract(TEXTS, split_sentences=False)
    assert _plain(found) == _plain(expected) and any(found)
    assert all(entity.score is None for entities in found for entity in entities)

    run = RunFolder.load(run_dir)
    (made,) = _FakeLLM.made
    assert made["enable_lora"] is True and made["tokenizer"] == str(run_dir)
    assert made["max_lora_rank"] == vllm_max_lora_rank(adapter_rank(run_dir)) >= adapter_rank(run_dir)
    assert made["model"] == str(run.base_model)  # the tiny model's folder, as training loaded it
    ((prompts, params, lora),) = extractor.model.llm.calls
    assert sorted(prompts) == sorted(answers)  # the same prompts as our loop's, no more
    assert lora.args == (run_dir.resolve().name, 1, str(run_dir.resolve()))
    assert len({id(p) for p in params}) == len(TEXTS)  # one regex per sentence, shared by its types
    complete = 0
    for prompt, param in zip(prompts, params):
        assert param.temperature == 0.0 and param.max_tokens == MAX_NEW_TOKENS
        assert param.stop == [IM_END] and param.include_stop_str_in_output
        if IM_END in answers[prompt]:  # our loop's complete answers match the regex vLLM is given
            assert re.fullmatch(param.structured_outputs.regex, answers[prompt]), answers[prompt]
            complete += 1
    assert complete > 0


def test_vllm_engine_refuses_what_needs_our_loop(run_dir, fake_vllm):
    _FakeLLM.answers = {}
    with pytest.raises(UserError, match="end_penalty"):
        EntityExtractor.from_run(run_dir, engine="vllm", end_penalty=2.0)
    with pytest.raises(UserError, match="unknown engine"):
        EntityExtractor.from_run(run_dir, engine="tgi")
    extractor = EntityExtractor.from_run(run_dir, engine="vllm", dtype=torch.bfloat16)
    assert _FakeLLM.made[-1]["dtype"] == "bfloat16"  # vLLM names dtypes as strings
    with pytest.raises(UserError, match="threshold"):
        extractor.extract("Ann met Bo", threshold=0.5)


def test_cli_predict_engine_vllm_writes_what_the_torch_engine_writes(run_dir, fake_vllm, reference, tmp_path):
    _FakeLLM.answers = reference[1]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    outputs = {}
    for engine in ("torch", "vllm"):
        outputs[engine] = tmp_path / f"{engine}.jsonl"
        argv = ["predict", "--run", str(run_dir), "--input", str(source), "--output", str(outputs[engine])]
        argv += ["--max-new-tokens", str(MAX_NEW_TOKENS), "--no-one-type-per-span", "--engine", engine]
        argv += ["--dtype", "float32", "--end-penalty", "-1"] if engine == "torch" else []
        assert cli_main(argv) == 0
    assert outputs["vllm"].read_text(encoding="utf-8") == outputs["torch"].read_text(encoding="utf-8")


def test_engine_vllm_without_vllm_is_one_line_that_says_how_to_install(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is not installed
    argv = ["predict", "--run", str(run_dir), "--text", "Ann met Bo", "--output", str(tmp_path / "o.jsonl")]
    assert cli_main([*argv, "--engine", "vllm"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cllmfs-trainer[vllm]'" in lines[0], lines
    assert not (tmp_path / "o.jsonl").exists()


def test_run_folder_adapter_stays_loadable_by_vllm(run_dir):
    """vLLM refuses adapters with `modules_to_save` or added tokens: our markers are plain text and must stay so."""
    config = json.loads((run_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert not config.get("modules_to_save"), config.get("modules_to_save")
    with safe_open(str(run_dir / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert keys and all("lora_" in key for key in keys), [key for key in keys if "lora_" not in key]
    assert not (run_dir / "added_tokens.json").exists()
    run, tokenizer = RunFolder.load(run_dir), load_tokenizer(run_dir)
    base = load_tokenizer(run.base_model)
    vocab_size = json.loads((Path(run.base_model) / "config.json").read_text())["vocab_size"]
    assert len(tokenizer) == len(base) <= vocab_size
    assert all(token_id < vocab_size for token_id in tokenizer.added_tokens_decoder)
