"""`ContrastiveSFTTrainer`: TRL's `SFTTrainer` with CE + cl_weight * CL on one layer's hidden states.

The only override that matters is `compute_loss`:

1. `cl_labels` are popped from the batch, then TRL's own `compute_loss` runs unchanged (its token-normalised CE, its
   metrics, its memory-saving fused loss path). During that forward a hook on decoder block L keeps the block's output.
2. The noised view of the same tokens comes from a second forward with noised input embeddings that is stopped right
   after block L (`cl_noise_site="embeddings"`), or from noise added to the kept states (`"hidden"`), or is absent.
3. The supervised contrastive loss of `cllmfs_trainer.training.losses` runs on the input-sentence tokens
   (`cl_labels >= 0`).

With `cl_weight=0` or batches without `cl_labels`, step 1 is all that happens: the trainer is `SFTTrainer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from trl import SFTTrainer

from cllmfs_trainer.training.collator import ContrastiveDataCollator
from cllmfs_trainer.training.config import ContrastiveSFTConfig
from cllmfs_trainer.training.cpu.dropout import use_numpy_lora_dropout
from cllmfs_trainer.training.cpu.lm_head import add_compact_lm_head, fused_model
from cllmfs_trainer.training.cpu.lora_precision import compute_lora_in_model_dtype
from cllmfs_trainer.training.losses import add_noise, select_tokens, supervised_contrastive_loss
from cllmfs_trainer.training.sampler import FewShotSampler
from cllmfs_trainer.training.support_fit import SupportFitCallback, SupportFitTracker


class _StopForward(Exception):
    """Raised by the capture hook to end a forward pass once the contrastive layer has run."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, through PEFT and accelerate/DDP wrappers."""
    inner = model
    for _ in range(8):  # DDP -> PeftModel -> LoraModel -> LlamaForCausalLM -> LlamaModel
        layers = getattr(inner, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
        if hasattr(inner, "get_decoder") and inner.get_decoder() is not inner:
            inner = inner.get_decoder()
        else:
            inner = getattr(inner, "module", None) or getattr(inner, "base_model", None) or inner.model
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}; the contrastive term needs them")


