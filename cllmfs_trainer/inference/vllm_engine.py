"""Prediction through vLLM (`EntityExtractor.from_run(..., engine="vllm")`, `cllmfs predict --engine vllm`), for GPU
fleets: the run's LoRA adapter served over its base model, greedy decoding, each answer constrained by its sentence's
regex (`cllmfs_trainer.inference.answer_regex`), which is the same for every type of a sentence, so vLLM's grammar
cache serves them all.

Only the decoding changes. The prompts come from the same prompt builder, the answers go through the same parser
and the same mapping onto the sentence (`EntityExtractor._collect`), so the output has the same format as our own
loop's. What vLLM does not give: entity scores (`threshold`), the end penalty and one type per span, which act on
the scores of single tokens inside our loop.

vLLM is an optional extra (`pip install 'cllmfs-trainer[vllm]'`, CUDA only). It is never installed in CI: this
module is tested up to vLLM's inputs and outputs, with a stand-in for vLLM (`tests/test_vllm_engine.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cllmfs_trainer.data.format import IM_END
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.inference.answer_pieces import DEFAULT_MAX_ENTITY_WORDS
from cllmfs_trainer.inference.answer_regex import answer_regex
from cllmfs_trainer.inference.answers import Job
from cllmfs_trainer.inference.generate import EntityExtractor
from cllmfs_trainer.inference.vllm_serving import INSTALL_HINT, adapter_rank, vllm_max_lora_rank
from cllmfs_trainer.models import load_tokenizer
from cllmfs_trainer.models.loading import resolve_model
from cllmfs_trainer.run_folder import RunFolder

logger = logging.getLogger(__name__)

ENGINES = ("torch", "vllm")


class VLLMNotInstalledError(UserError):
    """`--engine vllm` without vLLM installed."""


def import_vllm() -> Any:
    """The `vllm` module, or a `VLLMNotInstalledError` that says how to install it."""
    try:
        import vllm
    except ImportError:
        raise VLLMNotInstalledError(
            f"the vllm engine needs vLLM, which is not installed; install it with {INSTALL_HINT} (a CUDA GPU is "
            "needed), or leave out --engine vllm"
        ) from None
    return vllm


class VLLMEngine:
    """Answers prompts with vLLM: the run's adapter as a `LoRARequest`, greedy, each prompt under its regex.

    Args:
        run (`RunFolder`):
            A run folder with a LoRA adapter (`weights: adapter`).
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Bound on generated tokens per prompt (the answer prefix included, as in our loop).
        max_entity_words (`int`, *optional*, defaults to `DEFAULT_MAX_ENTITY_WORDS`):
            Longest entity the regex allows, in words.
        llm (`Any`, *optional*):
            A `vllm.LLM` already made with `enable_lora=True`; by default one is made over the run's base model.
        llm_kwargs (`dict[str, Any]`, *optional*):
            More `vllm.LLM` arguments (`gpu_memory_utilization`, `tensor_parallel_size`, ...).
    """

    def __init__(
        self,
        run: RunFolder,
        max_new_tokens: int = 64,
        max_entity_words: int = DEFAULT_MAX_ENTITY_WORDS,
        llm: Any = None,
        **llm_kwargs: Any,
    ) -> None:
        if run.weights != "adapter":
            raise UserError(f"{run.path}: the vllm engine serves LoRA adapters; this run holds full weights")
        self.vllm = import_vllm()
        from vllm.lora.request import LoRARequest

        self.max_new_tokens = max_new_tokens
        self.max_entity_words = max_entity_words
        self.answer_format = run.answer_format
        rank = vllm_max_lora_rank(adapter_rank(run.path))
        if llm is None:
            # The base model as training saw it (the embedded default: its converted local folder).
            llm_kwargs = {"max_lora_rank": rank, "tokenizer": str(run.path), **llm_kwargs}
            llm = self.vllm.LLM(model=resolve_model(run.base_model), enable_lora=True, **llm_kwargs)
        self.llm = llm
        self.lora_request = LoRARequest(run.path.resolve().name, 1, str(run.path.resolve()))
        self.generation_config = None  # plain greedy: nothing for `is_plain_greedy` to read

    def eval(self) -> VLLMEngine:
        """Nothing to switch: vLLM always predicts (`EntityExtractor` calls `model.eval()`)."""
        return self

    def sampling_params(self, words: Sequence[str], constrained: bool = True) -> Any:
        """Greedy decoding up to ` <im_end>` (kept in the text, so the parser sees a complete answer), under the
        sentence's regex when `constrained`."""
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if constrained:
            structured = StructuredOutputsParams(regex=answer_regex(words, self.answer_format, self.max_entity_words))
        return self.vllm.SamplingParams(
            temperature=0.0,
            max_tokens=self.max_new_tokens,
            stop=[IM_END],
            include_stop_str_in_output=True,
            structured_outputs=structured,
        )

    def answer(self, jobs: Sequence[Job], constrained: bool = True, progress: bool = False) -> list[str]:
        """The decoded answer of every job, in job order (one `LLM.generate` call; vLLM batches it itself)."""
        params: dict[tuple[str, ...], Any] = {}  # one per sentence, shared by its types' prompts
        per_job = [params.setdefault(tuple(job.words), self.sampling_params(job.words, constrained)) for job in jobs]
        outputs = self.llm.generate(
            [job.prompt for job in jobs], per_job, use_tqdm=progress, lora_request=self.lora_request
        )
        return [output.outputs[0].text for output in outputs]


