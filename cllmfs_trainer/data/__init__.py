"""The few-shot NER data path: read -> sample a support set -> build SFT samples -> tokenise -> collate."""

from cllmfs_trainer.data.format import PROMPT_FORMAT, PromptFormat, build_completion, build_prompt
from cllmfs_trainer.data.io import (
    Corpus,
    DataFormatError,
    Sentence,
    Span,
    from_hf_dataset,
    load_hf_dataset,
    read_conll,
    read_jsonl,
    write_bio,
    write_jsonl,
)
from cllmfs_trainer.data.readers import detect_format, read_examples
from cllmfs_trainer.data.registry import EntityType, get_dataset, load_types_file, merge_types
from cllmfs_trainer.data.sampling import FewShotTask, SupportSet, make_task, sample_support_set
from cllmfs_trainer.data.sft import SFTSample, build_samples, build_sft_dataset, tokenize_samples
from cllmfs_trainer.data.splitting import Chunk, merge_chunk_spans, split_sentence

__all__ = [
    "Chunk",
    "Corpus",
    "DataFormatError",
    "EntityType",
    "FewShotTask",
    "PROMPT_FORMAT",
    "PromptFormat",
    "SFTSample",
    "Sentence",
    "Span",
    "SupportSet",
    "build_completion",
    "build_prompt",
    "build_samples",
    "build_sft_dataset",
    "detect_format",
    "from_hf_dataset",
    "get_dataset",
    "load_hf_dataset",
    "load_types_file",
    "make_task",
    "merge_chunk_spans",
    "merge_types",
    "read_conll",
    "read_examples",
    "read_jsonl",
    "sample_support_set",
    "split_sentence",
    "tokenize_samples",
    "write_bio",
    "write_jsonl",
]