class LayerCapture:
    """Keeps the output of one decoder block during a forward pass, optionally ending the pass there.

    The hook stores only the first output per capture: under gradient checkpointing the block runs again during
    backward (recompute), and that second output must not replace the one the loss was built from.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.output: torch.Tensor | None = None
        self._active = False
        self._stop = False
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._active or self.output is not None:
            return
        self.output = output[0] if isinstance(output, tuple) else output
        if self._stop:
            raise _StopForward

    @contextlib.contextmanager
    def capture(self, stop: bool = False) -> Iterator[LayerCapture]:
        self.output, self._active, self._stop = None, True, stop
        try:
            yield self
        except _StopForward:
            pass
        finally:
            self._active = self._stop = False

    def remove(self) -> None:
        self._handle.remove()


class ContrastiveSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss is `CE + cl_weight * CL` (see `ContrastiveSFTConfig` and `training.losses`).

    Args:
        model (`Any`):
            As for `SFTTrainer` (a model id, a `PreTrainedModel` or a `PeftModel`).
        args (`ContrastiveSFTConfig`, *optional*):
            A `ContrastiveSFTConfig`. A plain `SFTConfig` is accepted and gets the `cl_*` defaults.
        data_collator (`Any`, *optional*):
            Defaults to `ContrastiveDataCollator`, which pads `cl_labels` along with the rest.
        kwargs (`dict[str, Any]`, *optional*):
            Everything else `SFTTrainer` takes (`train_dataset`, `eval_dataset`, `processing_class`, `peft_config`,
            `callbacks`, ...). Datasets should come from `cllmfs_trainer.data.build_sft_dataset`.
    """

    _tag_names = ["trl", "sft", "cllmfs"]

    def __init__(self, model: Any, args: ContrastiveSFTConfig | None = None, data_collator: Any = None, **kwargs: Any):
        if args is None:
            args = ContrastiveSFTConfig(output_dir="cllmfs-output")
        elif not isinstance(args, ContrastiveSFTConfig):
            # Copy the fields themselves: `to_dict()` masks `*_token` values (a hub_token would become "<HUB_TOKEN>").
            args = ContrastiveSFTConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init})
        super().__init__(model, args=args, data_collator=data_collator, **kwargs)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.args.world_size != launched:
            raise RuntimeError(
                f"launched as {launched} processes but training sees world_size={self.args.world_size}: every process "
                "would train alone. On a CPU machine pass --use_cpu true (or use ds_configs/cpu_ddp.yaml)."
            )
        if data_collator is None:
            # SFTTrainer built its own collator; keep its settings and add cl_labels padding.
            built = self.data_collator
            self.data_collator = ContrastiveDataCollator(
                pad_token_id=built.pad_token_id,
                padding_free=built.padding_free,
                return_position_ids=built.return_position_ids,
                pad_to_multiple_of=built.pad_to_multiple_of,
            )
        if args.compact_lm_head:
            add_compact_lm_head(fused_model(self.model))
        if args.lora_compute_dtype == "model":
            compute_lora_in_model_dtype(self.model)
        if self.args.device.type == "cpu":
            use_numpy_lora_dropout(self.model, args.lora_dropout_rng)
        self.support_fit = SupportFitTracker(fused_model(self.model))
        self.support_fit_callback = SupportFitCallback(self, args.fit_stop)
        self.add_callback(self.support_fit_callback)
        self.cl_label_mode = args.cl_label_mode
        if self.cl_label_mode == "auto":
            columns = getattr(self.train_dataset, "column_names", None) or []
            formats = set(self.train_dataset["prompt_format"]) if "prompt_format" in columns else {1}
            self.cl_label_mode = "gold" if formats == {2} else "query"
        # With the contrastive term off the layer is never read: a drop-in SFTTrainer must train a model of any depth
        # (the default cl_layer=26 is past a 12- or 24-layer model) and of any architecture.
        self.cl_layer: int | None = None
        self._capture: LayerCapture | None = None
        if args.cl_weight > 0:
            layers = decoder_layers(self.model)
            self.cl_layer = args.resolve_cl_layer(len(layers))
            # hidden_states[L] is the output of block L, i.e. layers[L - 1].
            self._capture = LayerCapture(layers[self.cl_layer - 1])

    def _get_train_sampler(self, train_dataset=None):
        """`FewShotSampler` when `empty_ratio` or `length_bucket_batches` asks for it, else the Trainer's own."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        columns = getattr(dataset, "column_names", None) or []
        if (args.empty_ratio is None and args.length_bucket_batches == 1) or "input_ids" not in columns:
            return super()._get_train_sampler(train_dataset)
        if args.empty_ratio is not None and not {"has_entity", "type_id"} <= set(columns):
            raise ValueError(
                "empty_ratio needs the has_entity and type_id columns of cllmfs_trainer.data.build_sft_dataset"
            )
        n = len(dataset)
        return FewShotSampler(
            has_entity=dataset["has_entity"] if "has_entity" in columns else [True] * n,
            type_ids=dataset["type_id"] if "type_id" in columns else [0] * n,
            lengths=[len(ids) for ids in dataset["input_ids"]],
            # One optimizer step's rows, over all processes: accelerate hands consecutive batches to the ranks.
            batch_size=args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
            empty_ratio=args.empty_ratio,
            length_bucket_batches=args.length_bucket_batches,
            seed=args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cl_labels = inputs.pop("cl_labels", None)
        gold_labels = inputs.pop("cl_gold_labels", None)
        # Rows whose queried type has an entity: the support fit is counted apart for them.
        # Padding-free batches pack every sample into one row: no per-sample fit to count.
        packed = self.args.padding_free or cl_labels is None
        self.support_fit.expect(None if packed else (cl_labels > 0).any(dim=1))
        if self.cl_label_mode == "gold":
            cl_labels = gold_labels
        if cl_labels is None or self.args.cl_weight == 0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        with self._capture.capture():
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        hidden = self._capture.output
        self._capture.output = None  # do not keep the activation alive past the step
        loss = result[0] if return_outputs else result
        cl = self._contrastive_term(model, inputs, hidden, cl_labels)

        # CE arrives normalised by the tokens of the whole accumulated batch, so the Trainer does not divide it by
        # the accumulation steps; our per-micro-batch mean must be divided here instead (as TRL does for its MoE
        # auxiliary loss). When the Trainer does divide the whole loss, we must not divide twice.
        scaled_by_trainer = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled_by_trainer is None:
            scaled_by_trainer = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        steps = self.current_gradient_accumulation_steps if scaled_by_trainer else 1
        total = loss + self.args.cl_weight * cl.loss.to(loss.dtype) / steps

        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        self._metrics[mode]["ce_loss"].append(gather(loss.detach() * steps).mean().item())
        self._metrics[mode]["cl_loss"].append(gather(cl.loss.detach().float()).mean().item())
        if cl.num_anchors > 0:
            self._metrics[mode]["cl_pos_sim"].append(gather(cl.pos_sim.float()).mean().item())
            self._metrics[mode]["cl_neg_sim"].append(gather(cl.neg_sim.float()).mean().item())
        return (total, result[1]) if return_outputs else total

    def _contrastive_term(self, model: nn.Module, inputs: dict[str, Any], hidden: torch.Tensor, cl_labels):
        args = self.args
        mask = cl_labels >= 0
        labels = cl_labels[mask]
        keep = select_tokens(labels, args.cl_max_tokens)
        features = hidden[mask][keep]
        labels = labels[keep]
        noised = None
        if args.cl_noise_site == "hidden":
            base = hidden if args.cl_positive_grad else hidden.detach()
            noised = add_noise(base, inputs.get("attention_mask"), args.cl_noise_alpha, args.cl_noise_distribution)
            noised = noised[mask][keep]
        elif args.cl_noise_site == "embeddings":
            noised = self._noised_layer_output(model, inputs)[mask][keep]
        return supervised_contrastive_loss(
            features, labels, noised, temperature=args.cl_temperature, anchor_outside=args.cl_anchor_outside
        )

    def _noised_layer_output(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Block-L output for noised input embeddings: a forward that stops right after block L."""
        args = self.args
        # The unwrapped model: a forward that ends early must not leave DDP's reducer expecting a backward.
        unwrapped = self.accelerator.unwrap_model(model)
        forward_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "labels", "use_cache")}
        grad = torch.enable_grad() if args.cl_positive_grad else torch.no_grad()
        with grad, self._capture.capture(stop=True):
            embeddings = unwrapped.get_input_embeddings()(inputs["input_ids"])
            embeddings = add_noise(
                embeddings, inputs.get("attention_mask"), args.cl_noise_alpha, args.cl_noise_distribution
            )
            unwrapped(inputs_embeds=embeddings, use_cache=False, **forward_inputs)
        output = self._capture.output
        self._capture.output = None
        if output is None:
            raise RuntimeError(f"the noised forward never reached layer {self.cl_layer}")
        return output