class VLLMEntityExtractor(EntityExtractor):
    """`EntityExtractor` whose answers come from vLLM; everything else (prompts, parsing, offsets) is its own.

    Args:
        engine (`VLLMEngine`):
            The vLLM engine over the run.
        tokenizer (`Any`):
            The run's tokenizer (the extractor reads its pad token; vLLM tokenises the prompts itself).
        types (`Sequence[EntityType]`):
            Types to extract.
        kwargs (`dict[str, Any]`, *optional*):
            `EntityExtractor` arguments; `end_penalty` and `one_type_per_span` are refused (they need our loop).
    """

    def __init__(self, engine: VLLMEngine, tokenizer: Any, types: Sequence[EntityType], **kwargs: Any) -> None:
        for name in ("end_penalty", "one_type_per_span"):
            if kwargs.get(name):
                raise UserError(f"{name} acts on token scores inside our own decoding loop; the vllm engine has none")
        kwargs["max_new_tokens"] = engine.max_new_tokens
        super().__init__(engine, tokenizer, types, compact_decoding=False, **kwargs)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        types: Sequence[EntityType] | None = None,
        dtype: str | None = None,
        llm: Any = None,
        **kwargs: Any,
    ) -> VLLMEntityExtractor:
        """Serve a run folder's adapter with vLLM; the run's format, and its types unless `types` are given.

        Args:
            run_dir (`str` or `Path`):
                The run folder.
            types (`Sequence[EntityType]`, *optional*):
                Types to extract (default: the run's test types).
            dtype (`str`, *optional*):
                vLLM's `dtype` (`"auto"`: the model's own precision).
            llm (`Any`, *optional*):
                A `vllm.LLM` made with `enable_lora=True`, to share one engine between runs.
            kwargs (`dict[str, Any]`, *optional*):
                `EntityExtractor` arguments (`batch_size` is ignored: vLLM schedules its own batches).
        """
        run = RunFolder.load(run_dir)
        run.check_tokenizer()
        for name in ("end_penalty", "one_type_per_span"):
            if getattr(run, name) and name not in kwargs:
                logger.warning(
                    "the run's %s=%s needs our own decoding loop; the vllm engine leaves it out",
                    name,
                    getattr(run, name),
                )
        kwargs.setdefault("prompt_format", run.prompt_format)
        kwargs.setdefault("answer_format", run.answer_format)
        kwargs.setdefault("type_descriptions", run.type_descriptions)
        engine = VLLMEngine(
            run,
            max_new_tokens=kwargs.pop("max_new_tokens", 64),
            llm=llm,
            **({} if dtype is None else {"dtype": dtype}),
        )
        tokenizer = load_tokenizer(run.path, padding_side="left")
        extractor = cls(engine, tokenizer, run.test_types if types is None else types, **kwargs)
        extractor.run_types = [*run.test_types, *run.train_types]
        return extractor

    def generate(self, jobs: Sequence[Job], progress: bool = False) -> list[str]:
        """Answer every job with vLLM; no per-token log-probabilities, so entities carry no score."""
        self.last_first_odds = [{} for _ in jobs]
        self.last_answer_logprobs = [None] * len(jobs)
        return self.model.answer(jobs, self.constrained, progress) if jobs else []


def from_run_with_engine(
    engine: str, run_dir: str | Path, types: Sequence[EntityType] | None = None, dtype: Any = None, **kwargs: Any
) -> EntityExtractor:
    """`EntityExtractor.from_run` for an engine other than our own loop (`"torch"`).

    Raises:
        `UserError`: for an engine that is not one of `ENGINES`, or `VLLMNotInstalledError`.
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; known: {list(ENGINES)}")
    if engine == "torch":
        return EntityExtractor.from_run(run_dir, types, dtype, **kwargs)
    # vLLM names dtypes as strings: `torch.bfloat16` is "bfloat16".
    vllm_dtype = None if dtype is None else str(dtype).removeprefix("torch.")
    return VLLMEntityExtractor.from_run(run_dir, types, vllm_dtype, **kwargs)
